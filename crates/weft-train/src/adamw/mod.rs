//! AdamW with decoupled weight decay over flat buffers in parameter order: on the host
//! ([`host::FlatAdamW`], the CPU path) and on the training device ([`device::DeviceAdamW`],
//! the GPU path). The two run the same operations in the same order and give the same bits
//! on the CPU.

pub mod device;
pub mod host;

pub use device::DeviceAdamW;
pub use host::FlatAdamW;

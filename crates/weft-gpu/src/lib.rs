//! weft-gpu: weft on NVIDIA GPUs.
//!
//! - [`select`]: which GPU a rank takes (`WEFT_DEVICE`, one visible GPU, the local rank).
//! - [`libs`]: the libraries the CUDA path opens at run time (driver, NVRTC, NCCL); the links
//!   that make one found under a name cudarc does not try open (the `weft` binary makes them and
//!   starts itself again); an error for a missing one that says which names were tried, what
//!   was found and what to set.
//! - [`peak`]: peak FLOP rates of data-centre GPUs, for MFU.
//! - `cuda` (the `cuda` feature): burn's CUDA backend, the driver checks made before the first
//!   tensor, NCCL on burn's own device buffers for the trainer's gradient averaging
//!   (`cuda::NcclGrads`, a [`weft_collective::DeviceReduce`]), device memory readings.
//!
//! - `wgpu` (the `wgpu` feature): burn's wgpu backend on the default adapter (Vulkan, Metal,
//!   DX12; Mesa's lavapipe without a GPU).
//!
//! Without the `cuda` feature the CUDA items are absent and [`require_cuda`] says how to build
//! them; [`require_wgpu`] likewise.

#![warn(missing_docs)]

pub mod error;
pub mod libs;
pub mod peak;
pub mod select;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use error::GpuError;

/// Whether this weft was built with the `cuda` feature.
pub const BUILT_WITH_CUDA: bool = cfg!(feature = "cuda");

/// Whether this weft was built with the `wgpu` feature.
pub const BUILT_WITH_WGPU: bool = cfg!(feature = "wgpu");

/// Ok in a weft built with the `wgpu` feature, else the error that says how to build one.
pub fn require_wgpu() -> Result<(), GpuError> {
    if BUILT_WITH_WGPU {
        Ok(())
    } else {
        Err(GpuError::NotBuiltWgpu)
    }
}

/// Ok in a weft built with the `cuda` feature, else the error that says how to build one.
pub fn require_cuda() -> Result<(), GpuError> {
    if BUILT_WITH_CUDA {
        Ok(())
    } else {
        Err(GpuError::NotBuilt)
    }
}

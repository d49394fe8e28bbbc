//! burn's wgpu backend: the same cubecl tensor ops as the CUDA backend, compiled to WGSL (or
//! SPIR-V) for Vulkan, Metal or DX12, on the default adapter. On a machine without a GPU, Mesa's
//! lavapipe is a Vulkan adapter on the CPU cores: slow, but it runs the device code path.
//!
//! No fusion and no autotune (see the crate's features): gradients and the small exchanges of
//! a job are staged through the host and reduced over the TCP ring.

/// burn's wgpu backend (f32).
pub type Wgpu = burn::backend::Wgpu;

/// The training backend: autodiff over [`Wgpu`].
pub type WgpuTrain = burn::backend::Autodiff<Wgpu>;

/// The device of the default adapter.
pub fn device() -> burn::backend::wgpu::WgpuDevice {
    burn::backend::wgpu::WgpuDevice::DefaultDevice
}

//! One op per file: its dispatch over the routes (`crate::route`), its fused autodiff step
//! (`crate::autodiff`) and its burn-op reference. The kernels themselves, over `f32`
//! slices, are in [`crate::cpu`].

pub mod attention;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub mod matmul;
pub mod patches;
pub mod positions;

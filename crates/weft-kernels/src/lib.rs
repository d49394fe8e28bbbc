//! Fused CPU kernels for the Transformer hot path, each with its own backward pass.
//!
//! burn's autodiff builds LayerNorm, GELU, multi-head attention and the position embeddings
//! out of many small tensor ops: each is a pass over memory with its own graph node, flex runs
//! most element-wise ops on one thread, and the head split/merge of attention copies strided
//! views. This crate gives each one fused forward and one fused backward ([`cpu`]), written
//! over `f32` slices, parallel (rayon) over rows or (sample, head) pairs, vectorised (AVX2
//! where the CPU has it), with the products done by the `gemm` crate directly on strided heads.
//!
//! The backward passes also add up the gradients of a tensor read by several ops (the input of
//! a residual block, the tokens that feed Q, K and V) in parallel, where burn would add them on
//! one thread.
//!
//! # Dispatch
//! [`linear`], [`linear_add`], [`layer_norm`], [`gelu`], [`attention`] (and
//! [`attention_indexed`]) and [`add_positions`]
//! take tensors of any burn backend:
//! - `Autodiff<Flex>` (CPU training): the fused kernels, registered as burn-autodiff
//!   [`Backward`](burn_autodiff::ops::Backward) steps;
//! - `Flex` (CPU evaluation): the fused forward kernels;
//! - anything else (CUDA), or a dtype other than f32: the composition of burn ops in
//!   [`reference`], which is also what the tests hold the fused kernels to.
//!
//! The backend is recognised by `TypeId` and the primitive tensors are converted by a safe
//! `Any` downcast, so the models stay generic over `B: Backend` (`route`).
//!
//! # Mixed precision
//! While an [`autocast`] guard is alive on a thread, [`linear`], [`linear_add`], [`matmul`]
//! and the attention products of that thread take the [`reference`] route with bf16 (or f16)
//! operands and give f32 results, as PyTorch's `torch.autocast` does for its matmuls:
//! parameters, gradients, LayerNorm, softmax and the losses stay f32. The casts are burn ops,
//! so autodiff casts every gradient back to the f32 of its parameter.
//!
//! # Where things are
//! - [`ops`]: one file per op (its dispatch, its autodiff step, its reference);
//! - [`cpu`]: the kernels over `f32` slices;
//! - `autodiff`: the one way an op records itself in burn's graph and registers gradients;
//! - `route`: the routes and the downcasts; `autocast`: mixed precision ([`autocast()`]);
//! - [`flops`]: the FLOP counter; [`reference`]: every op's reference by its short name;
//! - [`alloc`]: allocator tuning for training ([`keep_freed_memory`]).

#![warn(missing_docs)]

pub mod alloc;
mod autocast;
pub(crate) mod autodiff;
pub mod cpu;
pub mod flops;
pub mod ops;
pub mod reference;
pub(crate) mod route;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::Autodiff;
use burn_flex::Flex;

pub use alloc::keep_freed_memory;
pub use autocast::{autocast, product_dtype, Autocast};
pub use ops::attention::{attention, attention_indexed, attention_rows};
pub use ops::gelu::gelu;
pub use ops::layer_norm::layer_norm;
pub use ops::linear::{linear, linear_add};
pub use ops::matmul::matmul;
pub use ops::patches::patches;
pub use ops::positions::add_positions;

/// The CPU training backend the fused backward passes are written for.
pub type AdFlex = Autodiff<Flex, NoCheckpointing>;

/// Host indices as a `[N]` int tensor (for `select`).
pub fn index_tensor<B: Backend>(index: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = index.iter().map(|&i| i as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

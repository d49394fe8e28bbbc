//! `a·b`, FLOP-counted and under [`crate::autocast()`] in the autocast dtype. burn's own batched
//! matmul on every backend: there is no fused kernel, so no backward of its own.

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

use crate::autocast::product_dtype;
use crate::flops;

/// `a·b` (burn's batched matmul), with the operands in the [`crate::autocast()`] dtype when one
/// is on and an f32 result.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    let (da, db) = (a.dims(), b.dims());
    let batch: usize = da[..D - 2].iter().product();
    flops::product(batch * da[D - 2], db[D - 1], da[D - 1]);
    matmul_reference(a, b)
}

/// `a·b` with both operands cast to the [`crate::autocast()`] dtype and the product cast back
/// to f32; plain `a.matmul(b)` without autocast. Not counted.
pub fn matmul_reference<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Tensor<B, D> {
    match product_dtype() {
        None => a.matmul(b),
        Some(low) => a.cast(low).matmul(b.cast(low)).cast(FloatDType::F32),
    }
}

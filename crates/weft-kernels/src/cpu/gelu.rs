//! Exact (erf) GELU and its derivative, element-wise and parallel.

use rayon::prelude::*;

use super::math::{erf, exp, multiversion};
use super::ELEMS_PER_TASK;

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1/√(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

multiversion! {
    fn forward_chunk(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2));
        }
    }
}

multiversion! {
    fn backward_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
            let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
            *dx = dy * (cdf + x * pdf);
        }
    }
}

/// `x·Φ(x)`.
pub fn forward(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(ELEMS_PER_TASK)
        .zip(x.par_chunks(ELEMS_PER_TASK))
        .for_each(|(y, x)| forward_chunk(x, y));
    y
}

/// `dy·(Φ(x) + x·φ(x))`.
pub fn backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(
        x.len(),
        dy.len(),
        "gelu backward: input and gradient lengths"
    );
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(ELEMS_PER_TASK)
        .zip(
            x.par_chunks(ELEMS_PER_TASK)
                .zip(dy.par_chunks(ELEMS_PER_TASK)),
        )
        .for_each(|(dx, (x, dy))| backward_chunk(x, dy, dx));
    dx
}

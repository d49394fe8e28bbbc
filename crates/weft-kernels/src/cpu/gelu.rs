//! Exact (erf) GELU and its derivative, element-wise and parallel.

use rayon::prelude::*;

use super::math::{erf, exp, multiversion};
use super::{par_filled, ELEMS_PER_TASK};

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
    fn backward_chunk(x: &[f32], g: &mut [f32]) {
        for (g, &x) in g.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
            *g *= cdf + x * pdf;
        }
    }
}

/// `x·Φ(x)`.
pub fn forward(x: &[f32]) -> Vec<f32> {
    par_filled(x.len(), ELEMS_PER_TASK, |i, y| {
        let at = i * ELEMS_PER_TASK;
        forward_chunk(&x[at..at + y.len()], y)
    })
}

/// `dy·(Φ(x) + x·φ(x))`, written over `dy`.
pub fn backward_in_place(x: &[f32], dy: &mut [f32]) {
    assert_eq!(
        x.len(),
        dy.len(),
        "gelu backward: input and gradient lengths"
    );
    dy.par_chunks_mut(ELEMS_PER_TASK)
        .zip(x.par_chunks(ELEMS_PER_TASK))
        .for_each(|(g, x)| backward_chunk(x, g));
}

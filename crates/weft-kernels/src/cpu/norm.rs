//! LayerNorm over the last dimension: forward (keeping each row's mean and 1/σ) and backward.

use rayon::prelude::*;

use super::math::{dot, multiversion, sum};
use super::{zeroed, ROWS_PER_TASK};

/// What the forward pass keeps for the backward pass: per row, the mean and `1/√(var + ε)`.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Row means.
    pub mean: Vec<f32>,
    /// Row reciprocal standard deviations.
    pub rstd: Vec<f32>,
}

multiversion! {
    fn forward_rows(
        x: &[f32],
        y: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        let w = gamma.len();
        for (r, (x, y)) in x.chunks_exact(w).zip(y.chunks_exact_mut(w)).enumerate() {
            let m = sum(x) / w as f32;
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x - m;
            }
            let var = dot(y, y) / w as f32;
            let s = 1.0 / (var + eps).sqrt();
            for ((y, &g), &b) in y.iter_mut().zip(gamma).zip(beta) {
                *y = *y * s * g + b;
            }
            mean[r] = m;
            rstd[r] = s;
        }
    }
}

multiversion! {
    /// Writes dx over dy, row by row.
    fn backward_rows(
        x: &[f32],
        dy: &mut [f32],
        stats: (&[f32], &[f32]),
        gamma: &[f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let (mean, rstd) = stats;
        let w = gamma.len();
        let mut xhat = vec![0.0f32; w];
        let mut g = vec![0.0f32; w];
        for (r, (x, dx)) in x.chunks_exact(w).zip(dy.chunks_exact_mut(w)).enumerate() {
            let dy = &*dx;
            let (m, s) = (mean[r], rstd[r]);
            for i in 0..w {
                xhat[i] = (x[i] - m) * s;
                g[i] = dy[i] * gamma[i];
                dgamma[i] += dy[i] * xhat[i];
                dbeta[i] += dy[i];
            }
            let a = sum(&g) / w as f32;
            let b = dot(&g, &xhat) / w as f32;
            for i in 0..w {
                dx[i] = s * (g[i] - a - xhat[i] * b);
            }
        }
    }
}

/// `y = (x - mean)/√(var + ε)·γ + β` per row of `gamma.len()` values.
pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> (Vec<f32>, Stats) {
    let w = gamma.len();
    assert_eq!(beta.len(), w, "layer norm: gamma and beta lengths");
    assert_eq!(
        x.len() % w,
        0,
        "layer norm: input is not a whole number of rows"
    );
    let rows = x.len() / w;
    let mut mean = vec![0.0; rows];
    let mut rstd = vec![0.0; rows];
    let task = ROWS_PER_TASK * w;
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(task)
        .zip(mean.par_chunks_mut(ROWS_PER_TASK))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(i, ((y, m), s))| {
            let y = zeroed(y);
            forward_rows(&x[i * task..i * task + y.len()], y, m, s, gamma, beta, eps);
        });
    #[allow(unsafe_code)]
    // SAFETY: the chunks cover all x.len() elements and `zeroed` initialised each.
    unsafe {
        y.set_len(x.len())
    };
    (y, Stats { mean, rstd })
}

/// Gradients of [`forward`]: `(dx, dγ, dβ)`, with dx written over `dy`.
pub fn backward(
    x: &[f32],
    mut dy: Vec<f32>,
    stats: &Stats,
    gamma: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let w = gamma.len();
    assert_eq!(
        x.len(),
        dy.len(),
        "layer norm backward: input and gradient lengths"
    );
    // One partial (dγ, dβ) per task, summed afterwards in task order.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dy
        .par_chunks_mut(ROWS_PER_TASK * w)
        .enumerate()
        .map(|(t, dy)| {
            let r0 = t * ROWS_PER_TASK;
            let r1 = r0 + dy.len() / w;
            let (mut dg, mut db) = (vec![0.0; w], vec![0.0; w]);
            backward_rows(
                &x[r0 * w..r1 * w],
                dy,
                (&stats.mean[r0..r1], &stats.rstd[r0..r1]),
                gamma,
                &mut dg,
                &mut db,
            );
            (dg, db)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0; w], vec![0.0; w]);
    for (dg, db) in partials {
        for i in 0..w {
            dgamma[i] += dg[i];
            dbeta[i] += db[i];
        }
    }
    (dy, dgamma, dbeta)
}

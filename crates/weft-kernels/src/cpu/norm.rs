//! LayerNorm over the last dimension: forward (keeping each row's mean and 1/σ) and backward.

use rayon::prelude::*;

use super::math::{dot, multiversion, sum};
use super::ROWS_PER_TASK;

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
    #[allow(clippy::too_many_arguments)]
    fn backward_rows(
        x: &[f32],
        dy: &[f32],
        mean: &[f32],
        rstd: &[f32],
        gamma: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let w = gamma.len();
        let mut xhat = vec![0.0f32; w];
        let mut g = vec![0.0f32; w];
        let rows = x.chunks_exact(w).zip(dy.chunks_exact(w)).zip(dx.chunks_exact_mut(w));
        for (r, ((x, dy), dx)) in rows.enumerate() {
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
    let mut y = vec![0.0; x.len()];
    let mut mean = vec![0.0; rows];
    let mut rstd = vec![0.0; rows];
    y.par_chunks_mut(ROWS_PER_TASK * w)
        .zip(mean.par_chunks_mut(ROWS_PER_TASK))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(ROWS_PER_TASK * w))
        .for_each(|(((y, m), s), x)| forward_rows(x, y, m, s, gamma, beta, eps));
    (y, Stats { mean, rstd })
}

/// Gradients of [`forward`]: `(dx, dγ, dβ)`.
pub fn backward(
    x: &[f32],
    dy: &[f32],
    stats: &Stats,
    gamma: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let w = gamma.len();
    assert_eq!(
        x.len(),
        dy.len(),
        "layer norm backward: input and gradient lengths"
    );
    let mut dx = vec![0.0; x.len()];
    // One partial (dγ, dβ) per task, summed afterwards in task order.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(ROWS_PER_TASK * w)
        .enumerate()
        .map(|(t, dx)| {
            let r0 = t * ROWS_PER_TASK;
            let r1 = r0 + dx.len() / w;
            let (mut dg, mut db) = (vec![0.0; w], vec![0.0; w]);
            backward_rows(
                &x[r0 * w..r1 * w],
                &dy[r0 * w..r1 * w],
                &stats.mean[r0..r1],
                &stats.rstd[r0..r1],
                gamma,
                dx,
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
    (dx, dgamma, dbeta)
}

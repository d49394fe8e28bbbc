//! Fully connected layer `y = x·W + b` over `[N, in]` rows, and its backward pass.
//!
//! burn's Linear on flex runs a matrix product into a fresh flex buffer (zero-filled, then
//! copied once more to realign it), a broadcast bias add on one thread, and in the backward
//! pass one more sum over rows on one thread; here the products write straight into the
//! output and the bias passes run in parallel.

use rayon::prelude::*;

use super::math::{add_assign, multiversion};
use super::ROWS_PER_TASK;

/// A new `[m, n]` matrix `lhs[m×k] · rhs[k×n]` (strides in elements), which `gemm` writes in
/// full (no zero fill first), threaded by gemm itself when `threaded`.
#[allow(unsafe_code)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    threaded: bool,
) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(
        lhs.len() > last(lhs_rs, lhs_cs, m, k),
        "linear: lhs too small"
    );
    assert!(
        rhs.len() > last(rhs_rs, rhs_cs, k, n),
        "linear: rhs too small"
    );
    let parallelism = if threaded {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every element addressed inside its slice; the
    // destination is a fresh m×n buffer, which gemm (k > 0) writes in full.
    unsafe {
        super::written_by(m * n, |dst| {
            super::gemm_into(
                (m, n, k),
                dst,
                n,
                lhs.as_ptr(),
                (lhs_rs, lhs_cs),
                rhs.as_ptr(),
                (rhs_rs, rhs_cs),
                1.0,
                false,
                parallelism,
            )
        })
    }
}

/// Rows of `x` and `dy` per block of the weight gradient's sum (see [`weight_grad`]).
const WEIGHT_GRAD_ROWS: usize = 512;

/// `xᵀ·dy`, `[d_in, out]`, summed over `n` rows.
///
/// `gemm` threads a product by splitting its output, and this output is small (a weight) while
/// the sum is long (every token of the batch): its own threading reaches about half the speed
/// of its other products here. So the rows are cut into at most 8 blocks of at least
/// [`WEIGHT_GRAD_ROWS`], one single-threaded product per block, run in parallel, and the block
/// products are added in block order. The blocks depend on the shape only, so the bits do not
/// depend on the thread count.
fn weight_grad(x: &[f32], dy: &[f32], (n, d_in, out): (usize, usize, usize)) -> Vec<f32> {
    let blocks = (n / WEIGHT_GRAD_ROWS).clamp(1, 8);
    if blocks == 1 {
        return matmul((d_in, out, n), x, (1, d_in), dy, (out, 1), true);
    }
    let rows = n.div_ceil(blocks);
    let parts: Vec<Vec<f32>> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let (r0, r1) = (b * rows, ((b + 1) * rows).min(n));
            let (xb, gb) = (&x[r0 * d_in..r1 * d_in], &dy[r0 * out..r1 * out]);
            matmul((d_in, out, r1 - r0), xb, (1, d_in), gb, (out, 1), false)
        })
        .collect();
    let mut parts = parts.into_iter();
    let mut sum = parts.next().expect("at least two blocks");
    let rest: Vec<Vec<f32>> = parts.collect();
    sum.par_chunks_mut(super::ELEMS_PER_TASK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let at = i * super::ELEMS_PER_TASK;
            for part in &rest {
                add_assign(chunk, &part[at..at + chunk.len()]);
            }
        });
    sum
}

multiversion! {
    fn add_rows(y: &mut [f32], b: &[f32]) {
        for row in y.chunks_exact_mut(b.len()) {
            for (y, &b) in row.iter_mut().zip(b) {
                *y += b;
            }
        }
    }
}

multiversion! {
    fn sum_rows(dy: &[f32], acc: &mut [f32]) {
        for row in dy.chunks_exact(acc.len()) {
            for (a, &g) in acc.iter_mut().zip(row) {
                *a += g;
            }
        }
    }
}

multiversion! {
    fn add_rows_and(y: &mut [f32], b: &[f32], r: &[f32]) {
        for (row, r) in y.chunks_exact_mut(b.len()).zip(r.chunks_exact(b.len())) {
            for ((y, &b), &r) in row.iter_mut().zip(b).zip(r) {
                *y += b + r;
            }
        }
    }
}

/// `x·W + b`, plus `residual` (a residual connection closed by this layer) when given, for
/// `x: [N, in]`, `W: [in, out]`, `b: [out]`, `residual: [N, out]`.
pub fn forward(x: &[f32], w: &[f32], b: &[f32], residual: Option<&[f32]>) -> Vec<f32> {
    let out = b.len();
    assert_eq!(w.len() % out, 0, "linear: weight is not [in, {out}]");
    let d_in = w.len() / out;
    assert_eq!(x.len() % d_in.max(1), 0, "linear: input is not [N, {d_in}]");
    let n = x.len().checked_div(d_in).unwrap_or(0);
    let mut y = matmul((n, out, d_in), x, (d_in, 1), w, (out, 1), true);
    let task = ROWS_PER_TASK * out;
    match residual {
        Some(r) => {
            assert_eq!(r.len(), n * out, "linear: residual is not [{n}, {out}]");
            y.par_chunks_mut(task)
                .zip(r.par_chunks(task))
                .for_each(|(rows, r)| add_rows_and(rows, b, r));
        }
        None => y.par_chunks_mut(task).for_each(|rows| add_rows(rows, b)),
    }
    y
}

/// Gradients of [`forward`] from `dy: [N, out]`, for `W: [d_in, out]`: `dx = dy·Wᵀ` (when
/// asked for), `dW = xᵀ·dy` (when asked for) and `db = Σ_rows dy`.
pub fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (d_in, out): (usize, usize),
    (want_dx, want_dw): (bool, bool),
) -> (Option<Vec<f32>>, Option<Vec<f32>>, Vec<f32>) {
    assert_eq!(w.len(), d_in * out, "linear backward: weight shape");
    let n = dy.len().checked_div(out).unwrap_or(0);
    assert_eq!(dy.len(), n * out, "linear backward: output gradient shape");
    assert_eq!(x.len(), n * d_in, "linear backward: input shape");
    let dx = want_dx.then(|| matmul((n, d_in, out), dy, (out, 1), w, (1, out), true));
    let dw = want_dw.then(|| weight_grad(x, dy, (n, d_in, out)));
    // One partial sum per task, added in task order: the same bits for any thread count.
    let partials: Vec<Vec<f32>> = dy
        .par_chunks(ROWS_PER_TASK * out.max(1))
        .map(|rows| {
            let mut acc = vec![0.0f32; out];
            sum_rows(rows, &mut acc);
            acc
        })
        .collect();
    let mut db = vec![0.0f32; out];
    for p in partials {
        for (d, v) in db.iter_mut().zip(p) {
            *d += v;
        }
    }
    (dx, dw, db)
}

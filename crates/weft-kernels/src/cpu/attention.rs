//! Multi-head scaled dot-product attention over `[B, L, H·D]` tokens, heads split by strides.
//!
//! Queries, keys and values stay in the `[B, L, W]` layout the projections write; head `h` is
//! the column block `h·D..(h+1)·D`, read and written through `gemm`'s row and column strides,
//! so there is no split-heads or merge-heads copy. One parallel task per (sample, head): the
//! products are small (tens of rows), so tasks, not the products, are what runs in parallel.

use rayon::prelude::*;

use super::math::{dot, exp, multiversion};

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Samples.
    pub batch: usize,
    /// Query tokens per sample.
    pub lq: usize,
    /// Key/value tokens per sample.
    pub lk: usize,
    /// Heads.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl Dims {
    /// `heads · head_dim`.
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// An additive score bias (a mask), the same for every head: element `(b, i, j)` is
/// `data[b·batch_stride + i·row_stride + j]`; a stride of 0 broadcasts that dimension.
#[derive(Debug, Clone, Copy)]
pub struct Bias<'a> {
    /// Values.
    pub data: &'a [f32],
    /// Elements between samples (0: one bias for all samples).
    pub batch_stride: usize,
    /// Elements between query rows (0: one row for all queries).
    pub row_stride: usize,
}

/// A pointer that parallel tasks write through, each to its own disjoint block.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes a block of rows × columns no other task touches (its own sample
// and head), and the buffer outlives the parallel loop that uses the pointer.
#[allow(unsafe_code)]
unsafe impl Send for Out {}
// SAFETY: as for Send.
#[allow(unsafe_code)]
unsafe impl Sync for Out {}

impl Out {
    /// The pointer `at` elements in. A method, so that closures capture the whole `Out`
    /// (which is `Sync`) rather than the raw pointer field.
    #[allow(unsafe_code)]
    unsafe fn at(self, at: usize) -> *mut f32 {
        // SAFETY: the caller keeps `at` inside the buffer.
        unsafe { self.0.add(at) }
    }
}

/// [`super::gemm_into`] on one thread: the tasks, not the products, run in parallel here.
///
/// # Safety
/// As for [`super::gemm_into`].
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn matmul(
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
    scale: f32,
) {
    // SAFETY: the caller's contract.
    unsafe {
        super::gemm_into(
            dims,
            dst,
            dst_rs,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            scale,
            gemm::Parallelism::None,
        )
    }
}

multiversion! {
    /// Adds the bias to a row of scores and turns it into probabilities.
    fn softmax_row(row: &mut [f32], bias: Option<&[f32]>) {
        if let Some(bias) = bias {
            for (s, &b) in row.iter_mut().zip(bias) {
                *s += b;
            }
        }
        let mut lanes = [f32::NEG_INFINITY; 8];
        let chunks = row.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..8 {
                lanes[i] = lanes[i].max(c[i]);
            }
        }
        let mut max = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for &v in rest {
            max = max.max(v);
        }
        for s in row.iter_mut() {
            *s = exp(*s - max);
        }
        let inv = 1.0 / super::math::sum(row);
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
}

multiversion! {
    /// `dS = P ⊙ (dP − Σ_j dP·P)` for one row, in place of `dP`.
    fn softmax_backward_row(dp: &mut [f32], p: &[f32]) {
        let d = dot(dp, p);
        for (g, &p) in dp.iter_mut().zip(p) {
            *g = p * (*g - d);
        }
    }
}

/// Checks that the slices hold what `dims` says.
fn check(dims: &Dims, q: &[f32], k: &[f32], v: &[f32]) {
    assert!(
        dims.lq > 0 && dims.lk > 0 && dims.head_dim > 0,
        "attention: empty queries, keys or heads: {dims:?}"
    );
    let w = dims.width();
    assert_eq!(q.len(), dims.batch * dims.lq * w, "attention: query size");
    assert_eq!(k.len(), dims.batch * dims.lk * w, "attention: key size");
    assert_eq!(v.len(), dims.batch * dims.lk * w, "attention: value size");
}

/// `softmax(Q_h·K_hᵀ/√D + bias)·V_h` for every head, written back as `[B, Lq, W]`.
/// Also returns the probabilities `[B, H, Lq, Lk]`, which the backward pass needs.
pub fn forward(
    dims: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<Bias<'_>>,
) -> (Vec<f32>, Vec<f32>) {
    check(dims, q, k, v);
    let Dims {
        batch,
        lq,
        lk,
        heads,
        head_dim: d,
    } = *dims;
    let w = dims.width();
    if let Some(b) = bias {
        let need = (batch - 1) * b.batch_stride + (lq - 1) * b.row_stride + lk;
        assert!(b.data.len() >= need, "attention: bias too small");
    }
    let mut out: Vec<f32> = Vec::with_capacity(batch * lq * w);
    let mut probs: Vec<f32> = Vec::with_capacity(batch * heads * lq * lk);
    let dst = Out(out.as_mut_ptr());
    probs.spare_capacity_mut()[..batch * heads * lq * lk]
        .par_chunks_mut(lq * lk)
        .enumerate()
        .for_each(|(t, p)| {
            let p = super::zeroed(p);
            let (b, h) = (t / heads, t % heads);
            let qh = q[b * lq * w + h * d..].as_ptr();
            let kh = k[b * lk * w + h * d..].as_ptr();
            let vh = v[b * lk * w + h * d..].as_ptr();
            // SAFETY: Q_h is lq×d with row stride w inside q; K_hᵀ is d×lk read with row
            // stride 1 and column stride w inside k; p is this task's own lq×lk block.
            #[allow(unsafe_code)]
            unsafe {
                matmul(
                    (lq, lk, d),
                    p.as_mut_ptr(),
                    lk,
                    qh,
                    (w, 1),
                    kh,
                    (1, w),
                    dims.scale(),
                );
            }
            for (i, row) in p.chunks_exact_mut(lk).enumerate() {
                let bias_row = bias.map(|bb| {
                    let at = b * bb.batch_stride + i * bb.row_stride;
                    &bb.data[at..at + lk]
                });
                softmax_row(row, bias_row);
            }
            // SAFETY: P is lq×lk; V_h is lk×d with row stride w inside v; the destination
            // is this task's (sample, head) block of `out`, lq×d with row stride w.
            #[allow(unsafe_code)]
            unsafe {
                let o = dst.at(b * lq * w + h * d);
                matmul((lq, d, lk), o, w, p.as_ptr(), (lk, 1), vh, (w, 1), 1.0);
            }
        });
    #[allow(unsafe_code)]
    // SAFETY: the (sample, head) blocks cover `out` and each was written in full by gemm
    // (read_dst = false); `probs` chunks were all initialised by `zeroed`.
    unsafe {
        out.set_len(batch * lq * w);
        probs.set_len(batch * heads * lq * lk);
    }
    (out, probs)
}

/// Gradients of [`forward`] with respect to the queries, keys and values, from the gradient of
/// its output `dout` (`[B, Lq, W]`) and the probabilities it returned. The bias is a constant.
pub fn backward(
    dims: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    check(dims, q, k, v);
    let Dims {
        batch,
        lq,
        lk,
        heads,
        head_dim: d,
    } = *dims;
    let w = dims.width();
    assert_eq!(
        probs.len(),
        batch * heads * lq * lk,
        "attention backward: probs"
    );
    assert_eq!(dout.len(), q.len(), "attention backward: output gradient");
    let mut dq: Vec<f32> = Vec::with_capacity(q.len());
    let mut dk: Vec<f32> = Vec::with_capacity(k.len());
    let mut dv: Vec<f32> = Vec::with_capacity(v.len());
    let (dqp, dkp, dvp) = (
        Out(dq.as_mut_ptr()),
        Out(dk.as_mut_ptr()),
        Out(dv.as_mut_ptr()),
    );
    let scale = dims.scale();
    (0..batch * heads).into_par_iter().for_each_init(
        || vec![0.0f32; lq * lk],
        |ds, t| {
            let (b, h) = (t / heads, t % heads);
            let p = &probs[t * lq * lk..(t + 1) * lq * lk];
            let (qo, ko) = (b * lq * w + h * d, b * lk * w + h * d);
            #[allow(unsafe_code)]
            // SAFETY: (this block and the next) every operand is a block inside its buffer
            // read with the strides of its layout (see `forward`); ds is this task's scratch;
            // the destinations are this task's own (sample, head) blocks of dq, dk and dv.
            unsafe {
                // dV_h = Pᵀ·dO_h
                let dvh = dvp.at(ko);
                matmul(
                    (lk, d, lq),
                    dvh,
                    w,
                    p.as_ptr(),
                    (1, lk),
                    dout[qo..].as_ptr(),
                    (w, 1),
                    1.0,
                );
                // dP = dO_h·V_hᵀ
                let voh = v[ko..].as_ptr();
                matmul(
                    (lq, lk, d),
                    ds.as_mut_ptr(),
                    lk,
                    dout[qo..].as_ptr(),
                    (w, 1),
                    voh,
                    (1, w),
                    1.0,
                );
            }
            for (g, pr) in ds.chunks_exact_mut(lk).zip(p.chunks_exact(lk)) {
                softmax_backward_row(g, pr);
            }
            #[allow(unsafe_code)]
            // SAFETY: as above.
            unsafe {
                // dQ_h = scale·dS·K_h
                let dqh = dqp.at(qo);
                matmul(
                    (lq, d, lk),
                    dqh,
                    w,
                    ds.as_ptr(),
                    (lk, 1),
                    k[ko..].as_ptr(),
                    (w, 1),
                    scale,
                );
                // dK_h = scale·dSᵀ·Q_h
                let dkh = dkp.at(ko);
                matmul(
                    (lk, d, lq),
                    dkh,
                    w,
                    ds.as_ptr(),
                    (1, lk),
                    q[qo..].as_ptr(),
                    (w, 1),
                    scale,
                );
            }
        },
    );
    #[allow(unsafe_code)]
    // SAFETY: the (sample, head) blocks cover dq, dk and dv, and gemm (read_dst = false)
    // wrote each in full.
    unsafe {
        dq.set_len(q.len());
        dk.set_len(k.len());
        dv.set_len(v.len());
    }
    (dq, dk, dv)
}

//! Multi-head scaled dot-product attention over `[R, H·D]` query rows and `[Bkv, Lk, H·D]`
//! keys and values, heads split by strides.
//!
//! Queries, keys and values stay in the row-major layout the projections write; head `h` is
//! the column block `h·D..(h+1)·D`, read and written through `gemm`'s row and column strides,
//! so there is no split-heads or merge-heads copy. A [`RowMap`] says which query rows belong to
//! which sample (all `Lq` of a `[B, Lq, W]` batch, or a chosen few) and which key/value sample
//! each attends to. One parallel task per (sample, head): the products are small (tens of
//! rows), so tasks, not the products, are what runs in parallel.

use rayon::prelude::*;

use super::math::{dot, exp, multiversion};

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Query samples.
    pub batch: usize,
    /// Key/value samples: `batch`, or fewer when several query samples attend to the same
    /// keys and values (see [`RowMap::kv_index`]).
    pub kv_batch: usize,
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

/// Which query rows belong to which sample, and which keys and values each sample reads.
#[derive(Debug, Clone, Copy)]
pub struct RowMap<'a> {
    /// `batch + 1` increasing offsets from 0: the queries of sample `b` are rows
    /// `query_rows[b]..query_rows[b + 1]` of `q` (`[R, W]`). `b·Lq` for a `[B, Lq, W]` batch;
    /// fewer (even none) for a sample when only some of its tokens are wanted, as the last
    /// layer of an encoder whose heads read one token, or the masked ones.
    pub query_rows: &'a [usize],
    /// The key/value sample of each query sample (`None`: sample `b` for query `b`). Several
    /// query samples may share one set of keys and values, as the re-paired image-text pairs
    /// of ITM and the MLM pass share the image tokens of one batch, without a copy per pair.
    /// Their gradients add up.
    pub kv_index: Option<&'a [usize]>,
}

impl RowMap<'_> {
    fn kv(&self, b: usize) -> usize {
        self.kv_index.map_or(b, |i| i[b])
    }

    /// The query rows of sample `b`: (first, count).
    fn rows(&self, b: usize) -> (usize, usize) {
        let r = self.query_rows;
        (r[b], r[b + 1] - r[b])
    }

    /// Query rows in all.
    fn total(&self) -> usize {
        self.query_rows.last().copied().unwrap_or(0)
    }
}

/// `batch + 1` offsets of `lq` query rows per sample (a `[batch, lq, W]` batch).
pub fn uniform_rows(batch: usize, lq: usize) -> Vec<usize> {
    (0..=batch).map(|b| b * lq).collect()
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
        matmul_acc(
            dims,
            dst,
            dst_rs,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            scale,
            false,
        )
    }
}

/// [`matmul`], adding to `dst` when `accumulate`.
///
/// # Safety
/// As for [`super::gemm_into`]; with `accumulate`, `dst` must be initialised.
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn matmul_acc(
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
    scale: f32,
    accumulate: bool,
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
            accumulate,
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

/// Checks that the slices and the row map hold what `dims` says.
fn check(dims: &Dims, map: &RowMap<'_>, q: &[f32], k: &[f32], v: &[f32]) {
    assert!(
        dims.lk > 0 && dims.head_dim > 0,
        "attention: empty keys or heads: {dims:?}"
    );
    let w = dims.width();
    let rows = map.query_rows;
    assert!(
        rows.len() == dims.batch + 1 && rows[0] == 0 && rows.windows(2).all(|r| r[0] <= r[1]),
        "attention: query rows must be {} increasing offsets from 0",
        dims.batch + 1
    );
    assert_eq!(q.len(), map.total() * w, "attention: query size");
    assert_eq!(k.len(), dims.kv_batch * dims.lk * w, "attention: key size");
    assert_eq!(
        v.len(),
        dims.kv_batch * dims.lk * w,
        "attention: value size"
    );
    match map.kv_index {
        None => assert_eq!(dims.kv_batch, dims.batch, "attention: no key/value index"),
        Some(i) => {
            assert_eq!(i.len(), dims.batch, "attention: key/value index length");
            assert!(
                i.iter().all(|&j| j < dims.kv_batch),
                "attention: key/value index out of range (kv_batch {})",
                dims.kv_batch
            );
        }
    }
}

/// `softmax(Q_h·K_hᵀ/√D + bias)·V_h` for every head, written back as `[R, W]` (the rows of
/// `q`). Also returns the probabilities, which the backward pass needs: for each sample its
/// heads' `rows × Lk` blocks in turn, `heads · R · Lk` in all.
///
/// A bias row `i` of sample `b` is the `i`-th query row of that sample; a row map that leaves
/// some of a sample's rows out needs a bias with `row_stride` 0 (a key mask).
pub fn forward(
    dims: &Dims,
    map: &RowMap<'_>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<Bias<'_>>,
) -> (Vec<f32>, Vec<f32>) {
    check(dims, map, q, k, v);
    let Dims {
        batch,
        lk,
        heads,
        head_dim: d,
        ..
    } = *dims;
    let w = dims.width();
    let total = map.total();
    if let Some(bb) = bias {
        let lq_max = (0..batch).map(|b| map.rows(b).1).max().unwrap_or(0);
        if batch > 0 && lq_max > 0 {
            let need = (batch - 1) * bb.batch_stride + (lq_max - 1) * bb.row_stride + lk;
            assert!(bb.data.len() >= need, "attention: bias too small");
        }
    }
    let mut out: Vec<f32> = Vec::with_capacity(total * w);
    let mut probs: Vec<f32> = Vec::with_capacity(heads * total * lk);
    let (dst, pdst) = (Out(out.as_mut_ptr()), Out(probs.as_mut_ptr()));
    (0..batch * heads).into_par_iter().for_each(|t| {
        let (b, h) = (t / heads, t % heads);
        let (r0, lq) = map.rows(b);
        if lq == 0 {
            return;
        }
        let ko = map.kv(b) * lk * w + h * d;
        let qh = q[r0 * w + h * d..].as_ptr();
        let kh = k[ko..].as_ptr();
        let vh = v[ko..].as_ptr();
        #[allow(unsafe_code)]
        // SAFETY: Q_h is lq×d with row stride w inside q; K_hᵀ is d×lk read with row stride 1
        // and column stride w inside k; the destination is this task's own lq×lk block of
        // probs, which gemm (k = d > 0) writes in full before it is read as a slice.
        let p = unsafe {
            let p = pdst.at((heads * r0 + h * lq) * lk);
            matmul((lq, lk, d), p, lk, qh, (w, 1), kh, (1, w), dims.scale());
            std::slice::from_raw_parts_mut(p, lq * lk)
        };
        for (i, row) in p.chunks_exact_mut(lk).enumerate() {
            let bias_row = bias.map(|bb| {
                let at = b * bb.batch_stride + i * bb.row_stride;
                &bb.data[at..at + lk]
            });
            softmax_row(row, bias_row);
        }
        // SAFETY: P is lq×lk; V_h is lk×d with row stride w inside v; the destination is
        // this task's (sample, head) block of `out`, lq×d with row stride w.
        #[allow(unsafe_code)]
        unsafe {
            let o = dst.at(r0 * w + h * d);
            matmul((lq, d, lk), o, w, p.as_ptr(), (lk, 1), vh, (w, 1), 1.0);
        }
    });
    #[allow(unsafe_code)]
    // SAFETY: the (sample, head) blocks cover `out` and `probs` (samples without rows have
    // none), and gemm (read_dst = false, k > 0) wrote each in full.
    unsafe {
        out.set_len(total * w);
        probs.set_len(heads * total * lk);
    }
    (out, probs)
}

/// The operands of [`backward`] that its parallel tasks share: the inputs, the probabilities,
/// the output gradient, and where the three gradients go.
struct Operands<'a> {
    dims: Dims,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    probs: &'a [f32],
    dout: &'a [f32],
    dq: Out,
    dk: Out,
    dv: Out,
}

impl Operands<'_> {
    /// Query sample `b`'s part of the task of head `h` of the key/value block at `ko`: its
    /// query gradient, and its share of the key and value gradients (written when `acc` is
    /// false, the task's first query sample; added to after). `scratch` holds at least its
    /// `lq × lk` probabilities.
    fn query_sample(
        &self,
        map: &RowMap<'_>,
        b: usize,
        h: usize,
        ko: usize,
        acc: bool,
        scratch: &mut [f32],
    ) {
        let Dims {
            lk,
            heads,
            head_dim: d,
            ..
        } = self.dims;
        let (w, scale) = (self.dims.width(), self.dims.scale());
        let (q, k, v, probs, dout) = (self.q, self.k, self.v, self.probs, self.dout);
        let (dqp, dkp, dvp) = (self.dq, self.dk, self.dv);
        let (r0, lq) = map.rows(b);
        let at = (heads * r0 + h * lq) * lk;
        let p = &probs[at..at + lq * lk];
        let ds = &mut scratch[..lq * lk];
        let qo = r0 * w + h * d;
        #[allow(unsafe_code)]
        // SAFETY: (this block and the next) every operand is a block inside its buffer
        // read with the strides of its layout (see `forward`); ds is this task's
        // scratch; the destinations are this task's own blocks: its (key/value
        // sample, head) block of dk and dv (written by its first query sample, added
        // to by the others), and the (query sample, head) block of dq of a query
        // sample that no other task has.
        unsafe {
            // dV_h (+)= Pᵀ·dO_h
            matmul_acc(
                (lk, d, lq),
                dvp.at(ko),
                w,
                p.as_ptr(),
                (1, lk),
                dout[qo..].as_ptr(),
                (w, 1),
                1.0,
                acc,
            );
            // dP = dO_h·V_hᵀ
            matmul(
                (lq, lk, d),
                ds.as_mut_ptr(),
                lk,
                dout[qo..].as_ptr(),
                (w, 1),
                v[ko..].as_ptr(),
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
            matmul(
                (lq, d, lk),
                dqp.at(qo),
                w,
                ds.as_ptr(),
                (lk, 1),
                k[ko..].as_ptr(),
                (w, 1),
                scale,
            );
            // dK_h (+)= scale·dSᵀ·Q_h
            matmul_acc(
                (lk, d, lq),
                dkp.at(ko),
                w,
                ds.as_ptr(),
                (1, lk),
                q[qo..].as_ptr(),
                (w, 1),
                scale,
                acc,
            );
        }
    }
}

/// Gradients of [`forward`] with respect to the queries, keys and values, from the gradient of
/// its output `dout` (`[R, W]`) and the probabilities it returned. The bias is a constant.
///
/// One parallel task per (key/value sample, head): it goes through the query samples that
/// attend to that sample in increasing order, writes their query gradients and adds up the key
/// and value gradients, so the sums have a fixed order whatever the number of threads.
pub fn backward(
    dims: &Dims,
    map: &RowMap<'_>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    check(dims, map, q, k, v);
    let Dims {
        batch,
        kv_batch,
        lk,
        heads,
        head_dim: d,
    } = *dims;
    let w = dims.width();
    assert_eq!(
        probs.len(),
        heads * map.total() * lk,
        "attention backward: probs"
    );
    assert_eq!(dout.len(), q.len(), "attention backward: output gradient");
    // The query samples (with query rows) of each key/value sample, in increasing order.
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); kv_batch];
    for b in 0..batch {
        if map.rows(b).1 > 0 {
            users[map.kv(b)].push(b);
        }
    }
    let mut dq: Vec<f32> = Vec::with_capacity(q.len());
    let mut dk: Vec<f32> = Vec::with_capacity(k.len());
    let mut dv: Vec<f32> = Vec::with_capacity(v.len());
    let operands = Operands {
        dims: *dims,
        q,
        k,
        v,
        probs,
        dout,
        dq: Out(dq.as_mut_ptr()),
        dk: Out(dk.as_mut_ptr()),
        dv: Out(dv.as_mut_ptr()),
    };
    let (dkp, dvp) = (operands.dk, operands.dv);
    let lq_max = (0..batch).map(|b| map.rows(b).1).max().unwrap_or(0);
    (0..kv_batch * heads).into_par_iter().for_each_init(
        || vec![0.0f32; lq_max * lk],
        |scratch, t| {
            let (j, h) = (t / heads, t % heads);
            let ko = j * lk * w + h * d;
            if users[j].is_empty() {
                // Keys and values nobody attends to: zero gradients.
                for r in 0..lk {
                    #[allow(unsafe_code)]
                    // SAFETY: row r of this task's own (sample, head) block of dk and dv.
                    unsafe {
                        std::ptr::write_bytes(dkp.at(ko + r * w), 0, d);
                        std::ptr::write_bytes(dvp.at(ko + r * w), 0, d);
                    }
                }
                return;
            }
            for (n, &b) in users[j].iter().enumerate() {
                operands.query_sample(map, b, h, ko, n > 0, scratch);
            }
        },
    );
    #[allow(unsafe_code)]
    // SAFETY: every query row belongs to a sample with rows, whose task wrote its dq blocks
    // in full (gemm, read_dst = false, k = lk > 0); every key/value sample's dk and dv blocks
    // were written by its first query sample's products (k = lq > 0) or zeroed when it has
    // none.
    unsafe {
        dq.set_len(q.len());
        dk.set_len(k.len());
        dv.set_len(v.len());
    }
    (dq, dk, dv)
}

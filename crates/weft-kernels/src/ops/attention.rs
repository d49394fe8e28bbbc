//! Multi-head scaled dot-product attention ([`attention`], [`attention_indexed`],
//! [`attention_rows`]): dispatch, the fused autodiff step, and the burn-op reference
//! ([`attention_reference`] and its indexed and row-wise forms).

use std::sync::Arc;

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::{Flex, FlexTensor};

use crate::autodiff::{key, record, register, wanted, Key};
use crate::ops::matmul::matmul_reference;
use crate::route::{contiguous, data, dims_of, flex, prim, route, wrap, Route};
use crate::{cpu, flops, index_tensor, AdFlex};

/// Multi-head scaled dot-product attention on `[B, L, W]` tokens:
/// `softmax(Q_h·K_hᵀ/√(W/H) + bias)·V_h` for each of `heads` heads, heads merged back into
/// `[B, Lq, W]`. `bias` is an additive mask `[B or 1, 1, Lq or 1, Lk]` (the same for every
/// head); it is a constant: no gradient flows into it.
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    attention_indexed(q, k, v, heads, bias, None)
}

/// [`attention`] where query sample `b` attends to key/value sample `kv_index[b]`: `k` and `v`
/// are `[Bkv, Lk, W]` and several query samples may share one of them (the re-paired pairs of
/// ITM and the MLM pass over one batch's image tokens), with no per-pair copy; the gradients of
/// a shared sample add up. `None` is [`attention`].
pub fn attention_indexed<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 4>>,
    kv_index: Option<&[usize]>,
) -> Tensor<B, 3> {
    let [batch, lq, w] = q.dims();
    let rows = cpu::attention::uniform_rows(batch, lq);
    let dims = attention_dims(batch, &rows, &k, &v, w, heads, kv_index);
    check_bias(bias.as_ref(), batch, Some(lq), dims.lk);
    match route(&q) {
        Route::Reference => attention_indexed_reference(q, k, v, heads, bias, kv_index),
        _ => attention_fused(q, k, v, bias, dims, rows, kv_index),
    }
}

/// [`attention_indexed`] for a chosen set of query rows per sample: `q` is `[R, W]`, the
/// queries of sample `b` being rows `query_rows[b]..query_rows[b + 1]` (`B + 1` increasing
/// offsets from 0; a sample may have none), and so is the output. Keys and values are whole
/// `[Bkv, Lk, W]` samples. For the last layer of an encoder whose heads read only some tokens
/// (ITM the first, MLM the masked ones): the other rows' queries, output projections and MLPs
/// are never computed. `bias` must be a key mask (`[B or 1, 1, 1, Lk]`).
pub fn attention_rows<B: Backend>(
    q: Tensor<B, 2>,
    query_rows: &[usize],
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 4>>,
    kv_index: Option<&[usize]>,
) -> Tensor<B, 2> {
    let [total, w] = q.dims();
    assert!(
        !query_rows.is_empty() && query_rows[0] == 0,
        "attention: query rows must start at 0"
    );
    let batch = query_rows.len() - 1;
    assert_eq!(
        query_rows[batch], total,
        "attention: the query rows end at {} but q has {total} rows",
        query_rows[batch]
    );
    let dims = attention_dims(batch, query_rows, &k, &v, w, heads, kv_index);
    check_bias(bias.as_ref(), batch, None, dims.lk);
    match route(&q) {
        Route::Reference => attention_rows_reference(q, query_rows, k, v, heads, bias, kv_index),
        _ => attention_fused(q, k, v, bias, dims, query_rows.to_vec(), kv_index),
    }
}

/// The sizes of an attention call, after checking keys, values, rows and index.
fn attention_dims<B: Backend>(
    batch: usize,
    rows: &[usize],
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    w: usize,
    heads: usize,
    kv_index: Option<&[usize]>,
) -> cpu::attention::Dims {
    let [kv_batch, lk, kw] = k.dims();
    assert_eq!(kw, w, "attention: keys must match the queries' width");
    // Q·Kᵀ and P·V of every query row, over all heads.
    let queries = rows.last().copied().unwrap_or(0);
    flops::product(queries, lk, w);
    flops::product(queries, w, lk);
    assert_eq!(
        k.dims(),
        v.dims(),
        "attention: keys and values differ in shape"
    );
    assert!(
        rows.windows(2).all(|r| r[0] <= r[1]),
        "attention: query rows must increase"
    );
    match kv_index {
        None => assert_eq!(
            kv_batch, batch,
            "attention: keys must match the queries' batch"
        ),
        Some(index) => {
            assert_eq!(
                index.len(),
                batch,
                "attention: one key/value index per query sample"
            );
            assert!(
                index.iter().all(|&j| j < kv_batch),
                "attention: key/value index out of range ({kv_batch} samples)"
            );
        }
    }
    assert!(
        heads > 0 && w.is_multiple_of(heads),
        "attention: width {w} is not a multiple of {heads} heads"
    );
    cpu::attention::Dims {
        batch,
        kv_batch,
        lk,
        heads,
        head_dim: w / heads,
    }
}

/// Checks that `bias` broadcasts to `[batch, 1, lq, lk]` (`lq: None`: to one row, a key
/// mask).
fn check_bias<B: Backend>(bias: Option<&Tensor<B, 4>>, batch: usize, lq: Option<usize>, lk: usize) {
    if let Some(b) = bias {
        let [bb, one, bq, bk] = b.dims();
        assert!(
            (bb == 1 || bb == batch) && one == 1 && (bq == 1 || Some(bq) == lq) && bk == lk,
            "attention: bias {:?} does not broadcast to [{batch}, 1, {}, {lk}]",
            b.dims(),
            lq.map_or("1".to_string(), |l| l.to_string())
        );
    }
}

/// The fused kernels' route of the attention functions (autodiff or forward-only flex).
fn attention_fused<B: Backend, const D: usize>(
    q: Tensor<B, D>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Option<Tensor<B, 4>>,
    dims: cpu::attention::Dims,
    rows: Vec<usize>,
    kv_index: Option<&[usize]>,
) -> Tensor<B, D> {
    let shape = q.dims();
    match route(&q) {
        Route::Autodiff => {
            let bias = bias.map(|b| {
                let b = prim::<AdFlex, B, 4>(b);
                assert!(!b.is_tracked(), "attention: the bias must be a constant");
                contiguous(b.primitive)
            });
            let map = OwnedRowMap {
                rows: rows.into(),
                kv_index: kv_index.map(Arc::from),
            };
            wrap::<AdFlex, B, D>(attention_ad(
                dims,
                map,
                prim::<AdFlex, B, D>(q),
                prim::<AdFlex, B, 3>(k),
                prim::<AdFlex, B, 3>(v),
                bias,
            ))
        }
        Route::Flex => {
            let q = contiguous(prim::<Flex, B, D>(q));
            let k = contiguous(prim::<Flex, B, 3>(k));
            let v = contiguous(prim::<Flex, B, 3>(v));
            let bias = bias.map(|b| contiguous(prim::<Flex, B, 4>(b)));
            let map = cpu::attention::RowMap {
                query_rows: &rows,
                kv_index,
            };
            let (out, _) = cpu::attention::forward(
                &dims,
                &map,
                data(&q),
                data(&k),
                data(&v),
                bias.as_ref().map(|b| bias_view(b, &dims)),
            );
            wrap::<Flex, B, D>(flex(out, shape.to_vec()))
        }
        Route::Reference => unreachable!("weft-kernels: the reference route is the caller's"),
    }
}

fn bias_view<'a>(b: &'a FlexTensor, dims: &cpu::attention::Dims) -> cpu::attention::Bias<'a> {
    let shape = dims_of(b);
    cpu::attention::Bias {
        data: data(b),
        batch_stride: if shape[0] == 1 { 0 } else { shape[2] * dims.lk },
        row_stride: if shape[2] == 1 { 0 } else { dims.lk },
    }
}

/// An owned [`cpu::attention::RowMap`], kept for the backward pass.
#[derive(Debug, Clone)]
struct OwnedRowMap {
    rows: Arc<[usize]>,
    kv_index: Option<Arc<[usize]>>,
}

impl OwnedRowMap {
    fn view(&self) -> cpu::attention::RowMap<'_> {
        cpu::attention::RowMap {
            query_rows: &self.rows,
            kv_index: self.kv_index.as_deref(),
        }
    }
}

#[derive(Debug)]
struct AttentionBackward;

/// What attention's backward pass keeps: sizes and row map, Q, K, V, the probabilities, and
/// the keys of Q, K and V.
type AttentionState = (
    cpu::attention::Dims,
    OwnedRowMap,
    [FlexTensor; 3],
    FlexTensor,
    [Key; 3],
);

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = contiguous(grads.consume::<Flex>(&ops.node));
        let (dims, map, [q, k, v], probs, keys) = ops.state;
        let [kq, kk, kv] = wanted(ops.parents, keys);
        let (dq, dk, dv) = cpu::attention::backward(
            &dims,
            &map.view(),
            data(&q),
            data(&k),
            data(&v),
            data(&probs),
            data(&dout),
        );
        for (key, grad, like) in [(kq, dq, &q), (kk, dk, &k), (kv, dv, &v)] {
            if let Some(key) = key {
                register(grads, &key, flex(grad, dims_of(like)));
            }
        }
    }
}

fn attention_ad(
    dims: cpu::attention::Dims,
    map: OwnedRowMap,
    q: FloatTensor<AdFlex>,
    k: FloatTensor<AdFlex>,
    v: FloatTensor<AdFlex>,
    bias: Option<FlexTensor>,
) -> FloatTensor<AdFlex> {
    let qs = contiguous(q.primitive.clone());
    let ks = contiguous(k.primitive.clone());
    let vs = contiguous(v.primitive.clone());
    let (out, probs) = cpu::attention::forward(
        &dims,
        &map.view(),
        data(&qs),
        data(&ks),
        data(&vs),
        bias.as_ref().map(|b| bias_view(b, &dims)),
    );
    let out = flex(out, dims_of(&qs));
    let state = || {
        let n = probs.len();
        let probs = flex(probs, vec![n]);
        let keys = [key(&q), key(&k), key(&v)];
        (dims, map, [qs, ks, vs], probs, keys)
    };
    record(AttentionBackward, [&q, &k, &v], state, out)
}

fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, l, w] = x.dims();
    x.reshape([b, l, heads, w / heads]).swap_dims(1, 2)
}

fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, l, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, l, h * d])
}

/// Multi-head attention as split heads, `Q·Kᵀ·scale + bias`, softmax, `·V`, merge heads.
pub fn attention_reference<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    let head_dim = q.dims()[2] / heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let (q, k, v) = (
        split_heads(q, heads),
        split_heads(k, heads),
        split_heads(v, heads),
    );
    let mut scores = matmul_reference(q.mul_scalar(scale), k.swap_dims(2, 3));
    if let Some(b) = bias {
        scores = scores + b;
    }
    merge_heads(matmul_reference(softmax(scores, 3), v))
}

/// [`attention_reference`] with query sample `b` attending to key/value sample `kv_index[b]`: the keys
/// and values selected per query sample (a copy per pair), then attended.
pub fn attention_indexed_reference<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 4>>,
    kv_index: Option<&[usize]>,
) -> Tensor<B, 3> {
    match kv_index {
        None => attention_reference(q, k, v, heads, bias),
        Some(index) => {
            let index = index_tensor::<B>(index, &q.device());
            let (k, v) = (k.select(0, index.clone()), v.select(0, index));
            attention_reference(q, k, v, heads, bias)
        }
    }
}

/// [`attention_reference`] over chosen query rows (see [`attention_rows`]): the rows of each
/// sample are gathered into a `[B, max rows, W]` batch (short samples padded with a zero
/// row), attended with the keys and values of `kv_index` (selected), and the real rows
/// gathered back.
pub fn attention_rows_reference<B: Backend>(
    q: Tensor<B, 2>,
    query_rows: &[usize],
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 4>>,
    kv_index: Option<&[usize]>,
) -> Tensor<B, 2> {
    let [total, w] = q.dims();
    let device = q.device();
    let batch = query_rows.len() - 1;
    let counts: Vec<usize> = query_rows.windows(2).map(|r| r[1] - r[0]).collect();
    let lq = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut gather = Vec::with_capacity(batch * lq);
    let mut back = Vec::with_capacity(total);
    for (b, &n) in counts.iter().enumerate() {
        for i in 0..lq {
            gather.push(if i < n { query_rows[b] + i } else { total });
        }
        back.extend((0..n).map(|i| b * lq + i));
    }
    let padded = Tensor::cat(vec![q, Tensor::zeros([1, w], &device)], 0)
        .select(0, index_tensor::<B>(&gather, &device))
        .reshape([batch, lq, w]);
    attention_indexed_reference(padded, k, v, heads, bias, kv_index)
        .reshape([batch * lq, w])
        .select(0, index_tensor::<B>(&back, &device))
}

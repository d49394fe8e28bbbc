//! The same operations composed from burn tensor ops: the path for every backend other
//! than flex (CUDA), for mixed precision ([`crate::autocast`]), and the reference the fused
//! kernels are tested against.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Int, Tensor, TensorData, TensorPrimitive};

use crate::product_dtype;

/// `a·b` with both operands cast to the [`crate::autocast`] dtype and the product cast back
/// to f32; plain `a.matmul(b)` without autocast.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    match product_dtype() {
        None => a.matmul(b),
        Some(low) => a.cast(low).matmul(b.cast(low)).cast(FloatDType::F32),
    }
}

/// burn's own linear op (what `burn::nn::Linear` calls); under [`crate::autocast`] the product
/// is [`matmul`]'s and the bias is added in f32.
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    if product_dtype().is_none() {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let y = matmul(x, weight.unsqueeze());
    match bias {
        Some(b) => y + b.unsqueeze(),
        None => y,
    }
}

/// burn's own LayerNorm op (what `burn::nn::LayerNorm` calls).
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        Some(beta.into_primitive().tensor()),
        eps,
    )))
}

/// burn's exact GELU.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::gelu(x)
}

/// `[prefix; x_b] + positions[..P + N]` as an expand, a cat and a broadcast add.
pub fn add_positions<B: Backend>(
    x: Tensor<B, 3>,
    prefix: Tensor<B, 3>,
    positions: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [b, n, w] = x.dims();
    let p = prefix.dims()[1];
    let x = if p == 0 {
        x
    } else {
        Tensor::cat(vec![prefix.expand([b, p, w]), x], 1)
    };
    x + positions.narrow(1, 0, p + n)
}

/// The patch matrix of `[B, C, H, W]` images as a reshape, a permute and a reshape.
pub fn patches<B: Backend>(images: Tensor<B, 4>, p: usize) -> Tensor<B, 2> {
    let [b, c, h, w] = images.dims();
    let (gh, gw) = (h / p, w / p);
    images
        .reshape([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b * gh * gw, c * p * p])
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
pub fn attention<B: Backend>(
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
    let mut scores = matmul(q.mul_scalar(scale), k.swap_dims(2, 3));
    if let Some(b) = bias {
        scores = scores + b;
    }
    merge_heads(matmul(softmax(scores, 3), v))
}

/// Host indices as a `[N]` int tensor (for `select`).
pub fn index_tensor<B: Backend>(index: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = index.iter().map(|&i| i as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// [`attention`] with query sample `b` attending to key/value sample `kv_index[b]`: the keys
/// and values selected per query sample (a copy per pair), then attended.
pub fn attention_indexed<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 4>>,
    kv_index: Option<&[usize]>,
) -> Tensor<B, 3> {
    match kv_index {
        None => attention(q, k, v, heads, bias),
        Some(index) => {
            let index = index_tensor::<B>(index, &q.device());
            let (k, v) = (k.select(0, index.clone()), v.select(0, index));
            attention(q, k, v, heads, bias)
        }
    }
}

/// [`attention`] over chosen query rows (see `weft_kernels::attention_rows`): the rows of each
/// sample are gathered into a `[B, max rows, W]` batch (short samples padded with a zero
/// row), attended with the keys and values of `kv_index` (selected), and the real rows
/// gathered back.
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
    attention_indexed(padded, k, v, heads, bias, kv_index)
        .reshape([batch * lq, w])
        .select(0, index_tensor::<B>(&back, &device))
}

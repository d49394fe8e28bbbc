//! Transformer building blocks: attention, MLP, pre-norm encoder and cross-attention blocks.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

/// LayerNorm epsilon of every block (the PyTorch default of CLIP/ViT).
pub const LN_EPS: f64 = 1e-5;

/// Value added to masked attention scores.
const MASKED: f32 = -1.0e9;

/// A LayerNorm of `width` with [`LN_EPS`]: every norm of the models is made here.
pub(crate) fn layer_norm<B: Backend>(width: usize, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(width)
        .with_epsilon(LN_EPS)
        .init(device)
}

/// Applies a LayerNorm made by [`layer_norm`] through weft-kernels' fused LayerNorm (one pass
/// forward, one backward, on the CPU; burn's own op elsewhere).
pub fn norm<B: Backend, const D: usize>(ln: &LayerNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    match &ln.beta {
        Some(beta) => weft_kernels::layer_norm(x, ln.gamma.val(), beta.val(), LN_EPS),
        None => ln.forward(x),
    }
}

/// A [`Linear`] over `[..., W]` (every leading dimension a row) through weft-kernels' fused
/// linear: one `[rows, W]` matrix product.
///
/// burn's `Linear` on a rank-3 input runs a batched product against the broadcast weight, which
/// flex splits into B small products (and B weight-gradient products in the backward pass);
/// one large product is several times faster on CPU.
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    weft_kernels::linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// burn's own `Linear::forward` (the small heads), its product counted in
/// [`weft_kernels::flops`].
pub fn head_linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let [d_in, d_out] = layer.weight.dims();
    weft_kernels::flops::linear(x.dims()[..D - 1].iter().product(), d_in, d_out);
    layer.forward(x)
}

/// `residual + layer(x)` in one pass (weft-kernels' fused linear with the residual add of a
/// pre-norm block folded in).
pub fn linear_add<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
    residual: Tensor<B, D>,
) -> Tensor<B, D> {
    match &layer.bias {
        Some(bias) => weft_kernels::linear_add(x, layer.weight.val(), bias.val(), residual),
        None => residual + linear(layer, x),
    }
}

/// An additive attention bias, broadcast over heads: `[B or 1, 1, Lq or 1, Lk]`.
///
/// Built once per forward pass from a key padding mask and/or a causal mask.
#[derive(Debug, Clone)]
pub struct AttentionBias<B: Backend> {
    bias: Option<Tensor<B, 4>>,
}

impl<B: Backend> AttentionBias<B> {
    /// No masking.
    pub fn none() -> Self {
        Self { bias: None }
    }

    /// Mask the keys where `padding` is true (`[B, Lk]`), optionally also the future (causal).
    pub fn new(
        padding: Option<Tensor<B, 2, Bool>>,
        causal: Option<usize>,
        device: &B::Device,
    ) -> Self {
        let pad = padding.map(|p| {
            let [b, l] = p.dims();
            Tensor::<B, 2>::zeros([b, l], &p.device())
                .mask_fill(p, MASKED)
                .reshape([b, 1, 1, l])
        });
        let causal = causal.map(|l| {
            // burn's tril_mask(offset 0) is true strictly above the diagonal: the future.
            let future = Tensor::<B, 2, Bool>::tril_mask([l, l], 0, device);
            Tensor::<B, 2>::zeros([l, l], device)
                .mask_fill(future, MASKED)
                .reshape([1, 1, l, l])
        });
        let bias = match (pad, causal) {
            (Some(p), Some(c)) => Some(p + c),
            (p, c) => p.or(c),
        };
        Self { bias }
    }

    /// Pick rows of a per-sample bias (for re-paired batches such as ITM negatives).
    pub fn select(&self, indices: Tensor<B, 1, burn::tensor::Int>) -> Self {
        let bias = self.bias.clone().map(|b| {
            if b.dims()[0] == 1 {
                b
            } else {
                b.select(0, indices)
            }
        });
        Self { bias }
    }

    /// Concatenate per-sample biases along the batch.
    pub fn cat(parts: Vec<Self>) -> Self {
        let tensors: Option<Vec<_>> = parts.into_iter().map(|p| p.bias).collect();
        Self {
            bias: tensors.map(|t| Tensor::cat(t, 0)),
        }
    }
}

/// Multi-head self-attention.
///
/// Query, key and value are three products rather than one fused `[W, 3W]` product: slicing a
/// fused output makes strided views that flex copies again before the attention products, which
/// cost more than the two extra (equally large in total) matrix products.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// `[W, W]` query projection.
    pub query: Linear<B>,
    /// `[W, W]` key projection.
    pub key: Linear<B>,
    /// `[W, W]` value projection.
    pub value: Linear<B>,
    /// Output projection.
    pub out: Linear<B>,
    /// Attention heads.
    pub heads: usize,
}

impl<B: Backend> SelfAttention<B> {
    /// New self-attention of `width` with `heads` heads.
    pub fn new(width: usize, heads: usize, device: &B::Device) -> Self {
        Self {
            query: LinearConfig::new(width, width).init(device),
            key: LinearConfig::new(width, width).init(device),
            value: LinearConfig::new(width, width).init(device),
            out: LinearConfig::new(width, width).init(device),
            heads,
        }
    }

    /// `[B, L, W] -> [B, L, W]`.
    pub fn forward(&self, x: Tensor<B, 3>, bias: &AttentionBias<B>) -> Tensor<B, 3> {
        linear(&self.out, self.attend(x, bias))
    }

    /// The merged heads, before the output projection.
    fn attend(&self, x: Tensor<B, 3>, bias: &AttentionBias<B>) -> Tensor<B, 3> {
        let q = linear(&self.query, x.clone());
        let k = linear(&self.key, x.clone());
        let v = linear(&self.value, x);
        weft_kernels::attention(q, k, v, self.heads, bias.bias.clone())
    }

    /// `residual + self.forward(x, bias)`, with the add folded into the output projection.
    pub fn forward_add(
        &self,
        x: Tensor<B, 3>,
        bias: &AttentionBias<B>,
        residual: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        linear_add(&self.out, self.attend(x, bias), residual)
    }

    /// `residual + self.forward(x, bias)` at the chosen tokens only: `x` `[N, L, W]` gives
    /// every key and value, the queries are its `rows`, and `residual` and the output are
    /// `[R, W]`. `bias` must be a key mask.
    pub fn forward_add_rows(
        &self,
        x: Tensor<B, 3>,
        bias: &AttentionBias<B>,
        rows: &TokenRows,
        residual: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let q = linear(&self.query, rows.pick(x.clone()));
        let k = linear(&self.key, x.clone());
        let v = linear(&self.value, x);
        let heads = weft_kernels::attention_rows(
            q,
            &rows.offsets,
            k,
            v,
            self.heads,
            bias.bias.clone(),
            None,
        );
        linear_add(&self.out, heads, residual)
    }
}

/// Multi-head cross-attention from text queries to image keys/values.
#[derive(Module, Debug)]
pub struct CrossAttention<B: Backend> {
    /// `[W, W]` query projection.
    pub query: Linear<B>,
    /// `[W_ctx, W]` key projection of the context (image tokens).
    pub key: Linear<B>,
    /// `[W_ctx, W]` value projection of the context.
    pub value: Linear<B>,
    /// Output projection.
    pub out: Linear<B>,
    /// Attention heads.
    pub heads: usize,
}

impl<B: Backend> CrossAttention<B> {
    /// New cross-attention of `width` over a context of `context_width`.
    pub fn new(width: usize, context_width: usize, heads: usize, device: &B::Device) -> Self {
        Self {
            query: LinearConfig::new(width, width).init(device),
            key: LinearConfig::new(context_width, width).init(device),
            value: LinearConfig::new(context_width, width).init(device),
            out: LinearConfig::new(width, width).init(device),
            heads,
        }
    }

    /// `[B, Lq, W]` over `[B, Lk, W_ctx]` -> `[B, Lq, W]`.
    pub fn forward(&self, x: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(&self.out, self.attend(x, context, None))
    }

    /// The merged heads, before the output projection. With `index`, `context` is
    /// `[Bc, Lk, W_ctx]` and query sample `b` attends to context sample `index[b]`: each
    /// context sample's keys and values are projected once, however many pairs share it.
    fn attend(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        index: Option<&[usize]>,
    ) -> Tensor<B, 3> {
        let q = linear(&self.query, x);
        let k = linear(&self.key, context.clone());
        let v = linear(&self.value, context);
        weft_kernels::attention_indexed(q, k, v, self.heads, None, index)
    }

    /// `residual + self.forward(x, context)`, with the add folded into the output projection;
    /// `index` as in [`Self::attend`].
    pub fn forward_add(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        index: Option<&[usize]>,
        residual: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        linear_add(&self.out, self.attend(x, context, index), residual)
    }

    /// [`Self::forward_add`] for the `[R, W]` chosen text tokens of [`TokenRows`] `offsets`.
    pub fn forward_add_rows(
        &self,
        x: Tensor<B, 2>,
        offsets: &[usize],
        context: Tensor<B, 3>,
        index: Option<&[usize]>,
        residual: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let q = linear(&self.query, x);
        let k = linear(&self.key, context.clone());
        let v = linear(&self.value, context);
        let heads = weft_kernels::attention_rows(q, offsets, k, v, self.heads, None, index);
        linear_add(&self.out, heads, residual)
    }
}

/// Two-layer MLP with an exact GELU (weft-kernels' fused one).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[W, W * ratio]`.
    pub fc1: Linear<B>,
    /// `[W * ratio, W]`.
    pub fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// New MLP of `width` with a hidden layer of `width * ratio`.
    pub fn new(width: usize, ratio: usize, device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(width, width * ratio).init(device),
            fc2: LinearConfig::new(width * ratio, width).init(device),
        }
    }

    /// `[B, L, W] -> [B, L, W]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(&self.fc2, weft_kernels::gelu(linear(&self.fc1, x)))
    }

    /// `residual + self.forward(x)`, with the add folded into the second layer.
    pub fn forward_add<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let h = weft_kernels::gelu(linear(&self.fc1, x));
        linear_add(&self.fc2, h, residual)
    }
}

/// Pre-norm Transformer block: `x += SA(LN(x)); x += MLP(LN(x))`.
#[derive(Module, Debug)]
pub struct EncoderBlock<B: Backend> {
    /// Norm before attention.
    pub ln_1: LayerNorm<B>,
    /// Self-attention.
    pub attn: SelfAttention<B>,
    /// Norm before the MLP.
    pub ln_2: LayerNorm<B>,
    /// MLP.
    pub mlp: Mlp<B>,
}

impl<B: Backend> EncoderBlock<B> {
    /// New block.
    pub fn new(width: usize, heads: usize, mlp_ratio: usize, device: &B::Device) -> Self {
        Self {
            ln_1: layer_norm(width, device),
            attn: SelfAttention::new(width, heads, device),
            ln_2: layer_norm(width, device),
            mlp: Mlp::new(width, mlp_ratio, device),
        }
    }

    /// `[B, L, W] -> [B, L, W]`.
    pub fn forward(&self, x: Tensor<B, 3>, bias: &AttentionBias<B>) -> Tensor<B, 3> {
        let x = self.attn.forward_add(norm(&self.ln_1, x.clone()), bias, x);
        self.mlp.forward_add(norm(&self.ln_2, x.clone()), x)
    }

    /// The block's output at the chosen tokens only, `[N, L, W] -> [R, W]`: every token
    /// still gives a key and a value, but the queries, the output projection and the MLP run
    /// on the `rows` alone. For a last block whose other outputs nothing reads (the CLS token
    /// of a CLIP tower); equal to picking `rows` of `forward(x, bias)`. `bias` must be a key
    /// mask.
    pub fn forward_rows(
        &self,
        x: Tensor<B, 3>,
        bias: &AttentionBias<B>,
        rows: &TokenRows,
    ) -> Tensor<B, 2> {
        let h = norm(&self.ln_1, x.clone());
        let x = self.attn.forward_add_rows(h, bias, rows, rows.pick(x));
        self.mlp.forward_add(norm(&self.ln_2, x.clone()), x)
    }
}

/// `blocks` in turn over `[B, L, W]` tokens; `first_only`: the last block for the first
/// token alone (see [`EncoderBlock::forward_rows`]), giving `[B, 1, W]`.
pub(crate) fn run_blocks<B: Backend>(
    blocks: &[EncoderBlock<B>],
    mut x: Tensor<B, 3>,
    bias: &AttentionBias<B>,
    first_only: bool,
) -> Tensor<B, 3> {
    let Some((last, rest)) = blocks.split_last().filter(|_| first_only) else {
        for block in blocks {
            x = block.forward(x, bias);
        }
        return x;
    };
    for block in rest {
        x = block.forward(x, bias);
    }
    let [b, l, w] = x.dims();
    let rows = TokenRows::first(b, l);
    last.forward_rows(x, bias, &rows).reshape([b, 1, w])
}

/// Chosen tokens of a `[N, L, W]` batch: flat indices `n·L + t`, increasing, and the `N + 1`
/// offsets of each sample's share, the layout of `weft_kernels::attention_rows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRows {
    /// Flat token indices, increasing.
    pub flat: Vec<usize>,
    /// Sample `n`'s tokens are `flat[offsets[n]..offsets[n + 1]]`.
    pub offsets: Vec<usize>,
    /// Tokens per sample `L`.
    pub len: usize,
}

impl TokenRows {
    /// The increasing flat indices `flat` of `samples` samples of `len` tokens.
    ///
    /// # Panics
    /// When `flat` is not increasing or leaves the batch.
    pub fn new(flat: Vec<usize>, samples: usize, len: usize) -> Self {
        assert!(
            flat.windows(2).all(|p| p[0] < p[1]),
            "token rows must increase"
        );
        assert!(
            flat.last().is_none_or(|&i| i < samples * len),
            "token rows leave the batch of {samples} x {len}"
        );
        let mut offsets = vec![0; samples + 1];
        for &i in &flat {
            offsets[i / len + 1] += 1;
        }
        for n in 0..samples {
            offsets[n + 1] += offsets[n];
        }
        Self { flat, offsets, len }
    }

    /// The first token of each of `samples` samples.
    pub fn first(samples: usize, len: usize) -> Self {
        Self::new((0..samples).map(|n| n * len).collect(), samples, len)
    }

    /// Tokens chosen.
    pub fn count(&self) -> usize {
        self.flat.len()
    }

    /// The chosen rows `[R, W]` of `[N, L, W]` tokens.
    pub fn pick<B: Backend>(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        let [n, l, w] = x.dims();
        assert_eq!(
            l, self.len,
            "token rows of {} tokens, tensor of {l}",
            self.len
        );
        let index = weft_kernels::index_tensor::<B>(&self.flat, &x.device());
        x.reshape([n * l, w]).select(0, index)
    }
}

/// Pre-norm block with cross-attention to image tokens (ALBEF fusion / BLIP decoder layer):
/// `x += SA(LN(x)); x += CA(LN(x), image); x += MLP(LN(x))`.
#[derive(Module, Debug)]
pub struct CrossBlock<B: Backend> {
    /// Norm before self-attention.
    pub ln_1: LayerNorm<B>,
    /// Self-attention over the text (causal in the decoder).
    pub attn: SelfAttention<B>,
    /// Norm before cross-attention.
    pub ln_2: LayerNorm<B>,
    /// Cross-attention to the image tokens.
    pub cross: CrossAttention<B>,
    /// Norm before the MLP.
    pub ln_3: LayerNorm<B>,
    /// MLP.
    pub mlp: Mlp<B>,
}

impl<B: Backend> CrossBlock<B> {
    /// New block of `width` attending to a context of `context_width`.
    pub fn new(
        width: usize,
        context_width: usize,
        heads: usize,
        mlp_ratio: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            ln_1: layer_norm(width, device),
            attn: SelfAttention::new(width, heads, device),
            ln_2: layer_norm(width, device),
            cross: CrossAttention::new(width, context_width, heads, device),
            ln_3: layer_norm(width, device),
            mlp: Mlp::new(width, mlp_ratio, device),
        }
    }

    /// `[B, L, W]` with `[B, Li, W_ctx]` image tokens -> `[B, L, W]`. With `image_index`, the
    /// image tokens are `[Bi, Li, W_ctx]` and text `b` is paired with image `image_index[b]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        bias: &AttentionBias<B>,
        image: Tensor<B, 3>,
        image_index: Option<&[usize]>,
    ) -> Tensor<B, 3> {
        let x = self.attn.forward_add(norm(&self.ln_1, x.clone()), bias, x);
        let x = self
            .cross
            .forward_add(norm(&self.ln_2, x.clone()), image, image_index, x);
        self.mlp.forward_add(norm(&self.ln_3, x.clone()), x)
    }

    /// [`Self::forward`] at the chosen tokens only, `[N, L, W] -> [R, W]`: every token gives
    /// self-attention keys and values; queries, cross-attention and MLP run on the `rows`
    /// alone (the tokens the heads read: ITM's first, MLM's masked). `bias` must be a key
    /// mask.
    pub fn forward_rows(
        &self,
        x: Tensor<B, 3>,
        bias: &AttentionBias<B>,
        image: Tensor<B, 3>,
        image_index: Option<&[usize]>,
        rows: &TokenRows,
    ) -> Tensor<B, 2> {
        let h = norm(&self.ln_1, x.clone());
        let x = self.attn.forward_add_rows(h, bias, rows, rows.pick(x));
        let x = self.cross.forward_add_rows(
            norm(&self.ln_2, x.clone()),
            &rows.offsets,
            image,
            image_index,
            x,
        );
        self.mlp.forward_add(norm(&self.ln_3, x.clone()), x)
    }
}

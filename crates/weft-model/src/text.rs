//! Text towers: the bidirectional text encoder and the captioning decoder.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

use crate::block::{layer_norm, linear, AttentionBias, CrossBlock, EncoderBlock};

fn normal(std: f64) -> Initializer {
    Initializer::Normal { mean: 0.0, std }
}

/// Word embeddings `[V, W]` and learned positions `[1, L, W]`, as both text towers start.
fn init_embeddings<B: Backend>(
    vocab_size: usize,
    context_length: usize,
    width: usize,
    device: &B::Device,
) -> (Embedding<B>, Param<Tensor<B, 3>>) {
    let tokens = EmbeddingConfig::new(vocab_size, width)
        .with_initializer(normal(0.02))
        .init(device);
    let positions = normal(0.01).init([1, context_length, width], device);
    (tokens, positions)
}

/// `[B, L]` ids to `[B, L, W]` word plus position embeddings.
fn embed<B: Backend>(
    tokens: &Embedding<B>,
    positions: &Param<Tensor<B, 3>>,
    ids: Tensor<B, 2, Int>,
) -> Tensor<B, 3> {
    weft_kernels::add_positions(tokens.forward(ids), None, positions.val())
}

/// Shape of a [`TextEncoder`].
#[derive(Config, Debug)]
pub struct TextEncoderConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Tokens per caption.
    pub context_length: usize,
    /// Token width.
    pub width: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width as a multiple of `width`.
    #[config(default = 4)]
    pub mlp_ratio: usize,
}

impl TextEncoderConfig {
    /// Build the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TextEncoder<B> {
        let (token_embedding, position_embedding) =
            init_embeddings(self.vocab_size, self.context_length, self.width, device);
        TextEncoder {
            token_embedding,
            position_embedding,
            blocks: (0..self.depth)
                .map(|_| EncoderBlock::new(self.width, self.heads, self.mlp_ratio, device))
                .collect(),
            ln_final: layer_norm(self.width, device),
        }
    }
}

/// Bidirectional Transformer over token and position embeddings.
#[derive(Module, Debug)]
pub struct TextEncoder<B: Backend> {
    /// `[V, W]` word embeddings.
    pub token_embedding: Embedding<B>,
    /// `[1, L, W]` learned positions.
    pub position_embedding: Param<Tensor<B, 3>>,
    /// Pre-norm Transformer blocks.
    pub blocks: Vec<EncoderBlock<B>>,
    /// Final LayerNorm.
    pub ln_final: LayerNorm<B>,
}

impl<B: Backend> TextEncoder<B> {
    /// Encode `[B, L]` token ids; `padding` (`[B, L]`, true = pad) masks keys.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        padding: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        self.encode(ids, padding, false)
    }

    /// The first (CLS) token alone, `[B, 1, W]`: equal to `forward(..).narrow(1, 0, 1)`, with
    /// the last block computed for that row only (see [`EncoderBlock::forward_first`]).
    pub fn forward_cls(
        &self,
        ids: Tensor<B, 2, Int>,
        padding: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        self.encode(ids, padding, true)
    }

    fn encode(
        &self,
        ids: Tensor<B, 2, Int>,
        padding: Option<Tensor<B, 2, Bool>>,
        first_only: bool,
    ) -> Tensor<B, 3> {
        let bias = AttentionBias::new(padding, None, &ids.device());
        let x = embed(&self.token_embedding, &self.position_embedding, ids);
        let x = crate::block::run_blocks(&self.blocks, x, &bias, first_only);
        crate::block::norm(&self.ln_final, x)
    }
}

/// Shape of a [`TextDecoder`].
#[derive(Config, Debug)]
pub struct TextDecoderConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Tokens per caption.
    pub context_length: usize,
    /// Token width.
    pub width: usize,
    /// Width of the image tokens attended to.
    pub image_width: usize,
    /// Layers.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width as a multiple of `width`.
    #[config(default = 4)]
    pub mlp_ratio: usize,
    /// Use the word embeddings as the output layer.
    #[config(default = true)]
    pub tie_word_embeddings: bool,
}

impl TextDecoderConfig {
    /// Build the decoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TextDecoder<B> {
        let (token_embedding, position_embedding) =
            init_embeddings(self.vocab_size, self.context_length, self.width, device);
        TextDecoder {
            token_embedding,
            position_embedding,
            blocks: (0..self.depth)
                .map(|_| {
                    CrossBlock::new(
                        self.width,
                        self.image_width,
                        self.heads,
                        self.mlp_ratio,
                        device,
                    )
                })
                .collect(),
            ln_final: layer_norm(self.width, device),
            lm_head: (!self.tie_word_embeddings)
                .then(|| LinearConfig::new(self.width, self.vocab_size).init(device)),
            lm_bias: self
                .tie_word_embeddings
                .then(|| Initializer::Zeros.init([self.vocab_size], device)),
        }
    }
}

/// Captioning decoder (BLIP/CoCa style): causal self-attention, cross-attention to the image
/// tokens, MLP; then the LM head.
#[derive(Module, Debug)]
pub struct TextDecoder<B: Backend> {
    /// `[V, W]` word embeddings.
    pub token_embedding: Embedding<B>,
    /// `[1, L, W]` learned positions.
    pub position_embedding: Param<Tensor<B, 3>>,
    /// Causal cross-attention layers.
    pub blocks: Vec<CrossBlock<B>>,
    /// Final LayerNorm.
    pub ln_final: LayerNorm<B>,
    /// Untied output layer (None when tied to `token_embedding`).
    pub lm_head: Option<Linear<B>>,
    /// Output bias of the tied LM head.
    pub lm_bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> TextDecoder<B> {
    /// Next-token logits `[B, L, V]` for `[B, L]` input ids over `[B, Li, Wi]` image tokens.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        padding: Option<Tensor<B, 2, Bool>>,
        image: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let bias = AttentionBias::new(padding, Some(ids.dims()[1]), &ids.device());
        let mut x = embed(&self.token_embedding, &self.position_embedding, ids);
        for block in &self.blocks {
            x = block.forward(x, &bias, image.clone(), None);
        }
        let h = crate::block::norm(&self.ln_final, x);
        match (&self.lm_head, &self.lm_bias) {
            (Some(head), _) => linear(head, h),
            (None, bias) => {
                let [b, l, w] = h.dims();
                let weight = self.token_embedding.weight.val(); // [V, W]
                let v = weight.dims()[0];
                let mut logits = weft_kernels::matmul(h.reshape([b * l, w]), weight.transpose());
                if let Some(bias) = bias {
                    logits = logits + bias.val().unsqueeze_dim(0);
                }
                logits.reshape([b, l, v])
            }
        }
    }
}

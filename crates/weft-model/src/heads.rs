//! Output heads: ITC projections and temperature, MLM head, MIM head.

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::block::layer_norm;

/// First token (`[B, L, W] -> [B, W]`).
pub fn first_token<B: Backend>(tokens: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, _, w] = tokens.dims();
    tokens.narrow(1, 0, 1).reshape([b, w])
}

/// Rows divided by their L2 norm.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).add_scalar(1e-12).sqrt();
    x / norm
}

/// Image-text contrastive head: projections of the image and text CLS tokens into a shared
/// space, and a learnable log temperature clamped at `logit_scale_max`.
#[derive(Module, Debug)]
pub struct ItcHead<B: Backend> {
    /// `[W_image, E]`, no bias.
    pub image_projection: Linear<B>,
    /// `[W_text, E]`, no bias.
    pub text_projection: Linear<B>,
    /// `[1]` log of the logit scale (inverse temperature).
    pub logit_scale: Param<Tensor<B, 1>>,
    /// Clamp of `logit_scale`.
    pub logit_scale_max: f64,
}

impl<B: Backend> ItcHead<B> {
    /// New head.
    pub fn new(
        image_width: usize,
        text_width: usize,
        embed_dim: usize,
        logit_scale_init: f64,
        logit_scale_max: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            image_projection: LinearConfig::new(image_width, embed_dim)
                .with_bias(false)
                .init(device),
            text_projection: LinearConfig::new(text_width, embed_dim)
                .with_bias(false)
                .init(device),
            logit_scale: Initializer::Constant {
                value: logit_scale_init,
            }
            .init([1], device),
            logit_scale_max,
        }
    }

    /// L2-normalised image embeddings `[B, E]` from image tokens.
    pub fn image_embedding(&self, image_tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        l2_normalize(crate::block::head_linear(
            &self.image_projection,
            first_token(image_tokens),
        ))
    }

    /// L2-normalised text embeddings `[B, E]` from text tokens.
    pub fn text_embedding(&self, text_tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        l2_normalize(crate::block::head_linear(
            &self.text_projection,
            first_token(text_tokens),
        ))
    }

    /// `exp(min(logit_scale, max))`, shape `[1]`.
    pub fn scale(&self) -> Tensor<B, 1> {
        self.logit_scale.val().clamp_max(self.logit_scale_max).exp()
    }
}

/// BERT-style MLM head: dense, GELU, LayerNorm, then the vocabulary projection (optionally the
/// transposed word embeddings of the text encoder).
#[derive(Module, Debug)]
pub struct MlmHead<B: Backend> {
    /// `[W, W]`.
    pub dense: Linear<B>,
    /// LayerNorm after GELU.
    pub ln: LayerNorm<B>,
    /// Untied `[W, V]` output layer (None when tied).
    pub decoder: Option<Linear<B>>,
    /// Output bias of the tied layer.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> MlmHead<B> {
    /// New head of `width` over `vocab_size` tokens.
    pub fn new(width: usize, vocab_size: usize, tied: bool, device: &B::Device) -> Self {
        Self {
            dense: LinearConfig::new(width, width).init(device),
            ln: layer_norm(width, device),
            decoder: (!tied).then(|| LinearConfig::new(width, vocab_size).init(device)),
            bias: tied.then(|| Initializer::Zeros.init([vocab_size], device)),
        }
    }

    /// Logits `[N, V]` of `[N, W]` hidden states; `embedding` is the `[V, W]` word embedding
    /// matrix used when the head is tied.
    pub fn forward(&self, hidden: Tensor<B, 2>, embedding: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = crate::block::norm(
            &self.ln,
            weft_kernels::gelu(crate::block::linear(&self.dense, hidden)),
        );
        match &self.decoder {
            Some(decoder) => crate::block::linear(decoder, h),
            None => {
                let logits = weft_kernels::matmul(h, embedding.transpose());
                match &self.bias {
                    Some(b) => logits + b.val().unsqueeze_dim(0),
                    None => logits,
                }
            }
        }
    }
}

/// Masked image modelling head: the learned mask token that replaces masked patches, and a
/// linear predictor of each patch's normalised pixels.
#[derive(Module, Debug)]
pub struct MimHead<B: Backend> {
    /// `[1, 1, W]` mask token.
    pub mask_token: Param<Tensor<B, 3>>,
    /// `[W, p * p * C]`.
    pub predictor: Linear<B>,
}

impl<B: Backend> MimHead<B> {
    /// New head for patches of `patch_size` with `channels` channels.
    pub fn new(width: usize, patch_size: usize, channels: usize, device: &B::Device) -> Self {
        Self {
            mask_token: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, 1, width], device),
            predictor: LinearConfig::new(width, patch_size * patch_size * channels).init(device),
        }
    }
}

//! ALBEF-style fusion encoder: text self-attention, cross-attention to the image tokens, MLP.

use burn::module::Module;
use burn::nn::LayerNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::block::{layer_norm, AttentionBias, CrossBlock};

/// Layers that fuse text tokens with image tokens; the output at position 0 (CLS) is the pair's
/// joint representation (ITM), the others feed the MLM head.
#[derive(Module, Debug)]
pub struct FusionEncoder<B: Backend> {
    /// Cross-attention layers.
    pub blocks: Vec<CrossBlock<B>>,
    /// Final LayerNorm.
    pub ln_final: LayerNorm<B>,
}

impl<B: Backend> FusionEncoder<B> {
    /// New encoder of `width` over image tokens of `image_width`.
    pub fn new(
        width: usize,
        image_width: usize,
        depth: usize,
        heads: usize,
        mlp_ratio: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            blocks: (0..depth)
                .map(|_| CrossBlock::new(width, image_width, heads, mlp_ratio, device))
                .collect(),
            ln_final: layer_norm(width, device),
        }
    }

    /// Fuse `[B, L, W]` text tokens (keys masked by `bias`) with `[B, Li, Wi]` image tokens.
    pub fn forward(
        &self,
        text: Tensor<B, 3>,
        bias: &AttentionBias<B>,
        image: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let mut x = text;
        for block in &self.blocks {
            x = block.forward(x, bias, image.clone());
        }
        crate::block::norm(&self.ln_final, x)
    }
}

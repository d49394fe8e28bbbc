//! ALBEF-style fusion encoder: text self-attention, cross-attention to the image tokens, MLP.

use burn::module::Module;
use burn::nn::LayerNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::block::{layer_norm, AttentionBias, CrossBlock, TokenRows};

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
        self.forward_pairs(text, bias, image, None)
    }

    /// Fuse `[N, L, W]` text tokens with `[Bi, Li, Wi]` image tokens, text `n` paired with
    /// image `image_index[n]` (image `n` when `None`). The images' keys and values are
    /// projected once per image, not once per pair: ITM's re-paired negatives and the MLM
    /// pass all reuse one batch's images.
    pub fn forward_pairs(
        &self,
        text: Tensor<B, 3>,
        bias: &AttentionBias<B>,
        image: Tensor<B, 3>,
        image_index: Option<&[usize]>,
    ) -> Tensor<B, 3> {
        let mut x = text;
        for block in &self.blocks {
            x = block.forward(x, bias, image.clone(), image_index);
        }
        crate::block::norm(&self.ln_final, x)
    }

    /// [`Self::forward_pairs`] at the chosen tokens only, `[R, W]`: the last layer computes
    /// the `rows` alone (see [`CrossBlock::forward_rows`]), the ones the heads read.
    pub fn forward_rows(
        &self,
        text: Tensor<B, 3>,
        bias: &AttentionBias<B>,
        image: Tensor<B, 3>,
        image_index: Option<&[usize]>,
        rows: &TokenRows,
    ) -> Tensor<B, 2> {
        let Some((last, rest)) = self.blocks.split_last() else {
            return crate::block::norm(&self.ln_final, rows.pick(text));
        };
        let mut x = text;
        for block in rest {
            x = block.forward(x, bias, image.clone(), image_index);
        }
        let x = last.forward_rows(x, bias, image, image_index, rows);
        crate::block::norm(&self.ln_final, x)
    }
}

//! ViT image encoder: convolutional patch embedding, CLS token, learned position embedding,
//! pre-norm Transformer blocks and a final LayerNorm.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::block::{layer_norm, AttentionBias, EncoderBlock};

/// Shape of a [`VisionTransformer`].
#[derive(Config, Debug)]
pub struct VisionTransformerConfig {
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Side of a square patch; divides `image_size`.
    pub patch_size: usize,
    /// Token width.
    pub width: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width as a multiple of `width`.
    #[config(default = 4)]
    pub mlp_ratio: usize,
    /// Input channels.
    #[config(default = 3)]
    pub channels: usize,
}

impl VisionTransformerConfig {
    /// Patches along one side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Build the encoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VisionTransformer<B> {
        let p = self.patch_size;
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        VisionTransformer {
            patch_embed: Conv2dConfig::new([self.channels, self.width], [p, p])
                .with_stride([p, p])
                .init(device),
            cls_token: init.init([1, 1, self.width], device),
            position_embedding: init.init([1, 1 + self.num_patches(), self.width], device),
            blocks: (0..self.depth)
                .map(|_| EncoderBlock::new(self.width, self.heads, self.mlp_ratio, device))
                .collect(),
            ln_final: layer_norm(self.width, device),
            patch_size: p,
        }
    }
}

/// The ViT image encoder.
#[derive(Module, Debug)]
pub struct VisionTransformer<B: Backend> {
    /// `Conv2d(C, W, k = p, s = p)`.
    pub patch_embed: Conv2d<B>,
    /// `[1, 1, W]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// `[1, 1 + N, W]`.
    pub position_embedding: Param<Tensor<B, 3>>,
    /// Pre-norm Transformer blocks.
    pub blocks: Vec<EncoderBlock<B>>,
    /// Final LayerNorm.
    pub ln_final: LayerNorm<B>,
    /// Patch side in pixels.
    pub patch_size: usize,
}

impl<B: Backend> VisionTransformer<B> {
    /// Patch tokens `[B, N, W]` of `[B, C, S, S]` images (before CLS and positions).
    ///
    /// The stride-p convolution with a p×p kernel is computed as what it is, one product of the
    /// `[B·N, C·p·p]` patch matrix with the flattened `[W, C·p·p]` kernel (transposed), through
    /// weft-kernels' fused linear; the parameters stay a burn `Conv2d`. On flex this is several
    /// times faster than its convolution, whose weight gradient is itself a convolution.
    pub fn embed_patches(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = weft_kernels::patches(images, p);
        let kernel = self.patch_embed.weight.val(); // [W, C, p, p]
        let width = kernel.dims()[0];
        let kernel = kernel.reshape([width, c * p * p]).transpose();
        let bias = self.patch_embed.bias.as_ref().map(|b| b.val());
        weft_kernels::linear(patches, kernel, bias).reshape([b, gh * gw, width])
    }

    /// Encode `[B, C, S, S]` images into `[B, 1 + N, W]` tokens (CLS first).
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let patches = self.embed_patches(images);
        self.encode(patches)
    }

    /// The CLS token alone, `[B, 1, W]`: equal to `forward(images).narrow(1, 0, 1)`, with the
    /// last block computed for the CLS row only (see [`EncoderBlock::forward_first`]).
    pub fn forward_cls(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let patches = self.embed_patches(images);
        self.encode_with(patches, true)
    }

    /// Encode images whose patches marked in `mask` (`[B, N, 1]`, 1 = masked) are replaced by
    /// `mask_token` (`[1, 1, W]`) before the encoder (SimMIM-style masked image modelling).
    pub fn forward_masked(
        &self,
        images: Tensor<B, 4>,
        mask: Tensor<B, 3>,
        mask_token: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let patches = self.embed_patches(images);
        let keep = mask.clone().neg().add_scalar(1.0);
        let patches = patches * keep + mask_token * mask;
        self.encode(patches)
    }

    fn encode(&self, patches: Tensor<B, 3>) -> Tensor<B, 3> {
        self.encode_with(patches, false)
    }

    /// The encoder over patch tokens; `first_only`: the CLS output alone.
    fn encode_with(&self, patches: Tensor<B, 3>, first_only: bool) -> Tensor<B, 3> {
        let mut x = weft_kernels::add_positions(
            patches,
            Some(self.cls_token.val()),
            self.position_embedding.val(),
        );
        let bias = AttentionBias::none();
        x = crate::block::run_blocks(&self.blocks, x, &bias, first_only);
        crate::block::norm(&self.ln_final, x)
    }
}

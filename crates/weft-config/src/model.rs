//! `[model]`: the shape of the model's towers and heads.

use serde::{Deserialize, Serialize};

/// `[model]`: the shape of the model. Only the modules that the enabled objectives need are
/// built (see the `[loss]` weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Width of the shared image-text embedding space of the ITC heads.
    pub embed_dim: usize,
    /// Initial value of the learnable ITC log temperature, `ln(1/0.07)` as in CLIP.
    pub logit_scale_init: f64,
    /// Upper clamp of the log temperature, `ln(100)` as in CLIP.
    pub logit_scale_max: f64,
    /// Tie the MLM and LM output layers to their word embeddings.
    pub tie_word_embeddings: bool,
    /// Compute the last layer of an encoder only at the tokens some head reads: the CLS token
    /// of the image and text encoders when ITC is their only reader, the first token of each
    /// ITM pair and the masked tokens of MLM in the fusion encoder. Every token still gives
    /// keys and values. The same losses and gradients with fewer FLOPs (about a fifth of a
    /// 4-block CLIP tower's); `false` computes every token, as open_clip and ALBEF do.
    pub prune_unread_tokens: bool,
    /// `[model.vision]`: the ViT image encoder.
    pub vision: VisionConfig,
    /// `[model.text]`: the text encoder (and the tokenizer's context).
    pub text: TextConfig,
    /// `[model.fusion]`: the cross-attention fusion encoder (ITM, MLM).
    pub fusion: FusionConfig,
    /// `[model.decoder]`: the captioning text decoder (LM).
    pub decoder: FusionConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            embed_dim: 128,
            logit_scale_init: (1.0f64 / 0.07).ln(),
            logit_scale_max: 100f64.ln(),
            tie_word_embeddings: true,
            prune_unread_tokens: true,
            vision: VisionConfig::default(),
            text: TextConfig::default(),
            fusion: FusionConfig::default(),
            decoder: FusionConfig::default(),
        }
    }
}

/// `[model.vision]`: a ViT over `data.image_size` images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisionConfig {
    /// Side of a square patch in pixels; must divide `data.image_size`.
    pub patch_size: usize,
    /// Token width.
    pub width: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// Hidden width of the MLPs as a multiple of `width`.
    pub mlp_ratio: usize,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            patch_size: 8,
            width: 192,
            depth: 4,
            heads: 3,
            mlp_ratio: 4,
        }
    }
}

/// `[model.text]`: the bidirectional text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// Tokens per caption after truncation and padding (special tokens included).
    pub context_length: usize,
    /// Vocabulary size; 0 takes it from the tokenizer.
    pub vocab_size: usize,
    /// Token width.
    pub width: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// Hidden width of the MLPs as a multiple of `width`.
    pub mlp_ratio: usize,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            context_length: 32,
            vocab_size: 0,
            width: 192,
            depth: 4,
            heads: 3,
            mlp_ratio: 4,
        }
    }
}

/// `[model.fusion]` and `[model.decoder]`: text layers with cross-attention to the image
/// tokens, at the text encoder's width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    /// Layers (self-attention, cross-attention, MLP).
    pub depth: usize,
    /// Attention heads; must divide `model.text.width`.
    pub heads: usize,
    /// Hidden width of the MLPs as a multiple of the width.
    pub mlp_ratio: usize,
}

impl Default for FusionConfig {
    fn default() -> Self {
        Self {
            depth: 2,
            heads: 3,
            mlp_ratio: 4,
        }
    }
}

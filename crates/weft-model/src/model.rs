//! The vision-language model: the modules that the enabled objectives need, nothing else.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

use crate::fusion::FusionEncoder;
use crate::heads::{ItcHead, MimHead, MlmHead};
use crate::text::{TextDecoder, TextDecoderConfig, TextEncoder, TextEncoderConfig};
use crate::vision::{VisionTransformer, VisionTransformerConfig};

/// Which objectives are on; decides which modules exist.
#[derive(Config, Debug, Copy, PartialEq)]
pub struct Objectives {
    /// Image-text contrastive.
    pub itc: bool,
    /// Image-text matching.
    pub itm: bool,
    /// Masked language modelling.
    pub mlm: bool,
    /// Captioning language modelling.
    pub lm: bool,
    /// Masked image modelling.
    pub mim: bool,
}

impl Objectives {
    /// The text encoder is needed.
    pub fn text_encoder(&self) -> bool {
        self.itc || self.itm || self.mlm
    }
    /// The ITC head is needed (ITM samples its hard negatives from ITC similarities).
    pub fn itc_head(&self) -> bool {
        self.itc || self.itm
    }
    /// The fusion encoder is needed.
    pub fn fusion(&self) -> bool {
        self.itm || self.mlm
    }
}

/// Shape of a [`VlModel`].
#[derive(Config, Debug)]
pub struct VlModelConfig {
    /// The image encoder.
    pub vision: VisionTransformerConfig,
    /// The text encoder (its vocabulary and context also shape the decoder).
    pub text: TextEncoderConfig,
    /// Fusion layers.
    pub fusion_depth: usize,
    /// Fusion heads.
    pub fusion_heads: usize,
    /// Fusion MLP ratio.
    pub fusion_mlp_ratio: usize,
    /// Decoder layers.
    pub decoder_depth: usize,
    /// Decoder heads.
    pub decoder_heads: usize,
    /// Decoder MLP ratio.
    pub decoder_mlp_ratio: usize,
    /// ITC embedding width.
    pub embed_dim: usize,
    /// Initial log logit scale.
    pub logit_scale_init: f64,
    /// Clamp of the log logit scale.
    pub logit_scale_max: f64,
    /// Tie MLM/LM output layers to the word embeddings.
    pub tie_word_embeddings: bool,
    /// Enabled objectives.
    pub objectives: Objectives,
    /// Compute the last layer of each encoder only at the tokens a head reads (see
    /// [`crate::block::EncoderBlock::forward_rows`] and [`crate::block::CrossBlock::forward_rows`]).
    #[config(default = true)]
    pub prune_unread_tokens: bool,
}

impl VlModelConfig {
    /// The vocabulary of a weft config: `model.text.vocab_size`, or the tokenizer's when that
    /// is 0.
    pub fn vocab_size(config: &weft_config::Config, tokenizer_vocab: usize) -> usize {
        match config.model.text.vocab_size {
            0 => tokenizer_vocab,
            set => set,
        }
    }

    /// The model config of a weft config, with the vocabulary of [`Self::vocab_size`].
    pub fn from_weft(config: &weft_config::Config, tokenizer_vocab: usize) -> Self {
        let m = &config.model;
        let l = &config.loss;
        let vocab = Self::vocab_size(config, tokenizer_vocab);
        Self {
            vision: VisionTransformerConfig::new(
                config.data.image_size,
                m.vision.patch_size,
                m.vision.width,
                m.vision.depth,
                m.vision.heads,
            )
            .with_mlp_ratio(m.vision.mlp_ratio),
            text: TextEncoderConfig::new(
                vocab,
                m.text.context_length,
                m.text.width,
                m.text.depth,
                m.text.heads,
            )
            .with_mlp_ratio(m.text.mlp_ratio),
            fusion_depth: m.fusion.depth,
            fusion_heads: m.fusion.heads,
            fusion_mlp_ratio: m.fusion.mlp_ratio,
            decoder_depth: m.decoder.depth,
            decoder_heads: m.decoder.heads,
            decoder_mlp_ratio: m.decoder.mlp_ratio,
            embed_dim: m.embed_dim,
            logit_scale_init: m.logit_scale_init,
            logit_scale_max: m.logit_scale_max,
            tie_word_embeddings: m.tie_word_embeddings,
            objectives: Objectives {
                itc: l.itc > 0.0,
                itm: l.itm > 0.0,
                mlm: l.mlm > 0.0,
                lm: l.lm > 0.0,
                mim: l.mim > 0.0,
            },
            prune_unread_tokens: m.prune_unread_tokens,
        }
    }

    /// Build the model with the modules the objectives need.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VlModel<B> {
        let o = self.objectives;
        let vw = self.vision.width;
        let tw = self.text.width;
        let vocab = self.text.vocab_size;
        VlModel {
            vision: self.vision.init(device),
            text: o.text_encoder().then(|| self.text.init(device)),
            itc: o.itc_head().then(|| {
                ItcHead::new(
                    vw,
                    tw,
                    self.embed_dim,
                    self.logit_scale_init,
                    self.logit_scale_max,
                    device,
                )
            }),
            fusion: o.fusion().then(|| {
                FusionEncoder::new(
                    tw,
                    vw,
                    self.fusion_depth,
                    self.fusion_heads,
                    self.fusion_mlp_ratio,
                    device,
                )
            }),
            itm: o.itm.then(|| LinearConfig::new(tw, 2).init(device)),
            mlm: o
                .mlm
                .then(|| MlmHead::new(tw, vocab, self.tie_word_embeddings, device)),
            decoder: o.lm.then(|| {
                TextDecoderConfig::new(
                    vocab,
                    self.text.context_length,
                    tw,
                    vw,
                    self.decoder_depth,
                    self.decoder_heads,
                )
                .with_mlp_ratio(self.decoder_mlp_ratio)
                .with_tie_word_embeddings(self.tie_word_embeddings)
                .init(device)
            }),
            mim: o
                .mim
                .then(|| MimHead::new(vw, self.vision.patch_size, self.vision.channels, device)),
            prune_unread_tokens: self.prune_unread_tokens,
        }
    }
}

/// A vision-language model for ITC / ITM / MLM / LM / MIM pretraining.
///
/// Module paths (and so safetensors names) are `vision.*`, `text.*`, `itc.*`, `fusion.*`,
/// `itm.*`, `mlm.*`, `decoder.*`, `mim.*`; absent modules are simply not there.
#[derive(Module, Debug)]
pub struct VlModel<B: Backend> {
    /// ViT image encoder.
    pub vision: VisionTransformer<B>,
    /// Text encoder (ITC, ITM, MLM).
    pub text: Option<TextEncoder<B>>,
    /// ITC projections and temperature (ITC, ITM).
    pub itc: Option<ItcHead<B>>,
    /// Fusion encoder (ITM, MLM).
    pub fusion: Option<FusionEncoder<B>>,
    /// ITM classifier on the fused CLS token.
    pub itm: Option<Linear<B>>,
    /// MLM head.
    pub mlm: Option<MlmHead<B>>,
    /// Captioning decoder with its LM head.
    pub decoder: Option<TextDecoder<B>>,
    /// MIM mask token and pixel predictor.
    pub mim: Option<MimHead<B>>,
    /// See [`VlModelConfig::prune_unread_tokens`]; not a parameter.
    pub prune_unread_tokens: bool,
}

impl<B: Backend> VlModel<B> {
    /// Parameter count of each module that exists, in module order.
    pub fn param_counts(&self) -> Vec<(&'static str, usize)> {
        let mut out = vec![("vision", self.vision.num_params())];
        let mut add = |name, n: Option<usize>| {
            if let Some(n) = n {
                out.push((name, n));
            }
        };
        add("text", self.text.as_ref().map(|m| m.num_params()));
        add("itc", self.itc.as_ref().map(|m| m.num_params()));
        add("fusion", self.fusion.as_ref().map(|m| m.num_params()));
        add("itm", self.itm.as_ref().map(|m| m.num_params()));
        add("mlm", self.mlm.as_ref().map(|m| m.num_params()));
        add("decoder", self.decoder.as_ref().map(|m| m.num_params()));
        add("mim", self.mim.as_ref().map(|m| m.num_params()));
        out
    }

    /// Whether retrieval embeddings (the ITC head) exist.
    pub fn has_embeddings(&self) -> bool {
        self.text.is_some() && self.itc.is_some()
    }

    /// L2-normalised image embeddings `[B, E]`; None without an ITC head.
    pub fn image_embedding(&self, images: Tensor<B, 4>) -> Option<Tensor<B, 2>> {
        let itc = self.itc.as_ref()?;
        Some(itc.image_embedding(self.image_cls(images)))
    }

    /// L2-normalised text embeddings `[B, E]`; None without a text encoder and ITC head.
    pub fn text_embedding(
        &self,
        ids: Tensor<B, 2, Int>,
        padding: Option<Tensor<B, 2, Bool>>,
    ) -> Option<Tensor<B, 2>> {
        let (text, itc) = (self.text.as_ref()?, self.itc.as_ref()?);
        Some(itc.text_embedding(self.text_cls(text, ids, padding)))
    }

    /// Whether the ITM head (and the fusion encoder it reads) exists.
    pub fn has_itm(&self) -> bool {
        self.itm.is_some() && self.fusion.is_some()
    }

    /// Every output token of the image encoder, `[B, N, W]`.
    pub fn image_tokens(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        self.vision.forward(images)
    }

    /// Every output token of the text encoder, `[B, L, W]`; None without a text encoder.
    pub fn text_tokens(
        &self,
        ids: Tensor<B, 2, Int>,
        padding: Option<Tensor<B, 2, Bool>>,
    ) -> Option<Tensor<B, 3>> {
        Some(self.text.as_ref()?.forward(ids, padding))
    }

    /// ITM scores of image-text pairs: pair `p` fuses text `text_index[p]` of `text_tokens`
    /// (`[T, L, W]`, `padding` `[T, L]`, true = pad) with image `image_index[p]` of
    /// `image_tokens` (`[I, N, W]`); its score is the log-odds of "match", the head's logit of
    /// the matching class minus the other's. `[P]`; None without an ITM head.
    pub fn itm_scores(
        &self,
        image_tokens: Tensor<B, 3>,
        text_tokens: Tensor<B, 3>,
        padding: Tensor<B, 2, Bool>,
        text_index: &[usize],
        image_index: &[usize],
    ) -> Option<Tensor<B, 1>> {
        let (fusion, head) = (self.fusion.as_ref()?, self.itm.as_ref()?);
        assert_eq!(
            text_index.len(),
            image_index.len(),
            "itm_scores: one image per text"
        );
        let device = text_tokens.device();
        let [_, _, w] = text_tokens.dims();
        let p = text_index.len();
        let rows = weft_kernels::index_tensor::<B>(text_index, &device);
        let bias =
            crate::block::AttentionBias::new(Some(padding), None, &device).select(rows.clone());
        let fused = fusion.forward_pairs(
            text_tokens.select(0, rows),
            &bias,
            image_tokens,
            Some(image_index),
        );
        let logits = crate::block::head_linear(head, fused.narrow(1, 0, 1).reshape([p, w]));
        Some((logits.clone().narrow(1, 1, 1) - logits.narrow(1, 0, 1)).reshape([p]))
    }

    /// The image encoder's CLS output `[B, 1, W]` (see [`VlModelConfig::prune_unread_tokens`]).
    pub(crate) fn image_cls(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        if self.prune_unread_tokens {
            self.vision.forward_cls(images)
        } else {
            self.vision.forward(images).narrow(1, 0, 1)
        }
    }

    /// The text encoder's CLS output `[B, 1, W]` (see [`VlModelConfig::prune_unread_tokens`]).
    pub(crate) fn text_cls(
        &self,
        text: &TextEncoder<B>,
        ids: Tensor<B, 2, Int>,
        padding: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        if self.prune_unread_tokens {
            text.forward_cls(ids, padding)
        } else {
            text.forward(ids, padding).narrow(1, 0, 1)
        }
    }
}

//! Pretraining objectives and their weighted sum.
//!
//! Every objective is a pure function of tensors (plus host-side sampling with a caller-owned
//! RNG, so that a seed fixes every mask and negative); [`VlModel::losses`] wires them to the
//! model's modules.

pub mod ce;
pub mod itc;
pub mod itm;
pub mod lm;
pub mod mim;
pub mod mlm;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::Rng;
use weft_config::LossConfig;

use crate::block::{linear, AttentionBias, TokenRows};
use crate::model::VlModel;

pub use ce::cross_entropy;
pub use itc::{itc_loss, itc_loss_global, FeatureGather};
pub use itm::{sample_hard_negatives, HardNegatives};
pub use lm::{shift_for_lm, LmInputs};
pub use mim::{mim_loss, patch_mask, patch_targets};
pub use mlm::{mask_tokens, MlmMask};

/// The special token ids the objectives use.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecialTokens {
    /// `[MASK]`, the MLM replacement.
    pub mask: u32,
    /// `[BOS]`, the first decoder input.
    pub bos: u32,
    /// Every special id (never masked, never drawn as a random MLM replacement).
    pub all: Vec<u32>,
}

/// One batch as the objectives see it: images on the device, token ids on the host.
#[derive(Debug, Clone)]
pub struct ObjectiveBatch<B: Backend> {
    /// `[B, C, S, S]` normalised images.
    pub images: Tensor<B, 4>,
    /// `[B, L]` token ids, row-major.
    pub ids: Vec<u32>,
    /// `[B, L]` 1 = token, 0 = padding.
    pub attention_mask: Vec<u32>,
    /// Tokens per caption `L`.
    pub len: usize,
}

impl<B: Backend> ObjectiveBatch<B> {
    /// Rows in the batch.
    pub fn batch_size(&self) -> usize {
        self.images.dims()[0]
    }

    /// The ids as a `[B, L]` tensor.
    pub fn ids_tensor(&self) -> Tensor<B, 2, Int> {
        ints(
            &self.ids,
            self.batch_size(),
            self.len,
            &self.images.device(),
        )
    }

    /// The padding (true = pad) as a `[B, L]` tensor.
    pub fn padding_tensor(&self) -> Tensor<B, 2, Bool> {
        let pad: Vec<bool> = self.attention_mask.iter().map(|&m| m == 0).collect();
        bools(pad, self.batch_size(), self.len, &self.images.device())
    }

    fn same_caption(&self, i: usize, j: usize) -> bool {
        let l = self.len;
        self.ids[i * l..(i + 1) * l] == self.ids[j * l..(j + 1) * l]
    }
}

pub(crate) fn ints<B: Backend>(
    v: &[u32],
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = v.iter().map(|&x| i64::from(x)).collect();
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

fn bools<B: Backend>(
    v: Vec<bool>,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

/// Text sequences for the fusion encoder, each paired with one of the batch's images.
struct Pairs<B: Backend> {
    /// `[N, L, W]` text tokens.
    text: Tensor<B, 3>,
    /// Their key padding.
    bias: AttentionBias<B>,
    /// The image of each sequence.
    image_index: Vec<usize>,
}

impl<B: Backend> Pairs<B> {
    fn cat(parts: Vec<Self>) -> Self {
        if parts.len() == 1 {
            return parts.into_iter().next().expect("one part");
        }
        let mut text = Vec::new();
        let mut bias = Vec::new();
        let mut image_index = Vec::new();
        for p in parts {
            text.push(p.text);
            bias.push(p.bias);
            image_index.extend(p.image_index);
        }
        Self {
            text: Tensor::cat(text, 0),
            bias: AttentionBias::cat(bias),
            image_index,
        }
    }
}

/// The losses of one batch: the weighted total and every enabled component on its own.
#[derive(Debug, Clone)]
pub struct LossOutput<B: Backend> {
    /// `Σ weight · component`, `[1]`.
    pub total: Tensor<B, 1>,
    /// `(name, unweighted loss)` of each enabled objective, in the order itc, itm, mlm, lm, mim.
    pub parts: Vec<(&'static str, Tensor<B, 1>)>,
}

impl<B: Backend> VlModel<B> {
    /// Forward every objective whose weight is non-zero on one batch.
    ///
    /// `rng` draws the MLM masks, the ITM hard negatives and the MIM masks, in that order.
    ///
    /// # Panics
    /// When an objective has a weight but its module was not built (the model and the weights
    /// must come from the same config).
    pub fn losses<R: Rng>(
        &self,
        batch: &ObjectiveBatch<B>,
        w: &LossConfig,
        special: &SpecialTokens,
        rng: &mut R,
    ) -> LossOutput<B> {
        self.losses_with(batch, w, special, rng, None)
    }

    /// [`Self::losses`] on one rank of a data-parallel job: with `gather`, ITC takes the
    /// negatives of the global batch ([`itc_loss_global`]); ITM, MLM, LM and MIM stay local.
    pub fn losses_with<R: Rng>(
        &self,
        batch: &ObjectiveBatch<B>,
        w: &LossConfig,
        special: &SpecialTokens,
        rng: &mut R,
        gather: Option<&mut dyn FeatureGather>,
    ) -> LossOutput<B> {
        let device = batch.images.device();
        let b = batch.batch_size();
        let l = batch.len;
        let needs_text = w.itc > 0.0 || w.itm > 0.0 || w.mlm > 0.0;
        // Every image token: cross-attention reads them (ITM, MLM, LM); every text token: ITM
        // fuses them. With ITC alone only the CLS tokens are read.
        let needs_image_tokens = w.itm > 0.0 || w.mlm > 0.0 || w.lm > 0.0;
        let needs_text_tokens = w.itm > 0.0;
        let mut parts = Vec::new();

        let image_tokens = needs_image_tokens.then(|| self.vision.forward(batch.images.clone()));
        let padding = batch.padding_tensor();
        let text_bias = AttentionBias::new(Some(padding.clone()), None, &device);
        let text = needs_text.then(|| {
            self.text
                .as_ref()
                .expect("text encoder is built when loss.itc, itm or mlm > 0")
        });
        let text_tokens = text
            .filter(|_| needs_text_tokens)
            .map(|t| t.forward(batch.ids_tensor(), Some(padding.clone())));

        // MLM masks are drawn first so that the RNG stream does not depend on the ITC values.
        let mlm_mask = (w.mlm > 0.0).then(|| {
            let vocab = text.expect("text encoder").token_embedding.weight.dims()[0];
            mask_tokens(
                &batch.ids,
                &batch.attention_mask,
                vocab,
                &special.all,
                special.mask,
                w.mlm_probability,
                rng,
            )
        });

        let mut itm_pairs = None;
        if w.itc > 0.0 || w.itm > 0.0 {
            let itc = self
                .itc
                .as_ref()
                .expect("ITC head is built when loss.itc or itm > 0");
            let image_cls = match &image_tokens {
                Some(tokens) => tokens.clone(),
                None => self.image_cls(batch.images.clone()),
            };
            let text_cls = match &text_tokens {
                Some(tokens) => tokens.clone(),
                None => self.text_cls(
                    text.expect("text encoder"),
                    batch.ids_tensor(),
                    Some(padding.clone()),
                ),
            };
            let (image_emb, text_emb) =
                (itc.image_embedding(image_cls), itc.text_embedding(text_cls));
            let (loss, logits) = match gather {
                Some(g) => {
                    itc_loss_global(image_emb, text_emb, itc.scale(), w.itc_label_smoothing, g)
                }
                None => itc_loss(image_emb, text_emb, itc.scale(), w.itc_label_smoothing),
            };
            if w.itc > 0.0 {
                parts.push(("itc", loss));
            }
            if w.itm > 0.0 && b >= 2 {
                let host: Vec<f32> = logits
                    .detach()
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .expect("f32 logits");
                let neg = sample_hard_negatives(&host, b, |i, j| batch.same_caption(i, j), rng);
                let text_tokens = text_tokens.clone().expect("text tokens");
                let neg_text =
                    weft_kernels::reference::index_tensor::<B>(&neg.text_for_image, &device);
                // 3B pairs: (text i, image i), (text i, its negative image), (image i's
                // negative text, image i).
                let text_all = Tensor::cat(
                    vec![
                        text_tokens.clone(),
                        text_tokens.clone(),
                        text_tokens.select(0, neg_text.clone()),
                    ],
                    0,
                );
                let bias_all = AttentionBias::cat(vec![
                    text_bias.clone(),
                    text_bias.clone(),
                    text_bias.select(neg_text),
                ]);
                let image_index = (0..b)
                    .chain(neg.image_for_text.iter().copied())
                    .chain(0..b)
                    .collect();
                itm_pairs = Some(Pairs {
                    text: text_all,
                    bias: bias_all,
                    image_index,
                });
            }
        }

        let mlm = mlm_mask.filter(|m| !m.positions.is_empty()).map(|mask| {
            let masked = ints::<B>(&mask.input_ids, b, l, &device);
            let h = text
                .expect("text encoder")
                .forward(masked, Some(padding.clone()));
            let pairs = Pairs {
                text: h,
                bias: text_bias.clone(),
                image_index: (0..b).collect(),
            };
            (pairs, mask)
        });

        // ITM's pairs and MLM's masked captions go through the fusion encoder in one pass
        // over the batch's image tokens, each image projected to keys and values once.
        let (mlm_pairs, mlm_mask) = match mlm {
            Some((pairs, mask)) => (Some(pairs), Some(mask)),
            None => (None, None),
        };
        let fusion_pairs: Vec<Pairs<B>> = itm_pairs.into_iter().chain(mlm_pairs).collect();
        let mut fused = if fusion_pairs.is_empty() {
            None
        } else {
            let fusion = self
                .fusion
                .as_ref()
                .expect("fusion is built when loss.itm or mlm > 0");
            let pairs = Pairs::cat(fusion_pairs);
            // The tokens the heads read: the first of each ITM pair, the masked ones of MLM.
            let mut flat: Vec<usize> = Vec::new();
            let itm_rows = if w.itm > 0.0 && b >= 2 {
                flat.extend((0..3 * b).map(|n| n * l));
                3 * b
            } else {
                0
            };
            if let Some(mask) = &mlm_mask {
                flat.extend(mask.positions.iter().map(|p| itm_rows * l + p));
            }
            let rows = TokenRows::new(flat, pairs.image_index.len(), l);
            let image = image_tokens.clone().expect("image tokens");
            let out = if self.prune_unread_tokens {
                fusion.forward_rows(
                    pairs.text,
                    &pairs.bias,
                    image,
                    Some(&pairs.image_index),
                    &rows,
                )
            } else {
                let all =
                    fusion.forward_pairs(pairs.text, &pairs.bias, image, Some(&pairs.image_index));
                rows.pick(all)
            };
            Some((out, itm_rows, rows.count()))
        };

        if w.itm > 0.0 && b >= 2 {
            let head = self
                .itm
                .as_ref()
                .expect("ITM head is built when loss.itm > 0");
            let (fused, n, _) = fused.as_ref().expect("the ITM pairs");
            let logits = head.forward(fused.clone().narrow(0, 0, *n));
            let targets: Vec<usize> = (0..3 * b).map(|i| usize::from(i < b)).collect();
            parts.push(("itm", cross_entropy(logits, &targets, None, 0.0)));
        }

        if let Some(mask) = mlm_mask {
            let text = text.expect("text encoder");
            let head = self
                .mlm
                .as_ref()
                .expect("MLM head is built when loss.mlm > 0");
            let (fused, start, end) = fused.take().expect("the MLM pairs");
            let picked = fused.narrow(0, start, end - start);
            let logits = head.forward(picked, text.token_embedding.weight.val());
            parts.push(("mlm", cross_entropy(logits, &mask.targets, None, 0.0)));
        }

        if w.lm > 0.0 {
            let decoder = self
                .decoder
                .as_ref()
                .expect("decoder is built when loss.lm > 0");
            let lm = shift_for_lm(&batch.ids, &batch.attention_mask, l, special.bos);
            let inputs = ints::<B>(&lm.input_ids, b, lm.len, &device);
            let pad = bools::<B>(lm.padding.clone(), b, lm.len, &device);
            let logits = decoder.forward(
                inputs,
                Some(pad),
                image_tokens.clone().expect("image tokens"),
            );
            let vocab = logits.dims()[2];
            let logits = logits.reshape([b * lm.len, vocab]);
            parts.push((
                "lm",
                cross_entropy(logits, &lm.targets, Some(&lm.weights), 0.0),
            ));
        }

        if w.mim > 0.0 {
            let mim = self
                .mim
                .as_ref()
                .expect("MIM head is built when loss.mim > 0");
            let patch = self.vision.patch_size;
            let [_, _, s, _] = batch.images.dims();
            let n = (s / patch) * (s / patch);
            let mask = patch_mask(b, n, w.mim_mask_ratio, rng);
            let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, n]), &device);
            let tokens = self.vision.forward_masked(
                batch.images.clone(),
                mask.clone().reshape([b, n, 1]),
                mim.mask_token.val(),
            );
            let prediction = linear(&mim.predictor, tokens.narrow(1, 1, n));
            let target = patch_targets(batch.images.clone().detach(), patch);
            parts.push(("mim", mim_loss(prediction, target, mask)));
        }

        let weight = |name: &str| match name {
            "itc" => w.itc,
            "itm" => w.itm,
            "mlm" => w.mlm,
            "lm" => w.lm,
            _ => w.mim,
        };
        let total = parts
            .iter()
            .map(|(name, loss)| loss.clone().mul_scalar(weight(name)))
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([1], &device));
        LossOutput { total, parts }
    }
}

//! Pretraining objectives and their weighted sum.
//!
//! Every objective is a pure function of tensors (plus host-side sampling with a caller-owned
//! RNG, so that a seed fixes every mask and negative); [`VlModel::losses`] wires them to the
//! model's modules, as open_clip's `loss.py` does: the features every objective reads are
//! gathered once ([`features`]), then each objective's file gives its term (`itc_term`,
//! `itm_term`, `mlm_term`, `lm_term`, `mim_term`), and the weighted sum takes a few lines.
//! ITM's pairs and MLM's masked captions share one pass of the fusion encoder
//! ([`fusion_pass`]).
//!
//! - [`itc`]: symmetric InfoNCE, over the global batch in a job ([`FeatureGather`]);
//! - [`itm`]: hard negatives from ITC's similarities and the match / no-match loss;
//! - [`mlm`]: BERT's masking and the masked-token loss;
//! - [`lm`]: teacher-forced captioning;
//! - [`mim`]: patch masks, normalised pixel targets and the masked MSE;
//! - [`ce`]: the cross-entropy they share; [`sampling`]: one generator per sample and purpose.

pub mod batch;
pub mod ce;
pub(crate) mod features;
pub(crate) mod fusion_pass;
pub mod itc;
pub mod itm;
pub mod lm;
pub mod mim;
pub mod mlm;
pub mod sampling;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::Rng;
use weft_config::LossConfig;

use crate::model::VlModel;
use features::{Rows, Targets};

pub use batch::ObjectiveBatch;
pub use ce::cross_entropy;
pub use itc::{itc_loss, itc_loss_global, itc_loss_of_rows, FeatureGather};
pub use itm::{sample_hard_negatives, HardNegatives};
pub use lm::{shift_for_lm, LmInputs};
pub use mim::{masked_patches, mim_loss, mim_loss_counted, patch_mask, patch_targets};
pub use mlm::{mask_tokens, MlmMask};
pub use sampling::{Purpose, Sampling};

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

/// The losses of one batch: the weighted total and every enabled component on its own.
#[derive(Debug, Clone)]
pub struct LossOutput<B: Backend> {
    /// `Σ weight · component`, `[1]`. On a rank of a data-parallel job with an [`Exchange`], the
    /// part of it whose backward pass runs first.
    pub total: Tensor<B, 1>,
    /// `(name, unweighted loss)` of each enabled objective, in the order itc, itm, mlm, lm, mim.
    pub parts: Vec<(&'static str, Tensor<B, 1>)>,
    /// On a rank of a data-parallel job whose objectives read other ranks' tokens (ITM's
    /// negatives): the second backward pass.
    pub exchange: Option<Exchange<B>>,
}

/// The second half of a data-parallel rank's backward pass. ITM pairs a rank's text with
/// another rank's image (and the reverse), so the fusion encoder reads every rank's encoder
/// tokens. They enter [`LossOutput::total`] as constants (`global` leaves); after its backward
/// pass the trainer sums their gradients over the ranks ([`FeatureGather::all_reduce_sum`]),
/// takes this rank's rows and runs the backward pass of
/// `rest + Σ ⟨local tokens, their summed gradient⟩` through the encoders
/// ([`Exchange::backward_loss`]).
#[derive(Debug, Clone)]
pub struct Exchange<B: Backend> {
    /// The losses that read the encoders directly (ITC, MIM), weighted.
    pub rest: Tensor<B, 1>,
    /// `(local tokens with their graph, the global batch's tokens as a leaf)`.
    pub tokens: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
    /// This rank's first row in the global batch.
    pub first_row: usize,
}

impl<B: AutodiffBackend> Exchange<B> {
    /// The loss of the second backward pass, given the gradients of the first (`grads`): each
    /// leaf's gradient summed over the ranks with `gather`, this rank's rows paired with the
    /// local tokens.
    pub fn backward_loss(
        self,
        grads: &B::Gradients,
        gather: &mut dyn FeatureGather,
    ) -> Tensor<B, 1> {
        let mut loss = self.rest;
        for (local, leaf) in self.tokens {
            let [b, l, w] = local.dims();
            let device = local.device();
            let mut g: Vec<f32> = match leaf.grad(grads) {
                Some(t) => t
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .expect("f32 gradient"),
                None => vec![0.0; leaf.dims().iter().product()],
            };
            gather.all_reduce_sum(&mut g);
            let at = self.first_row * l * w;
            let mine = g[at..at + b * l * w].to_vec();
            let mine = Tensor::<B, 3>::from_data(TensorData::new(mine, [b, l, w]), &device);
            loss = loss + (local * mine).sum();
        }
        loss
    }
}

impl<B: AutodiffBackend> VlModel<B> {
    /// Forward every objective whose weight is non-zero on one batch.
    ///
    /// `rng` gives the batch's seed; each sample's MLM mask, ITM negatives and MIM mask come from
    /// generators of its own ([`Sampling`]).
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

    /// [`Self::losses`] on one rank of a data-parallel job, whose batch is rows
    /// `rank · b .. (rank + 1) · b` of the global batch (every rank draws the same `rng`):
    /// ITC takes the negatives of the global batch ([`itc_loss_global`]), ITM draws its hard
    /// negatives from the global batch's similarities and pairs texts and images of any rank
    /// (the [`Exchange`] carries their gradients back), MLM and LM are normalised by the
    /// global token counts. The mean of the ranks' gradients is the one-process gradient of
    /// the global batch.
    pub fn losses_with<R: Rng>(
        &self,
        batch: &ObjectiveBatch<B>,
        w: &LossConfig,
        special: &SpecialTokens,
        rng: &mut R,
        gather: Option<&mut (dyn FeatureGather + '_)>,
    ) -> LossOutput<B> {
        let mut gather = gather.filter(|g| g.world_size() > 1);
        let f = self.features(batch, w, rng, gather.as_deref_mut());
        let targets = Targets::draw(&f, batch, w, special);
        let rows = Rows::exchange(&f, &targets, gather.as_deref_mut());
        let mut parts = Vec::new();
        let mut itm_pairs = None;
        if w.itc > 0.0 || w.itm > 0.0 {
            let (itc, logits) = self.itc_term(&f, batch, &rows, w, gather);
            if w.itc > 0.0 {
                parts.push(("itc", itc));
            }
            if f.itm_on {
                itm_pairs = Some(self.itm_pairs(&f, &rows, logits));
            }
        }
        let mlm_mask = targets
            .mlm_mask
            .as_ref()
            .filter(|m| !m.positions.is_empty());
        let mlm_pairs = mlm_mask.map(|mask| self.mlm_pairs(&f, mask));
        let fused = self.fuse(&f, itm_pairs, mlm_pairs, mlm_mask);
        if f.itm_on {
            let fused = fused.as_ref().expect("the ITM pairs");
            parts.push(("itm", self.itm_term(&f, &rows, &targets.local_pad, fused)));
        }
        if let Some(mask) = mlm_mask {
            let fused = fused.expect("the MLM pairs");
            parts.push(("mlm", self.mlm_term(&f, &rows, mask, fused)));
        }
        if let Some(lm) = &targets.lm {
            parts.push(("lm", self.lm_term(&f, &rows, lm)));
        }
        if w.mim > 0.0 {
            parts.push((
                "mim",
                self.mim_term(&f, batch, &rows, &targets.local_pad, w),
            ));
        }
        if !f.exchange {
            let total = weighted_sum(&parts, w, &|_| true, &f.device);
            return LossOutput {
                total,
                parts,
                exchange: None,
            };
        }
        // ITC and MIM read the encoders directly: they run in the second backward pass.
        let direct = |name: &str| name == "itc" || name == "mim";
        let rest = weighted_sum(&parts, w, &direct, &f.device);
        let total = weighted_sum(&parts, w, &|name| !direct(name), &f.device);
        LossOutput {
            total,
            parts,
            exchange: Some(Exchange {
                rest,
                tokens: f.leaves,
                first_row: f.rank * f.b,
            }),
        }
    }
}

/// `Σ weight · loss` of the `parts` that `keep` names (a `[1]` zero when none).
fn weighted_sum<B: Backend>(
    parts: &[(&'static str, Tensor<B, 1>)],
    w: &LossConfig,
    keep: &dyn Fn(&str) -> bool,
    device: &B::Device,
) -> Tensor<B, 1> {
    let weight = |name: &str| match name {
        "itc" => w.itc,
        "itm" => w.itm,
        "mlm" => w.mlm,
        "lm" => w.lm,
        _ => w.mim,
    };
    parts
        .iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, loss)| loss.clone().mul_scalar(weight(name)))
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| Tensor::zeros([1], device))
}

/// `loss · factor` (a no-op for 1).
pub(crate) fn scaled<B: Backend>(loss: Tensor<B, 1>, factor: f64) -> Tensor<B, 1> {
    if factor == 1.0 {
        loss
    } else {
        loss.mul_scalar(factor)
    }
}

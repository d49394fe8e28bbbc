//! Masked image modelling: random patch masks, per-patch normalised pixel targets (MAE's
//! `norm_pix_loss`) and the masked mean squared error.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::seq::index::sample;
use weft_config::LossConfig;

use super::features::{Features, Rows};
use super::sampling::{Purpose, Sampling};
use super::{scaled, ObjectiveBatch};
use crate::block::linear;
use crate::model::VlModel;

/// A `[B, N]` mask (1 = masked) with exactly `max(1, round(ratio * N))` masked patches per
/// image, each image's from its own generator ([`Sampling`]).
pub fn patch_mask(b: usize, n: usize, ratio: f64, sampling: &Sampling) -> Vec<f32> {
    let k = masked_patches(n, ratio);
    let mut mask = vec![0.0f32; b * n];
    for row in 0..b {
        for j in sample(&mut sampling.rng(Purpose::Mim, row), n, k) {
            mask[row * n + j] = 1.0;
        }
    }
    mask
}

/// Patches masked per image of `n` at `ratio`: `max(1, round(ratio · n))`.
pub fn masked_patches(n: usize, ratio: f64) -> usize {
    ((ratio * n as f64).round() as usize).clamp(1, n)
}

/// `[B, C, S, S]` images as `[B, N, p·p·C]` patches (row-major patches, pixels in (y, x, c)
/// order), each normalised to zero mean and unit variance.
pub fn patch_targets<B: Backend>(images: Tensor<B, 4>, patch: usize) -> Tensor<B, 3> {
    let [b, c, h, w] = images.dims();
    let (gh, gw) = (h / patch, w / patch);
    let x: Tensor<B, 6> = images.reshape([b, c, gh, patch, gw, patch]);
    let x = x.permute([0, 2, 4, 3, 5, 1]); // [B, gh, gw, p, p, C]
    let x: Tensor<B, 3> = x.reshape([b, gh * gw, patch * patch * c]);
    let mean = x.clone().mean_dim(2);
    let centered = x - mean;
    let var = centered.clone().square().mean_dim(2);
    centered / var.add_scalar(1e-6).sqrt()
}

/// Mean over masked patches of the per-patch mean squared error. `mask` is `[B, N]`, 1 = masked.
pub fn mim_loss<B: Backend>(
    prediction: Tensor<B, 3>,
    target: Tensor<B, 3>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let masked = mask.clone().sum();
    masked_error_sum(prediction, target, mask) / masked
}

/// Sum over masked patches of the per-patch mean squared error.
fn masked_error_sum<B: Backend>(
    prediction: Tensor<B, 3>,
    target: Tensor<B, 3>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [b, n, _] = prediction.dims();
    let per_patch: Tensor<B, 2> = (prediction - target).square().mean_dim(2).reshape([b, n]);
    (per_patch * mask).sum()
}

/// [`mim_loss`] with the masked count given (`masked`, the sum of `mask`): 0 when nothing is
/// masked (a batch of padding only).
pub fn mim_loss_counted<B: Backend>(
    prediction: Tensor<B, 3>,
    target: Tensor<B, 3>,
    mask: Tensor<B, 2>,
    masked: usize,
) -> Tensor<B, 1> {
    let sum = masked_error_sum(prediction, target, mask);
    if masked == 0 {
        sum.mul_scalar(0.0)
    } else {
        sum.div_scalar(masked as f64)
    }
}

impl<B: AutodiffBackend> VlModel<B> {
    /// MIM's term: the image encoder over the masked patches, the predictor's pixels of each
    /// masked patch against its normalised pixels. Padding's patches are predicted but not
    /// scored.
    pub(crate) fn mim_term(
        &self,
        f: &Features<'_, B>,
        batch: &ObjectiveBatch<B>,
        rows: &Rows,
        local_pad: &[bool],
        w: &LossConfig,
    ) -> Tensor<B, 1> {
        let b = f.b;
        let mim = self
            .mim
            .as_ref()
            .expect("MIM head is built when loss.mim > 0");
        let patch = self.vision.patch_size;
        let [_, _, s, _] = batch.images.dims();
        let n = (s / patch) * (s / patch);
        let mask = patch_mask(b, n, w.mim_mask_ratio, &f.sampling);
        let scored: Vec<f32> = mask
            .iter()
            .enumerate()
            .map(|(i, &m)| if local_pad[i / n] { 0.0 } else { m })
            .collect();
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, n]), &f.device);
        let tokens = self.vision.forward_masked(
            batch.images.clone(),
            mask.clone().reshape([b, n, 1]),
            mim.mask_token.val(),
        );
        let prediction = linear(&mim.predictor, tokens.narrow(1, 1, n));
        let target = patch_targets(batch.images.clone().detach(), patch);
        if !rows.padded {
            return mim_loss(prediction, target, mask);
        }
        let scored_n = scored.iter().filter(|&&m| m > 0.0).count();
        let all = masked_patches(n, w.mim_mask_ratio) * rows.real.len();
        let scored = Tensor::<B, 2>::from_data(TensorData::new(scored, [b, n]), &f.device);
        let loss = mim_loss_counted(prediction, target, scored, scored_n);
        scaled(loss, rows.scale(scored_n as f32, all as f32))
    }
}

//! What the objectives of one batch read, gathered once before any of them runs: the
//! encoders' tokens ([`Features`]), where the global batch's tokens come from on a
//! data-parallel rank ([`Sources`]), the MLM and LM targets ([`Targets`]) and which rows of the
//! global batch weigh ([`Rows`]).
//!
//! The order of the forward operations here is the order of the graph's nodes, and with it the
//! order in which the backward pass adds up the gradients of shared tensors: it is kept as it
//! is so that the losses and gradients stay the same to the last bit.

use std::borrow::Cow;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Tensor, TensorData};
use rand::Rng;
use weft_config::LossConfig;

use super::batch::bools;
use super::itc::FeatureGather;
use super::lm::{shift_for_lm, LmInputs};
use super::mlm::{mask_tokens, MlmMask};
use super::sampling::Sampling;
use super::{ObjectiveBatch, SpecialTokens};
use crate::block::AttentionBias;
use crate::model::VlModel;
use crate::text::TextEncoder;

/// The global batch's rows of `local` (`[b, …]`, the same shape on every rank) as one leaf that
/// requires a gradient.
fn gathered_leaf<B: AutodiffBackend>(
    local: &Tensor<B, 3>,
    gather: &mut dyn FeatureGather,
) -> Tensor<B, 3> {
    let [b, l, w] = local.dims();
    let host: Vec<f32> = local
        .clone()
        .detach()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 tokens");
    let all = gather.all_gather(&host);
    let n = gather.world_size() * b;
    Tensor::<B, 3>::from_data(TensorData::new(all, [n, l, w]), &local.device()).require_grad()
}

/// Every rank's `local` ids (exact as f32 below 2^24).
fn gathered_ids(local: &[u32], gather: &mut dyn FeatureGather) -> Vec<u32> {
    let host: Vec<f32> = local.iter().map(|&x| x as f32).collect();
    gather
        .all_gather(&host)
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// Where the objectives read the encoders' tokens: this process's own (one process), or the
/// global batch's as leaves (a data-parallel rank with ITM).
pub(crate) struct Sources<B: Backend> {
    /// `[g, Li, W]` image tokens of the global batch (or this batch when `g == b`).
    pub image: Option<Tensor<B, 3>>,
    /// `[g, Lt, W]` text tokens.
    pub text: Option<Tensor<B, 3>>,
    /// Key padding of `text`'s rows.
    pub text_bias: AttentionBias<B>,
    /// Token ids of the global batch, row-major.
    pub ids: Vec<u32>,
    /// Rows of the global batch.
    pub g: usize,
    /// This batch's first row in it.
    pub first: usize,
}

/// The encoders' outputs of one batch and where the objectives read them.
pub(crate) struct Features<'m, B: AutodiffBackend> {
    /// Rows `b` of this batch, tokens `l` per caption.
    pub b: usize,
    /// Tokens per caption.
    pub l: usize,
    /// The batch's device.
    pub device: B::Device,
    /// This process's place in the job: rank, ranks.
    pub rank: usize,
    /// Ranks in the job (1 alone).
    pub world: usize,
    /// The batch's draws, at this rank's rows of the global batch.
    pub sampling: Sampling,
    /// The text encoder, when an objective reads text.
    pub text: Option<&'m TextEncoder<B>>,
    /// Every image token (ITM, MLM and LM read them).
    pub image_tokens: Option<Tensor<B, 3>>,
    /// Every text token (ITM fuses them).
    pub text_tokens: Option<Tensor<B, 3>>,
    /// The captions' padding, `[b, l]`.
    pub padding: Tensor<B, 2, Bool>,
    /// The captions' key padding.
    pub text_bias: AttentionBias<B>,
    /// Where the objectives read the tokens of the global batch.
    pub sources: Sources<B>,
    /// `(local tokens with their graph, the global batch's tokens as a leaf)`, when this rank
    /// exchanges tokens with the others ([`super::Exchange`]).
    pub leaves: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
    /// ITM runs (it has a weight, and a global batch of two rows or more).
    pub itm_on: bool,
    /// This rank reads every rank's tokens as leaves (ITM in a job).
    pub exchange: bool,
}

impl<B: AutodiffBackend> VlModel<B> {
    /// Run the encoders whose tokens the enabled objectives read, and on a data-parallel rank
    /// with ITM gather every rank's tokens and ids once.
    pub(crate) fn features<R: Rng>(
        &self,
        batch: &ObjectiveBatch<B>,
        w: &LossConfig,
        rng: &mut R,
        gather: Option<&mut (dyn FeatureGather + '_)>,
    ) -> Features<'_, B> {
        let device = batch.images.device();
        let b = batch.batch_size();
        let l = batch.len;
        let (rank, world) = gather
            .as_ref()
            .map_or((0, 1), |g| (g.rank(), g.world_size()));
        let sampling = Sampling::from_rng(rng).at_row(rank * b);
        let g = world * b;
        let needs_text = w.itc > 0.0 || w.itm > 0.0 || w.mlm > 0.0;
        // Every image token: cross-attention reads them (ITM, MLM, LM); every text token: ITM
        // fuses them. With ITC alone only the CLS tokens are read.
        let needs_image_tokens = w.itm > 0.0 || w.mlm > 0.0 || w.lm > 0.0;
        let needs_text_tokens = w.itm > 0.0;
        let itm_on = w.itm > 0.0 && g >= 2;

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

        // A rank with ITM reads every rank's tokens as leaves; otherwise its own.
        let exchange = itm_on && gather.is_some();
        let mut leaves = Vec::new();
        let sources = if exchange {
            let gth = gather.expect("gather");
            let image = image_tokens.as_ref().map(|t| {
                let leaf = gathered_leaf(t, gth);
                leaves.push((t.clone(), leaf.clone()));
                leaf
            });
            let txt = text_tokens.as_ref().map(|t| {
                let leaf = gathered_leaf(t, gth);
                leaves.push((t.clone(), leaf.clone()));
                leaf
            });
            let ids = gathered_ids(&batch.ids, gth);
            let mask = gathered_ids(&batch.attention_mask, gth);
            let pad: Vec<bool> = mask.iter().map(|&m| m == 0).collect();
            let bias = AttentionBias::new(Some(bools::<B>(pad, g, l, &device)), None, &device);
            Sources {
                image,
                text: txt,
                text_bias: bias,
                ids,
                g,
                first: rank * b,
            }
        } else {
            Sources {
                image: image_tokens.clone(),
                text: text_tokens.clone(),
                text_bias: text_bias.clone(),
                ids: batch.ids.clone(),
                g: b,
                first: 0,
            }
        };
        Features {
            b,
            l,
            device,
            rank,
            world,
            sampling,
            text,
            image_tokens,
            text_tokens,
            padding,
            text_bias,
            sources,
            leaves,
            itm_on,
            exchange,
        }
    }
}

/// What MLM and LM predict, drawn on the host: padding rows are no MLM candidate and no LM
/// target.
pub(crate) struct Targets {
    /// Per local row: padding.
    pub local_pad: Vec<bool>,
    /// The MLM mask (MLM on).
    pub mlm_mask: Option<MlmMask>,
    /// The LM inputs and targets (LM on).
    pub lm: Option<LmInputs>,
}

impl Targets {
    /// The targets of `batch`. MLM masks are drawn first; their global count normalises the
    /// loss.
    pub fn draw<B: AutodiffBackend>(
        f: &Features<'_, B>,
        batch: &ObjectiveBatch<B>,
        w: &LossConfig,
        special: &SpecialTokens,
    ) -> Self {
        let (b, l) = (f.b, f.l);
        let local_pad: Vec<bool> = (0..b).map(|i| batch.pad(i)).collect();
        let any_local_pad = local_pad.contains(&true);
        let candidates: Cow<'_, [u32]> = if any_local_pad {
            let tokens = batch.attention_mask.iter().enumerate();
            Cow::Owned(
                tokens
                    .map(|(i, &m)| if local_pad[i / l] { 0 } else { m })
                    .collect(),
            )
        } else {
            Cow::Borrowed(&batch.attention_mask)
        };
        let mlm_mask = (w.mlm > 0.0).then(|| {
            let vocab = f.text.expect("text encoder").token_embedding.weight.dims()[0];
            mask_tokens(
                &batch.ids,
                &candidates,
                l,
                vocab,
                &special.all,
                special.mask,
                w.mlm_probability,
                &f.sampling,
            )
        });
        let lm = (w.lm > 0.0).then(|| {
            let mut lm = shift_for_lm(&batch.ids, &batch.attention_mask, l, special.bos);
            for (t, weight) in lm.weights.iter_mut().enumerate() {
                if local_pad[t / lm.len] {
                    *weight = 0.0;
                }
            }
            lm
        });
        Self {
            local_pad,
            mlm_mask,
            lm,
        }
    }
}

/// Which rows of the global batch weigh, and the factors that turn this rank's token-level
/// means into its share of the global batch's.
pub(crate) struct Rows {
    /// The global batch's rows that weigh: all of them but padding.
    pub real: Vec<usize>,
    /// Some row of the global batch is padding.
    pub padded: bool,
    /// Ranks in the job.
    world: usize,
    /// This rank's MLM mean times its share of the global masked tokens.
    pub mlm_scale: f64,
    /// This rank's LM mean times its share of the global target tokens.
    pub lm_scale: f64,
}

impl Rows {
    /// In a job: which rows of the global batch are padding, and the global token counts
    /// (one all-gather). Token-level means over the global batch are this rank's sum over the
    /// global count, times the ranks (the trainer averages the ranks).
    pub fn exchange<B: AutodiffBackend>(
        f: &Features<'_, B>,
        targets: &Targets,
        gather: Option<&mut (dyn FeatureGather + '_)>,
    ) -> Self {
        let b = f.b;
        let g = f.world * b;
        let counts = [
            targets
                .mlm_mask
                .as_ref()
                .map_or(0.0, |m| m.positions.len() as f32),
            targets
                .lm
                .as_ref()
                .map_or(0.0, |x| x.weights.iter().sum::<f32>()),
        ];
        let (global_pad, global_counts) = match gather {
            Some(gth) => {
                let mut mine: Vec<f32> = targets
                    .local_pad
                    .iter()
                    .map(|&p| f32::from(u8::from(p)))
                    .collect();
                mine.extend(counts);
                let all = gth.all_gather(&mine);
                let mut pad = Vec::with_capacity(g);
                let mut sums = [0.0f32; 2];
                for part in all.chunks(b + 2) {
                    pad.extend(part[..b].iter().map(|&x| x > 0.5));
                    sums[0] += part[b];
                    sums[1] += part[b + 1];
                }
                (pad, sums)
            }
            None => (targets.local_pad.clone(), counts),
        };
        let real: Vec<usize> = (0..g).filter(|&i| !global_pad[i]).collect();
        let mut rows = Self {
            padded: real.len() < g,
            real,
            world: f.world,
            mlm_scale: 1.0,
            lm_scale: 1.0,
        };
        rows.mlm_scale = rows.scale(counts[0], global_counts[0]);
        rows.lm_scale = rows.scale(counts[1], global_counts[1]);
        rows
    }

    /// This rank's share `mine` of a global count `all`, times the ranks (1 when nothing
    /// counts anywhere).
    pub fn scale(&self, mine: f32, all: f32) -> f64 {
        if all > 0.0 {
            f64::from(mine) * self.world as f64 / f64::from(all)
        } else {
            1.0
        }
    }
}

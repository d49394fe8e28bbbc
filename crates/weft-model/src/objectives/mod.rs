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
pub mod sampling;

use std::borrow::Cow;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::Rng;
use weft_config::LossConfig;

use crate::block::{linear, AttentionBias, TokenRows};
use crate::model::VlModel;

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
    /// `[B]` rows that only fill the batch (copies of rows of the epoch, `Batch::is_pad`): they
    /// run through the model, so that every rank of a job runs one batch size, but weigh
    /// nothing in any loss and are no ITC or ITM negative. Empty: no row is padding.
    pub is_pad: Vec<bool>,
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

    /// Whether row `i` is padding ([`Self::is_pad`]).
    pub fn pad(&self, i: usize) -> bool {
        self.is_pad.get(i).copied().unwrap_or(false)
    }

    /// The padding (true = pad) as a `[B, L]` tensor.
    pub fn padding_tensor(&self) -> Tensor<B, 2, Bool> {
        let pad: Vec<bool> = self.attention_mask.iter().map(|&m| m == 0).collect();
        bools(pad, self.batch_size(), self.len, &self.images.device())
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
struct Sources<B: Backend> {
    /// `[g, Li, W]` image tokens of the global batch (or this batch when `g == b`).
    image: Option<Tensor<B, 3>>,
    /// `[g, Lt, W]` text tokens.
    text: Option<Tensor<B, 3>>,
    /// Key padding of `text`'s rows.
    text_bias: AttentionBias<B>,
    /// Token ids of the global batch, row-major.
    ids: Vec<u32>,
    /// Rows of the global batch.
    g: usize,
    /// This batch's first row in it.
    first: usize,
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

        // A rank with ITM reads every rank's tokens as leaves; otherwise its own.
        let exchange = itm_on && gather.is_some();
        let mut leaves = Vec::new();
        let sources = if exchange {
            let gth = gather.as_deref_mut().expect("gather");
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

        // Padding rows: no MLM candidate, no LM target.
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
        // MLM masks are drawn first; their global count normalises the loss.
        let mlm_mask = (w.mlm > 0.0).then(|| {
            let vocab = text.expect("text encoder").token_embedding.weight.dims()[0];
            mask_tokens(
                &batch.ids,
                &candidates,
                l,
                vocab,
                &special.all,
                special.mask,
                w.mlm_probability,
                &sampling,
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
        // In a job: which rows of the global batch are padding, and the global token counts.
        // Token-level means over the global batch are this rank's sum over the global count,
        // times the ranks (the trainer averages the ranks).
        let counts = [
            mlm_mask.as_ref().map_or(0.0, |m| m.positions.len() as f32),
            lm.as_ref().map_or(0.0, |x| x.weights.iter().sum::<f32>()),
        ];
        let (global_pad, global_counts) = match gather.as_deref_mut() {
            Some(gth) => {
                let mut mine: Vec<f32> =
                    local_pad.iter().map(|&p| f32::from(u8::from(p))).collect();
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
            None => (local_pad.clone(), counts),
        };
        let scale = |mine: f32, all: f32| {
            if all > 0.0 {
                f64::from(mine) * world as f64 / f64::from(all)
            } else {
                1.0
            }
        };
        let (mlm_scale, lm_scale) = (
            scale(counts[0], global_counts[0]),
            scale(counts[1], global_counts[1]),
        );
        // The global batch's rows that weigh: all of them but padding.
        let real: Vec<usize> = (0..g).filter(|&i| !global_pad[i]).collect();
        let padded = real.len() < g;

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
            let rows = padded.then_some(&real[..]);
            let (loss, logits) = match gather {
                // A global batch of padding only: nothing to contrast (no collective either,
                // every rank knows it).
                _ if real.is_empty() => (
                    (image_emb.sum() + text_emb.sum()).mul_scalar(0.0),
                    Tensor::zeros([0, 0], &device),
                ),
                Some(gth) => itc_loss_global(
                    image_emb,
                    text_emb,
                    itc.scale(),
                    w.itc_label_smoothing,
                    gth,
                    rows,
                ),
                None => itc_loss_of_rows(
                    image_emb,
                    text_emb,
                    itc.scale(),
                    w.itc_label_smoothing,
                    rows,
                ),
            };
            if w.itc > 0.0 {
                parts.push(("itc", loss));
            }
            if itm_on {
                let host: Vec<f32> = logits
                    .detach()
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .expect("f32 logits");
                // The real rows' logits in their places; padding is no negative.
                let host = if padded {
                    let r = real.len();
                    let mut all = vec![f32::NEG_INFINITY; g * g];
                    for (x, &i) in real.iter().enumerate() {
                        for (y, &j) in real.iter().enumerate() {
                            all[i * g + j] = host[x * r + y];
                        }
                    }
                    all
                } else {
                    host
                };
                let gl = sources.g;
                let same = |i: usize, j: usize| {
                    sources.ids[i * l..(i + 1) * l] == sources.ids[j * l..(j + 1) * l]
                };
                let neg = sample_hard_negatives(&host, gl, b, same, &sampling);
                let own: Vec<usize> = (sources.first..sources.first + b).collect();
                // 3b pairs: (text i, image i), (text i, its negative image), (image i's
                // negative text, image i).
                let text_rows: Vec<usize> = own
                    .iter()
                    .chain(&own)
                    .chain(&neg.text_for_image)
                    .copied()
                    .collect();
                let rows = weft_kernels::index_tensor::<B>(&text_rows, &device);
                let text_src = sources.text.clone().expect("text tokens");
                let bias_src = sources.text_bias.clone();
                let image_index = own
                    .iter()
                    .chain(&neg.image_for_text)
                    .chain(&own)
                    .copied()
                    .collect();
                itm_pairs = Some(Pairs {
                    text: text_src.select(0, rows.clone()),
                    bias: bias_src.select(rows),
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
                image_index: (sources.first..sources.first + b).collect(),
            };
            (pairs, mask)
        });

        // ITM's pairs and MLM's masked captions go through the fusion encoder in one pass
        // over the image tokens, each image projected to keys and values once.
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
            let itm_rows = if itm_on {
                flat.extend((0..3 * b).map(|n| n * l));
                3 * b
            } else {
                0
            };
            if let Some(mask) = &mlm_mask {
                flat.extend(mask.positions.iter().map(|p| itm_rows * l + p));
            }
            let rows = TokenRows::new(flat, pairs.image_index.len(), l);
            let image = sources.image.clone().expect("image tokens");
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

        if itm_on {
            let head = self
                .itm
                .as_ref()
                .expect("ITM head is built when loss.itm > 0");
            let (fused, n, _) = fused.as_ref().expect("the ITM pairs");
            let logits = crate::block::head_linear(head, fused.clone().narrow(0, 0, *n));
            let targets: Vec<usize> = (0..3 * b).map(|i| usize::from(i < b)).collect();
            let loss = if padded {
                // The three pairs of a real row weigh 1 (its negatives are real rows), those of
                // padding 0; normalised by the global batch's pairs.
                let weigh = real.len() >= 2;
                let weights: Vec<f32> = (0..3 * b)
                    .map(|k| f32::from(u8::from(weigh && !local_pad[k % b])))
                    .collect();
                let mine: f32 = weights.iter().sum();
                let all = if weigh { 3.0 * real.len() as f32 } else { 0.0 };
                let loss = cross_entropy(logits, &targets, Some(&weights), 0.0);
                // With no pair weighing anywhere the loss is 0 already.
                scaled(loss, scale(mine, all))
            } else {
                cross_entropy(logits, &targets, None, 0.0)
            };
            parts.push(("itm", loss));
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
            let loss = cross_entropy(logits, &mask.targets, None, 0.0);
            parts.push(("mlm", scaled(loss, mlm_scale)));
        }

        if let Some(lm) = lm {
            let decoder = self
                .decoder
                .as_ref()
                .expect("decoder is built when loss.lm > 0");
            let inputs = ints::<B>(&lm.input_ids, b, lm.len, &device);
            let pad = bools::<B>(lm.padding.clone(), b, lm.len, &device);
            let image = sources.image.clone().expect("image tokens");
            let image = if sources.g == b {
                image
            } else {
                image.narrow(0, sources.first, b)
            };
            let logits = decoder.forward(inputs, Some(pad), image);
            let vocab = logits.dims()[2];
            let logits = logits.reshape([b * lm.len, vocab]);
            let loss = cross_entropy(logits, &lm.targets, Some(&lm.weights), 0.0);
            parts.push(("lm", scaled(loss, lm_scale)));
        }

        if w.mim > 0.0 {
            let mim = self
                .mim
                .as_ref()
                .expect("MIM head is built when loss.mim > 0");
            let patch = self.vision.patch_size;
            let [_, _, s, _] = batch.images.dims();
            let n = (s / patch) * (s / patch);
            let mask = patch_mask(b, n, w.mim_mask_ratio, &sampling);
            // Padding's patches are predicted but not scored.
            let scored: Vec<f32> = mask
                .iter()
                .enumerate()
                .map(|(i, &m)| if local_pad[i / n] { 0.0 } else { m })
                .collect();
            let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, n]), &device);
            let tokens = self.vision.forward_masked(
                batch.images.clone(),
                mask.clone().reshape([b, n, 1]),
                mim.mask_token.val(),
            );
            let prediction = linear(&mim.predictor, tokens.narrow(1, 1, n));
            let target = patch_targets(batch.images.clone().detach(), patch);
            let loss = if padded {
                let scored_n = scored.iter().filter(|&&m| m > 0.0).count();
                let all = masked_patches(n, w.mim_mask_ratio) * real.len();
                let scored = Tensor::<B, 2>::from_data(TensorData::new(scored, [b, n]), &device);
                let loss = mim_loss_counted(prediction, target, scored, scored_n);
                scaled(loss, scale(scored_n as f32, all as f32))
            } else {
                mim_loss(prediction, target, mask)
            };
            parts.push(("mim", loss));
        }

        let weight = |name: &str| match name {
            "itc" => w.itc,
            "itm" => w.itm,
            "mlm" => w.mlm,
            "lm" => w.lm,
            _ => w.mim,
        };
        let sum = |keep: &dyn Fn(&str) -> bool| {
            parts
                .iter()
                .filter(|(name, _)| keep(name))
                .map(|(name, loss)| loss.clone().mul_scalar(weight(name)))
                .reduce(|a, b| a + b)
                .unwrap_or_else(|| Tensor::zeros([1], &device))
        };
        if exchange {
            // ITC and MIM read the encoders directly: they run in the second backward pass.
            let direct = |name: &str| name == "itc" || name == "mim";
            let rest = sum(&direct);
            let total = sum(&|name: &str| !direct(name));
            LossOutput {
                total,
                parts,
                exchange: Some(Exchange {
                    rest,
                    tokens: leaves,
                    first_row: rank * b,
                }),
            }
        } else {
            LossOutput {
                total: sum(&|_: &str| true),
                parts,
                exchange: None,
            }
        }
    }
}

/// `loss · factor` (a no-op for 1).
fn scaled<B: Backend>(loss: Tensor<B, 1>, factor: f64) -> Tensor<B, 1> {
    if factor == 1.0 {
        loss
    } else {
        loss.mul_scalar(factor)
    }
}

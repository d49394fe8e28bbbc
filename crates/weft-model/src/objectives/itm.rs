//! Image-text matching hard negatives (ALBEF): for every text one negative image and for every
//! image one negative text, drawn from the softmax of the ITC similarities with the positives
//! masked out.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use rand::Rng;

use super::ce::cross_entropy;
use super::features::{Features, Rows};
use super::fusion_pass::{Fused, Pairs};
use super::sampling::{Purpose, Sampling};
use super::scaled;
use crate::model::VlModel;

/// Hard negatives of this process's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardNegatives {
    /// For local text `i`, the global index of its negative image.
    pub image_for_text: Vec<usize>,
    /// For local image `i`, the global index of its negative text.
    pub text_for_image: Vec<usize>,
}

/// Draw hard negatives for the `b` local rows of a global batch of `g` from the `[g, g]`
/// image-to-text `logits` of the global batch (row-major, `logits[i * g + j]` = image i with
/// text j). `positive(i, j)` says whether global image i and global text j are a positive pair;
/// the diagonal always is. Positives get probability 0; a row whose candidates are all positive
/// falls back to the next index that is not the diagonal. Each row draws from its own generator
/// ([`Sampling`]), so that the draws do not depend on how the global batch is split. Needs
/// `g >= 2`.
pub fn sample_hard_negatives(
    logits: &[f32],
    g: usize,
    b: usize,
    positive: impl Fn(usize, usize) -> bool,
    sampling: &Sampling,
) -> HardNegatives {
    assert!(g >= 2, "hard negatives need a batch of at least 2");
    assert_eq!(logits.len(), g * g);
    // Text i: a distribution over images j (column i of the logits).
    let image_for_text = (0..b)
        .map(|row| {
            let i = sampling.global_row(row);
            let scores: Vec<f64> = (0..g).map(|j| f64::from(logits[j * g + i])).collect();
            let mut rng = sampling.rng(Purpose::ItmImageForText, row);
            draw(&scores, |j| j == i || positive(j, i), i, g, &mut rng)
        })
        .collect();
    // Image i: a distribution over texts j (row i).
    let text_for_image = (0..b)
        .map(|row| {
            let i = sampling.global_row(row);
            let scores: Vec<f64> = (0..g).map(|j| f64::from(logits[i * g + j])).collect();
            let mut rng = sampling.rng(Purpose::ItmTextForImage, row);
            draw(&scores, |j| j == i || positive(i, j), i, g, &mut rng)
        })
        .collect();
    HardNegatives {
        image_for_text,
        text_for_image,
    }
}

fn draw<R: Rng>(
    scores: &[f64],
    excluded: impl Fn(usize) -> bool,
    own: usize,
    b: usize,
    rng: &mut R,
) -> usize {
    let max = scores
        .iter()
        .enumerate()
        .filter(|(j, s)| !excluded(*j) && s.is_finite())
        .map(|(_, s)| *s)
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores
        .iter()
        .enumerate()
        .map(|(j, s)| {
            if excluded(j) || !s.is_finite() {
                0.0
            } else {
                (s - max).exp()
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return (own + 1) % b;
    }
    let mut u = rng.random::<f64>() * total;
    let mut last = None;
    for (j, w) in weights.iter().enumerate() {
        if *w > 0.0 {
            last = Some(j);
            if u < *w {
                return j;
            }
            u -= w;
        }
    }
    last.unwrap_or((own + 1) % b)
}

impl<B: AutodiffBackend> VlModel<B> {
    /// ITM's `3b` pairs for the fusion encoder, from ITC's image-to-text `logits`: (text i,
    /// image i), (text i, its negative image), (image i's negative text, image i).
    pub(crate) fn itm_pairs(
        &self,
        f: &Features<'_, B>,
        rows: &Rows,
        logits: Tensor<B, 2>,
    ) -> Pairs<B> {
        let (b, l) = (f.b, f.l);
        let g = f.world * b;
        let sources = &f.sources;
        let host: Vec<f32> = logits
            .detach()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 logits");
        // The real rows' logits in their places; padding is no negative.
        let host = if rows.padded {
            let real = &rows.real;
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
        let same =
            |i: usize, j: usize| sources.ids[i * l..(i + 1) * l] == sources.ids[j * l..(j + 1) * l];
        let neg = sample_hard_negatives(&host, sources.g, b, same, &f.sampling);
        let own: Vec<usize> = (sources.first..sources.first + b).collect();
        let text_rows: Vec<usize> = own
            .iter()
            .chain(&own)
            .chain(&neg.text_for_image)
            .copied()
            .collect();
        let index = weft_kernels::index_tensor::<B>(&text_rows, &f.device);
        let text_src = sources.text.clone().expect("text tokens");
        let bias_src = sources.text_bias.clone();
        let image_index = own
            .iter()
            .chain(&neg.image_for_text)
            .chain(&own)
            .copied()
            .collect();
        Pairs {
            text: text_src.select(0, index.clone()),
            bias: bias_src.select(index),
            image_index,
        }
    }

    /// ITM's term from the fused first tokens of its pairs: cross-entropy of match / no match.
    /// With padding in the global batch, the three pairs of a real row weigh 1 (its negatives
    /// are real rows), those of padding 0, normalised by the global batch's pairs.
    pub(crate) fn itm_term(
        &self,
        f: &Features<'_, B>,
        rows: &Rows,
        local_pad: &[bool],
        fused: &Fused<B>,
    ) -> Tensor<B, 1> {
        let b = f.b;
        let head = self
            .itm
            .as_ref()
            .expect("ITM head is built when loss.itm > 0");
        let logits =
            crate::block::head_linear(head, fused.tokens.clone().narrow(0, 0, fused.itm_rows));
        let targets: Vec<usize> = (0..3 * b).map(|i| usize::from(i < b)).collect();
        if !rows.padded {
            return cross_entropy(logits, &targets, None, 0.0);
        }
        let weigh = rows.real.len() >= 2;
        let weights: Vec<f32> = (0..3 * b)
            .map(|k| f32::from(u8::from(weigh && !local_pad[k % b])))
            .collect();
        let mine: f32 = weights.iter().sum();
        let all = if weigh {
            3.0 * rows.real.len() as f32
        } else {
            0.0
        };
        let loss = cross_entropy(logits, &targets, Some(&weights), 0.0);
        // With no pair weighing anywhere the loss is 0 already.
        scaled(loss, rows.scale(mine, all))
    }
}

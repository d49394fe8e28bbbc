//! Masked language modelling inputs: BERT's 15% with 80/10/10 replacement.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::batch::ints;
use super::ce::cross_entropy;
use super::features::{Features, Rows};
use super::fusion_pass::{Fused, Pairs};
use super::sampling::{Purpose, Sampling};
use super::scaled;
use crate::model::VlModel;

/// Masked inputs and their targets for a `[B, L]` batch.
#[derive(Debug, Clone, PartialEq)]
pub struct MlmMask {
    /// Input ids with the chosen tokens replaced.
    pub input_ids: Vec<u32>,
    /// Flat positions (`b * L + t`) that are predicted.
    pub positions: Vec<usize>,
    /// Original token at each predicted position.
    pub targets: Vec<usize>,
}

/// Choose each real, non-special token with probability `probability`; of the chosen, 80% become
/// `mask_id`, 10% a random non-special token and 10% stay. Every row of `len` tokens draws from
/// its own generator ([`Sampling`]). At least one token of the batch is chosen when there is any
/// candidate.
#[allow(clippy::too_many_arguments)] // BERT's knobs, each a plain value
pub fn mask_tokens(
    ids: &[u32],
    attention_mask: &[u32],
    len: usize,
    vocab_size: usize,
    special: &[u32],
    mask_id: u32,
    probability: f64,
    sampling: &Sampling,
) -> MlmMask {
    assert!(
        len > 0 && ids.len().is_multiple_of(len),
        "ids must be rows of {len}"
    );
    let regular: Vec<u32> = (0..vocab_size as u32)
        .filter(|t| !special.contains(t))
        .collect();
    let is_candidate = |i: usize| attention_mask[i] != 0 && !special.contains(&ids[i]);
    let mut input_ids = ids.to_vec();
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let replace = |pos: usize, rng: &mut ChaCha8Rng, input_ids: &mut Vec<u32>| {
        let r = rng.random::<f64>();
        if r < 0.8 {
            input_ids[pos] = mask_id;
        } else if r < 0.9 && !regular.is_empty() {
            input_ids[pos] = regular[rng.random_range(0..regular.len())];
        }
        (pos, ids[pos] as usize)
    };
    for row in 0..ids.len() / len {
        let mut rng = sampling.rng(Purpose::Mlm, row);
        let chosen: Vec<usize> = (row * len..(row + 1) * len)
            .filter(|&i| is_candidate(i))
            .filter(|_| rng.random::<f64>() < probability)
            .collect();
        for pos in chosen {
            let (p, t) = replace(pos, &mut rng, &mut input_ids);
            positions.push(p);
            targets.push(t);
        }
    }
    if positions.is_empty() {
        let candidates: Vec<usize> = (0..ids.len()).filter(|&i| is_candidate(i)).collect();
        if !candidates.is_empty() {
            // Row 0's generator, past what it drew for the row itself.
            let mut rng = sampling.rng(Purpose::Mlm, 0);
            rng.set_word_pos(1 << 20);
            let pos = candidates[rng.random_range(0..candidates.len())];
            let (p, t) = replace(pos, &mut rng, &mut input_ids);
            positions.push(p);
            targets.push(t);
        }
    }
    MlmMask {
        input_ids,
        positions,
        targets,
    }
}

impl<B: AutodiffBackend> VlModel<B> {
    /// MLM's masked captions through the text encoder, each paired with its own image for the
    /// fusion encoder.
    pub(crate) fn mlm_pairs(&self, f: &Features<'_, B>, mask: &MlmMask) -> Pairs<B> {
        let masked = ints::<B>(&mask.input_ids, f.b, f.l, &f.device);
        let h = f
            .text
            .expect("text encoder")
            .forward(masked, Some(f.padding.clone()));
        Pairs {
            text: h,
            bias: f.text_bias.clone(),
            image_index: (f.sources.first..f.sources.first + f.b).collect(),
        }
    }

    /// MLM's term from the fused masked tokens: cross-entropy over the vocabulary (the head
    /// tied to the word embeddings), as this rank's share of the global masked tokens.
    pub(crate) fn mlm_term(
        &self,
        f: &Features<'_, B>,
        rows: &Rows,
        mask: &MlmMask,
        fused: Fused<B>,
    ) -> Tensor<B, 1> {
        let text = f.text.expect("text encoder");
        let head = self
            .mlm
            .as_ref()
            .expect("MLM head is built when loss.mlm > 0");
        let picked = fused
            .tokens
            .narrow(0, fused.itm_rows, fused.end - fused.itm_rows);
        let logits = head.forward(picked, text.token_embedding.weight.val());
        let loss = cross_entropy(logits, &mask.targets, None, 0.0);
        scaled(loss, rows.mlm_scale)
    }
}

//! Masked language modelling inputs: BERT's 15% with 80/10/10 replacement.

use rand::Rng;

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
/// `mask_id`, 10% a random non-special token and 10% stay. At least one token of the batch is
/// chosen when there is any candidate.
pub fn mask_tokens<R: Rng>(
    ids: &[u32],
    attention_mask: &[u32],
    vocab_size: usize,
    special: &[u32],
    mask_id: u32,
    probability: f64,
    rng: &mut R,
) -> MlmMask {
    let candidates: Vec<usize> = (0..ids.len())
        .filter(|&i| attention_mask[i] != 0 && !special.contains(&ids[i]))
        .collect();
    let mut chosen: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|_| rng.random::<f64>() < probability)
        .collect();
    if chosen.is_empty() && !candidates.is_empty() {
        chosen.push(candidates[rng.random_range(0..candidates.len())]);
    }
    let regular: Vec<u32> = (0..vocab_size as u32)
        .filter(|t| !special.contains(t))
        .collect();
    let mut input_ids = ids.to_vec();
    let mut targets = Vec::with_capacity(chosen.len());
    for &pos in &chosen {
        targets.push(ids[pos] as usize);
        let r = rng.random::<f64>();
        if r < 0.8 {
            input_ids[pos] = mask_id;
        } else if r < 0.9 && !regular.is_empty() {
            input_ids[pos] = regular[rng.random_range(0..regular.len())];
        }
    }
    MlmMask {
        input_ids,
        positions: chosen,
        targets,
    }
}

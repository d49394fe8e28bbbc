//! The one pass of the fusion encoder that ITM's pairs and MLM's masked captions share: each
//! image is projected to keys and values once, and only the tokens a head reads are computed
//! in the last layer (with `prune_unread_tokens`).

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use super::features::Features;
use super::mlm::MlmMask;
use crate::block::{AttentionBias, TokenRows};
use crate::model::VlModel;

/// Text sequences for the fusion encoder, each paired with one of the batch's images.
pub(crate) struct Pairs<B: Backend> {
    /// `[N, L, W]` text tokens.
    pub text: Tensor<B, 3>,
    /// Their key padding.
    pub bias: AttentionBias<B>,
    /// The image of each sequence.
    pub image_index: Vec<usize>,
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

/// The fused tokens the heads read: `tokens` holds ITM's first `itm_rows` (the first token of
/// each of its `3b` pairs), then MLM's masked tokens up to `end`.
pub(crate) struct Fused<B: Backend> {
    /// `[itm_rows + masked, W]`.
    pub tokens: Tensor<B, 2>,
    /// ITM's rows (0 without ITM).
    pub itm_rows: usize,
    /// All rows.
    pub end: usize,
}

impl<B: AutodiffBackend> VlModel<B> {
    /// ITM's pairs and MLM's masked captions through the fusion encoder in one pass over the
    /// image tokens; None when neither runs.
    pub(crate) fn fuse(
        &self,
        f: &Features<'_, B>,
        itm_pairs: Option<Pairs<B>>,
        mlm_pairs: Option<Pairs<B>>,
        mlm_mask: Option<&MlmMask>,
    ) -> Option<Fused<B>> {
        let (b, l) = (f.b, f.l);
        let fusion_pairs: Vec<Pairs<B>> = itm_pairs.into_iter().chain(mlm_pairs).collect();
        if fusion_pairs.is_empty() {
            return None;
        }
        let fusion = self
            .fusion
            .as_ref()
            .expect("fusion is built when loss.itm or mlm > 0");
        let pairs = Pairs::cat(fusion_pairs);
        // The tokens the heads read: the first of each ITM pair, the masked ones of MLM.
        let mut flat: Vec<usize> = Vec::new();
        let itm_rows = if f.itm_on {
            flat.extend((0..3 * b).map(|n| n * l));
            3 * b
        } else {
            0
        };
        if let Some(mask) = mlm_mask {
            flat.extend(mask.positions.iter().map(|p| itm_rows * l + p));
        }
        let rows = TokenRows::new(flat, pairs.image_index.len(), l);
        let image = f.sources.image.clone().expect("image tokens");
        let tokens = if self.prune_unread_tokens {
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
        Some(Fused {
            tokens,
            itm_rows,
            end: rows.count(),
        })
    }
}

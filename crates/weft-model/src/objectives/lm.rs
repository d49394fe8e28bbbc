//! Captioning LM inputs: teacher forcing with the caption shifted by one.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

use super::batch::{bools, ints};
use super::ce::cross_entropy;
use super::features::{Features, Rows};
use super::scaled;
use crate::model::VlModel;

/// Decoder inputs and targets for a `[B, L]` batch of `[CLS] ... [SEP] [PAD]...` captions.
#[derive(Debug, Clone, PartialEq)]
pub struct LmInputs {
    /// `[B, L - 1]` inputs: the caption without its last position, `[CLS]` replaced by `bos_id`.
    pub input_ids: Vec<u32>,
    /// `[B, L - 1]` padding of the inputs (true = pad).
    pub padding: Vec<bool>,
    /// `[B, L - 1]` next token of every input position.
    pub targets: Vec<usize>,
    /// 1 where the target is a real token, 0 for padding (ignored).
    pub weights: Vec<f32>,
    /// Input length `L - 1`.
    pub len: usize,
}

/// Shift `[B, L]` ids into decoder inputs and targets.
pub fn shift_for_lm(ids: &[u32], attention_mask: &[u32], len: usize, bos_id: u32) -> LmInputs {
    assert!(len >= 2 && ids.len().is_multiple_of(len));
    let b = ids.len() / len;
    let n = len - 1;
    let mut out = LmInputs {
        input_ids: Vec::with_capacity(b * n),
        padding: Vec::with_capacity(b * n),
        targets: Vec::with_capacity(b * n),
        weights: Vec::with_capacity(b * n),
        len: n,
    };
    for row in 0..b {
        let r = &ids[row * len..(row + 1) * len];
        let m = &attention_mask[row * len..(row + 1) * len];
        for t in 0..n {
            out.input_ids.push(if t == 0 { bos_id } else { r[t] });
            out.padding.push(m[t] == 0);
            out.targets.push(r[t + 1] as usize);
            out.weights.push(if m[t + 1] != 0 { 1.0 } else { 0.0 });
        }
    }
    out
}

impl<B: AutodiffBackend> VlModel<B> {
    /// LM's term: the decoder reads this rank's images' tokens; cross-entropy of the next
    /// token, as this rank's share of the global target tokens.
    pub(crate) fn lm_term(&self, f: &Features<'_, B>, rows: &Rows, lm: &LmInputs) -> Tensor<B, 1> {
        let b = f.b;
        let decoder = self
            .decoder
            .as_ref()
            .expect("decoder is built when loss.lm > 0");
        let inputs = ints::<B>(&lm.input_ids, b, lm.len, &f.device);
        let pad = bools::<B>(lm.padding.clone(), b, lm.len, &f.device);
        let sources = &f.sources;
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
        scaled(loss, rows.lm_scale)
    }
}

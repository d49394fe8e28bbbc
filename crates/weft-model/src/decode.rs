//! Caption generation with the captioning decoder: greedy and beam-search decoding from
//! `[BOS]`, stopping at the end token or a length limit.
//!
//! Each step runs the decoder over the whole prefix (no key/value cache: captions are short)
//! and reads the logits of the last position on the host.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::model::VlModel;

/// How to decode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeOptions {
    /// The first input token (`[BOS]`).
    pub bos: u32,
    /// The token that ends a caption (`[SEP]`, what the training captions end with).
    pub eos: u32,
    /// Tokens generated at most, the end token included; at most the decoder's context length
    /// minus one.
    pub max_len: usize,
    /// Beams; 1 is greedy decoding.
    pub beams: usize,
    /// Beam search ranks finished captions by `sum of log-probabilities / length^α`.
    pub length_penalty: f64,
}

/// `[rows, V]` next-token logits after each row's prefix (`[rows, t]` ids) over the image tokens
/// `image[image_index[row]]`.
fn next_logits<B: Backend>(
    model: &VlModel<B>,
    image: &Tensor<B, 3>,
    image_index: &[usize],
    prefixes: &[Vec<u32>],
) -> Vec<Vec<f32>> {
    let decoder = model.decoder.as_ref().expect("a captioning decoder");
    let device = image.device();
    let (rows, t) = (prefixes.len(), prefixes[0].len());
    let ids: Vec<i64> = prefixes.iter().flatten().map(|&x| i64::from(x)).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, t]), &device);
    let index = weft_kernels::index_tensor::<B>(image_index, &device);
    let logits = decoder.forward(ids, None, image.clone().select(0, index));
    let vocab = logits.dims()[2];
    let last: Vec<f32> = logits
        .narrow(1, t - 1, 1)
        .reshape([rows, vocab])
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 logits");
    last.chunks(vocab).map(<[f32]>::to_vec).collect()
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x.iter().map(|&v| f64::from(v - max).exp()).sum();
    x.iter().map(|&v| f64::from(v - max) - sum.ln()).collect()
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// One beam: its tokens after `[BOS]` and their summed log-probability.
#[derive(Debug, Clone)]
struct Beam {
    tokens: Vec<u32>,
    logp: f64,
}

impl<B: Backend> VlModel<B> {
    /// Captions of `[B, 3, S, S]` images: token ids after `[BOS]`, the end token left out.
    /// None without a captioning decoder.
    pub fn generate(&self, images: Tensor<B, 4>, opts: &DecodeOptions) -> Option<Vec<Vec<u32>>> {
        let decoder = self.decoder.as_ref()?;
        let limit = decoder.position_embedding.dims()[1]
            .saturating_sub(1)
            .max(1);
        let max_len = opts.max_len.clamp(1, limit);
        let image = self.vision.forward(images);
        let b = image.dims()[0];
        Some(if opts.beams <= 1 {
            self.greedy(&image, b, opts, max_len)
        } else {
            (0..b)
                .map(|i| self.beam(&image, i, opts, max_len))
                .collect()
        })
    }

    fn greedy(
        &self,
        image: &Tensor<B, 3>,
        b: usize,
        opts: &DecodeOptions,
        max_len: usize,
    ) -> Vec<Vec<u32>> {
        let mut prefixes = vec![vec![opts.bos]; b];
        let mut done = vec![false; b];
        for _ in 0..max_len {
            let index: Vec<usize> = (0..b).collect();
            let logits = next_logits(self, image, &index, &prefixes);
            for (i, l) in logits.iter().enumerate() {
                // A finished caption keeps growing with end tokens, cut below.
                let next = if done[i] { opts.eos } else { argmax(l) };
                done[i] |= next == opts.eos;
                prefixes[i].push(next);
            }
            if done.iter().all(|d| *d) {
                break;
            }
        }
        prefixes
            .into_iter()
            .map(|p| {
                p[1..]
                    .iter()
                    .copied()
                    .take_while(|&t| t != opts.eos)
                    .collect()
            })
            .collect()
    }

    fn beam(
        &self,
        image: &Tensor<B, 3>,
        i: usize,
        opts: &DecodeOptions,
        max_len: usize,
    ) -> Vec<u32> {
        let w = opts.beams;
        let score = |b: &Beam| b.logp / (b.tokens.len().max(1) as f64).powf(opts.length_penalty);
        let mut live = vec![Beam {
            tokens: Vec::new(),
            logp: 0.0,
        }];
        let mut finished: Vec<Beam> = Vec::new();
        for step in 0..max_len {
            let prefixes: Vec<Vec<u32>> = live
                .iter()
                .map(|b| {
                    std::iter::once(opts.bos)
                        .chain(b.tokens.iter().copied())
                        .collect()
                })
                .collect();
            let logits = next_logits(self, image, &vec![i; live.len()], &prefixes);
            let mut candidates: Vec<(Beam, bool)> = Vec::new();
            for (beam, l) in live.iter().zip(&logits) {
                let lp = log_softmax(l);
                let mut order: Vec<usize> = (0..lp.len()).collect();
                order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
                for &t in order.iter().take(w) {
                    let mut tokens = beam.tokens.clone();
                    let end = t as u32 == opts.eos || step + 1 == max_len;
                    if t as u32 != opts.eos {
                        tokens.push(t as u32);
                    }
                    candidates.push((
                        Beam {
                            tokens,
                            logp: beam.logp + lp[t],
                        },
                        end,
                    ));
                }
            }
            candidates.sort_by(|a, b| b.0.logp.total_cmp(&a.0.logp));
            live.clear();
            for (beam, end) in candidates {
                if live.len() == w {
                    break;
                }
                if end {
                    finished.push(beam);
                } else {
                    live.push(beam);
                }
            }
            // Done once `w` captions have ended (Hugging Face's `early_stopping=True`).
            if live.is_empty() || finished.len() >= w {
                break;
            }
        }
        finished.extend(live);
        finished
            .into_iter()
            .max_by(|a, b| score(a).total_cmp(&score(b)))
            .map(|b| b.tokens)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_argmax() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let sum: f64 = lp.iter().map(|x| x.exp()).sum();
        assert!((sum - 1.0).abs() < 1e-12);
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
    }
}

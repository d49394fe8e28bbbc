//! The first tokens of an encoder: optional prefix tokens (ViT's CLS) shared by every sample,
//! then the sample's own tokens, plus learned position embeddings.
//!
//! burn composes this from an expand, a `cat` and a broadcast add, which flex runs on one
//! thread (the add through a strided iterator), and their backward passes; here the forward
//! is one parallel pass and the backward one parallel pass per gradient.

use rayon::prelude::*;

use super::math::{add_assign, multiversion};
use super::{par_filled, ROWS_PER_TASK};

/// Sizes of the op: `batch` samples of `tokens` own tokens after `prefix` shared ones, `width`
/// values each, with positions for `positions ≥ prefix + tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Samples.
    pub batch: usize,
    /// Shared tokens before each sample's own.
    pub prefix: usize,
    /// Each sample's own tokens.
    pub tokens: usize,
    /// Rows of the position table (only the first `prefix + tokens` are used).
    pub positions: usize,
    /// Values per token.
    pub width: usize,
}

impl Dims {
    /// Tokens per sample in the output.
    pub fn len(&self) -> usize {
        self.prefix + self.tokens
    }

    /// Whether the output has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, x: usize, prefix: usize, pos: usize) {
        assert!(
            self.positions >= self.len(),
            "positions: {} position rows for {} tokens",
            self.positions,
            self.len()
        );
        assert_eq!(
            x,
            self.batch * self.tokens * self.width,
            "positions: tokens"
        );
        assert_eq!(prefix, self.prefix * self.width, "positions: prefix");
        assert_eq!(pos, self.positions * self.width, "positions: table");
    }
}

multiversion! {
    fn sum_into(out: &mut [f32], a: &[f32], b: &[f32]) {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    }
}

/// `[prefix; x_b] + positions[..prefix + tokens]` for every sample `b`: `[batch, len, width]`.
pub fn forward(d: &Dims, x: &[f32], prefix: &[f32], positions: &[f32]) -> Vec<f32> {
    d.check(x.len(), prefix.len(), positions.len());
    let (w, len) = (d.width, d.len());
    let row = |out: &mut [f32], sample: usize, t: usize| {
        let pos = &positions[t * w..(t + 1) * w];
        let src = if t < d.prefix {
            &prefix[t * w..(t + 1) * w]
        } else {
            let at = (sample * d.tokens + t - d.prefix) * w;
            &x[at..at + w]
        };
        sum_into(out, src, pos);
    };
    par_filled(d.batch * len * w, ROWS_PER_TASK * w, |task, chunk| {
        for (i, out) in chunk.chunks_exact_mut(w.max(1)).enumerate() {
            let r = task * ROWS_PER_TASK + i;
            row(out, r / len.max(1), r % len.max(1));
        }
    })
}

/// Gradients of [`forward`] from `dy: [batch, len, width]`: the sample tokens' (when asked
/// for; with no prefix that is `dy` itself, no copy), the prefix's (`[prefix, width]`) and the
/// position table's (`[positions, width]`, zero past the rows used). The sums run over the
/// samples in order, so the bits do not depend on the thread count.
pub fn backward(d: &Dims, dy: Vec<f32>, want_dx: bool) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (w, len) = (d.width, d.len());
    assert_eq!(dy.len(), d.batch * len * w, "positions backward: gradient");
    let mut dpos = vec![0.0f32; d.positions * w];
    dpos[..len * w]
        .par_chunks_mut(ROWS_PER_TASK * w.max(1))
        .enumerate()
        .for_each(|(task, acc)| {
            let at = task * ROWS_PER_TASK * w;
            for sample in dy.chunks_exact((len * w).max(1)) {
                add_assign(acc, &sample[at..at + acc.len()]);
            }
        });
    let dprefix = dpos[..d.prefix * w].to_vec();
    let dx = match (want_dx, d.prefix) {
        (false, _) => None,
        (true, 0) => Some(dy),
        (true, _) => {
            let rows = d.tokens * w;
            Some(par_filled(d.batch * rows, rows.max(1), |sample, out| {
                let at = sample * len * w + d.prefix * w;
                out.copy_from_slice(&dy[at..at + rows]);
            }))
        }
    };
    (dx, dprefix, dpos)
}

/// The patch matrix of a ViT's patch embedding: `[batch·(h/p)·(w/p), channels·p·p]` from
/// `[batch, channels, h, w]` images, one row per `p×p` patch (row-major over the patch grid),
/// each row channel-major then row-major inside the patch: the layout of a convolution kernel
/// `[width, channels, p, p]` seen as a `[width, channels·p·p]` matrix. Parallel over the rows
/// of patches.
pub fn patches(
    images: &[f32],
    (batch, channels, h, w): (usize, usize, usize, usize),
    p: usize,
) -> Vec<f32> {
    assert_eq!(
        images.len(),
        batch * channels * h * w,
        "patches: image shape"
    );
    assert!(
        p > 0 && h % p == 0 && w % p == 0,
        "patches: {h}×{w} images in {p}×{p} patches"
    );
    let (gh, gw) = (h / p, w / p);
    let row = channels * p * p;
    // One task per row of patches of one image: `gw` patches.
    par_filled(batch * gh * gw * row, (gw * row).max(1), |task, out| {
        let (b, py) = (task / gh, task % gh);
        for (px, patch) in out.chunks_exact_mut(row).enumerate() {
            for c in 0..channels {
                for y in 0..p {
                    let src = ((b * channels + c) * h + py * p + y) * w + px * p;
                    let dst = (c * p + y) * p;
                    patch[dst..dst + p].copy_from_slice(&images[src..src + p]);
                }
            }
        }
    })
}

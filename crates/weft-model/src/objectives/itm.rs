//! Image-text matching hard negatives (ALBEF): for every text one negative image and for every
//! image one negative text, drawn from the softmax of the ITC similarities with the positives
//! masked out.

use rand::Rng;

use super::sampling::{Purpose, Sampling};

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

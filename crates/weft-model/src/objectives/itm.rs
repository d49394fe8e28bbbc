//! Image-text matching hard negatives (ALBEF): for every text one negative image and for every
//! image one negative text, drawn from the softmax of the ITC similarities with the positives
//! masked out.

use rand::Rng;

/// Hard negatives of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardNegatives {
    /// For text `i`, the index of its negative image.
    pub image_for_text: Vec<usize>,
    /// For image `i`, the index of its negative text.
    pub text_for_image: Vec<usize>,
}

/// Draw hard negatives from `[B, B]` image-to-text `logits` (row-major, `logits[i * b + j]` =
/// image i with text j). `positive(i, j)` says whether image i and text j are a positive pair;
/// the diagonal always is. Positives get probability 0; a row whose candidates are all
/// positive falls back to the next index that is not the diagonal. Needs `b >= 2`.
pub fn sample_hard_negatives<R: Rng>(
    logits: &[f32],
    b: usize,
    positive: impl Fn(usize, usize) -> bool,
    rng: &mut R,
) -> HardNegatives {
    assert!(b >= 2, "hard negatives need a batch of at least 2");
    assert_eq!(logits.len(), b * b);
    // Text i: a distribution over images j (column i of the logits).
    let image_for_text = (0..b)
        .map(|i| {
            let row: Vec<f64> = (0..b).map(|j| f64::from(logits[j * b + i])).collect();
            draw(&row, |j| j == i || positive(j, i), i, b, rng)
        })
        .collect();
    // Image i: a distribution over texts j (row i).
    let text_for_image = (0..b)
        .map(|i| {
            let row: Vec<f64> = (0..b).map(|j| f64::from(logits[i * b + j])).collect();
            draw(&row, |j| j == i || positive(i, j), i, b, rng)
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

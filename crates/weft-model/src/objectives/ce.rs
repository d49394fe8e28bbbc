//! Cross-entropy with per-row weights (ignored rows weigh 0) and label smoothing.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Mean cross-entropy of `[N, C]` logits against class `targets`, over the rows whose weight
/// is non-zero (all rows when `weights` is None). With `smoothing` ε the target distribution is
/// `(1 - ε) one_hot + ε / C`.
///
/// Returns a `[1]` tensor; 0 when every weight is 0.
pub fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &[usize],
    weights: Option<&[f32]>,
    smoothing: f64,
) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    assert_eq!(targets.len(), n, "one target per row");
    let device = logits.device();
    let logp = log_softmax(logits, 1);
    let index: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let index = Tensor::<B, 2, Int>::from_data(TensorData::new(index, [n, 1]), &device);
    let nll = logp.clone().gather(1, index).neg().reshape([n]);
    let per_row = if smoothing > 0.0 {
        let uniform = logp.mean_dim(1).neg().reshape([n]);
        nll.mul_scalar(1.0 - smoothing) + uniform.mul_scalar(smoothing)
    } else {
        nll
    };
    match weights {
        None => per_row.mean(),
        Some(w) => {
            assert_eq!(w.len(), n, "one weight per row");
            let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
            if total == 0.0 {
                return per_row.sum().mul_scalar(0.0);
            }
            let w = Tensor::<B, 1>::from_data(TensorData::new(w.to_vec(), [n]), &device);
            (per_row * w).sum().div_scalar(total)
        }
    }
}

//! Image-text contrastive loss: symmetric InfoNCE over the batch (CLIP).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::ce::cross_entropy;

/// `(CE(s·I·Tᵀ, diag) + CE(s·T·Iᵀ, diag)) / 2` for L2-normalised `[B, E]` image and text
/// embeddings and the `[1]` logit scale `s`. Returns the loss and the `[B, B]` image-to-text
/// logits.
pub fn itc_loss<B: Backend>(
    image: Tensor<B, 2>,
    text: Tensor<B, 2>,
    scale: Tensor<B, 1>,
    label_smoothing: f64,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let b = image.dims()[0];
    let logits = image.matmul(text.transpose()) * scale.unsqueeze_dim(0);
    let targets: Vec<usize> = (0..b).collect();
    let i2t = cross_entropy(logits.clone(), &targets, None, label_smoothing);
    let t2i = cross_entropy(logits.clone().transpose(), &targets, None, label_smoothing);
    ((i2t + t2i).div_scalar(2.0), logits)
}

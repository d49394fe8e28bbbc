//! Image-text contrastive loss: symmetric InfoNCE over the batch (CLIP), and over the global
//! batch of a data-parallel job.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use weft_config::LossConfig;

use super::ce::cross_entropy;
use super::features::{Features, Rows};
use super::ObjectiveBatch;
use crate::model::VlModel;

/// `(CE(s·I·Tᵀ, diag) + CE(s·T·Iᵀ, diag)) / 2` for L2-normalised `[B, E]` image and text
/// embeddings and the `[1]` logit scale `s`. Returns the loss and the `[B, B]` image-to-text
/// logits.
pub fn itc_loss<B: Backend>(
    image: Tensor<B, 2>,
    text: Tensor<B, 2>,
    scale: Tensor<B, 1>,
    label_smoothing: f64,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let [b, dim] = image.dims();
    // In f32 whatever the autocast: the temperature-scaled logits are the loss.
    weft_kernels::flops::product(b, text.dims()[0], dim);
    let logits = image.matmul(text.transpose()) * scale.unsqueeze_dim(0);
    let targets: Vec<usize> = (0..b).collect();
    let i2t = cross_entropy(logits.clone(), &targets, None, label_smoothing);
    let t2i = cross_entropy(logits.clone().transpose(), &targets, None, label_smoothing);
    ((i2t + t2i).div_scalar(2.0), logits)
}

/// [`itc_loss`] of the rows `real` of the embeddings (all rows when None): the loss of those
/// rows alone, and their `[R, R]` logits.
pub fn itc_loss_of_rows<B: Backend>(
    image: Tensor<B, 2>,
    text: Tensor<B, 2>,
    scale: Tensor<B, 1>,
    label_smoothing: f64,
    real: Option<&[usize]>,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    match real {
        Some(rows) => {
            let rows = weft_kernels::index_tensor::<B>(rows, &image.device());
            itc_loss(
                image.select(0, rows.clone()),
                text.select(0, rows),
                scale,
                label_smoothing,
            )
        }
        None => itc_loss(image, text, scale, label_smoothing),
    }
}

/// The collectives the objectives need from a data-parallel job: ITC's negatives and ITM's
/// hard negatives come from the global batch. The trainer implements it over its collective;
/// weft-model knows no network.
pub trait FeatureGather {
    /// This rank.
    fn rank(&self) -> usize;
    /// Ranks in the job.
    fn world_size(&self) -> usize;
    /// Every rank's `local`, in rank order.
    fn all_gather(&mut self, local: &[f32]) -> Vec<f32>;
    /// The element-wise sum of every rank's `buf`, into `buf`.
    fn all_reduce_sum(&mut self, buf: &mut [f32]);
}

/// ITC with the negatives of the whole global batch (open_clip's `gather_with_grad=False`):
/// every rank's `[b, E]` embeddings are gathered, the `[N·b, N·b]` logits are computed on every
/// rank with this rank's slice carrying the gradient and the others constant.
///
/// The value is the single-process ITC loss of the global batch on every rank. The gradients
/// are scaled so that their mean over the ranks (the trainer's gradient all-reduce) is the
/// single-process gradient: this rank's embeddings get `N` times theirs (each rank's
/// embeddings feed the loss through that rank alone), the logit scale `1/N` of `N` (every rank
/// sees all of it). Also returns the `[N·b, N·b]` image-to-text logits of the global batch (for
/// ITM's hard negatives).
///
/// With `real`, the global batch's rows that are not padding (ascending): the loss is that of
/// those rows alone, and the logits are theirs (`[R, R]`).
pub fn itc_loss_global<B: Backend>(
    image: Tensor<B, 2>,
    text: Tensor<B, 2>,
    scale: Tensor<B, 1>,
    label_smoothing: f64,
    gather: &mut dyn FeatureGather,
    real: Option<&[usize]>,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let (rank, world) = (gather.rank(), gather.world_size());
    if world == 1 {
        return itc_loss_of_rows(image, text, scale, label_smoothing, real);
    }
    let [b, e] = image.dims();
    let device = image.device();
    // One gather for both: [image | text] of this rank.
    let mut local: Vec<f32> = image
        .clone()
        .detach()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32");
    local.extend(
        text.clone()
            .detach()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32"),
    );
    let all = gather.all_gather(&local);
    assert_eq!(
        all.len(),
        world * 2 * b * e,
        "ITC gather: every rank must have {b} rows"
    );
    let global = |which: usize, mine: Tensor<B, 2>| -> Tensor<B, 2> {
        let parts: Vec<Tensor<B, 2>> = (0..world)
            .map(|r| {
                if r == rank {
                    mine.clone()
                } else {
                    let at = r * 2 * b * e + which * b * e;
                    let v = all[at..at + b * e].to_vec();
                    Tensor::from_data(TensorData::new(v, [b, e]), &device)
                }
            })
            .collect();
        Tensor::cat(parts, 0)
    };
    let (image_all, text_all) = (global(0, image), global(1, text));
    // The same value; 1/N of the gradient into the logit scale.
    let scale = scale.clone().detach() + (scale.clone() - scale.detach()).div_scalar(world as f64);
    let (loss, logits) = itc_loss_of_rows(image_all, text_all, scale, label_smoothing, real);
    // The same value; N times the gradient into this rank's embeddings.
    let loss = loss.clone() + (loss.clone() - loss.detach()).mul_scalar((world - 1) as f64);
    (loss, logits)
}

impl<B: AutodiffBackend> VlModel<B> {
    /// ITC's term over the rows that weigh (of the global batch on a rank of a job), and its
    /// image-to-text logits (ITM draws its hard negatives from them).
    pub(crate) fn itc_term(
        &self,
        f: &Features<'_, B>,
        batch: &ObjectiveBatch<B>,
        rows: &Rows,
        w: &LossConfig,
        gather: Option<&mut (dyn FeatureGather + '_)>,
    ) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let itc = self
            .itc
            .as_ref()
            .expect("ITC head is built when loss.itc or itm > 0");
        let image_cls = match &f.image_tokens {
            Some(tokens) => tokens.clone(),
            None => self.image_cls(batch.images.clone()),
        };
        let text_cls = match &f.text_tokens {
            Some(tokens) => tokens.clone(),
            None => self.text_cls(
                f.text.expect("text encoder"),
                batch.ids_tensor(),
                Some(f.padding.clone()),
            ),
        };
        let (image_emb, text_emb) = (itc.image_embedding(image_cls), itc.text_embedding(text_cls));
        let real = rows.padded.then_some(&rows.real[..]);
        match gather {
            // A global batch of padding only: nothing to contrast (no collective either,
            // every rank knows it).
            _ if rows.real.is_empty() => (
                (image_emb.sum() + text_emb.sum()).mul_scalar(0.0),
                Tensor::zeros([0, 0], &f.device),
            ),
            Some(gth) => itc_loss_global(
                image_emb,
                text_emb,
                itc.scale(),
                w.itc_label_smoothing,
                gth,
                real,
            ),
            None => itc_loss_of_rows(
                image_emb,
                text_emb,
                itc.scale(),
                w.itc_label_smoothing,
                real,
            ),
        }
    }
}

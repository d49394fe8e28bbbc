//! A data batch ([`weft_data::Batch`]) as the model sees it ([`ObjectiveBatch`]): images on
//! the training device, token ids on the host; the rows that train, or every row for an
//! evaluation.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use weft_model::objectives::ObjectiveBatch;

use crate::error::TrainError;

/// A data batch as the model sees it (images on `device`, token ids on the host), every row
/// included (padding rows too: evaluation drops them by index).
pub fn objective_batch<B: Backend>(
    batch: &weft_data::Batch,
    device: &B::Device,
) -> Result<ObjectiveBatch<B>, TrainError> {
    let keep: Vec<usize> = (0..batch.len()).collect();
    rows_batch(batch, &keep, device)
}

/// Like [`objective_batch`] without the rows flagged `is_pad` (repeats that fill the last
/// batches): training must not see a pair twice in one batch, ITC would count the copy as a
/// negative. None when every row is padding.
pub fn training_batch<B: Backend>(
    batch: &weft_data::Batch,
    device: &B::Device,
) -> Result<Option<ObjectiveBatch<B>>, TrainError> {
    training_rows(batch, false, device)
}

/// The rows of `batch` that train: its real rows, or with `keep_pads` every row (a rank of a
/// data-parallel job runs its padding rows too, so that every rank's batch has the same size;
/// they are flagged [`ObjectiveBatch::is_pad`] and weigh nothing in the losses); `None` when
/// there are none.
pub fn training_rows<B: Backend>(
    batch: &weft_data::Batch,
    keep_pads: bool,
    device: &B::Device,
) -> Result<Option<ObjectiveBatch<B>>, TrainError> {
    let keep: Vec<usize> = (0..batch.len())
        .filter(|&i| keep_pads || !batch.is_pad[i])
        .collect();
    if keep.is_empty() {
        return Ok(None);
    }
    rows_batch(batch, &keep, device).map(Some)
}

fn rows_batch<B: Backend>(
    batch: &weft_data::Batch,
    keep: &[usize],
    device: &B::Device,
) -> Result<ObjectiveBatch<B>, TrainError> {
    let tokens = batch.tokens.as_ref().ok_or(TrainError::NoTokenizer)?;
    let s = batch.image_size;
    let l = tokens.context_length;
    let pixels = 3 * s * s;
    let (images, ids, mask) = if keep.len() == batch.len() {
        (
            batch.images.clone(),
            tokens.input_ids.clone(),
            tokens.attention_mask.clone(),
        )
    } else {
        let mut images = Vec::with_capacity(keep.len() * pixels);
        let mut ids = Vec::with_capacity(keep.len() * l);
        let mut mask = Vec::with_capacity(keep.len() * l);
        for &i in keep {
            images.extend_from_slice(&batch.images[i * pixels..(i + 1) * pixels]);
            ids.extend_from_slice(&tokens.input_ids[i * l..(i + 1) * l]);
            mask.extend_from_slice(&tokens.attention_mask[i * l..(i + 1) * l]);
        }
        (images, ids, mask)
    };
    let images = Tensor::<B, 4>::from_data(TensorData::new(images, [keep.len(), 3, s, s]), device);
    Ok(ObjectiveBatch {
        images,
        ids,
        attention_mask: mask,
        len: l,
        is_pad: keep.iter().map(|&i| batch.is_pad[i]).collect(),
    })
}

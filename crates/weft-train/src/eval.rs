//! Retrieval evaluation: Recall@K image-to-text and text-to-image from ITC embeddings.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;
use weft_config::Config;
use weft_data::{DataCursor, Loader, Split};
use weft_model::objectives::ObjectiveBatch;
use weft_model::VlModel;

use crate::error::TrainError;

/// The K of Recall@K.
pub const RECALL_KS: [usize; 3] = [1, 5, 10];

/// Retrieval metrics over `n` image-caption pairs (pair i is image i with caption i).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Retrieval {
    /// Pairs.
    pub n: usize,
    /// Image-to-text Recall@1/5/10 in percent.
    pub i2t_r1: f64,
    /// Image-to-text Recall@5.
    pub i2t_r5: f64,
    /// Image-to-text Recall@10.
    pub i2t_r10: f64,
    /// Text-to-image Recall@1.
    pub t2i_r1: f64,
    /// Text-to-image Recall@5.
    pub t2i_r5: f64,
    /// Text-to-image Recall@10.
    pub t2i_r10: f64,
    /// Recall@1 of random ranking (`100 / n`).
    pub chance_r1: f64,
}

/// Rank of the true item in each row of a row-major `[n, n]` similarity matrix (`sim[i][i]` is
/// the positive): how many items score strictly higher, plus the ties that come before it in
/// index order (a stable sort).
pub fn ranks(sim: &[f32], n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let row = &sim[i * n..(i + 1) * n];
            let s = row[i];
            row.iter()
                .enumerate()
                .filter(|&(j, &x)| x > s || (x == s && j < i))
                .count()
        })
        .collect()
}

/// Percent of ranks below `k`.
pub fn recall_at(ranks: &[usize], k: usize) -> f64 {
    if ranks.is_empty() {
        return 0.0;
    }
    100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len() as f64
}

/// Recall@K both ways from `[n, E]` image and text embeddings (row-major, L2-normalised).
pub fn retrieval_from_embeddings(image: &[f32], text: &[f32], n: usize, dim: usize) -> Retrieval {
    let mut i2t = vec![0f32; n * n];
    for i in 0..n {
        let a = &image[i * dim..(i + 1) * dim];
        for j in 0..n {
            let b = &text[j * dim..(j + 1) * dim];
            i2t[i * n + j] = a.iter().zip(b).map(|(x, y)| x * y).sum();
        }
    }
    let mut t2i = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            t2i[j * n + i] = i2t[i * n + j];
        }
    }
    let ri = ranks(&i2t, n);
    let rt = ranks(&t2i, n);
    Retrieval {
        n,
        i2t_r1: recall_at(&ri, 1),
        i2t_r5: recall_at(&ri, 5),
        i2t_r10: recall_at(&ri, 10),
        t2i_r1: recall_at(&rt, 1),
        t2i_r5: recall_at(&rt, 5),
        t2i_r10: recall_at(&rt, 10),
        chance_r1: if n == 0 { 0.0 } else { 100.0 / n as f64 },
    }
}

/// Embed every row of `loader` (one pass, in order, padding dropped) and compute retrieval.
pub fn evaluate_retrieval<B: Backend>(
    model: &VlModel<B>,
    config: &Config,
    loader: &Loader,
    device: &B::Device,
) -> Result<Retrieval, TrainError> {
    if !model.has_embeddings() {
        return Err(TrainError::NoEmbeddings);
    }
    let options = weft_data::plan_options(config, Split::Val, 1);
    let cursor = DataCursor::new(loader.catalog(), options, 0);
    let mut image = Vec::new();
    let mut text = Vec::new();
    let mut dim = 0;
    for batch in loader.stream(&cursor, 0)? {
        let batch = batch?;
        let real: Vec<usize> = (0..batch.len()).filter(|&i| !batch.is_pad[i]).collect();
        if real.is_empty() {
            continue;
        }
        let ob = objective_batch::<B>(&batch, device)?;
        let padding = Some(ob.padding_tensor());
        let img = model
            .image_embedding(ob.images.clone())
            .ok_or(TrainError::NoEmbeddings)?;
        let txt = model
            .text_embedding(ob.ids_tensor(), padding)
            .ok_or(TrainError::NoEmbeddings)?;
        dim = img.dims()[1];
        let img: Vec<f32> = to_vec(img);
        let txt: Vec<f32> = to_vec(txt);
        for &i in &real {
            image.extend_from_slice(&img[i * dim..(i + 1) * dim]);
            text.extend_from_slice(&txt[i * dim..(i + 1) * dim]);
        }
    }
    let n = image.len().checked_div(dim).unwrap_or(0);
    Ok(retrieval_from_embeddings(&image, &text, n, dim))
}

pub(crate) fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 tensor data")
}

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
/// data-parallel job trains on its padding rows too, as torch's `DistributedSampler` does, so
/// that every rank's batch has the same size); `None` when there are none.
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_recall_by_hand() {
        // 3 pairs; row i scores the 3 candidates.
        let sim = [
            0.9, 0.1, 0.0, // image 0: text 0 best -> rank 0
            0.8, 0.5, 0.2, // image 1: text 0 beats text 1 -> rank 1
            0.7, 0.7, 0.1, // image 2: two above -> rank 2
        ];
        let r = ranks(&sim, 3);
        assert_eq!(r, vec![0, 1, 2]);
        assert!((recall_at(&r, 1) - 100.0 / 3.0).abs() < 1e-9);
        assert!((recall_at(&r, 2) - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(recall_at(&r, 5), 100.0);
        // A tie with an earlier index counts against the positive, a later one does not.
        assert_eq!(ranks(&[0.5, 0.5, 0.5, 0.5], 2), vec![0, 1]);
    }

    #[test]
    fn retrieval_of_identical_embeddings_is_perfect() {
        let e = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let r = retrieval_from_embeddings(&e, &e, 3, 2);
        assert_eq!(r.i2t_r1, 100.0);
        assert_eq!(r.t2i_r1, 100.0);
    }
}

//! Retrieval metrics: Recall@K, mean and median rank both ways, from embeddings or from the
//! ranks of the true items.

use burn::tensor::backend::Backend;
use serde::Serialize;
use weft_collective::SingleRank;
use weft_config::Config;
use weft_data::Loader;
use weft_model::VlModel;

use super::rerank::evaluate_retrieval_rerank;
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
    /// Image-to-text mean rank of the true caption (1-based).
    #[serde(default)]
    pub i2t_mean_rank: f64,
    /// Image-to-text median rank (1-based).
    #[serde(default)]
    pub i2t_median_rank: f64,
    /// Text-to-image mean rank of the true image (1-based).
    #[serde(default)]
    pub t2i_mean_rank: f64,
    /// Text-to-image median rank (1-based).
    #[serde(default)]
    pub t2i_median_rank: f64,
}

pub use weft_eval::retrieval::{mean_rank, median_rank, ranks, recall_at};

/// The `[n, n]` image-to-text similarities of `[n, E]` embeddings (row-major).
pub fn similarities(image: &[f32], text: &[f32], n: usize, dim: usize) -> Vec<f32> {
    let mut i2t = vec![0f32; n * n];
    for i in 0..n {
        let a = &image[i * dim..(i + 1) * dim];
        for j in 0..n {
            let b = &text[j * dim..(j + 1) * dim];
            i2t[i * n + j] = a.iter().zip(b).map(|(x, y)| x * y).sum();
        }
    }
    i2t
}

/// The transpose of an `[n, n]` matrix.
pub(crate) fn transpose(m: &[f32], n: usize) -> Vec<f32> {
    let mut t = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = m[i * n + j];
        }
    }
    t
}

/// Recall@K both ways from `[n, E]` image and text embeddings (row-major, L2-normalised).
pub fn retrieval_from_embeddings(image: &[f32], text: &[f32], n: usize, dim: usize) -> Retrieval {
    let i2t = similarities(image, text, n, dim);
    let t2i = transpose(&i2t, n);
    retrieval_from_ranks(&ranks(&i2t, n), &ranks(&t2i, n))
}

/// Retrieval measures from the 0-based ranks of the true caption of each image (`ri`) and of
/// the true image of each caption (`rt`).
pub fn retrieval_from_ranks(ri: &[usize], rt: &[usize]) -> Retrieval {
    let n = ri.len();
    Retrieval {
        n,
        i2t_r1: recall_at(ri, 1),
        i2t_r5: recall_at(ri, 5),
        i2t_r10: recall_at(ri, 10),
        t2i_r1: recall_at(rt, 1),
        t2i_r5: recall_at(rt, 5),
        t2i_r10: recall_at(rt, 10),
        chance_r1: if n == 0 { 0.0 } else { 100.0 / n as f64 },
        i2t_mean_rank: mean_rank(ri),
        i2t_median_rank: median_rank(ri),
        t2i_mean_rank: mean_rank(rt),
        t2i_median_rank: median_rank(rt),
    }
}

/// Embed every row of `loader` (one pass, in order, padding dropped) and compute retrieval.
pub fn evaluate_retrieval<B: Backend>(
    model: &VlModel<B>,
    config: &Config,
    loader: &Loader,
    device: &B::Device,
) -> Result<Retrieval, TrainError> {
    Ok(evaluate_retrieval_rerank(model, config, loader, device, None, &mut SingleRank)?.0)
}

//! Evaluation of a model on a validation set: retrieval Recall@K and ranks both ways (with
//! ALBEF's ITM re-ranking), zero-shot classification, captioning.
//!
//! Every evaluation runs sharded across the ranks of a job: each rank embeds (or captions) its
//! share of the rows ([`eval_batches`]), [`gather_rows`] / [`gather_strings`] bring every
//! rank's results together in the order of their [`RowId`]s, and every rank computes the same
//! numbers from them, as one rank alone does (it goes through the same gather). ITM
//! re-ranking, which needs every row's tokens, embeds all rows on every rank and shares out
//! the re-scoring of the queries (as ALBEF does).
//!
//! - [`retrieval`]: Recall@K and ranks; [`rerank`]: the pass over the rows and ITM
//!   re-ranking;
//! - [`zeroshot`]: zero-shot classification; [`caption`]: captioning metrics;
//! - [`shard`]: each rank's share of the rows and the gathers.

pub mod caption;
pub mod rerank;
pub mod retrieval;
pub mod shard;
pub mod zeroshot;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

pub use caption::{evaluate_captioning, CaptionExample, Captioning};
pub use rerank::evaluate_retrieval_rerank;
pub use retrieval::{
    evaluate_retrieval, mean_rank, median_rank, ranks, recall_at, retrieval_from_embeddings,
    retrieval_from_ranks, similarities, Retrieval, RECALL_KS,
};
pub use shard::{eval_batches, gather_rows, gather_strings};
pub use zeroshot::{class_embeddings, evaluate_zero_shot, ZeroShot, ZeroShotTask};

/// The values of a tensor on the host, as f32.
pub(crate) fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 tensor data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrieval_of_identical_embeddings_is_perfect() {
        let e = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let r = retrieval_from_embeddings(&e, &e, 3, 2);
        assert_eq!(r.i2t_r1, 100.0);
        assert_eq!(r.t2i_r1, 100.0);
        assert_eq!((r.i2t_mean_rank, r.t2i_median_rank), (1.0, 1.0));
    }
}

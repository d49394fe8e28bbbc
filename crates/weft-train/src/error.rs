//! Errors of the trainer.

use std::path::PathBuf;

/// What can stop training or evaluation.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] weft_data::DataError),
    /// The config names no tokenizer; every objective needs token ids.
    #[error("data.tokenizer: training needs a tokenizer (set data.tokenizer)")]
    NoTokenizer,
    /// The tokenizer lacks a special token an objective needs.
    #[error("{objective} needs the special token {token}, which the tokenizer {path} lacks")]
    MissingToken {
        /// The objective.
        objective: &'static str,
        /// The token.
        token: &'static str,
        /// The tokenizer file.
        path: String,
    },
    /// The model has no ITC head, so there are no retrieval embeddings.
    #[error("the model has no ITC head (loss.itc and loss.itm are 0): no retrieval embeddings")]
    NoEmbeddings,
    /// Captioning needs the captioning decoder.
    #[error("the model has no captioning decoder (loss.lm is 0): nothing generates captions")]
    NoDecoder,
    /// The ranks' shares of an evaluation set do not fit together.
    #[error("sharded evaluation: {reason}")]
    EvalShards {
        /// What is wrong.
        reason: String,
    },
    /// The training split gives no optimizer step.
    #[error("the training data gives no optimizer step: {rows} usable rows with a global batch of {batch} and train.grad_accum = {accum}")]
    NoSteps {
        /// Usable rows in the split (failed downloads left out).
        rows: u64,
        /// Global batch.
        batch: usize,
        /// Accumulation.
        accum: u64,
    },
    /// Too many consecutive non-finite steps.
    #[error("stopping at step {step}: {count} consecutive steps had a non-finite loss or gradient norm (train.max_nonfinite_steps = {count})")]
    NonFinite {
        /// The last step.
        step: u64,
        /// Consecutive bad steps.
        count: u64,
    },
    /// A run-directory file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Saving or loading model weights failed.
    #[error("{path}: {message}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Ranks of a job resume from different checkpoints.
    #[error("rank {rank} resumes from {from}, rank {other} from {other_from} ({here}): every rank must resume from the same checkpoint (is one node's copy of the run directory stale, or --resume different?)")]
    ResumeMismatch {
        /// One rank.
        rank: usize,
        /// What it resumes from.
        from: String,
        /// Another rank.
        other: usize,
        /// What that one resumes from.
        other_from: String,
        /// This rank and the checkpoint it read.
        here: String,
    },
    /// A collective operation with the other ranks failed (a peer died, timed out or closed).
    #[error(transparent)]
    Collective(#[from] weft_collective::CollectiveError),
    /// A checkpoint could not be saved (the previous committed one is intact).
    #[error("saving the checkpoint of step {step}: {source}")]
    Checkpoint {
        /// Its step.
        step: u64,
        /// What failed.
        #[source]
        source: Box<weft_checkpoint::CheckpointError>,
    },
    /// The checkpoint to resume from could not be used.
    #[error("resume: {0}")]
    Resume(#[from] weft_checkpoint::CheckpointError),
    /// The weights of `train.init_from` could not be used.
    #[error("train.init_from: {0}")]
    InitFrom(Box<weft_checkpoint::CheckpointError>),
    /// The ranks of a data-parallel job disagree.
    #[error("{0}")]
    Distributed(String),
    /// A config problem found by the trainer.
    #[error(transparent)]
    Config(#[from] weft_config::ConfigError),
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}

//! weft-train: the training loop of weft and the pieces it is made of.
//!
//! - [`trainer`]: [`train`] and [`train_with`], the loop; [`trainer::step`] holds
//!   `train_step`, one optimizer step; the validator and the checkpointer decide themselves
//!   when they are due.
//! - [`engine`]: the model, the master copy of its parameters and AdamW, behind one
//!   interface for the host and the device ([`engine::Master`]).
//! - [`grads`]: the gradient's path, one stage a file: flatten, accumulate, all-reduce, clip.
//! - [`adamw`]: AdamW over flat buffers, on the host and on the device.
//! - [`params`]: parameters by module path, stable ids, the weight-decay rule, the flat
//!   parameter buffer and its scatter into the model.
//! - [`weights`]: building the model of a config, `train.init_from`, the final
//!   `model.safetensors`.
//! - [`batch`]: data batches as the model sees them.
//! - [`gather`]: ITC's feature gather over a collective.
//! - [`snapshot`]: the engine's buffers as a checkpoint holds them (the files themselves are
//!   `weft-checkpoint`'s).
//! - [`schedule`]: linear warmup then cosine decay to a floor.
//! - [`eval`]: Recall@K both ways (with ITM re-ranking), zero-shot, captioning, sharded over
//!   the ranks.
//! - [`metrics`], [`progress`]: `metrics.jsonl` / `eval.jsonl` and the terminal output.
//! - [`bench`]: step timing for `weft bench train`.

#![warn(missing_docs)]

pub mod adamw;
pub mod batch;
pub mod bench;
pub mod engine;
pub mod error;
pub mod eval;
pub mod gather;
pub mod grads;
pub mod metrics;
pub mod params;
pub mod progress;
pub mod schedule;
pub mod snapshot;
pub mod trainer;
pub mod weights;

pub use error::TrainError;
pub use eval::{evaluate_retrieval, Retrieval};
pub use trainer::{train, train_with, Rank, TrainOptions, TrainSummary};

/// The CPU training backend: burn's `flex` with autodiff.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::Flex>;

/// Size the CPU thread pool (rayon's global pool, which flex uses); 0 keeps rayon's default
/// (`RAYON_NUM_THREADS` or all cores). Call before the first tensor operation. Also tunes the
/// allocator for training ([`weft_kernels::keep_freed_memory`]).
pub fn init_threads(threads: usize) {
    weft_kernels::keep_freed_memory();
    if threads > 0 {
        // An error means the pool already exists (a second call in one process): keep it.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
}

/// Threads of the CPU pool.
pub fn current_threads() -> usize {
    rayon::current_num_threads()
}

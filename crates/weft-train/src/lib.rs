//! weft-train: the training loop of weft and the pieces it is made of.
//!
//! - [`params`]: parameters by module path, stable ids, the weight-decay rule, and the flat
//!   gradient buffer (the unit that is clipped, and later all-reduced).
//! - [`schedule`]: linear warmup then cosine decay to a floor.
//! - [`trainer`]: [`train`], the single-process loop: AdamW with decoupled weight decay,
//!   global-norm clipping, gradient accumulation, non-finite step skipping, metrics, periodic
//!   retrieval evaluation and the final safetensors weights.
//! - [`checkpointing`]: snapshots written in the background and committed, and the restore of
//!   a checkpoint (the files themselves are `weft-checkpoint`'s).
//! - [`update`]: the update on the training device (AdamW over flat tensors), for GPUs: no
//!   trip of gradients or parameters through the host.
//! - [`dist`]: the data-parallel parts of a step: bucketed gradient all-reduce (host buffers,
//!   or device tensors through a [`dist::GradReduce`] such as NCCL), the ITC feature gather
//!   over a collective, the step statistics every rank agrees on.
//! - [`eval`]: Recall@K image-to-text and text-to-image from ITC embeddings.
//! - [`metrics`], [`progress`]: `metrics.jsonl` / `eval.jsonl` and the terminal output.
//! - [`bench`]: step timing for `weft bench train`.

pub mod bench;
pub mod checkpointing;
pub mod dist;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod progress;
pub mod schedule;
pub mod trainer;
pub mod update;

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

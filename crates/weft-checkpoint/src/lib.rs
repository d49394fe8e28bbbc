//! weft's checkpoints: sharded safetensors written by every rank, committed atomically, verified
//! on load, and exact to resume from.
//!
//! - [`files`]: the names of the directories and files (`checkpoints/step-N/`, shards, indexes,
//!   `trainer_state.json`, `COMMITTED`, `latest`).
//! - [`shard`]: which rank writes which tensors (balanced by bytes) and the writing of a rank's
//!   model and optimizer shards from a [`shard::Snapshot`].
//! - [`write`]: the safetensors writer (SHA-256 while writing, fsync, fixed header order, bf16
//!   export, an injectable write failure) and durable small files.
//! - [`state`]: [`TrainerState`] (step, scheduler, RNG, data cursor, config, file records) and the
//!   config compatibility check.
//! - [`commit`]: the commit once every rank has reported its files durable; `keep_last`.
//! - [`load`]: finding the checkpoint to resume from (falling back past a corrupt one), verifying
//!   it and reading tensors.
//! - [`export`]: one consolidated model file.
//! - [`lock`]: one trainer per run directory ([`RunLock`]).
//! - [`aside`]: `--resume restart` moves the previous run aside.
//! - [`pretrained`]: weights to start a new run from (`train.init_from`), matched by name.
//!
//! A single process commits for itself; in a job the coordinator does (`weft-coordinator`).

#![warn(missing_docs)]

pub mod aside;
pub mod commit;
pub mod error;
pub mod export;
pub mod files;
pub mod load;
pub mod lock;
pub mod pretrained;
pub mod shard;
pub mod state;
pub mod write;

pub use aside::set_aside;
pub use commit::{commit, ShardFile, ShardReport};
pub use error::{CheckpointError, Result};
pub use files::Family;
pub use load::{latest, open_verified, resolve, Checkpoint, Resume};
pub use lock::{RunLock, LOCK_FILE};
pub use pretrained::{read_pretrained, InitReport, Pretrained};
pub use shard::{write_rank, ParamTable, Snapshot};
pub use state::{check_compatible, RngState, SchedulerState, TrainerState, SHAPE_KEYS};
pub use write::{FileRecord, WriteOptions};

/// What commits a checkpoint once every rank's shards are durable: the process itself when it
/// is alone, the coordinator in a job.
pub trait Committer: Sync {
    /// Hands over this rank's report (and, from rank 0, the trainer state) for `report.step`;
    /// returns the committed directory once every rank's report is in and the commit is done.
    fn commit(
        &self,
        report: ShardReport,
        state: Option<TrainerState>,
    ) -> Result<std::path::PathBuf>;

    /// This rank could not write its shards of `step`: the commit of that step is off, and the
    /// other ranks waiting for it are told why.
    fn abandon(&self, step: u64, reason: &str);
}

/// The committer of a single process: it commits at once.
#[derive(Debug, Clone)]
pub struct LocalCommitter {
    /// The run directory.
    pub run_dir: std::path::PathBuf,
    /// Committed checkpoints kept (0: all).
    pub keep_last: usize,
}

impl Committer for LocalCommitter {
    fn commit(
        &self,
        report: ShardReport,
        state: Option<TrainerState>,
    ) -> Result<std::path::PathBuf> {
        let step = report.step;
        let state = state.ok_or(CheckpointError::Commit {
            step,
            reason: "a single process must hand over the trainer state".into(),
        })?;
        commit::commit(&self.run_dir, state, &[report], self.keep_last)
    }

    fn abandon(&self, _step: u64, _reason: &str) {}
}

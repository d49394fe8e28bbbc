//! What can go wrong with a checkpoint; every variant names the file, tensor or key involved.

use std::path::PathBuf;

/// A checkpoint error.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// A file named by the checkpoint is absent.
    #[error("checkpoint file {path} is missing")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Another process trains in the run directory.
    #[error("{path}: the run directory is in use by {holder}: wait for it to end, or give another --run-dir")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it (host and pid).
        holder: String,
    },
    /// `--resume never` in a run directory that holds checkpoints: starting over would prune
    /// them and mix two runs' metrics.
    #[error("{run_dir} holds committed checkpoints (the newest {newest}): --resume never would start another run over them; give a new --run-dir, or --resume restart to move them (with the metrics and weights) into {run_dir}/previous/ first")]
    WouldStartOver {
        /// The run directory.
        run_dir: PathBuf,
        /// Its newest committed checkpoint.
        newest: PathBuf,
    },
    /// Another rank of the job found a file of the checkpoint damaged (each rank hashes a share
    /// of the files; that rank's log names the file).
    #[error(
        "checkpoint {dir}: rank {rank} found one of its files damaged (its log names the file)"
    )]
    DamagedElsewhere {
        /// The checkpoint.
        dir: PathBuf,
        /// The rank that found it.
        rank: usize,
    },
    /// A file is not what the checkpoint recorded, or not a valid file of its kind.
    #[error("checkpoint file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds no committed checkpoint (a save that did not finish).
    #[error("{dir} is not a committed checkpoint (no {marker})")]
    NotCommitted {
        /// The directory.
        dir: PathBuf,
        /// The marker it lacks.
        marker: &'static str,
    },
    /// No usable checkpoint in a run directory.
    #[error("no committed checkpoint in {dir}{}", if .tried.is_empty() { String::new() } else { format!(" that loads ({})", .tried.join("; ")) })]
    NoCheckpoint {
        /// The checkpoints directory.
        dir: PathBuf,
        /// The ones tried, and why each failed.
        tried: Vec<String>,
    },
    /// A path given as weights to start from holds none that fit.
    #[error("{path}: {reason}")]
    NotWeights {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The checkpoint does not fit this run.
    #[error("the checkpoint does not fit this run: {key} is {saved} in the checkpoint but {current} now")]
    Incompatible {
        /// The first differing config key (or tensor).
        key: String,
        /// Its value in the checkpoint.
        saved: String,
        /// Its value now.
        current: String,
    },
    /// A tensor the run needs is absent or has another shape or type.
    #[error("tensor {name}: {reason}")]
    Tensor {
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The committer could not be reached or failed (another rank, the coordinator).
    #[error("checkpoint commit of step {step}: {reason}")]
    Commit {
        /// The step.
        step: u64,
        /// Why.
        reason: String,
    },
}

/// A shorthand.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// Maps an I/O error to [`CheckpointError::Io`] naming `path`.
pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.into();
    move |source| CheckpointError::Io { path, source }
}

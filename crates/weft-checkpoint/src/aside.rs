//! `--resume restart`: the previous run of a run directory moved aside, not deleted.
//!
//! `--resume never` over committed checkpoints is refused ([`crate::CheckpointError::WouldStartOver`]);
//! `--resume restart` is the explicit way to start again in the same directory: rank 0, holding
//! the directory's lock, moves the previous run's results (its checkpoints, metrics and
//! weights) into `RUN_DIR/previous/N/` (the first free N) before any rank looks for a
//! checkpoint. Nothing is deleted; moving them back undoes it.

use std::path::{Path, PathBuf};

use crate::error::{io, Result};
use crate::files::{CHECKPOINTS, MODEL_FILE};

/// Where previous runs are set aside, under the run directory.
pub const PREVIOUS: &str = "previous";

/// What a run leaves that a new run in the directory would mix with or take for its own.
pub const RESULTS: [&str; 4] = [CHECKPOINTS, "metrics.jsonl", "eval.jsonl", MODEL_FILE];

/// Moves the previous run's [`RESULTS`] in `run_dir` into `run_dir/previous/N/`; returns that
/// directory, or `None` when there was nothing to move.
pub fn set_aside(run_dir: &Path) -> Result<Option<PathBuf>> {
    let present: Vec<&str> = RESULTS
        .into_iter()
        .filter(|name| run_dir.join(name).exists())
        .collect();
    if present.is_empty() {
        return Ok(None);
    }
    let previous = run_dir.join(PREVIOUS);
    std::fs::create_dir_all(&previous).map_err(io(&previous))?;
    let to = (1..)
        .map(|n| previous.join(n.to_string()))
        .find(|d| !d.exists())
        .expect("a free number");
    std::fs::create_dir(&to).map_err(io(&to))?;
    for name in present {
        let from = run_dir.join(name);
        std::fs::rename(&from, to.join(name)).map_err(io(&from))?;
    }
    crate::write::sync_dir(&to)?;
    crate::write::sync_dir(run_dir)?;
    Ok(Some(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_runs_results_move_to_the_first_free_number() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        assert_eq!(set_aside(run).unwrap(), None);
        std::fs::create_dir_all(run.join("checkpoints/step-00000002")).unwrap();
        std::fs::write(run.join("metrics.jsonl"), "{\"step\":1}\n").unwrap();
        std::fs::write(run.join("config.toml"), "").unwrap();
        let to = set_aside(run).unwrap().unwrap();
        assert_eq!(to, run.join("previous/1"));
        assert!(to.join("checkpoints/step-00000002").is_dir());
        assert!(to.join("metrics.jsonl").is_file());
        assert!(!run.join("checkpoints").exists() && !run.join("metrics.jsonl").exists());
        // What a new run rewrites stays.
        assert!(run.join("config.toml").is_file());
        std::fs::write(run.join("model.safetensors"), "x").unwrap();
        assert_eq!(set_aside(run).unwrap().unwrap(), run.join("previous/2"));
    }
}

//! Names of a checkpoint's files and directories.
//!
//! ```text
//! RUN_DIR/checkpoints/
//!   latest                                   "step-00001000" (replaced atomically)
//!   step-00001000/
//!     model-00001-of-00002.safetensors       rank 0's share of the parameters
//!     model-00002-of-00002.safetensors       rank 1's share
//!     model.safetensors.index.json           Hugging Face index: total_size, weight_map
//!     optimizer-0000r-of-0000W.safetensors   AdamW moments, keyed by parameter name
//!     optimizer.safetensors.index.json
//!     trainer_state.json                     step, scheduler, RNG, data cursor, config, files
//!     COMMITTED                              written last, by the committer
//!   step-00002000.tmp/                       a save in progress (or one that died)
//! ```

use std::path::{Path, PathBuf};

/// The checkpoints directory inside a run directory.
pub const CHECKPOINTS: &str = "checkpoints";
/// The file naming the newest committed checkpoint.
pub const LATEST: &str = "latest";
/// The commit marker, written last.
pub const COMMITTED: &str = "COMMITTED";
/// The trainer state.
pub const TRAINER_STATE: &str = "trainer_state.json";
/// The consolidated weights `weft train` writes at the end of a run (`RUN_DIR/model.safetensors`).
pub const MODEL_FILE: &str = "model.safetensors";
/// Suffix of a checkpoint being written.
pub const TMP_SUFFIX: &str = ".tmp";

/// The two families of shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Parameters, named by module path.
    Model,
    /// Optimizer state: `<parameter>.exp_avg`, `<parameter>.exp_avg_sq`, `<parameter>.step`.
    Optimizer,
}

impl Family {
    /// Both, in file order.
    pub const ALL: [Family; 2] = [Family::Model, Family::Optimizer];

    /// The file-name stem.
    pub fn stem(self) -> &'static str {
        match self {
            Family::Model => "model",
            Family::Optimizer => "optimizer",
        }
    }

    /// The shard of `rank` of `world` (numbered from 1, as Hugging Face does).
    pub fn shard(self, rank: usize, world: usize) -> String {
        format!(
            "{}-{:05}-of-{:05}.safetensors",
            self.stem(),
            rank + 1,
            world
        )
    }

    /// The index file.
    pub fn index(self) -> String {
        format!("{}.safetensors.index.json", self.stem())
    }
}

/// `step-00001000`.
pub fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The step of a directory named by [`step_name`], if it is one (not a `.tmp`).
pub fn parse_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `RUN_DIR/checkpoints`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(CHECKPOINTS)
}

/// Where step `step` is written before its commit.
pub fn tmp_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoints_dir(run_dir).join(format!("{}{TMP_SUFFIX}", step_name(step)))
}

/// Where step `step` lives once committed.
pub fn final_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoints_dir(run_dir).join(step_name(step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            Family::Model.shard(0, 2),
            "model-00001-of-00002.safetensors"
        );
        assert_eq!(
            Family::Optimizer.index(),
            "optimizer.safetensors.index.json"
        );
        assert_eq!(step_name(1000), "step-00001000");
        assert_eq!(parse_step("step-00001000"), Some(1000));
        assert_eq!(parse_step("step-123456789"), Some(123_456_789));
        assert_eq!(parse_step("step-00001000.tmp"), None);
        assert_eq!(parse_step("latest"), None);
    }
}

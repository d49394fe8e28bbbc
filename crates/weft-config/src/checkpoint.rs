//! `[checkpoint]`: when a run saves itself and how many saves it keeps.

use serde::{Deserialize, Serialize};

/// `[checkpoint]`: when a run saves itself and how many saves it keeps. A run also saves at
/// its end and, on SIGTERM or SIGUSR1, at the next step boundary before it exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Save every this many optimizer steps (0: only at the end and on a signal).
    pub every_steps: u64,
    /// Committed checkpoints kept: older ones are deleted once a newer one is committed
    /// (0 keeps them all).
    pub keep_last: usize,
    /// Write checkpoints on a background thread while training goes on (at most one in
    /// flight); false writes them before the next step.
    pub async_save: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_steps: 1000,
            keep_last: 3,
            async_save: true,
        }
    }
}

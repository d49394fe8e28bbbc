//! `trainer_state.json`: everything besides the tensors that a resume needs, and the record of
//! every file of the checkpoint.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weft_data::DataCursor;

use crate::error::{CheckpointError, Result};
use crate::write::FileRecord;

/// The version of this layout.
pub const FORMAT: u32 = 1;

/// The trainer state of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// [`FORMAT`].
    pub format: u32,
    /// The weft that wrote it.
    pub weft_version: String,
    /// Optimizer steps taken.
    pub step: u64,
    /// The epoch the data cursor is in.
    pub epoch: u64,
    /// Real samples trained on, over all ranks.
    pub samples_seen: u64,
    /// Steps whose update was skipped (non-finite).
    pub skipped_steps: u64,
    /// Non-finite steps in a row at the end.
    pub consecutive_nonfinite: u64,
    /// The learning-rate schedule and where it stands.
    pub scheduler: SchedulerState,
    /// The random streams and where they stand.
    pub rng: RngState,
    /// Every rank's position in the data.
    pub data_cursor: DataCursor,
    /// Ranks of the job that wrote it.
    pub world_size: usize,
    /// The resolved config of the run.
    pub config: serde_json::Value,
    /// The last evaluation, if any.
    #[serde(default)]
    pub last_eval: Option<serde_json::Value>,
    /// Every file of the checkpoint but this one and the commit marker, by name.
    #[serde(default)]
    pub files: BTreeMap<String, FileRecord>,
}

/// The learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerState {
    /// Its kind (`warmup_cosine`).
    pub name: String,
    /// Peak learning rate.
    pub peak: f64,
    /// Final learning rate.
    pub floor: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Steps in all.
    pub total: u64,
    /// The next step it will be asked for (from 0).
    pub next_step: u64,
}

/// weft draws its random numbers from streams keyed by the run's seed and a counter, so a
/// stream's state is its counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    /// The run's seed.
    pub seed: u64,
    /// Micro-batches whose objective draws (MLM and MIM masks, ITM negatives) were made.
    pub objective_draws: u64,
}

/// The settings whose change makes a checkpoint unloadable: the model's shape (the image size
/// sets the ViT's position table).
pub const SHAPE_KEYS: [&str; 2] = ["model.", "data.image_size"];

/// Fails, naming the first differing key (in key order), unless `saved` and `current` agree on
/// every key that starts with one of `prefixes`.
pub fn check_compatible(
    saved: &serde_json::Value,
    current: &serde_json::Value,
    prefixes: &[&str],
) -> Result<()> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", saved, &mut a);
    flatten("", current, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        if !prefixes.iter().any(|p| key.starts_with(p)) {
            continue;
        }
        let (x, y) = (a.get(key), b.get(key));
        if x != y {
            let show = |v: Option<&serde_json::Value>| v.map_or("absent".into(), |v| v.to_string());
            return Err(CheckpointError::Incompatible {
                key: key.clone(),
                saved: show(x),
                current: show(y),
            });
        }
    }
    Ok(())
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_differing_shape_key_is_named() {
        let saved = json!({"model": {"embed_dim": 16, "vision": {"depth": 2, "width": 32}}, "train": {"lr": 1.0}, "data": {"image_size": 32}});
        let mut current = saved.clone();
        current["train"]["lr"] = json!(2.0);
        check_compatible(&saved, &current, &SHAPE_KEYS).unwrap();
        current["model"]["vision"]["width"] = json!(64);
        current["model"]["vision"]["depth"] = json!(3);
        let e = check_compatible(&saved, &current, &SHAPE_KEYS)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.vision.depth is 2 in the checkpoint but 3 now"),
            "{e}"
        );
        current = saved.clone();
        current["data"]["image_size"] = json!(64);
        let e = check_compatible(&saved, &current, &SHAPE_KEYS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.image_size"), "{e}");
    }
}

//! Committing a checkpoint: once every rank has written its shards (and fsynced them), the
//! committer writes the indexes, `trainer_state.json` and, last, the `COMMITTED` marker, renames
//! `step-N.tmp` to `step-N`, points `latest` at it and only then deletes checkpoints beyond
//! `keep_last`. A crash at any point leaves the previous committed checkpoint as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, CheckpointError, Result};
use crate::files::{
    checkpoints_dir, final_dir, parse_step, step_name, tmp_dir, Family, COMMITTED, LATEST,
    TMP_SUFFIX, TRAINER_STATE,
};
use crate::state::TrainerState;
use crate::write::{replace_atomically, sync_dir, write_durable, FileRecord};

/// One shard file as its rank reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFile {
    /// Model or optimizer.
    pub family: FamilyName,
    /// Its record (name, size, SHA-256), made while it was written.
    pub record: FileRecord,
    /// Its tensors and their bytes.
    pub tensors: Vec<(String, u64)>,
}

/// [`Family`] as it travels in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FamilyName {
    /// [`Family::Model`].
    Model,
    /// [`Family::Optimizer`].
    Optimizer,
}

impl From<FamilyName> for Family {
    fn from(f: FamilyName) -> Self {
        match f {
            FamilyName::Model => Family::Model,
            FamilyName::Optimizer => Family::Optimizer,
        }
    }
}

impl From<Family> for FamilyName {
    fn from(f: Family) -> Self {
        match f {
            Family::Model => FamilyName::Model,
            Family::Optimizer => FamilyName::Optimizer,
        }
    }
}

/// What one rank wrote for a checkpoint, durably.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// The rank.
    pub rank: usize,
    /// Ranks in the job.
    pub world_size: usize,
    /// The checkpoint's step.
    pub step: u64,
    /// Its files.
    pub files: Vec<ShardFile>,
}

/// Commits checkpoint `state.step` of `run_dir` from every rank's report: writes the indexes,
/// the trainer state (with every file's record) and the commit marker into `step-N.tmp`,
/// renames it to `step-N`, updates `latest`, and deletes the committed checkpoints older than
/// the newest `keep_last` (0 keeps them all) and abandoned saves of earlier steps.
pub fn commit(
    run_dir: &Path,
    mut state: TrainerState,
    reports: &[ShardReport],
    keep_last: usize,
) -> Result<PathBuf> {
    let step = state.step;
    let tmp = tmp_dir(run_dir, step);
    let fail = |reason: String| CheckpointError::Commit { step, reason };
    let world = state.world_size;
    let ranks: BTreeSet<usize> = reports.iter().map(|r| r.rank).collect();
    if reports.len() != world || ranks != (0..world).collect() {
        return Err(fail(format!(
            "reports from ranks {ranks:?}, expected every rank of {world}"
        )));
    }
    if let Some(r) = reports
        .iter()
        .find(|r| r.step != step || r.world_size != world)
    {
        return Err(fail(format!(
            "rank {} reports step {} of {} ranks",
            r.rank, r.step, r.world_size
        )));
    }
    // Every reported file is there, at its size.
    let mut files = BTreeMap::new();
    let mut maps: BTreeMap<Family, (u64, BTreeMap<String, String>)> = BTreeMap::new();
    for r in reports {
        for f in &r.files {
            let path = tmp.join(&f.record.file);
            let len = std::fs::metadata(&path)
                .map_err(|_| CheckpointError::Missing { path: path.clone() })?
                .len();
            if len != f.record.size {
                return Err(CheckpointError::Corrupt {
                    path,
                    reason: format!("{len} bytes, but rank {} wrote {}", r.rank, f.record.size),
                });
            }
            let (total, map) = maps.entry(f.family.into()).or_default();
            for (name, bytes) in &f.tensors {
                *total += bytes;
                if map.insert(name.clone(), f.record.file.clone()).is_some() {
                    return Err(fail(format!("tensor {name} was written twice")));
                }
            }
            files.insert(f.record.file.clone(), f.record.clone());
        }
    }
    // Anything else in the directory is left from an earlier attempt at this step.
    for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
        let entry = entry.map_err(io(&tmp))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !files.contains_key(&name) {
            let p = entry.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            } else {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
    }
    for (family, (total, map)) in &maps {
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": map,
        });
        let path = tmp.join(family.index());
        let bytes = serde_json::to_vec_pretty(&index).expect("JSON");
        let rec = write_durable(&path, &bytes)?;
        files.insert(rec.file.clone(), rec);
    }
    state.files = files;
    let state_bytes = serde_json::to_vec_pretty(&state).expect("JSON");
    let state_rec = write_durable(&tmp.join(TRAINER_STATE), &state_bytes)?;
    let marker = serde_json::json!({"step": step, "trainer_state_sha256": state_rec.sha256});
    write_durable(
        &tmp.join(COMMITTED),
        &serde_json::to_vec_pretty(&marker).expect("JSON"),
    )?;
    sync_dir(&tmp)?;
    let dst = final_dir(run_dir, step);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    let parent = checkpoints_dir(run_dir);
    sync_dir(&parent)?;
    replace_atomically(
        &parent.join(LATEST),
        format!("{}\n", step_name(step)).as_bytes(),
    )?;
    prune(run_dir, step, keep_last)?;
    tracing::info!("checkpoint {} committed", dst.display());
    Ok(dst)
}

/// Deletes committed checkpoints beyond the newest `keep_last` (0: none) and saves of steps
/// before `step` that never committed.
fn prune(run_dir: &Path, step: u64, keep_last: usize) -> Result<()> {
    let dir = checkpoints_dir(run_dir);
    let mut committed = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(s) = parse_step(&name) {
            committed.push((s, entry.path()));
        } else if let Some(s) = name.strip_suffix(TMP_SUFFIX).and_then(parse_step) {
            if s < step {
                let p = entry.path();
                tracing::info!("removing the unfinished save {}", p.display());
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            }
        }
    }
    if keep_last == 0 {
        return Ok(());
    }
    committed.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    for (_, p) in committed.into_iter().skip(keep_last) {
        tracing::info!(
            "removing checkpoint {} (keep_last {keep_last})",
            p.display()
        );
        std::fs::remove_dir_all(&p).map_err(io(&p))?;
    }
    Ok(())
}

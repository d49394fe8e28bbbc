//! Finding, verifying and reading checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{io, CheckpointError, Result};
use crate::files::{checkpoints_dir, parse_step, Family, COMMITTED, TRAINER_STATE};
use crate::state::{TrainerState, FORMAT};
use crate::write::hash_file;

/// A committed, verified checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// Its trainer state.
    pub state: TrainerState,
}

/// Which checkpoint a run resumes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resume {
    /// The newest committed checkpoint of the run directory that verifies, if any; an older one
    /// when the newest does not (with a warning).
    #[default]
    Auto,
    /// Start afresh; refused over committed checkpoints.
    Never,
    /// Start afresh after rank 0 has moved the previous run aside ([`crate::aside`]).
    Restart,
    /// This checkpoint directory, which must verify.
    Path(PathBuf),
}

impl std::str::FromStr for Resume {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Resume::Auto,
            "never" => Resume::Never,
            "restart" => Resume::Restart,
            "" => {
                return Err("--resume wants auto, never, restart or a checkpoint directory".into())
            }
            path => Resume::Path(PathBuf::from(path)),
        })
    }
}

/// The latest checkpoint of `run_dir`: its committed checkpoint of the highest step (named
/// `step-N` and holding the commit marker), whether it verifies or not. The one definition
/// train, eval and `weft ckpt` use; the `latest` file points at it for other tools.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(committed(run_dir)?.into_iter().next().map(|(_, dir)| dir))
}

/// The committed checkpoints of `run_dir` (named `step-N` and holding the commit marker),
/// newest first.
pub fn committed(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = parse_step(&name) {
            if entry.path().join(COMMITTED).exists() {
                out.push((step, entry.path()));
            }
        }
    }
    out.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    Ok(out)
}

/// Opens the checkpoint in `dir` and checks it: the commit marker, the trainer state it
/// vouches for, and the size and SHA-256 of every file the state records.
pub fn open_verified(dir: &Path) -> Result<Checkpoint> {
    let ckpt = open_state(dir)?;
    ckpt.verify_files(0, 1)?;
    Ok(ckpt)
}

/// Opens the checkpoint in `dir` and checks its commit marker and the trainer state it vouches
/// for, but not the files the state records ([`Checkpoint::verify_files`]).
pub fn open_state(dir: &Path) -> Result<Checkpoint> {
    let marker_path = dir.join(COMMITTED);
    if !marker_path.exists() {
        return Err(CheckpointError::NotCommitted {
            dir: dir.to_path_buf(),
            marker: COMMITTED,
        });
    }
    let corrupt = |path: &Path, reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker_path).map_err(io(&marker_path))?)
            .map_err(|e| corrupt(&marker_path, e.to_string()))?;
    let state_path = dir.join(TRAINER_STATE);
    let state_rec = hash_file(&state_path)?;
    if marker["trainer_state_sha256"].as_str() != Some(state_rec.sha256.as_str()) {
        return Err(corrupt(
            &state_path,
            "its SHA-256 is not the one the commit marker recorded".into(),
        ));
    }
    let state: TrainerState =
        serde_json::from_slice(&std::fs::read(&state_path).map_err(io(&state_path))?)
            .map_err(|e| corrupt(&state_path, e.to_string()))?;
    if state.format != FORMAT {
        return Err(corrupt(
            &state_path,
            format!("format {} (this weft reads {FORMAT})", state.format),
        ));
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
    })
}

impl Checkpoint {
    /// Checks the size and SHA-256 of the recorded files whose index (in name order) is
    /// `share` modulo `of`: the ranks of a job each hash a share, so that each file is read
    /// once, not once a rank.
    pub fn verify_files(&self, share: usize, of: usize) -> Result<()> {
        let dir = &self.dir;
        let corrupt = |path: &Path, reason: String| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let mine = self.state.files.iter().skip(share).step_by(of.max(1));
        for (name, rec) in mine {
            let path = dir.join(name);
            let got = hash_file(&path)?;
            if got.size != rec.size {
                return Err(corrupt(
                    &path,
                    format!(
                        "{} bytes, {} recorded{}",
                        got.size,
                        rec.size,
                        if got.size < rec.size {
                            " (truncated)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            if got.sha256 != rec.sha256 {
                return Err(corrupt(
                    &path,
                    "SHA-256 differs from the recorded one".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The checkpoint a run in `run_dir` resumes from, if any. With [`Resume::Auto`] a newest
/// checkpoint that does not verify is skipped with a warning for the one before it; when none
/// verifies, the error lists why each failed. [`Resume::Never`] in a run directory with
/// committed checkpoints is refused ([`CheckpointError::WouldStartOver`]); [`Resume::Restart`]
/// starts afresh (rank 0 has moved the previous run aside before).
pub fn resolve(run_dir: &Path, resume: &Resume) -> Result<Option<Checkpoint>> {
    resolve_by(run_dir, resume, open_verified, &mut PassedOver::default())
}

/// The checkpoints [`resolve_by`] has passed over: not to be tried again, and why each failed.
#[derive(Debug, Default)]
pub struct PassedOver {
    dirs: Vec<PathBuf>,
    why: Vec<String>,
}

impl PassedOver {
    /// Passes over the checkpoint in `dir` because of `why`, with a warning.
    pub fn pass(&mut self, dir: &Path, why: &CheckpointError) {
        tracing::warn!("checkpoint {} is unusable: {why}", dir.display());
        self.dirs.push(dir.to_path_buf());
        self.why.push(why.to_string());
    }
}

/// [`resolve`] with `open` as the check of each candidate ([`open_verified`]; [`open_state`]
/// where the ranks of a job hash the files between them), passing over the checkpoints in
/// `passed` and adding to it those `open` refuses.
pub fn resolve_by(
    run_dir: &Path,
    resume: &Resume,
    open: impl Fn(&Path) -> Result<Checkpoint>,
    passed: &mut PassedOver,
) -> Result<Option<Checkpoint>> {
    match resume {
        Resume::Restart => Ok(None),
        Resume::Never => match latest(run_dir)? {
            Some(newest) => Err(CheckpointError::WouldStartOver {
                run_dir: run_dir.to_path_buf(),
                newest,
            }),
            None => Ok(None),
        },
        Resume::Path(p) => open(p).map(Some),
        Resume::Auto => {
            let found = committed(run_dir)?;
            for (_, dir) in &found {
                if passed.dirs.contains(dir) {
                    continue;
                }
                match open(dir) {
                    Ok(c) => {
                        if !passed.why.is_empty() {
                            tracing::warn!(
                                "resuming from the older checkpoint {} ({})",
                                dir.display(),
                                passed.why.join("; ")
                            );
                        }
                        return Ok(Some(c));
                    }
                    Err(e) => passed.pass(dir, &e),
                }
            }
            if found.is_empty() {
                Ok(None)
            } else {
                Err(CheckpointError::NoCheckpoint {
                    dir: checkpoints_dir(run_dir),
                    tried: passed.why.clone(),
                })
            }
        }
    }
}

/// A tensor read from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorIn {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements (f32 tensors).
    pub f32: Vec<f32>,
    /// Its elements (i64 tensors).
    pub i64: Vec<i64>,
}

impl Checkpoint {
    /// The `weight_map` of a family's index: tensor name → file.
    pub fn weight_map(&self, family: Family) -> Result<BTreeMap<String, String>> {
        let path = self.dir.join(family.index());
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).map_err(io(&path))?).map_err(|e| {
                CheckpointError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
        serde_json::from_value(v["weight_map"].clone()).map_err(|e| CheckpointError::Corrupt {
            path,
            reason: format!("weight_map: {e}"),
        })
    }

    /// Every tensor of a family, by name.
    pub fn read_all(&self, family: Family) -> Result<Vec<TensorIn>> {
        let map = self.weight_map(family)?;
        let names: Vec<&str> = map.keys().map(String::as_str).collect();
        self.read(family, &names)
    }

    /// The tensors `names` of a family, in that order.
    pub fn read(&self, family: Family, names: &[&str]) -> Result<Vec<TensorIn>> {
        let map = self.weight_map(family)?;
        let mut by_file: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            let file = map.get(*name).ok_or_else(|| CheckpointError::Tensor {
                name: (*name).to_string(),
                reason: format!("not in the checkpoint's {}", family.index()),
            })?;
            by_file.entry(file).or_default().push(i);
        }
        let mut out: HashMap<usize, TensorIn> = HashMap::new();
        for (file, wanted) in by_file {
            let path = self.dir.join(file);
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            for i in wanted {
                let name = names[i];
                let t = st.tensor(name).map_err(|e| CheckpointError::Tensor {
                    name: name.to_string(),
                    reason: format!("in {}: {e}", path.display()),
                })?;
                let data = t.data();
                let (f32s, i64s) = match t.dtype() {
                    Dtype::F32 => (
                        data.chunks_exact(4)
                            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                            .collect(),
                        Vec::new(),
                    ),
                    Dtype::I64 => (
                        Vec::new(),
                        data.chunks_exact(8)
                            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                            .collect(),
                    ),
                    other => {
                        return Err(CheckpointError::Tensor {
                            name: name.to_string(),
                            reason: format!("dtype {other:?}, expected F32 or I64"),
                        })
                    }
                };
                out.insert(
                    i,
                    TensorIn {
                        name: name.to_string(),
                        shape: t.shape().to_vec(),
                        f32: f32s,
                        i64: i64s,
                    },
                );
            }
        }
        Ok((0..names.len())
            .map(|i| out.remove(&i).expect("every name was read"))
            .collect())
    }

    /// The f32 tensors `wanted` (name, shape) of a family, concatenated in that order; a
    /// missing tensor, another shape or another type is an error naming it.
    pub fn read_flat(&self, family: Family, wanted: &[(String, Vec<usize>)]) -> Result<Vec<f32>> {
        let names: Vec<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
        let tensors = self.read(family, &names)?;
        let mut flat = Vec::with_capacity(
            wanted
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum(),
        );
        for (t, (_, shape)) in tensors.into_iter().zip(wanted) {
            if &t.shape != shape {
                return Err(CheckpointError::Tensor {
                    name: t.name,
                    reason: format!(
                        "shape {:?} in the checkpoint, {shape:?} in the model",
                        t.shape
                    ),
                });
            }
            if t.f32.len() != shape.iter().product::<usize>() {
                return Err(CheckpointError::Tensor {
                    name: t.name,
                    reason: "not an f32 tensor".into(),
                });
            }
            flat.extend(t.f32);
        }
        Ok(flat)
    }
}

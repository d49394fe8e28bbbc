//! Per-step metrics (`metrics.jsonl`), evaluation records (`eval.jsonl`) and progress output.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{io, TrainError};
use crate::eval::Retrieval;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepMetrics {
    /// Optimizer step, from 1.
    pub step: u64,
    /// Epoch of the last micro-batch of the step, from 0.
    pub epoch: u64,
    /// Training samples consumed so far.
    pub samples_seen: u64,
    /// Weighted total loss (mean over the micro-batches).
    pub loss: f64,
    /// Each enabled objective's unweighted loss.
    #[serde(flatten)]
    pub parts: BTreeMap<String, f64>,
    /// Learning rate of the step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the update was skipped (non-finite loss or gradient norm).
    pub skipped: bool,
    /// Samples per second of the step.
    pub samples_per_s: f64,
    /// Wall time of the step.
    pub step_time_s: f64,
    /// Fraction of the step spent waiting for data.
    pub data_wait_fraction: f64,
}

/// One line of `eval.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRecord {
    /// Optimizer step the model had taken.
    pub step: u64,
    /// Training samples seen.
    pub samples_seen: u64,
    /// The metrics.
    #[serde(flatten)]
    pub retrieval: Retrieval,
}

/// One line of `runs.jsonl`: who ran a start of the run (the first, then each resume), on
/// what. `weft report` shows them as the environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// When this start began (RFC 3339, UTC).
    pub started_at: String,
    /// weft's version.
    pub weft_version: String,
    /// The tensor backend as burn names it.
    pub backend: String,
    /// `train.device`.
    pub device: serde_json::Value,
    /// `train.precision`.
    pub precision: serde_json::Value,
    /// Ranks of the job.
    pub world_size: usize,
    /// `dist.backend` (the gradient all-reduce; `auto` picks NCCL for CUDA, TCP otherwise).
    pub dist_backend: serde_json::Value,
    /// Step of the checkpoint resumed from (0: a fresh start).
    pub resumed_from_step: u64,
    /// Host name of rank 0.
    pub host: String,
    /// `os/arch` of rank 0.
    pub platform: String,
    /// Cores rank 0 may use.
    pub cpus: usize,
    /// The command line of rank 0.
    pub command: String,
}

impl RunRecord {
    /// The record of a start now, of `config` (resolved, as JSON) on `backend`.
    pub fn now(
        config: &serde_json::Value,
        backend: String,
        world_size: usize,
        resumed: u64,
    ) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "?".into());
        Self {
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            weft_version: env!("CARGO_PKG_VERSION").into(),
            backend,
            device: config["train"]["device"].clone(),
            precision: config["train"]["precision"].clone(),
            world_size,
            dist_backend: config["dist"]["backend"].clone(),
            resumed_from_step: resumed,
            host,
            platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }
}

/// An append-only JSON-lines file, flushed after every record.
pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonLines {
    /// Open (append) `path`.
    pub fn append(path: &Path) -> Result<Self, TrainError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Write one record as a line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<(), TrainError> {
        let line = serde_json::to_string(record).expect("metrics serialize");
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(io(&self.path))
    }
}

/// Drops the lines of `path` whose `step` comes after `step` (they belong to a run that was
/// interrupted after its last checkpoint and are trained again; all of them on a fresh start,
/// step 0), and the lines that do not parse (a line torn by a crash or a full disk, which
/// would otherwise sit mid-file once the run appends again). A missing file is fine.
pub fn truncate_after_step(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&bytes);
    let (mut kept, mut torn) = (Vec::new(), 0usize);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["step"].as_u64())
        {
            Some(s) if s <= step => kept.push(line),
            Some(_) => {}
            None => torn += 1,
        }
    }
    if torn > 0 {
        tracing::warn!(
            "{}: dropped {torn} line(s) that do not parse (torn by a crash or a full disk)",
            path.display()
        );
    }
    if kept.len() == text.lines().count() && text.ends_with('\n') {
        return Ok(());
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(&tmp, body).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

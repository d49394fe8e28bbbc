//! Reading a run directory: `metrics.jsonl`, `eval.jsonl`, `config.toml`, `runs.jsonl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{io, ReportError};

/// Fields of `metrics.jsonl` that are not loss components.
pub const TRAIN_FIELDS: [&str; 9] = [
    "step",
    "epoch",
    "samples_seen",
    "lr",
    "grad_norm",
    "skipped",
    "samples_per_s",
    "step_time_s",
    "data_wait_fraction",
];

/// Fields of `eval.jsonl` that say when, not how well.
pub const EVAL_FIELDS: [&str; 2] = ["step", "samples_seen"];

/// A numeric field over optimizer steps.
pub type Points = Vec<(f64, f64)>;

/// Everything a report shows of one run directory.
#[derive(Debug, Clone, Default)]
pub struct RunData {
    /// The run directory.
    pub dir: PathBuf,
    /// Every numeric field of `metrics.jsonl` (but `step`), as (step, value), in step order.
    pub train: BTreeMap<String, Points>,
    /// The loss fields: `loss` (the weighted total) first, then each objective's.
    pub losses: Vec<String>,
    /// Steps whose update was skipped (non-finite loss or gradient).
    pub skipped_steps: Vec<u64>,
    /// Every numeric field of `eval.jsonl` (but `step`), as (step, value).
    pub eval: BTreeMap<String, Points>,
    /// The evaluation records as written, for the table.
    pub eval_rows: Vec<Map<String, Value>>,
    /// `config.toml`, if present.
    pub config: Option<String>,
    /// The lines of `runs.jsonl`: one per start (first run and each resume).
    pub starts: Vec<Map<String, Value>>,
    /// Things the reader passed over (a truncated last line, a missing file), for the page.
    pub notes: Vec<String>,
}

impl RunData {
    /// Read `dir`. `metrics.jsonl` must exist and hold at least one step; the other files are
    /// optional (the page says which are missing).
    pub fn read(dir: &Path) -> Result<Self, ReportError> {
        let mut data = RunData {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        let metrics = dir.join("metrics.jsonl");
        if !metrics.is_file() {
            return Err(ReportError::NoMetrics {
                dir: dir.to_path_buf(),
            });
        }
        let rows = read_lines(&metrics, &mut data.notes)?;
        if rows.is_empty() {
            return Err(ReportError::NoSteps { path: metrics });
        }
        for (step, row) in rows {
            for (key, value) in &row {
                if key == "step" {
                    continue;
                }
                if key == "skipped" {
                    if value.as_bool() == Some(true) {
                        data.skipped_steps.push(step as u64);
                    }
                    continue;
                }
                if let Some(v) = value.as_f64() {
                    data.train.entry(key.clone()).or_default().push((step, v));
                }
            }
        }
        let mut losses: Vec<String> = data
            .train
            .keys()
            .filter(|k| !TRAIN_FIELDS.contains(&k.as_str()) && k.as_str() != "loss")
            .cloned()
            .collect();
        if data.train.contains_key("loss") {
            losses.insert(0, "loss".into());
        }
        data.losses = losses;

        let eval = dir.join("eval.jsonl");
        if eval.is_file() {
            for (step, row) in read_lines(&eval, &mut data.notes)? {
                for (key, value) in &row {
                    if let (false, Some(v)) = (EVAL_FIELDS.contains(&key.as_str()), value.as_f64())
                    {
                        data.eval.entry(key.clone()).or_default().push((step, v));
                    }
                }
                data.eval_rows.push(row);
            }
        } else {
            data.notes.push(format!("no {}", eval.display()));
        }

        let config = dir.join("config.toml");
        match std::fs::read_to_string(&config) {
            Ok(text) => data.config = Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                data.notes.push(format!("no {}", config.display()));
            }
            Err(e) => return Err(io(&config)(e)),
        }

        let starts = dir.join("runs.jsonl");
        if starts.is_file() {
            let text = std::fs::read_to_string(&starts).map_err(io(&starts))?;
            for (i, line) in text.lines().enumerate() {
                match serde_json::from_str::<Map<String, Value>>(line) {
                    Ok(row) => data.starts.push(row),
                    Err(e) => {
                        data.notes
                            .push(format!("{}:{}: skipped ({e})", starts.display(), i + 1))
                    }
                }
            }
        } else {
            data.notes.push(format!(
                "no {}: the environment is not recorded (a run made before weft train wrote it)",
                starts.display()
            ));
        }
        Ok(data)
    }

    /// The training fields the page names, in its order: losses, then the rest.
    pub fn train_keys(&self) -> impl Iterator<Item = &str> {
        let rest = self
            .train
            .keys()
            .filter(|k| !self.losses.contains(k))
            .map(String::as_str);
        self.losses.iter().map(String::as_str).chain(rest)
    }

    /// The evaluation fields, `i2t_r5` before `i2t_r10`.
    pub fn eval_keys(&self) -> impl Iterator<Item = &str> {
        let mut keys: Vec<&str> = self.eval.keys().map(String::as_str).collect();
        keys.sort_by_key(|k| natural_key(k));
        keys.into_iter()
    }

    /// (first, last) step logged.
    pub fn step_range(&self) -> (u64, u64) {
        let steps = self.train.values().flat_map(|p| p.iter().map(|&(s, _)| s));
        let (lo, hi) = steps.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| {
            (lo.min(s), hi.max(s))
        });
        if lo.is_finite() {
            (lo as u64, hi as u64)
        } else {
            (0, 0)
        }
    }
}

/// A line of a JSON-lines file and its `step`.
type StepRow = (f64, Map<String, Value>);

/// The JSON objects of a JSON-lines file with their `step`. A last line without its newline
/// that does not parse (a run killed mid-write) is passed over with a note; any other bad line
/// is an error naming the line.
fn read_lines(path: &Path, notes: &mut Vec<String>) -> Result<Vec<StepRow>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut rows = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| ReportError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let row = match serde_json::from_str::<Map<String, Value>>(line) {
            Ok(row) => row,
            Err(e) if i + 1 == lines.len() && !complete => {
                notes.push(format!(
                    "{}:{}: an unfinished last line, left out ({e})",
                    path.display(),
                    i + 1
                ));
                continue;
            }
            Err(e) => return Err(bad(format!("not a JSON object: {e}"))),
        };
        let step = row
            .get("step")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("no numeric \"step\" field".into()))?;
        rows.push((step, row));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(rows)
}

/// `i2t_r5` before `i2t_r10`: runs of digits compare as numbers.
pub(crate) fn natural_key(key: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = u64::from(c as u8 - b'0');
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(u64::from(d));
                chars.next();
            }
            out.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    out.push((text, 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(metrics: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), metrics).unwrap();
        dir
    }

    #[test]
    fn losses_are_the_other_numeric_fields() {
        let dir = dir_with(
            "{\"step\":1,\"loss\":3.0,\"itc\":2.0,\"itm\":1.0,\"lr\":0.1,\"skipped\":false}\n\
             {\"step\":2,\"loss\":2.5,\"itc\":1.5,\"itm\":1.0,\"lr\":0.2,\"skipped\":true}\n",
        );
        let data = RunData::read(dir.path()).unwrap();
        assert_eq!(data.losses, ["loss", "itc", "itm"]);
        assert_eq!(data.train["lr"], [(1.0, 0.1), (2.0, 0.2)]);
        assert_eq!(data.skipped_steps, [2]);
        assert_eq!(
            data.train_keys().collect::<Vec<_>>(),
            ["loss", "itc", "itm", "lr"]
        );
        assert_eq!(data.step_range(), (1, 2));
        // eval.jsonl, config.toml and runs.jsonl are missing: said, not fatal.
        assert_eq!(data.notes.len(), 3, "{:?}", data.notes);
    }

    #[test]
    fn an_unfinished_last_line_is_left_out_with_a_note() {
        let dir = dir_with("{\"step\":1,\"loss\":3.0}\n{\"step\":2,\"lo");
        let data = RunData::read(dir.path()).unwrap();
        assert_eq!(data.train["loss"], [(1.0, 3.0)]);
        assert!(data.notes[0].contains("metrics.jsonl:2: an unfinished last line"));
    }

    #[test]
    fn a_bad_line_in_the_middle_names_the_line() {
        let dir = dir_with("{\"step\":1,\"loss\":3.0}\nnot json\n{\"step\":3,\"loss\":1.0}\n");
        let err = RunData::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:2: not a JSON object"), "{err}");
        let dir = dir_with("{\"loss\":3.0}\n");
        let err = RunData::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("metrics.jsonl:1: no numeric \"step\""),
            "{err}"
        );
    }

    #[test]
    fn no_metrics_or_no_steps_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = RunData::read(dir.path()).unwrap_err();
        assert!(matches!(err, ReportError::NoMetrics { .. }), "{err}");
        let dir = dir_with("");
        let err = RunData::read(dir.path()).unwrap_err();
        assert!(matches!(err, ReportError::NoSteps { .. }), "{err}");
    }

    #[test]
    fn eval_fields_are_read_by_step() {
        let dir = dir_with("{\"step\":1,\"loss\":3.0}\n");
        std::fs::write(
            dir.path().join("eval.jsonl"),
            "{\"step\":10,\"samples_seen\":80,\"i2t_r1\":0.5,\"i2t_r10\":0.9,\"i2t_r5\":0.7}\n\
             {\"step\":5,\"samples_seen\":40,\"i2t_r1\":0.25,\"i2t_r10\":0.8,\"i2t_r5\":0.6}\n",
        )
        .unwrap();
        let data = RunData::read(dir.path()).unwrap();
        assert_eq!(data.eval["i2t_r1"], [(5.0, 0.25), (10.0, 0.5)]);
        assert_eq!(
            data.eval_keys().collect::<Vec<_>>(),
            ["i2t_r1", "i2t_r5", "i2t_r10"]
        );
        assert_eq!(data.eval_rows.len(), 2);
    }
}

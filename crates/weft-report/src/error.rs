//! The errors of `weft report`: each names the file, line or chart involved.

use std::path::{Path, PathBuf};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The run directory has no `metrics.jsonl`.
    #[error(
        "{}: no metrics.jsonl (is this a run directory of weft train? it writes config.toml, \
         metrics.jsonl and eval.jsonl there)",
        dir.display()
    )]
    NoMetrics {
        /// The run directory.
        dir: PathBuf,
    },
    /// `metrics.jsonl` has no step yet.
    #[error("{}: no step logged yet", path.display())]
    NoSteps {
        /// The metrics file.
        path: PathBuf,
    },
    /// A line of a JSON-lines file is not a JSON object with a numeric `step`.
    #[error("{}:{line}: {message}", path.display())]
    BadLine {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// plotters could not draw a chart.
    #[error("plot {chart}: {message}")]
    Plot {
        /// The chart's file name (without `.png`).
        chart: String,
        /// plotters' error.
        message: String,
    },
    /// A plot size out of range.
    #[error("plot size {width}x{height}: must be 200..=10000 x 150..=10000 pixels")]
    Size {
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
    },
}

/// `map_err` helper: an I/O error on `path`.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

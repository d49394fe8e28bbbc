//! The error type of the data pipeline.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Everything that can go wrong between a Parquet path and a batch.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A path, directory or glob matched no Parquet file.
    #[error("no Parquet files found for {pattern}")]
    NoFiles {
        /// The path or glob as given.
        pattern: String,
    },
    /// A glob pattern is malformed.
    #[error("bad glob pattern {pattern}: {message}")]
    BadGlob {
        /// The pattern.
        pattern: String,
        /// Why.
        message: String,
    },
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A Parquet file is unreadable or truncated.
    #[error("unreadable Parquet file {path}{}: {message}", row_group.map(|g| format!(" (row group {g})")).unwrap_or_default())]
    BadParquet {
        /// The file.
        path: PathBuf,
        /// The row group, when the failure is inside one.
        row_group: Option<usize>,
        /// The reader's message.
        message: String,
    },
    /// A column the layout needs is missing.
    #[error(
        "{path}: no column {column:?}; columns present: [{}]; layouts weft knows: \
         Hugging Face (image: struct<bytes, path> + text|caption), \
         img2dataset (jpg|png|webp + caption|txt [+ key, status]), \
         or set data.image_column / data.text_column (+ data.key_column)",
        present.join(", ")
    )]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column that was looked for (`image or jpg/png/webp` when none matched).
        column: String,
        /// The columns the file has.
        present: Vec<String>,
    },
    /// The label column of a classification dataset is missing.
    #[error("{path}: no label column {column:?} (--label-column); columns present: [{}]", present.join(", "))]
    MissingLabelColumn {
        /// The file.
        path: PathBuf,
        /// The column asked for.
        column: String,
        /// The columns the file has.
        present: Vec<String>,
    },
    /// A column has a type the pipeline cannot read.
    #[error("{path}: column {column:?} has type {found}, expected {expected}")]
    ColumnType {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Its Arrow type.
        found: String,
        /// What was expected.
        expected: String,
    },
    /// Too many rows were skipped.
    #[error(
        "rank {rank}: {bad} of {seen} rows skipped ({:.2}%), more than data.max_bad_fraction = {max_fraction}; by reason: {}",
        100.0 * (*bad as f64) / (*seen as f64).max(1.0),
        by_reason.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
    )]
    TooManyBadRows {
        /// The rank that saw them.
        rank: usize,
        /// Skipped rows that count against the fraction.
        bad: u64,
        /// Rows seen.
        seen: u64,
        /// The limit.
        max_fraction: f64,
        /// Skipped rows by reason.
        by_reason: BTreeMap<String, u64>,
    },
    /// A rank has no usable row in its share of the epoch.
    #[error("rank {rank}: no usable row in its share of epoch {epoch} (all rows were skipped)")]
    NoUsableRows {
        /// The rank.
        rank: usize,
        /// The epoch.
        epoch: u64,
    },
    /// The plan cannot give a rank a single batch.
    #[error("{rows} rows cannot fill one global batch of {} rows ({world_size} {} x data.batch_size {batch_size}); lower data.batch_size or set data.last_batch = \"pad\"", .world_size * .batch_size, if *.world_size == 1 { "rank" } else { "ranks" })]
    TooFewRows {
        /// Rows in the dataset (or the remaining part of the epoch).
        rows: u64,
        /// Ranks.
        world_size: usize,
        /// Per-rank batch.
        batch_size: usize,
    },
    /// A data cursor does not belong to this dataset or is inconsistent.
    #[error("data cursor: {0}")]
    Cursor(String),
    /// The job's coordinator, which hands out the data plan, failed to answer.
    #[error("data plan from the coordinator: {0}")]
    Coordinator(String),
    /// A tokenizer file could not be loaded, trained or saved.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Writing a synthetic dataset or a file failed.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A worker thread of the pipeline stopped unexpectedly.
    #[error("data pipeline stopped: {0}")]
    Pipeline(String),
}

/// Shorthand.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

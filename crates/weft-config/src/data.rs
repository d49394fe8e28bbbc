//! `[data]`: where the image-text pairs are and how they become batches.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What to do with the rows that do not fill a last global batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LastBatch {
    /// Drop them: every epoch has `floor(rows / global_batch)` steps.
    Drop,
    /// Pad the last global batch with rows from the start of the epoch, flagged as padding.
    Pad,
}

/// The tokenizer model trained by `weft data tokenizer --train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerModel {
    /// BERT-style WordPiece.
    Wordpiece,
    /// Byte-pair encoding.
    Bpe,
}

/// `[data]`: where the image-text pairs are and how they become batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Training Parquet files, directories or globs.
    pub train: Vec<String>,
    /// Validation Parquet files, directories or globs.
    pub val: Vec<String>,
    /// Image column, for layouts weft does not detect (binary, or struct with a `bytes` field).
    pub image_column: Option<String>,
    /// Caption column, for layouts weft does not detect.
    pub text_column: Option<String>,
    /// Optional column with a row key used in logs.
    pub key_column: Option<String>,
    /// Side of the square images fed to the model, in pixels.
    pub image_size: usize,
    /// Samples per batch on each rank.
    pub batch_size: usize,
    /// Image decoding threads per rank.
    pub workers: usize,
    /// Finished batches kept ready ahead of the consumer.
    pub prefetch_batches: usize,
    /// Shuffle the order of row groups and rows every epoch.
    pub shuffle: bool,
    /// Rows held in the per-rank shuffle buffer (0 or 1: no row shuffle).
    pub shuffle_buffer: usize,
    /// Drop or pad the last partial global batch.
    pub last_batch: LastBatch,
    /// Fraction of skipped (bad) rows above which the run stops.
    pub max_bad_fraction: f64,
    /// Rows a rank must have seen before `max_bad_fraction` is checked mid-epoch (it is always
    /// checked at the end of an epoch).
    pub min_rows_for_bad_fraction: u64,
    /// Skip unreadable or truncated Parquet files with a warning instead of failing.
    pub skip_bad_files: bool,
    /// The largest image file read through a row's `path` (when its bytes are null).
    pub max_image_bytes: u64,
    /// The folder image paths must resolve into; empty: the folder of the Parquet file that
    /// names them ("/" lets them anywhere).
    pub image_root: Option<String>,
    /// Per-channel mean subtracted after scaling pixels to [0, 1] (CLIP's by default).
    pub mean: [f32; 3],
    /// Per-channel standard deviation (CLIP's by default).
    pub std: [f32; 3],
    /// Area fraction range of the training random-resized crop.
    pub crop_scale: [f64; 2],
    /// Aspect ratio range of the training random-resized crop.
    pub crop_ratio: [f64; 2],
    /// Flip training images horizontally with probability 0.5.
    pub hflip: bool,
    /// Hugging Face `tokenizer.json`; empty: batches carry captions but no token ids.
    pub tokenizer: Option<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: vec!["datasets/sample/train".into()],
            val: vec!["datasets/sample/val".into()],
            image_column: None,
            text_column: None,
            key_column: None,
            image_size: 224,
            batch_size: 64,
            workers: 2,
            prefetch_batches: 4,
            shuffle: true,
            shuffle_buffer: 2048,
            last_batch: LastBatch::Drop,
            max_bad_fraction: 0.01,
            min_rows_for_bad_fraction: 1000,
            skip_bad_files: false,
            max_image_bytes: 64 << 20,
            image_root: None,
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            crop_scale: [0.9, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            hflip: false,
            tokenizer: Some("datasets/sample/tokenizer.json".into()),
        }
    }
}

impl fmt::Display for LastBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LastBatch::Drop => "drop",
            LastBatch::Pad => "pad",
        })
    }
}

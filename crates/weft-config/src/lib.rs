//! weft's configuration.
//!
//! A run is described by one TOML file whose sections map onto the structs of this crate
//! ([`Config`], [`DataConfig`], [`ModelConfig`]). Every struct rejects unknown keys and every
//! field has a default, so a config only names what it changes.
//!
//! Loading goes through [`ConfigLoader`]: read the file, apply `--set section.key=value`
//! overrides on the TOML tree, then deserialize and validate. Every error names the key path and
//! where the value came from, e.g.
//! `data.image_size: expected an integer, found "abc" in configs/tiny.toml`.
//!
//! The resolved config (after overrides) is what [`Config::to_toml`] prints and what
//! [`Config::write_to_run_dir`] stores as `RUN_DIR/config.toml`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the resolved config inside a run directory.
pub const RUN_CONFIG_FILE: &str = "config.toml";

/// Errors while reading, overriding or validating a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A `--set` argument is not of the form `section.key=value`.
    #[error("--set {raw}: {message}")]
    BadOverride {
        /// The argument as given.
        raw: String,
        /// What is wrong with it.
        message: String,
    },
    /// A key has a value of the wrong type, an unknown key, or a value that fails validation.
    #[error("{key}: {message} in {origin}")]
    Invalid {
        /// Dotted key path, e.g. `data.image_size`.
        key: String,
        /// What is wrong.
        message: String,
        /// Where the value came from: the file, `--set ...`, or `defaults`.
        origin: String,
    },
    /// The resolved config could not be written.
    #[error("cannot write resolved config to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The whole configuration of a weft run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seed of every random choice weft makes (data order, augmentation, initialisation).
    pub seed: u64,
    /// The data pipeline.
    pub data: DataConfig,
    /// Model shape (only what the data pipeline needs so far).
    pub model: ModelConfig,
}

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
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            crop_scale: [0.9, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            hflip: false,
            tokenizer: Some("datasets/sample/tokenizer.json".into()),
        }
    }
}

/// `[model]`: the shape of the model (only the parts the data pipeline needs so far).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// `[model.text]`
    pub text: TextConfig,
}

/// `[model.text]`: the text side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// Tokens per caption after truncation and padding (special tokens included).
    pub context_length: usize,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self { context_length: 32 }
    }
}

/// Reads a config file, applies overrides, validates.
#[derive(Debug, Default, Clone)]
pub struct ConfigLoader {
    file: Option<PathBuf>,
    overrides: Vec<String>,
}

impl ConfigLoader {
    /// A loader that starts from the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read this TOML file (relative paths inside stay as written).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Read this file if `Some`.
    pub fn maybe_file(mut self, path: Option<impl Into<PathBuf>>) -> Self {
        self.file = path.map(Into::into);
        self
    }

    /// Add `section.key=value` overrides; the value is parsed as TOML, or taken as a string.
    pub fn overrides<I, S>(mut self, sets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.overrides.extend(sets.into_iter().map(Into::into));
        self
    }

    /// Read, override, deserialize and validate.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let file_origin = self
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".to_string());
        let mut tree = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.clone(),
                        message: e.to_string().trim().to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut set_keys: Vec<(String, String)> = Vec::new();
        for raw in &self.overrides {
            let (key, value) = parse_override(raw)?;
            apply_override(&mut tree, &key, value).map_err(|message| ConfigError::BadOverride {
                raw: raw.clone(),
                message,
            })?;
            set_keys.push((key, raw.clone()));
        }
        let origin_of = |key: &str| -> String {
            // The last override that set this key or one of its parents.
            set_keys
                .iter()
                .rev()
                .find(|(k, _)| {
                    key == k
                        || key.starts_with(&format!("{k}."))
                        || k.starts_with(&format!("{key}."))
                })
                .map(|(_, raw)| format!("--set {raw}"))
                .unwrap_or_else(|| file_origin.clone())
        };
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
                let key = e.path().to_string();
                let message = friendly_serde_message(&e.inner().to_string());
                ConfigError::Invalid {
                    origin: origin_of(&key),
                    key,
                    message,
                }
            })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: origin_of(&key),
                key,
                message,
            })?;
        Ok(config)
    }
}

impl Config {
    /// The config as TOML, every key spelled out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serializes to TOML")
    }

    /// Write the resolved config to `RUN_DIR/config.toml`, creating the directory. The file is
    /// written to a temporary name and renamed, so a reader never sees half of it.
    pub fn write_to_run_dir(&self, run_dir: &Path) -> Result<PathBuf, ConfigError> {
        let path = run_dir.join(RUN_CONFIG_FILE);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(run_dir)?;
            let tmp = run_dir.join(format!("{RUN_CONFIG_FILE}.tmp"));
            std::fs::write(&tmp, self.to_toml())?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| ConfigError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Check values that serde cannot: returns the key and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let d = &self.data;
        let err = |k: &str, m: String| Err((k.to_string(), m));
        if d.image_size == 0 {
            return err("data.image_size", "must be at least 1".into());
        }
        if d.batch_size == 0 {
            return err("data.batch_size", "must be at least 1".into());
        }
        if d.workers == 0 {
            return err("data.workers", "must be at least 1".into());
        }
        if d.prefetch_batches == 0 {
            return err("data.prefetch_batches", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&d.max_bad_fraction) {
            return err(
                "data.max_bad_fraction",
                format!("must be between 0 and 1, found {}", d.max_bad_fraction),
            );
        }
        if d.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return err(
                "data.std",
                format!("every entry must be positive, found {:?}", d.std),
            );
        }
        let [s0, s1] = d.crop_scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return err(
                "data.crop_scale",
                format!("expected 0 < min <= max <= 1, found [{s0}, {s1}]"),
            );
        }
        let [r0, r1] = d.crop_ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return err(
                "data.crop_ratio",
                format!("expected 0 < min <= max, found [{r0}, {r1}]"),
            );
        }
        for (key, col) in [
            ("data.image_column", &d.image_column),
            ("data.text_column", &d.text_column),
            ("data.key_column", &d.key_column),
        ] {
            if col.as_deref() == Some("") {
                return err(key, "must not be empty (leave it out instead)".into());
            }
        }
        if self.model.text.context_length < 2 {
            return err(
                "model.text.context_length",
                "must be at least 2 (room for the special tokens)".into(),
            );
        }
        Ok(())
    }
}

fn parse_override(raw: &str) -> Result<(String, toml::Value), ConfigError> {
    let bad = |message: &str| ConfigError::BadOverride {
        raw: raw.to_string(),
        message: message.to_string(),
    };
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| bad("expected section.key=value"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|part| part.trim().is_empty()) {
        return Err(bad("expected section.key=value"));
    }
    let value = value.trim();
    // A TOML value (number, bool, array, quoted string) or else a bare string.
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key.to_string(), parsed))
}

fn apply_override(tree: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    let (last, parents) = parts.split_last().expect("key has at least one part");
    let mut table = tree;
    let mut walked = String::new();
    for part in parents {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("{walked} is not a section")),
        };
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// Turn serde's `invalid type: string "abc", expected usize` into
/// `expected an integer, found "abc"`.
fn friendly_serde_message(message: &str) -> String {
    let message = message.trim();
    let message = message.lines().next().unwrap_or(message);
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let found = found
                .strip_prefix("string ")
                .map(str::to_string)
                .unwrap_or_else(|| found.to_string());
            return format!("expected {}, found {found}", friendly_type(expected));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!("expected {}, found {found}", friendly_type(expected));
        }
    }
    message.to_string()
}

fn friendly_type(expected: &str) -> String {
    match expected {
        "usize" | "u8" | "u16" | "u32" | "u64" | "i32" | "i64" | "isize" => {
            "an integer".to_string()
        }
        "f32" | "f64" => "a number".to_string(),
        "a boolean" | "bool" => "a boolean".to_string(),
        other => other.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn friendly_messages() {
        assert_eq!(
            friendly_serde_message("invalid type: string \"abc\", expected usize"),
            "expected an integer, found \"abc\""
        );
        assert_eq!(
            friendly_serde_message("invalid type: integer `3`, expected a boolean"),
            "expected a boolean, found integer `3`"
        );
    }

    #[test]
    fn override_parsing() {
        let (k, v) = parse_override("data.image_size=96").unwrap();
        assert_eq!(k, "data.image_size");
        assert_eq!(v, toml::Value::Integer(96));
        let (_, v) = parse_override("data.text_column=caption").unwrap();
        assert_eq!(v, toml::Value::String("caption".into()));
        let (_, v) = parse_override("data.train=[\"a\", \"b\"]").unwrap();
        assert!(matches!(v, toml::Value::Array(_)));
        assert!(parse_override("novalue").is_err());
        assert!(parse_override(".x=1").is_err());
    }
}

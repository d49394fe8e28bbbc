//! weft's configuration.
//!
//! A run is described by one TOML file whose sections map onto the structs of this crate
//! ([`Config`], [`DataConfig`], [`ModelConfig`]). Every struct rejects unknown keys and every
//! field has a default, so a config only names what it changes.
//!
//! Loading goes through [`ConfigLoader`]: read the file, apply `--set section.key=value`
//! overrides on the TOML tree, then deserialize and validate. Every error names the key path and
//! where the value came from, e.g.
//! `data.image_size: expected an integer >= 0, found "abc" in configs/tiny.toml`.
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
    /// Model shape.
    pub model: ModelConfig,
    /// `[loss]`: objective weights and their options.
    pub loss: LossConfig,
    /// `[train]`: optimiser, schedule, length and logging of a training run.
    pub train: TrainConfig,
    /// `[dist]`: data-parallel jobs of several processes.
    pub dist: DistConfig,
    /// `[checkpoint]`: when a run saves itself, and how many saves it keeps.
    pub checkpoint: CheckpointConfig,
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

/// Where a rank's tensors live (`train.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// burn's `flex` backend on the CPU cores (`train.threads`).
    Cpu,
    /// burn's CUDA backend: each rank takes the GPU of its local rank (`WEFT_DEVICE`, set by
    /// `weft launch`, overrides it). Needs a weft built with `--features cuda`.
    Cuda,
}

/// The precision of the model's matrix products (`train.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// Mixed precision: the products of linear layers and attention take bf16 operands (f32
    /// accumulation where the backend does it); parameters, gradients, optimizer state,
    /// normalisation, softmax and losses stay f32 (PyTorch's `autocast(dtype=bfloat16)`).
    Bf16,
}

/// Where gradient averaging, clipping and AdamW run (`train.update_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOn {
    /// `host` on the CPU, `device` on a GPU.
    Auto,
    /// Flat host buffers, updated in parallel on the CPU cores (the CPU path: fastest there,
    /// bit-for-bit repeatable for any thread count).
    Host,
    /// Flat tensors on the training device: no copy of gradients or parameters to the host
    /// (the GPU path).
    Device,
}

/// How the ranks of a job reduce gradients and gather ITC features (`dist.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistBackend {
    /// `nccl` when `train.device = "cuda"`, else `tcp`.
    Auto,
    /// weft's TCP ring (host buffers).
    Tcp,
    /// NCCL on the GPUs (needs `train.device = "cuda"`).
    Nccl,
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

/// `[model]`: the shape of the model. Only the modules that the enabled objectives need are
/// built (see the `[loss]` weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Width of the shared image-text embedding space of the ITC heads.
    pub embed_dim: usize,
    /// Initial value of the learnable ITC log temperature, `ln(1/0.07)` as in CLIP.
    pub logit_scale_init: f64,
    /// Upper clamp of the log temperature, `ln(100)` as in CLIP.
    pub logit_scale_max: f64,
    /// Tie the MLM and LM output layers to their word embeddings.
    pub tie_word_embeddings: bool,
    /// Compute the last layer of an encoder only at the tokens some head reads: the CLS token
    /// of the image and text encoders when ITC is their only reader, the first token of each
    /// ITM pair and the masked tokens of MLM in the fusion encoder. Every token still gives
    /// keys and values. The same losses and gradients with fewer FLOPs (about a fifth of a
    /// 4-block CLIP tower's); `false` computes every token, as open_clip and ALBEF do.
    pub prune_unread_tokens: bool,
    /// `[model.vision]`: the ViT image encoder.
    pub vision: VisionConfig,
    /// `[model.text]`: the text encoder (and the tokenizer's context).
    pub text: TextConfig,
    /// `[model.fusion]`: the cross-attention fusion encoder (ITM, MLM).
    pub fusion: FusionConfig,
    /// `[model.decoder]`: the captioning text decoder (LM).
    pub decoder: FusionConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            embed_dim: 128,
            logit_scale_init: (1.0f64 / 0.07).ln(),
            logit_scale_max: 100f64.ln(),
            tie_word_embeddings: true,
            prune_unread_tokens: true,
            vision: VisionConfig::default(),
            text: TextConfig::default(),
            fusion: FusionConfig::default(),
            decoder: FusionConfig::default(),
        }
    }
}

/// `[model.vision]`: a ViT over `data.image_size` images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisionConfig {
    /// Side of a square patch in pixels; must divide `data.image_size`.
    pub patch_size: usize,
    /// Token width.
    pub width: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// Hidden width of the MLPs as a multiple of `width`.
    pub mlp_ratio: usize,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            patch_size: 8,
            width: 192,
            depth: 4,
            heads: 3,
            mlp_ratio: 4,
        }
    }
}

/// `[model.text]`: the bidirectional text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// Tokens per caption after truncation and padding (special tokens included).
    pub context_length: usize,
    /// Vocabulary size; 0 takes it from the tokenizer.
    pub vocab_size: usize,
    /// Token width.
    pub width: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// Hidden width of the MLPs as a multiple of `width`.
    pub mlp_ratio: usize,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            context_length: 32,
            vocab_size: 0,
            width: 192,
            depth: 4,
            heads: 3,
            mlp_ratio: 4,
        }
    }
}

/// `[model.fusion]` and `[model.decoder]`: text layers with cross-attention to the image
/// tokens, at the text encoder's width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    /// Layers (self-attention, cross-attention, MLP).
    pub depth: usize,
    /// Attention heads; must divide `model.text.width`.
    pub heads: usize,
    /// Hidden width of the MLPs as a multiple of the width.
    pub mlp_ratio: usize,
}

impl Default for FusionConfig {
    fn default() -> Self {
        Self {
            depth: 2,
            heads: 3,
            mlp_ratio: 4,
        }
    }
}

/// `[loss]`: the weight of each objective in the total (0 disables it and its modules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Image-text contrastive (symmetric InfoNCE).
    pub itc: f64,
    /// Image-text matching with hard negatives.
    pub itm: f64,
    /// Masked language modelling through the fusion encoder.
    pub mlm: f64,
    /// Captioning language modelling through the decoder.
    pub lm: f64,
    /// Masked image modelling (normalised pixels of masked patches).
    pub mim: f64,
    /// Label smoothing of the ITC cross-entropies.
    pub itc_label_smoothing: f64,
    /// Fraction of caption tokens chosen for MLM (then 80% [MASK], 10% random, 10% kept).
    pub mlm_probability: f64,
    /// Fraction of image patches masked for MIM.
    pub mim_mask_ratio: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            itc: 1.0,
            itm: 0.0,
            mlm: 0.0,
            lm: 0.0,
            mim: 0.0,
            itc_label_smoothing: 0.0,
            mlm_probability: 0.15,
            mim_mask_ratio: 0.75,
        }
    }
}

/// `[train]`: optimiser, schedule, length and logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training split (ignored when `max_steps` is set).
    pub epochs: u64,
    /// Optimizer steps in all; 0 runs `epochs` epochs.
    pub max_steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Optimizer steps of linear warmup from 0 to `lr`.
    pub warmup_steps: u64,
    /// Decoupled weight decay of matrices (never biases, norms, embeddings or the temperature).
    pub weight_decay: f64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// AdamW epsilon.
    pub eps: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub grad_clip: f64,
    /// Micro-batches per optimizer step; their gradients are averaged.
    pub grad_accum: u64,
    /// Consecutive steps with a non-finite loss or gradient norm after which the run stops.
    pub max_nonfinite_steps: u64,
    /// Evaluate on the validation split every this many optimizer steps (0: only at the end).
    pub eval_every: u64,
    /// Log a line every this many steps when stderr is not a terminal.
    pub log_every: u64,
    /// CPU threads for the tensor backend (0: all cores).
    pub threads: usize,
    /// Where the model runs: `cpu` or `cuda`.
    pub device: Device,
    /// Precision of the matrix products: `f32` or `bf16` (mixed precision, f32 master weights).
    pub precision: Precision,
    /// Where gradient averaging, clipping and AdamW run: `auto`, `host` or `device`.
    pub update_on: UpdateOn,
    /// Start a new run from these weights instead of the random initialisation: a
    /// `model.safetensors`, a run directory or a checkpoint directory. Parameters are matched
    /// by name; the optimizer, schedule and data order start afresh. Ignored when the run
    /// resumes from one of its own checkpoints.
    pub init_from: Option<String>,
}

impl TrainConfig {
    /// Whether the update runs on the device's tensors (`update_on`, with `auto` resolved).
    pub fn update_on_device(&self) -> bool {
        match self.update_on {
            UpdateOn::Auto => self.device == Device::Cuda,
            UpdateOn::Host => false,
            UpdateOn::Device => true,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            max_steps: 0,
            lr: 5e-4,
            min_lr: 1e-5,
            warmup_steps: 100,
            weight_decay: 0.1,
            betas: [0.9, 0.98],
            eps: 1e-6,
            grad_clip: 1.0,
            grad_accum: 1,
            max_nonfinite_steps: 5,
            eval_every: 0,
            log_every: 10,
            threads: 0,
            device: Device::Cpu,
            precision: Precision::F32,
            update_on: UpdateOn::Auto,
            init_from: None,
        }
    }
}

/// `[dist]`: how the processes of a data-parallel job meet, watch each other and reduce
/// their gradients. `data.batch_size` is per rank: the global batch is `world_size` times it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistConfig {
    /// Gradients are all-reduced in buckets of this many MiB.
    pub bucket_mb: f64,
    /// A rank silent for this long is declared dead and the job aborts.
    pub heartbeat_timeout_s: f64,
    /// Seconds between two heartbeats of a worker.
    pub heartbeat_interval_s: f64,
    /// How long the coordinator waits for every rank to join, and a worker for the coordinator.
    pub rendezvous_timeout_s: f64,
    /// Bound of every collective operation (a step's all-reduce, a gather).
    pub collective_timeout_s: f64,
    /// `auto`, `tcp` or `nccl`: what carries the gradients and the ITC features.
    pub backend: DistBackend,
    /// NCCL only: copy the gradients to the host and back around the all-reduce instead of
    /// handing NCCL burn's device buffers (a fallback, and the baseline of its cost).
    pub nccl_host_staging: bool,
}

impl DistConfig {
    /// Whether a job of `device` reduces over NCCL (`backend`, with `auto` resolved).
    pub fn uses_nccl(&self, device: Device) -> bool {
        match self.backend {
            DistBackend::Auto => device == Device::Cuda,
            DistBackend::Tcp => false,
            DistBackend::Nccl => true,
        }
    }
}

impl Default for DistConfig {
    fn default() -> Self {
        Self {
            bucket_mb: 25.0,
            heartbeat_timeout_s: 30.0,
            heartbeat_interval_s: 1.0,
            rendezvous_timeout_s: 300.0,
            collective_timeout_s: 600.0,
            backend: DistBackend::Auto,
            nccl_host_staging: false,
        }
    }
}

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
        self.validate_model()?;
        self.validate_train()?;
        self.validate_dist()?;
        if self.model.text.context_length < 2 {
            return err(
                "model.text.context_length",
                "must be at least 2 (room for the special tokens)".into(),
            );
        }
        Ok(())
    }
}

impl Config {
    fn validate_model(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        let m = &self.model;
        if m.embed_dim == 0 {
            return err("model.embed_dim", "must be at least 1".into());
        }
        if !(m.logit_scale_init.is_finite() && m.logit_scale_init <= m.logit_scale_max) {
            return err(
                "model.logit_scale_init",
                format!(
                    "must be finite and at most model.logit_scale_max ({}), found {}",
                    m.logit_scale_max, m.logit_scale_init
                ),
            );
        }
        let v = &m.vision;
        if v.patch_size == 0 || !self.data.image_size.is_multiple_of(v.patch_size) {
            return err(
                "model.vision.patch_size",
                format!(
                    "must divide data.image_size ({}), found {}",
                    self.data.image_size, v.patch_size
                ),
            );
        }
        let l = &self.loss;
        let text_on = l.itc > 0.0 || l.itm > 0.0 || l.mlm > 0.0;
        let fusion_on = l.itm > 0.0 || l.mlm > 0.0;
        // Only the towers that the enabled objectives build are checked.
        let mut blocks = vec![("model.vision", v.width, v.depth, v.heads, v.mlp_ratio)];
        let t = &m.text;
        if text_on || l.lm > 0.0 {
            blocks.push(("model.text", t.width, t.depth, t.heads, t.mlp_ratio));
        }
        if fusion_on {
            let f = &m.fusion;
            blocks.push(("model.fusion", t.width, f.depth, f.heads, f.mlp_ratio));
        }
        if l.lm > 0.0 {
            let d = &m.decoder;
            blocks.push(("model.decoder", t.width, d.depth, d.heads, d.mlp_ratio));
        }
        for (section, width, depth, heads, mlp) in blocks {
            if width == 0 {
                return err(&format!("{section}.width"), "must be at least 1".into());
            }
            if depth == 0 {
                return err(&format!("{section}.depth"), "must be at least 1".into());
            }
            if heads == 0 || !width.is_multiple_of(heads) {
                return err(
                    &format!("{section}.heads"),
                    format!("must divide the width ({width}), found {heads}"),
                );
            }
            if mlp == 0 {
                return err(&format!("{section}.mlp_ratio"), "must be at least 1".into());
            }
        }
        for (key, w) in [
            ("loss.itc", l.itc),
            ("loss.itm", l.itm),
            ("loss.mlm", l.mlm),
            ("loss.lm", l.lm),
            ("loss.mim", l.mim),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return err(key, format!("must be a finite weight >= 0, found {w}"));
            }
        }
        if [l.itc, l.itm, l.mlm, l.lm, l.mim].iter().all(|w| *w == 0.0) {
            return err(
                "loss",
                "every objective weight is 0: enable at least one".into(),
            );
        }
        for (key, p, open) in [
            ("loss.itc_label_smoothing", l.itc_label_smoothing, false),
            ("loss.mlm_probability", l.mlm_probability, true),
            ("loss.mim_mask_ratio", l.mim_mask_ratio, true),
        ] {
            let ok = if open {
                p > 0.0 && p < 1.0
            } else {
                (0.0..1.0).contains(&p)
            };
            if !ok {
                let range = if open { "0 < x < 1" } else { "0 <= x < 1" };
                return err(key, format!("expected {range}, found {p}"));
            }
        }
        Ok(())
    }

    fn validate_dist(&self) -> Result<(), (String, String)> {
        let d = &self.dist;
        let positive = [
            ("dist.bucket_mb", d.bucket_mb),
            ("dist.heartbeat_timeout_s", d.heartbeat_timeout_s),
            ("dist.heartbeat_interval_s", d.heartbeat_interval_s),
            ("dist.rendezvous_timeout_s", d.rendezvous_timeout_s),
            ("dist.collective_timeout_s", d.collective_timeout_s),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err((key.into(), format!("must be positive, found {v}")));
            }
        }
        if d.backend == DistBackend::Nccl && self.train.device != Device::Cuda {
            return Err((
                "dist.backend".into(),
                format!(
                    "nccl needs train.device = \"cuda\", found \"{}\"",
                    self.train.device
                ),
            ));
        }
        if d.heartbeat_interval_s >= d.heartbeat_timeout_s {
            return Err((
                "dist.heartbeat_interval_s".into(),
                format!(
                    "must be shorter than dist.heartbeat_timeout_s ({}), found {}",
                    d.heartbeat_timeout_s, d.heartbeat_interval_s
                ),
            ));
        }
        Ok(())
    }

    fn validate_train(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        let t = &self.train;
        if t.epochs == 0 && t.max_steps == 0 {
            return err(
                "train.epochs",
                "must be at least 1 when train.max_steps is 0".into(),
            );
        }
        if t.init_from.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return err(
                "train.init_from",
                "is empty; leave it out to start from the random initialisation".into(),
            );
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return err("train.lr", format!("must be positive, found {}", t.lr));
        }
        if !(t.min_lr.is_finite() && t.min_lr >= 0.0 && t.min_lr <= t.lr) {
            return err(
                "train.min_lr",
                format!("expected 0 <= min_lr <= lr ({}), found {}", t.lr, t.min_lr),
            );
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return err(
                "train.weight_decay",
                format!("must be >= 0, found {}", t.weight_decay),
            );
        }
        if t.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return err(
                "train.betas",
                format!("expected 0 <= beta < 1, found {:?}", t.betas),
            );
        }
        if !(t.eps.is_finite() && t.eps > 0.0) {
            return err("train.eps", format!("must be positive, found {}", t.eps));
        }
        if !(t.grad_clip.is_finite() && t.grad_clip >= 0.0) {
            return err(
                "train.grad_clip",
                format!("must be >= 0, found {}", t.grad_clip),
            );
        }
        if t.grad_accum == 0 {
            return err("train.grad_accum", "must be at least 1".into());
        }
        if t.max_nonfinite_steps == 0 {
            return err("train.max_nonfinite_steps", "must be at least 1".into());
        }
        if t.log_every == 0 {
            return err("train.log_every", "must be at least 1".into());
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
/// `expected an integer >= 0, found "abc"`.
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
        "usize" | "u8" | "u16" | "u32" | "u64" => "an integer >= 0".to_string(),
        "i32" | "i64" | "isize" => "an integer".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" | "bool" => "a boolean".to_string(),
        other => other.to_string(),
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
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
            "expected an integer >= 0, found \"abc\""
        );
        assert_eq!(
            friendly_serde_message("invalid type: integer `3`, expected a boolean"),
            "expected a boolean, found integer `3`"
        );
        // A negative count: serde's "invalid value", and the type says why it is invalid.
        assert_eq!(
            friendly_serde_message("invalid value: integer `-3`, expected u64"),
            "expected an integer >= 0, found integer `-3`"
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

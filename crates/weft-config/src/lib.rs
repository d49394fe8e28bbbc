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
//!
//! - [`data`], [`model`], [`loss`], [`train`], [`dist`], [`checkpoint`]: one module per
//!   section of the file, each struct with its defaults.
//! - [`load`]: [`ConfigLoader`] (file, overrides, friendly messages).
//! - [`validate`]: the checks serde cannot make ([`Config::validate`]).
//! - [`error`]: what can go wrong, [`ConfigError`].

#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod error;
pub mod load;
pub mod loss;
pub mod model;
pub mod train;
pub mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use checkpoint::CheckpointConfig;
pub use data::{DataConfig, LastBatch, TokenizerModel};
pub use dist::{DistBackend, DistConfig};
pub use error::ConfigError;
pub use load::ConfigLoader;
pub use loss::LossConfig;
pub use model::{FusionConfig, ModelConfig, TextConfig, VisionConfig};
pub use train::{Device, Precision, TrainConfig, UpdateOn};

/// Name of the resolved config inside a run directory.
pub const RUN_CONFIG_FILE: &str = "config.toml";

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
}

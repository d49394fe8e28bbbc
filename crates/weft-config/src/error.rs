//! The errors of loading a config.

use std::path::PathBuf;

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

//! `weft data ...`: inspect datasets, make a synthetic one, import IDX files, train or use a
//! tokenizer.

pub mod import_idx;
pub mod inspect;
pub mod synth;
pub mod tokenizer;

use clap::Subcommand;
use weft_config::Config;

/// `weft data ...`.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Layout, files, row groups, rows, planned rows and steps per epoch, usable rows, bad rows
    /// by reason, image sizes, captions.
    Inspect(inspect::InspectArgs),
    /// Write a deterministic synthetic dataset of coloured shapes (Hugging Face layout).
    Synth(synth::SynthArgs),
    /// Convert an MNIST-style IDX image/label pair (Fashion-MNIST: Debian's
    /// dataset-fashion-mnist) into Parquet: PNG images, captions from templates, a `label`
    /// column with the class names.
    ImportIdx(import_idx::ImportIdxArgs),
    /// Train a tokenizer on the captions of a dataset, or encode a caption with one.
    Tokenizer(tokenizer::TokenizerArgs),
}

/// Run `weft data ...`.
pub fn run(cmd: DataCommand, config: &Config) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Inspect(args) => inspect::run(args, config),
        DataCommand::Synth(args) => synth::run(args),
        DataCommand::ImportIdx(args) => import_idx::run(args),
        DataCommand::Tokenizer(args) => tokenizer::run(args, config),
    }
}

//! `weft data synth`: a deterministic synthetic dataset of coloured shapes.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use weft_data::synth::{SynthFormat, SynthOptions};

/// Arguments of `weft data synth`.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Rows in all.
    #[arg(long)]
    rows: usize,
    /// Parquet files.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    image_size: u32,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows per row group.
    #[arg(long, default_value_t = 128)]
    row_group_size: usize,
    /// Image encoding.
    #[arg(long, value_enum, default_value_t = FormatArg::Png)]
    format: FormatArg,
}

// The image encoding of `--format` (no doc comments on the variants: clap would print them as
// a list under the option's help).
#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum FormatArg {
    Png,
    Jpeg,
}

/// Write the dataset and list its files.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let opts = SynthOptions {
        rows: args.rows,
        shards: args.shards,
        image_size: args.image_size,
        seed: args.seed,
        row_group_size: args.row_group_size,
        format: match args.format {
            FormatArg::Png => SynthFormat::Png,
            FormatArg::Jpeg => SynthFormat::Jpeg,
        },
    };
    let files = weft_data::synth::generate(&args.out, &opts)?;
    for f in &files {
        println!("{}", f.display());
    }
    tracing::info!(
        "wrote {} rows in {} files under {}",
        args.rows,
        files.len(),
        args.out.display()
    );
    Ok(())
}

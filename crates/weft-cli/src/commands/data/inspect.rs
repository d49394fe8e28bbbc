//! `weft data inspect`: what a dataset holds and how `weft train` would plan it.

use std::sync::Arc;

use clap::Args;
use weft_config::Config;

/// Arguments of `weft data inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Parquet files, directories or globs.
    #[arg(required = true)]
    paths: Vec<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Decode every image (otherwise only image headers are read).
    #[arg(long)]
    full: bool,
    /// Captions to show.
    #[arg(long, default_value_t = 5)]
    captions: usize,
    /// Ranks to count the steps of an epoch for (with `data.batch_size`,
    /// `train.grad_accum` and `data.last_batch`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    world_size: u64,
}

/// Inspect the dataset and print the report (text, or JSON with `--json`).
pub fn run(args: InspectArgs, config: &Config) -> anyhow::Result<()> {
    let catalog = weft_data::open_catalog(config, &args.paths)?;
    let report = weft_data::inspect::inspect(
        Arc::new(catalog),
        weft_data::plan_options(config, weft_data::Split::Train, args.world_size as usize),
        config.train.grad_accum,
        args.full,
        args.captions,
        config.data.skip_bad_files,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

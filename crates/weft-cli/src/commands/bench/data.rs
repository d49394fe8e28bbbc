//! `weft bench data`: end-to-end images/s of the data pipeline.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use weft_config::{Config, LastBatch};
use weft_data::{DataCursor, Loader, Split};

/// Arguments of `weft bench data`.
#[derive(Args, Debug)]
pub struct BenchDataArgs {
    /// Parquet files, directories or globs (default: data.train).
    paths: Vec<String>,
    /// Decode workers of the second measurement (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Stop after this many batches (default: one whole epoch).
    #[arg(long)]
    batches: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Write the resolved config and bench-data.json into this run directory.
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

/// End-to-end images/s (Parquet read, decode, crop, resize, normalize, batch) for 1 and N
/// decode workers, with the eval transform (resize the shorter side, center crop).
pub fn run(args: BenchDataArgs, config: &Config) -> anyhow::Result<()> {
    let paths = if args.paths.is_empty() {
        config.data.train.clone()
    } else {
        args.paths.clone()
    };
    let n = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let mut config = config.clone();
    config.data.last_batch = LastBatch::Drop;
    let base = weft_data::loader_from_config(&config, Split::Val, &paths)?;
    let mut plan = weft_data::plan_options(&config, Split::Val, 1);
    plan.last_batch = LastBatch::Drop;
    let cursor = DataCursor::new(base.catalog(), plan, 0);
    let mut results = Vec::new();
    let mut worker_counts = vec![1];
    if n > 1 {
        worker_counts.push(n);
    }
    for workers in worker_counts {
        let mut options = base.options().clone();
        options.workers = workers;
        let loader = Loader::new(base.catalog().clone(), options, base.text().cloned());
        let start = Instant::now();
        let mut images = 0usize;
        for (i, batch) in loader.stream(&cursor, 0)?.enumerate() {
            images += batch?.len();
            if args.batches.is_some_and(|b| i as u64 + 1 >= b) {
                break;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = images as f64 / secs;
        if !args.json {
            println!("workers {workers:>2}: {images} images in {secs:.2} s = {rate:.1} images/s");
        }
        results.push(serde_json::json!({
            "workers": workers,
            "images": images,
            "seconds": secs,
            "images_per_s": rate,
        }));
    }
    let report = serde_json::json!({
        "bench": "data",
        "paths": paths,
        "image_size": config.data.image_size,
        "batch_size": config.data.batch_size,
        "tokenizer": config.data.tokenizer,
        "results": results,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(dir) = &args.run_dir {
        config.write_to_run_dir(dir)?;
        std::fs::write(
            dir.join("bench-data.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    Ok(())
}

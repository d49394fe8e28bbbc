//! `weft report RUN_DIR`: the run's plots and tables on one self-contained HTML page.

use std::path::PathBuf;

use clap::Args;

/// Arguments of `weft report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The run directory (of `weft train`: metrics.jsonl, eval.jsonl, config.toml, runs.jsonl).
    run_dir: PathBuf,
    /// The HTML page (default RUN_DIR/report.html).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Where the PNG plots go (default: beside the page, in a folder named after it).
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Plot width in pixels.
    #[arg(long, default_value_t = weft_report::DEFAULT_SIZE.0)]
    width: u32,
    /// Plot height in pixels.
    #[arg(long, default_value_t = weft_report::DEFAULT_SIZE.1)]
    height: u32,
}

/// Write the report and say where it is.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut builder = weft_report::ReportBuilder::new(&args.run_dir).size(args.width, args.height);
    if let Some(out) = args.out {
        builder = builder.out(out);
    }
    if let Some(dir) = args.plots {
        builder = builder.plots_dir(dir);
    }
    let written = builder.build()?;
    let dir = written
        .pngs
        .first()
        .and_then(|p| p.parent())
        .map_or_else(String::new, |d| d.display().to_string());
    println!(
        "{} ({} plots in {dir}; metrics: {})",
        written.html.display(),
        written.pngs.len(),
        written.metrics.join(", ")
    );
    Ok(())
}

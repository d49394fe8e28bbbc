//! The command-line tree of `weft` (clap): the options every command takes and the
//! commands, whose arguments live beside their code in [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands;

/// weft: distributed vision-language pretraining on Parquet image-text shards.
#[derive(Parser, Debug)]
#[command(name = "weft", version, long_about = None)]
pub struct Cli {
    /// How the command finds its config.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How every command finds its config.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// TOML config file (default: built-in defaults; for `weft train`: configs/tiny.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set data.image_size=96` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print the resolved config (after --config and --set) and exit.
    #[arg(long, global = true)]
    pub print_config: bool,
}

/// The commands of `weft`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model: one process, or one rank of a job started by `weft launch`, torchrun
    /// or srun (default config: configs/tiny.toml).
    Train(commands::train::TrainArgs),
    /// Start N workers on this node with their ranks and a coordinator (torchrun-style):
    /// `weft launch --nproc-per-node 2 -- train`.
    Launch(commands::launch::LaunchArgs),
    /// Run a job's coordinator on its own (jobs of several nodes without `weft launch`).
    Coordinator(commands::coordinator::CoordinatorArgs),
    /// Evaluate saved weights: retrieval Recall@K and ranks (with ITM re-ranking), zero-shot
    /// classification, captioning metrics.
    Eval(commands::eval::EvalArgs),
    /// One self-contained HTML page of a run: plots of every loss, lr, grad norm, samples/s,
    /// data wait and evaluation metric over steps; the config and the environment.
    Report(commands::report::ReportArgs),
    /// Inspect, verify or export checkpoints.
    #[command(subcommand)]
    Ckpt(commands::ckpt::CkptCommand),
    /// Parameter count of each module of the config's model.
    Params {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Inspect datasets, make a synthetic one, train a tokenizer.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Measure speed.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Check the machine (build, GPU, driver, NCCL) and time one training step of each of
    /// some configs: samples/s, FLOPs, MFU, peak memory.
    Doctor(commands::doctor::DoctorArgs),
    /// Print the resolved config, or write it into a run directory.
    Config {
        /// Write it as RUN_DIR/config.toml.
        #[arg(long, value_name = "RUN_DIR")]
        run_dir: Option<PathBuf>,
    },
}

//! `weft`: the one binary of the weft vision-language pretraining framework.
//!
//! Commands: `weft train`, `weft launch`, `weft coordinator`, `weft eval`, `weft report`,
//! `weft data inspect|synth|tokenizer|import-idx`,
//! `weft bench data|train|allreduce|ckpt`, `weft ckpt`, `weft params`, `weft doctor`, `weft config`.

mod allreduce;
mod backend;
mod bench;
mod ckpt;
mod doctor;
mod eval;
mod launch;
#[cfg(feature = "cuda")]
mod relink;
mod report;
mod train;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use weft_config::{Config, ConfigLoader, TokenizerModel};
use weft_coordinator::LaunchEnv;
use weft_data::synth::{SynthFormat, SynthOptions};

/// weft: distributed vision-language pretraining on Parquet image-text shards.
#[derive(Parser, Debug)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

/// How every command finds its config.
#[derive(Args, Debug, Clone)]
struct ConfigArgs {
    /// TOML config file (default: built-in defaults; for `weft train`: configs/tiny.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set data.image_size=96` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Print the resolved config (after --config and --set) and exit.
    #[arg(long, global = true)]
    print_config: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model: one process, or one rank of a job started by `weft launch`, torchrun
    /// or srun (default config: configs/tiny.toml).
    Train(train::TrainArgs),
    /// Start N workers on this node with their ranks and a coordinator (torchrun-style):
    /// `weft launch --nproc-per-node 2 -- train`.
    Launch(launch::LaunchArgs),
    /// Run a job's coordinator on its own (jobs of several nodes without `weft launch`).
    Coordinator(launch::CoordinatorArgs),
    /// Evaluate saved weights: retrieval Recall@K and ranks (with ITM re-ranking), zero-shot
    /// classification, captioning metrics.
    Eval(eval::EvalArgs),
    /// One self-contained HTML page of a run: plots of every loss, lr, grad norm, samples/s,
    /// data wait and evaluation metric over steps; the config and the environment.
    Report(report::ReportArgs),
    /// Inspect, verify or export checkpoints.
    #[command(subcommand)]
    Ckpt(ckpt::CkptCommand),
    /// Parameter count of each module of the config's model.
    Params {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Inspect datasets, make a synthetic one, train a tokenizer.
    #[command(subcommand)]
    Data(DataCommand),
    /// Measure speed.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Check the machine (build, GPU, driver, NCCL) and time one training step of each of
    /// some configs: samples/s, FLOPs, MFU, peak memory.
    Doctor(doctor::DoctorArgs),
    /// Print the resolved config, or write it into a run directory.
    Config {
        /// Write it as RUN_DIR/config.toml.
        #[arg(long, value_name = "RUN_DIR")]
        run_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Layout, files, row groups, rows, planned rows and steps per epoch, usable rows, bad rows
    /// by reason, image sizes, captions.
    Inspect {
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
    },
    /// Write a deterministic synthetic dataset of coloured shapes (Hugging Face layout).
    Synth {
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
    },
    /// Convert an MNIST-style IDX image/label pair (Fashion-MNIST: Debian's
    /// dataset-fashion-mnist) into Parquet: PNG images, captions from templates, a `label`
    /// column with the class names.
    ImportIdx {
        /// The `*-images-idx3-ubyte[.gz]` file.
        #[arg(long)]
        images: PathBuf,
        /// The `*-labels-idx1-ubyte[.gz]` file.
        #[arg(long)]
        labels: PathBuf,
        /// The Parquet file to write.
        #[arg(long)]
        out: PathBuf,
        /// Class names by label: `fashion-mnist`, `mnist`, or a comma-separated list.
        #[arg(long, default_value = "fashion-mnist")]
        classes: String,
        /// Import the first N images only.
        #[arg(long)]
        limit: Option<usize>,
        /// Rows per row group.
        #[arg(long, default_value_t = 1000)]
        row_group_size: usize,
    },
    /// Train a tokenizer on the captions of a dataset, or encode a caption with one.
    Tokenizer {
        /// Train a new tokenizer (otherwise: encode --encode TEXT with data.tokenizer).
        #[arg(long)]
        train: bool,
        /// Where to write tokenizer.json (with --train).
        #[arg(long, required_if_eq("train", "true"))]
        out: Option<PathBuf>,
        /// Vocabulary size, special tokens included (with --train).
        #[arg(long, default_value_t = 8192)]
        vocab_size: usize,
        /// Tokenizer model (with --train).
        #[arg(long, value_enum, default_value_t = ModelArg::Wordpiece)]
        model: ModelArg,
        /// Caption to encode with the configured tokenizer (without --train).
        #[arg(long)]
        encode: Option<String>,
        /// Parquet files, directories or globs whose captions train it.
        paths: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// End-to-end images/s of the data pipeline with 1 and N decode workers.
    Data(bench::BenchDataArgs),
    /// Time of one optimizer step of the config's model on a synthetic batch.
    Train(train::BenchTrainArgs),
    /// Bandwidth of the TCP ring's all-reduce between processes on 127.0.0.1.
    Allreduce(allreduce::BenchAllreduceArgs),
    /// Checkpoint save bandwidth next to the raw disk's (dd with fsync), and the stall of an
    /// asynchronous save.
    Ckpt(ckpt::BenchCkptArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum FormatArg {
    Png,
    Jpeg,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum ModelArg {
    Wordpiece,
    Bpe,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before anything else: this may start the process again (see relink).
    #[cfg(feature = "cuda")]
    let relinked = relink::before_cuda(uses_cuda(&cli));
    // `weft train` logs into RUN_DIR/logs/rank-N.log as well; errors about the environment or
    // the run directory are reported by `train` itself.
    let (env, log) = match &cli.command {
        Command::Train(args) => match LaunchEnv::from_env() {
            Ok(env) => {
                let log = train::run_dir(args, &env)
                    .ok()
                    .map(|d| train::log_file(&d, env.rank));
                (Some(env), log)
            }
            Err(_) => (None, None),
        },
        _ => (None, None),
    };
    let rank = env.as_ref().map_or(0, |e| e.rank);
    let prefix = env.as_ref().filter(|e| e.world_size > 1).map(|e| e.rank);
    let log_error = init_logging(log.as_deref(), prefix);
    if let Some(e) = log_error {
        tracing::warn!("no log file: {e}");
    }
    #[cfg(feature = "cuda")]
    relinked.log();
    match run(cli, env) {
        Ok(code) => code,
        Err(e) => {
            let message = error_message(&e);
            if log.is_some() {
                // Into the rank's log file too (stderr gets the plain line below).
                tracing::error!("{message}");
            }
            let prefix = if prefix.is_some() {
                format!("[rank {rank}] ")
            } else {
                String::new()
            };
            eprintln!("{prefix}error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the command will use CUDA: `weft doctor` (but `--device cpu`), and `weft train`,
/// `eval` and `bench train` with `train.device = "cuda"` (a config that does not load is left
/// to the command to report).
#[cfg(feature = "cuda")]
fn uses_cuda(cli: &Cli) -> bool {
    let cuda =
        |c: anyhow::Result<Config>| c.is_ok_and(|c| c.train.device == weft_config::Device::Cuda);
    match &cli.command {
        Command::Doctor(args) => args.device != doctor::DeviceArg::Cpu,
        Command::Train(_) => cuda(train::train_config(
            cli.config.config.clone(),
            &cli.config.sets,
        )),
        Command::Eval(args) => cuda(eval::config(
            args,
            cli.config.config.clone(),
            &cli.config.sets,
        )),
        Command::Bench(BenchCommand::Train(_)) => cuda(load_config(&cli.config)),
        _ => false,
    }
}

/// Logs to stderr (ranks other than 0 of a job: warnings and errors only, prefixed with the
/// rank) and, when given, to `file` in full. Returns why the file could not be opened.
fn init_logging(file: Option<&std::path::Path>, rank: Option<usize>) -> Option<String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
            .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let stderr_filter = match rank {
        Some(r) if r > 0 && std::env::var_os("WEFT_LOG").is_none() => {
            tracing_subscriber::EnvFilter::new("warn")
        }
        _ => filter(),
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let stderr = match rank {
        Some(r) => stderr
            .event_format(
                tracing_subscriber::fmt::format()
                    .with_target(false)
                    .with_thread_names(false),
            )
            .map_event_format(move |f| RankPrefix { rank: r, inner: f })
            .with_filter(stderr_filter)
            .boxed(),
        None => stderr.with_filter(stderr_filter).boxed(),
    };
    let mut problem = None;
    let file_layer = file.and_then(|path| {
        let opened = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            });
        match opened {
            Ok(f) => Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Mutex::new(f))
                    .with_ansi(false)
                    .with_target(false)
                    .with_filter(filter()),
            ),
            Err(e) => {
                problem = Some(format!("{}: {e}", path.display()));
                None
            }
        }
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .init();
    problem
}

/// `[rank N] ` before every stderr line of a job's worker.
struct RankPrefix<F> {
    rank: usize,
    inner: F,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for RankPrefix<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "[rank {}] ", self.rank)?;
        self.inner.format_event(ctx, writer, event)
    }
}

fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    Ok(ConfigLoader::new()
        .maybe_file(args.config.clone())
        .overrides(args.sets.iter().cloned())
        .load()?)
}

fn run(cli: Cli, env: Option<LaunchEnv>) -> anyhow::Result<ExitCode> {
    let config = match &cli.command {
        Command::Train(_) => train::train_config(cli.config.config.clone(), &cli.config.sets)?,
        Command::Launch(args) => launch_worker_config(args.worker_command())?,
        _ => load_config(&cli.config)?,
    };
    if cli.config.print_config {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    match cli.command {
        Command::Launch(args) => launch::launch(args, &config),
        Command::Coordinator(args) => {
            launch::coordinator(args, &config).map(|()| ExitCode::SUCCESS)
        }
        Command::Doctor(mut args) => {
            // `weft --config FILE doctor` times that config alone.
            if let Some(file) = &cli.config.config {
                args.configs = Some(vec![file.clone()]);
            }
            doctor::run(args, &cli.config.sets)
        }
        Command::Train(args) => {
            let env = match env {
                Some(env) => env,
                None => LaunchEnv::from_env()?,
            };
            train::train(args, &config, &env)
        }
        command => run_simple(command, &cli.config, &config).map(|()| ExitCode::SUCCESS),
    }
}

/// The config of the command `weft launch` starts (its `[dist]` section times the
/// coordinator); a command that does not parse fails here, before any process starts.
fn launch_worker_config(command: &[String]) -> anyhow::Result<Config> {
    if command.is_empty() {
        return Ok(Config::default());
    }
    let worker =
        Cli::try_parse_from(std::iter::once("weft".to_string()).chain(command.iter().cloned()))
            .map_err(|e| {
                anyhow::anyhow!(
                    "the worker command `{}` does not parse:\n{e}",
                    command.join(" ")
                )
            })?;
    match worker.command {
        Command::Train(_) => Ok(train::train_config(
            worker.config.config.clone(),
            &worker.config.sets,
        )?),
        Command::Launch(_) | Command::Coordinator(_) => {
            bail!("weft launch starts workers: the command after -- cannot be `launch` or `coordinator`")
        }
        _ => load_config(&worker.config),
    }
}

fn run_simple(command: Command, cfg_args: &ConfigArgs, config: &Config) -> anyhow::Result<()> {
    let config = config.clone();
    match command {
        Command::Config { run_dir } => {
            match run_dir {
                Some(dir) => {
                    let path = config.write_to_run_dir(&dir)?;
                    println!("{}", path.display());
                }
                None => print!("{}", config.to_toml()),
            }
            Ok(())
        }
        Command::Data(cmd) => data(cmd, &config),
        Command::Bench(BenchCommand::Data(args)) => bench::data(args, &config),
        Command::Bench(BenchCommand::Train(args)) => train::bench_train(args, &config),
        Command::Bench(BenchCommand::Allreduce(args)) => allreduce::run(args),
        Command::Bench(BenchCommand::Ckpt(args)) => ckpt::bench(args),
        Command::Params { json } => train::params(&config, json),
        Command::Eval(args) => eval::eval(args, cfg_args.config.clone(), &cfg_args.sets),
        Command::Ckpt(cmd) => ckpt::run(cmd),
        Command::Report(args) => report::report(args),
        Command::Train(_) | Command::Launch(_) | Command::Coordinator(_) | Command::Doctor(_) => {
            unreachable!("handled by run")
        }
    }
}

fn data(cmd: DataCommand, config: &Config) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Inspect {
            paths,
            json,
            full,
            captions,
            world_size,
        } => {
            let catalog = weft_data::open_catalog(config, &paths)?;
            let report = weft_data::inspect::inspect(
                Arc::new(catalog),
                weft_data::plan_options(config, weft_data::Split::Train, world_size as usize),
                config.train.grad_accum,
                full,
                captions,
                config.data.skip_bad_files,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
        DataCommand::Synth {
            out,
            rows,
            shards,
            image_size,
            seed,
            row_group_size,
            format,
        } => {
            let opts = SynthOptions {
                rows,
                shards,
                image_size,
                seed,
                row_group_size,
                format: match format {
                    FormatArg::Png => SynthFormat::Png,
                    FormatArg::Jpeg => SynthFormat::Jpeg,
                },
            };
            let files = weft_data::synth::generate(&out, &opts)?;
            for f in &files {
                println!("{}", f.display());
            }
            tracing::info!(
                "wrote {rows} rows in {} files under {}",
                files.len(),
                out.display()
            );
            Ok(())
        }
        DataCommand::ImportIdx {
            images,
            labels,
            out,
            classes,
            limit,
            row_group_size,
        } => {
            let classes: Vec<String> = match classes.as_str() {
                "fashion-mnist" => weft_data::idx::FASHION_MNIST_CLASSES
                    .map(String::from)
                    .to_vec(),
                "mnist" => weft_data::idx::MNIST_CLASSES.map(String::from).to_vec(),
                list => list.split(',').map(|c| c.trim().to_string()).collect(),
            };
            let opts = weft_data::idx::ImportOptions {
                images,
                labels,
                classes,
                limit,
                row_group_size,
            };
            let n = weft_data::idx::import(&opts, &out)?;
            println!("wrote {} ({n} rows)", out.display());
            Ok(())
        }
        DataCommand::Tokenizer {
            train,
            out,
            vocab_size,
            model,
            encode,
            paths,
        } => {
            if train {
                let out = out.context("--train needs --out FILE")?;
                if paths.is_empty() {
                    bail!("--train needs the Parquet paths whose captions to train on");
                }
                let catalog = Arc::new(weft_data::open_catalog(config, &paths)?);
                let model = match model {
                    ModelArg::Wordpiece => TokenizerModel::Wordpiece,
                    ModelArg::Bpe => TokenizerModel::Bpe,
                };
                let captions = CaptionIter::new(catalog);
                weft_data::text::train_tokenizer(captions, model, vocab_size, &out)?;
                let enc =
                    weft_data::TextEncoder::from_file(&out, config.model.text.context_length)?;
                println!("wrote {} ({} tokens)", out.display(), enc.vocab_size());
                Ok(())
            } else {
                let text = encode.context("give --train to train a tokenizer, or --encode TEXT")?;
                let path = config
                    .data
                    .tokenizer
                    .as_ref()
                    .context("data.tokenizer is not set")?;
                let enc =
                    weft_data::TextEncoder::from_file(path, config.model.text.context_length)?;
                let tokens = enc.encode(&text)?;
                let out = serde_json::json!({
                    "ids": tokens.ids,
                    "attention_mask": tokens.attention_mask,
                    "decoded": enc.decode(&tokens.ids)?,
                });
                println!("{out}");
                Ok(())
            }
        }
    }
}

/// Captions of every row of a catalog, streamed one unit at a time.
struct CaptionIter {
    catalog: Arc<weft_data::Catalog>,
    reader: weft_data::RowReader,
    unit: usize,
    buffer: std::vec::IntoIter<String>,
}

impl CaptionIter {
    fn new(catalog: Arc<weft_data::Catalog>) -> Self {
        Self {
            reader: weft_data::RowReader::new(Arc::clone(&catalog), 1024).captions_only(),
            catalog,
            unit: 0,
            buffer: Vec::new().into_iter(),
        }
    }
}

impl Iterator for CaptionIter {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            if let Some(c) = self.buffer.next() {
                return Some(c);
            }
            let unit = self.catalog.units.get(self.unit)?;
            let mut captions = Vec::new();
            if let Err(e) = self
                .reader
                .read(self.unit as u32, &[(0, unit.rows)], |raw| {
                    if let Some(t) = raw.text.filter(|t| !t.trim().is_empty()) {
                        captions.push(t);
                    }
                    true
                })
            {
                tracing::warn!(error = %e, "skipping the captions of an unreadable row group");
            }
            self.unit += 1;
            self.buffer = captions.into_iter();
        }
    }
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the line
/// already holds (errors that print their source in their own message).
fn error_message(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_message;

    /// An error that prints its source in its own message, and also gives it as its source.
    #[derive(Debug)]
    struct Write {
        path: String,
        source: std::io::Error,
    }

    impl std::fmt::Display for Write {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "writing {}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Write {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let e = anyhow::Error::new(Write {
            path: "a/b.safetensors".into(),
            source: std::io::Error::other("disk full"),
        })
        .context("saving the checkpoint of step 4");
        assert_eq!(
            error_message(&e),
            "saving the checkpoint of step 4: writing a/b.safetensors: disk full"
        );
        let e = anyhow::anyhow!("no such file")
            .context("reading x")
            .context("loading y");
        assert_eq!(error_message(&e), "loading y: reading x: no such file");
    }
}

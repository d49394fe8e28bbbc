//! `weft`: the one binary of the weft vision-language pretraining framework.
//!
//! Commands: `weft train`, `weft eval`, `weft data inspect|synth|tokenizer`,
//! `weft bench data|train|allreduce`, `weft config`.

mod allreduce;
mod bench;
mod train;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use weft_config::{Config, ConfigLoader, TokenizerModel};
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
    /// Train a model on one process (default config: configs/tiny.toml).
    Train(train::TrainArgs),
    /// Retrieval Recall@1/5/10 of saved weights on any image-caption data.
    Eval(train::EvalArgs),
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
    /// Print the resolved config, or write it into a run directory.
    Config {
        /// Write it as RUN_DIR/config.toml.
        #[arg(long, value_name = "RUN_DIR")]
        run_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Layout, files, row groups, rows, usable rows, bad rows by reason, image sizes, captions.
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
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    Ok(ConfigLoader::new()
        .maybe_file(args.config.clone())
        .overrides(args.sets.iter().cloned())
        .load()?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match &cli.command {
        Command::Train(_) => train::train_config(cli.config.config.clone(), &cli.config.sets)?,
        _ => load_config(&cli.config)?,
    };
    if cli.config.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    match cli.command {
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
        Command::Train(args) => train::train(args, &config),
        Command::Params { json } => train::params(&config, json),
        Command::Eval(args) => train::eval(args, cli.config.config.clone(), &cli.config.sets),
    }
}

fn data(cmd: DataCommand, config: &Config) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Inspect {
            paths,
            json,
            full,
            captions,
        } => {
            let catalog = weft_data::open_catalog(config, &paths)?;
            let report = weft_data::inspect::inspect(
                Arc::new(catalog),
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

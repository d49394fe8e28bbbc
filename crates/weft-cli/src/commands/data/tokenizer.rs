//! `weft data tokenizer`: train a tokenizer on a dataset's captions, or encode a caption
//! with `data.tokenizer`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use weft_config::{Config, TokenizerModel};

/// Arguments of `weft data tokenizer`.
#[derive(Args, Debug)]
pub struct TokenizerArgs {
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
}

// The tokenizer model of `--model` (no doc comments on the variants: clap would print them
// as a list under the option's help).
#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum ModelArg {
    Wordpiece,
    Bpe,
}

/// Train (`--train`) or encode (`--encode`).
pub fn run(args: TokenizerArgs, config: &Config) -> anyhow::Result<()> {
    if args.train {
        train(args, config)
    } else {
        encode(args, config)
    }
}

/// Train a tokenizer on the captions of `args.paths` and write it to `--out`.
fn train(args: TokenizerArgs, config: &Config) -> anyhow::Result<()> {
    let out = args.out.context("--train needs --out FILE")?;
    if args.paths.is_empty() {
        bail!("--train needs the Parquet paths whose captions to train on");
    }
    let catalog = Arc::new(weft_data::open_catalog(config, &args.paths)?);
    let model = match args.model {
        ModelArg::Wordpiece => TokenizerModel::Wordpiece,
        ModelArg::Bpe => TokenizerModel::Bpe,
    };
    let captions = CaptionIter::new(catalog);
    weft_data::text::train_tokenizer(captions, model, args.vocab_size, &out)?;
    let enc = weft_data::TextEncoder::from_file(&out, config.model.text.context_length)?;
    println!("wrote {} ({} tokens)", out.display(), enc.vocab_size());
    Ok(())
}

/// Print the ids, attention mask and decoded text of `--encode` under `data.tokenizer`.
fn encode(args: TokenizerArgs, config: &Config) -> anyhow::Result<()> {
    let text = args
        .encode
        .context("give --train to train a tokenizer, or --encode TEXT")?;
    let path = config
        .data
        .tokenizer
        .as_ref()
        .context("data.tokenizer is not set")?;
    let enc = weft_data::TextEncoder::from_file(path, config.model.text.context_length)?;
    let tokens = enc.encode(&text)?;
    let out = serde_json::json!({
        "ids": tokens.ids,
        "attention_mask": tokens.attention_mask,
        "decoded": enc.decode(&tokens.ids)?,
    });
    println!("{out}");
    Ok(())
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

//! `weft eval`: retrieval (with ITM re-ranking), zero-shot classification and captioning of
//! saved weights on any image-caption data.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use weft_collective::{Collective, SingleRank};
use weft_config::{Config, ConfigLoader};
use weft_coordinator::LaunchEnv;
use weft_data::{Split, TextEncoder};
use weft_train::eval::{Captioning, ZeroShot};
use weft_train::weights::{build_model, with_weights, TOKENIZER_FILE};
use weft_train::Retrieval;

use crate::backend::{with_backend, GpuRank, OnBackend};

/// Arguments of `weft eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Weights saved by `weft train`: RUN_DIR/model.safetensors, an export, a checkpoint
    /// directory (RUN_DIR/checkpoints/step-N) or the run directory (its model.safetensors, else
    /// its newest checkpoint); the model config is RUN_DIR/config.toml unless --config is given.
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// Parquet files, directories or globs of image-caption pairs (default: data.val).
    #[arg(long, num_args = 1.., value_name = "PATHS")]
    data: Vec<String>,
    /// What to measure: text<->image retrieval, zero-shot classification (a label column,
    /// prompt templates), or captioning (models with the LM objective).
    #[arg(long, value_enum, default_value_t = EvalTask::Retrieval)]
    task: EvalTask,
    /// ALBEF's re-ranking: the K best candidates by ITC ranked again by the ITM head
    /// (models with ITM), reported beside the ITC ranking.
    #[arg(long, value_name = "K")]
    rerank_k: Option<usize>,
    /// Zero-shot: the column holding each image's class name.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Zero-shot: a prompt template, `{}` standing for the class name (repeatable; the text
    /// embeddings of the prompts are averaged).
    #[arg(
        long = "prompts",
        value_name = "TEMPLATE",
        default_value = "a photo of a {}."
    )]
    prompts: Vec<String>,
    /// Zero-shot: the classes to choose from, comma-separated (default: the distinct labels).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// Captioning: beams of the beam search (greedy decoding is reported too; 1: greedy only).
    #[arg(long, default_value_t = 3)]
    beams: usize,
    /// Captioning: tokens per caption at most (default: the context length minus one).
    #[arg(long)]
    max_len: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `weft eval --task`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalTask {
    /// Recall@K and ranks both ways (`--rerank-k` adds ITM re-ranking).
    Retrieval,
    /// Zero-shot classification: top-1/top-5 accuracy and a per-class table.
    Zeroshot,
    /// Captioning (models with the LM objective): greedy and beam-search captions, BLEU-1..4,
    /// ROUGE-L and CIDEr-D against the reference captions.
    Caption,
}

/// What `weft eval --json` prints: the ITC retrieval, and the re-ranked one when asked for.
#[derive(serde::Serialize)]
struct EvalReport {
    #[serde(flatten)]
    itc: Retrieval,
    #[serde(skip_serializing_if = "Option::is_none")]
    rerank_k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    itm_rerank: Option<Retrieval>,
}

fn print_retrieval(label: &str, r: &Retrieval) {
    println!(
        "{label}image->text R@1 {:6.2}  R@5 {:6.2}  R@10 {:6.2}  mean rank {:.1}  median rank {:.0}",
        r.i2t_r1, r.i2t_r5, r.i2t_r10, r.i2t_mean_rank, r.i2t_median_rank
    );
    println!(
        "{label}text->image R@1 {:6.2}  R@5 {:6.2}  R@10 {:6.2}  mean rank {:.1}  median rank {:.0}",
        r.t2i_r1, r.t2i_r5, r.t2i_r10, r.t2i_mean_rank, r.t2i_median_rank
    );
}

/// The run directory of `--checkpoint`: two levels up from a checkpoint directory
/// (RUN_DIR/checkpoints/step-N), the directory itself, or a file's directory.
fn run_dir_of(path: &Path) -> PathBuf {
    if path.join(weft_checkpoint::files::TRAINER_STATE).is_file() {
        path.parent().and_then(Path::parent)
    } else if path.is_dir() {
        Some(path)
    } else {
        path.parent()
    }
    .map(Path::to_path_buf)
    .unwrap_or_default()
}

/// The model config `weft eval` reads (as [`eval`] does, without reading the weights).
#[cfg(feature = "cuda")]
pub fn config(
    args: &EvalArgs,
    config_file: Option<PathBuf>,
    sets: &[String],
) -> anyhow::Result<Config> {
    let file = config_file
        .unwrap_or_else(|| run_dir_of(&args.checkpoint).join(weft_config::RUN_CONFIG_FILE));
    Ok(ConfigLoader::new()
        .file(&file)
        .overrides(sets.iter().cloned())
        .load()?)
}

/// `weft eval`.
///
/// The model config is `--config` if given, else the run directory's config.toml; `--set`
/// overrides apply to either.
pub fn run(args: EvalArgs, config_file: Option<PathBuf>, sets: &[String]) -> anyhow::Result<()> {
    // A checkpoint directory (RUN_DIR/checkpoints/step-N) belongs to the run directory two
    // levels up; a run directory gives its model.safetensors, else its newest checkpoint.
    let path = &args.checkpoint;
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    let dir = run_dir_of(path);
    let weights = weft_checkpoint::read_pretrained(path)
        .with_context(|| format!("the weights of --checkpoint {}", path.display()))?;
    tracing::info!("weights: {}", weights.source.display());
    let file = config_file.unwrap_or_else(|| dir.join(weft_config::RUN_CONFIG_FILE));
    let mut config = ConfigLoader::new()
        .file(&file)
        .overrides(sets.iter().cloned())
        .load()
        .with_context(|| format!("the model config of {}", weights.source.display()))?;
    let tokenizer = dir.join(TOKENIZER_FILE);
    if tokenizer.exists() {
        config.data.tokenizer = Some(tokenizer.display().to_string());
    }
    // Under `weft launch` every rank evaluates its share of the rows; rank 0 prints.
    let env = LaunchEnv::from_env()?;
    crate::rank::init_rank_threads(&config, &env);
    let data = if args.data.is_empty() {
        config.data.val.clone()
    } else {
        args.data.clone()
    };
    if data.is_empty() {
        bail!("no data: pass --data PATHS (or set data.val)");
    }
    let loader = weft_data::loader_from_config(&config, Split::Val, &data)?;
    let vocab = loader
        .text()
        .map(TextEncoder::vocab_size)
        .context("data.tokenizer: evaluation needs the tokenizer")?;
    let work = match args.task {
        EvalTask::Retrieval => Work::Retrieval {
            rerank_k: args.rerank_k,
        },
        EvalTask::Zeroshot => {
            if args.prompts.iter().any(|p| !p.contains("{}")) {
                bail!("--prompts: every template needs {{}} where the class name goes");
            }
            Work::ZeroShot {
                labels: weft_data::labels::Labels::read(loader.catalog(), &args.label_column)?,
                classes: args.classes.clone(),
                prompts: args.prompts.clone(),
            }
        }
        EvalTask::Caption => Work::Caption {
            beams: args.beams,
            max_len: args
                .max_len
                .unwrap_or(config.model.text.context_length.saturating_sub(1)),
        },
    };
    let mut job = if env.world_size > 1 {
        let (job, options) = crate::rank::join_job(&env, &config, &dir, None)?;
        tracing::info!(
            "rank {} of {} joined the evaluation",
            env.rank,
            env.world_size
        );
        Some((job, options))
    } else {
        None
    };
    let mut single = SingleRank;
    let collective: &mut dyn Collective = match &mut job {
        Some((job, _)) => job.parts().0,
        None => &mut single,
    };
    let run = EvalRun {
        config: &config,
        vocab,
        weights: &weights,
        loader: &loader,
        work,
        collective,
    };
    let output = with_backend(&config, env.local_rank, run)?;
    if let Some((job, options)) = job {
        job.finish(options.heartbeat_timeout)?;
    }
    if env.rank > 0 {
        return Ok(());
    }
    match output {
        Output::Retrieval(r, rerank) => print_retrieval_report(&args, &data, r, rerank),
        Output::ZeroShot(z) => print_zero_shot(&args, &data, &z),
        Output::Caption(c) => print_captioning(&args, &data, &c),
    }
}

fn print_retrieval_report(
    args: &EvalArgs,
    data: &[String],
    r: Retrieval,
    rerank: Option<Retrieval>,
) -> anyhow::Result<()> {
    if args.rerank_k.is_some() && rerank.is_none() {
        tracing::warn!("--rerank-k: the model has no ITM head; ITC ranking only");
    }
    if args.json {
        let report = EvalReport {
            itc: r,
            rerank_k: rerank.as_ref().and(args.rerank_k),
            itm_rerank: rerank,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{} image-caption pairs from {}", r.n, data.join(" "));
    print_retrieval("", &r);
    println!("chance      R@1 {:6.2}", r.chance_r1);
    if let (Some(k), Some(x)) = (args.rerank_k, &rerank) {
        println!("re-ranked by ITM (top {k} by ITC):");
        print_retrieval("  ", x);
    }
    Ok(())
}

fn print_zero_shot(args: &EvalArgs, data: &[String], z: &ZeroShot) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(z)?);
        return Ok(());
    }
    let a = &z.accuracy;
    println!(
        "zero-shot on {} images from {} ({} classes, {} prompt(s)): top-1 {:.2}%, top-5 {:.2}% (chance top-1 {:.2}%)",
        a.n,
        data.join(" "),
        a.per_class.len(),
        z.prompts.len(),
        a.top1,
        a.top5,
        a.chance_top1
    );
    println!(
        "{:<24} {:>6} {:>8} {:>8}",
        "class", "images", "top-1 %", "top-5 %"
    );
    for c in &a.per_class {
        println!("{:<24} {:>6} {:>8.2} {:>8.2}", c.class, c.n, c.top1, c.top5);
    }
    if z.unlabelled > 0 {
        println!("{} images without a known label left out", z.unlabelled);
    }
    Ok(())
}

fn print_captioning(args: &EvalArgs, data: &[String], c: &Captioning) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(c)?);
        return Ok(());
    }
    println!(
        "captions of {} images from {} (at most {} tokens)",
        c.images,
        data.join(" "),
        c.max_len
    );
    println!(
        "{:<12} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8}",
        "decoding", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"
    );
    let beam = format!("beam {}", c.beams);
    let rows =
        std::iter::once(("greedy", &c.greedy)).chain(c.beam.iter().map(|b| (beam.as_str(), b)));
    for (name, s) in rows {
        println!(
            "{:<12} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>8.4} {:>8.4}",
            name, s.bleu1, s.bleu2, s.bleu3, s.bleu4, s.rouge_l, s.cider_d
        );
    }
    for e in &c.examples {
        let beam = e
            .beam
            .as_ref()
            .map(|b| format!(", beam {b:?}"))
            .unwrap_or_default();
        let reference = e.references.first().map(String::as_str).unwrap_or("");
        println!(
            "{}: greedy {:?}{beam}; reference {reference:?}",
            e.key, e.greedy
        );
    }
    Ok(())
}

/// What a `weft eval` task needs beyond the model and the data.
enum Work {
    Retrieval {
        rerank_k: Option<usize>,
    },
    ZeroShot {
        labels: weft_data::labels::Labels,
        classes: Option<Vec<String>>,
        prompts: Vec<String>,
    },
    Caption {
        beams: usize,
        max_len: usize,
    },
}

/// What a `weft eval` task gives.
enum Output {
    Retrieval(Retrieval, Option<Retrieval>),
    ZeroShot(ZeroShot),
    Caption(Captioning),
}

/// `weft eval` on one backend: saved weights, the config they fit, the data and the task.
struct EvalRun<'a> {
    config: &'a Config,
    vocab: usize,
    weights: &'a weft_checkpoint::Pretrained,
    loader: &'a weft_data::Loader,
    work: Work,
    /// The job's ranks (one alone without `weft launch`).
    collective: &'a mut dyn Collective,
}

impl OnBackend for EvalRun<'_> {
    type Output = Output;

    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        _gpu: Option<GpuRank<B::InnerBackend>>,
    ) -> anyhow::Result<Output> {
        let model = build_model::<B::InnerBackend>(self.config, self.vocab, &device);
        let model = with_weights(model, self.weights, &device)?;
        let (config, loader) = (self.config, self.loader);
        use weft_train::eval as e;
        Ok(match self.work {
            Work::Retrieval { rerank_k } => {
                let (r, x) = e::evaluate_retrieval_rerank(
                    &model,
                    config,
                    loader,
                    &device,
                    rerank_k,
                    self.collective,
                )?;
                Output::Retrieval(r, x)
            }
            Work::ZeroShot {
                labels,
                classes,
                prompts,
            } => Output::ZeroShot(e::evaluate_zero_shot(
                &model,
                config,
                loader,
                e::ZeroShotTask {
                    labels: &labels,
                    classes,
                    prompts: &prompts,
                },
                &device,
                self.collective,
            )?),
            Work::Caption { beams, max_len } => Output::Caption(e::evaluate_captioning(
                &model,
                config,
                loader,
                beams,
                max_len,
                &device,
                self.collective,
            )?),
        })
    }
}

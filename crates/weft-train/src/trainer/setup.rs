//! A run's start: the model and its engine (fresh, from `train.init_from`, or from the
//! checkpoint it resumes), the run directory's files, the validation split, and the plan of
//! its steps (how many, from where, with which learning-rate schedule).

use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use weft_checkpoint::{check_compatible, Checkpoint, ParamTable, SHAPE_KEYS};
use weft_collective::Collective;
use weft_config::Config;
use weft_data::{DataCursor, DatasetUnits, Loader, Planner, Share, Split};
use weft_model::VlModelConfig;

use super::same_resume::resolve_together;
use super::TrainOptions;
use crate::engine::Engine;
use crate::error::{io, TrainError};
use crate::metrics::{JsonLines, RunRecord};
use crate::schedule::WarmupCosine;
use crate::snapshot::{param_table, read_restored};
use crate::weights::{
    build_model, init_from, log_init, log_param_counts, special_tokens, TOKENIZER_FILE,
};

/// The model of a run, ready to train: its engine, the checkpoint it resumes from, and what
/// the run directory says of it.
pub struct Started<B: AutodiffBackend> {
    /// The training split.
    pub train_loader: Loader,
    /// The model, its master copy and AdamW (rank 0's parameters on every rank).
    pub engine: Engine<B>,
    /// The checkpoint the run resumes from.
    pub resumed: Option<Checkpoint>,
    /// The resolved config (with the vocabulary size) as JSON.
    pub resolved_json: serde_json::Value,
    /// The names and shapes of the parameters, as checkpoints hold them.
    pub table: Arc<ParamTable>,
    /// Parameters per module.
    pub param_counts: Vec<(&'static str, usize)>,
}

/// Build the model of `config` on every rank, set it from `train.init_from` or from the
/// checkpoint the run resumes (every rank reads the same one: the run directory is shared),
/// and start every rank from rank 0's parameters.
pub fn start<B: AutodiffBackend>(
    config: &Config,
    options: &TrainOptions,
    device: &B::Device,
    collective: &mut dyn Collective,
) -> Result<Started<B>, TrainError> {
    let lead = collective.rank() == 0;
    let train_loader = weft_data::loader_from_config(config, Split::Train, &config.data.train)?;
    let text = train_loader.text().ok_or(TrainError::NoTokenizer)?;
    let vocab = text.vocab_size();
    let special = special_tokens(&train_loader, config)?;

    let mut resolved = config.clone();
    resolved.model.text.vocab_size = VlModelConfig::vocab_size(config, vocab);
    let resolved_json = serde_json::to_value(&resolved).expect("configs serialise");

    let resumed = resolve_together(&options.run_dir, &options.resume, collective)?;
    let mut model = build_model::<B>(config, vocab, device);
    let param_counts = model.param_counts();
    if lead {
        log_param_counts(&param_counts);
    }
    match (&config.train.init_from, &resumed) {
        (Some(src), Some(ckpt)) if lead => tracing::info!(
            "train.init_from = {src} is not used: the run resumes from {}",
            ckpt.dir.display()
        ),
        (Some(src), None) => {
            // Every rank reads the weights (as it reads a checkpoint), so that each fails
            // alike on a bad file; the broadcast below would give them rank 0's anyway.
            let report;
            (model, report) = init_from(model, Path::new(src), device)?;
            if lead {
                log_init(&report);
            }
        }
        _ => {}
    }
    let mut engine = Engine::new(model, config, special, device);
    if lead && engine.updates_on_device() {
        tracing::info!("optimizer update on the device (train.update_on)");
    }
    engine.broadcast_params(collective, device)?;
    let table = param_table(engine.params());
    if let Some(ckpt) = &resumed {
        check_compatible(&ckpt.state.config, &resolved_json, &SHAPE_KEYS)?;
        engine.restore(read_restored(ckpt, &table)?, device);
        if lead {
            tracing::info!(
                "resuming from {} (step {}, written by {} ranks)",
                ckpt.dir.display(),
                ckpt.state.step,
                ckpt.state.world_size
            );
        }
    }
    if lead {
        let world = collective.world_size();
        let record = RunRecord::now(
            &resolved_json,
            B::name(device),
            world,
            resumed_from(&resumed),
        );
        write_run_files(config, &options.run_dir, &resolved, &record)?;
    }
    Ok(Started {
        train_loader,
        engine,
        resumed,
        resolved_json,
        table,
        param_counts,
    })
}

/// The run directory describes the run on its own: resolved config, tokenizer and a line of
/// runs.jsonl per start. Written once the checkpoint it resumes from (or train.init_from) has
/// been read and found to fit, so that a refused run leaves the files that describe the
/// earlier checkpoints.
fn write_run_files(
    config: &Config,
    run_dir: &Path,
    resolved: &Config,
    record: &RunRecord,
) -> Result<(), TrainError> {
    resolved.write_to_run_dir(run_dir)?;
    if let Some(tok) = &config.data.tokenizer {
        let dst = run_dir.join(TOKENIZER_FILE);
        if Path::new(tok) != dst {
            std::fs::copy(tok, &dst).map_err(io(&dst))?;
        }
    }
    JsonLines::append(&run_dir.join("runs.jsonl"))?.write(record)
}

/// The step of the checkpoint a run resumes from (0: a fresh start).
pub fn resumed_from(resumed: &Option<Checkpoint>) -> u64 {
    resumed.as_ref().map_or(0, |c| c.state.step)
}

/// The validation split, when the run evaluates: every rank embeds its share of its rows.
pub fn val_loader(
    config: &Config,
    has_embeddings: bool,
    lead: bool,
) -> Result<Option<Loader>, TrainError> {
    if !config.data.val.is_empty() && has_embeddings {
        Ok(Some(weft_data::loader_from_config(
            config,
            Split::Val,
            &config.data.val,
        )?))
    } else {
        if lead {
            tracing::info!("no retrieval evaluation (no data.val or no ITC head)");
        }
        Ok(None)
    }
}

/// Where a run starts in its data and how long it is.
pub struct StepPlan {
    /// This rank's share of the first epoch it trains in.
    pub first: Share,
    /// The last step.
    pub total: u64,
    /// The learning rate of each step.
    pub schedule: WarmupCosine,
}

/// Open the job's data plan at the run's start (the checkpoint's cursor, re-planned when the
/// world or batch size changed) and count the run's steps.
pub fn plan_steps(
    config: &Config,
    loader: &Loader,
    planner: &mut dyn Planner,
    resumed: &Option<Checkpoint>,
    world: usize,
    lead: bool,
    run_dir: &Path,
) -> Result<StepPlan, TrainError> {
    let t = &config.train;
    let catalog = Arc::clone(loader.catalog());
    let units = catalog.units();
    let start = match resumed {
        // The checkpoint's cursor, re-planned when the world or batch size changed: within the
        // epoch no row is lost or seen twice. The data order's options are the checkpoint's.
        Some(ckpt) => ckpt
            .state
            .data_cursor
            .reshard(&*units, world, config.data.batch_size)?,
        None => DataCursor::new(
            &*units,
            weft_data::plan_options(config, Split::Train, world),
            0,
        ),
    };
    planner.open(&units, &start)?;
    let first = planner.share(start.epoch)?;
    // Steps of a whole epoch (a re-planned one may have fewer left).
    let micro_per_epoch = DataCursor::new(
        &*units,
        weft_data::plan_options(config, Split::Train, world),
        0,
    )
    .steps(&*units)?;
    let steps_per_epoch = micro_per_epoch / t.grad_accum;
    let resharded = resumed.as_ref().filter(|c| {
        let o = &c.state.data_cursor.options;
        (o.world_size, o.batch_size) != (world, config.data.batch_size)
    });
    let total = match (t.max_steps, resharded) {
        (0, Some(c)) => {
            // Re-planned for another world: the rest of this epoch, then whole epochs.
            let left = (first.plan.steps - first.step) / t.grad_accum;
            let later = t.epochs.saturating_sub(start.epoch + 1) * steps_per_epoch;
            c.state.step + left + later
        }
        (0, None) => t.epochs * steps_per_epoch,
        (max, _) => max,
    };
    if micro_per_epoch == 0 || total == 0 {
        return Err(TrainError::NoSteps {
            rows: catalog.planned_rows(),
            batch: config.data.batch_size * world,
            accum: t.grad_accum,
        });
    }
    let schedule = WarmupCosine {
        peak: t.lr,
        floor: t.min_lr,
        warmup: t.warmup_steps,
        total,
    };
    if lead {
        tracing::info!(
            "training {total} steps ({steps_per_epoch} per epoch, batch {} x {world} ranks x accum {}), run dir {}",
            config.data.batch_size,
            t.grad_accum,
            run_dir.display()
        );
    }
    Ok(StepPlan {
        first,
        total,
        schedule,
    })
}

//! The training loop, on one process or on one rank of a data-parallel job.
//!
//! Every rank builds the same model from the same seed, reads its own share of each global
//! batch (handed out by a [`Planner`]: the coordinator's in a job), computes its local losses
//! with ITC over the global batch, averages the gradients with the other ranks
//! ([`crate::grads::reduce`]) and applies the identical update. Rank 0 writes the run
//! directory's files.
//!
//! [`train_with`] is the loop (as torchtitan's `train.py`): [`setup`] starts the run,
//! [`step::Trainer::train_step`] runs one optimizer step, and the [`validator::Validator`] and
//! the [`checkpointer::Checkpointer`] decide themselves when they are due.

pub mod batches;
pub mod checkpointer;
pub mod same_resume;
pub mod setup;
pub mod step;
pub mod validator;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use burn::tensor::backend::AutodiffBackend;
use weft_checkpoint::{Committer, LocalCommitter, Resume, WriteOptions};
use weft_collective::{Collective, SingleRank};
use weft_config::Config;
use weft_data::{LocalPlanner, Planner};

use crate::error::{io, TrainError};
use crate::eval::Retrieval;
use crate::grads::reduce::{bucket_elems, GradReduce};
use crate::metrics::{truncate_after_step, JsonLines};
use crate::progress::Progress;
use crate::weights::{save_model, MODEL_FILE};
use batches::Batches;
use checkpointer::{Checkpointer, Saver};
use step::{Counters, Trainer};
use validator::Validator;

/// How to run [`train`].
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Where `config.toml`, `metrics.jsonl`, `eval.jsonl` and the weights go.
    pub run_dir: PathBuf,
    /// Draw a progress bar (stderr is a terminal) instead of log lines.
    pub progress: bool,
    /// Fault injection for tests: make the loss NaN at these optimizer steps (from 1).
    pub nonfinite_loss_at: Vec<u64>,
    /// Which checkpoint to resume from.
    pub resume: Resume,
    /// Set (by a signal handler) to save a checkpoint at the next step boundary and stop.
    pub stop: Option<Arc<AtomicBool>>,
    /// Fault injection for tests: stop as if signalled during this optimizer step.
    pub stop_at_step: Option<u64>,
    /// For tests: sleep this long at the end of every optimizer step, so that a signal sent
    /// from outside (a Slurm test) lands mid-run. The numbers do not change.
    pub step_pause: Option<Duration>,
    /// How checkpoint files are written (a failure can be injected for tests).
    pub checkpoint_write: WriteOptions,
}

/// What one rank of a run trains with: its collective, where it gets its data plan, and who
/// commits its checkpoints. [`train`] uses the single-process ones. `I` is the backend the
/// gradients live on (the training backend's inner one).
pub struct Rank<'a, I: burn::tensor::backend::Backend> {
    /// The collective of the job ([`SingleRank`] alone).
    pub collective: &'a mut dyn Collective,
    /// Averages device gradients without the host (NCCL); None: device gradients that must be
    /// averaged go through the host and `collective`.
    pub grad_reduce: Option<&'a mut GradReduce<I>>,
    /// The data plan ([`LocalPlanner`] alone, the coordinator's in a job).
    pub planner: &'a mut dyn Planner,
    /// The checkpoint committer ([`LocalCommitter`] alone, the coordinator in a job).
    pub committer: Arc<dyn Committer + Send>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer steps taken (skipped ones included).
    pub steps: u64,
    /// Steps whose update was skipped.
    pub skipped: u64,
    /// Total loss of every step.
    pub losses: Vec<f64>,
    /// The last evaluation.
    pub eval: Option<Retrieval>,
    /// The saved weights.
    pub model_path: PathBuf,
    /// Parameters per module.
    pub param_counts: Vec<(&'static str, usize)>,
    /// The step the run resumed from (0: a fresh start).
    pub resumed_from: u64,
    /// The run stopped early on a signal, after committing a checkpoint.
    pub interrupted: bool,
    /// The last checkpoint committed.
    pub checkpoint: Option<PathBuf>,
}

/// Train `config` on one process with the backend `B` on `device`.
pub fn train<B: AutodiffBackend>(
    config: &Config,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    train_with::<B>(
        config,
        options,
        device,
        Rank {
            collective: &mut SingleRank,
            grad_reduce: None,
            planner: &mut LocalPlanner::new(0),
            committer: Arc::new(LocalCommitter {
                run_dir: options.run_dir.clone(),
                keep_last: config.checkpoint.keep_last,
            }),
        },
    )
}

/// Train `config` as rank `collective.rank()` of `collective.world_size()` ranks with the
/// backend `B` on `device`. `data.batch_size` is per rank. The rank's share of every epoch
/// comes from `planner` (in a job, the coordinator's: it checks that every rank reads the same
/// dataset with the same options). Rank 0 writes the run directory's config, metrics,
/// evaluations and weights; every rank must be given the same config.
pub fn train_with<B: AutodiffBackend>(
    config: &Config,
    options: &TrainOptions,
    device: &B::Device,
    job: Rank<'_, B::InnerBackend>,
) -> Result<TrainSummary, TrainError> {
    let Rank {
        collective,
        grad_reduce,
        planner,
        committer,
    } = job;
    let run_dir = &options.run_dir;
    let (rank, world) = (collective.rank(), collective.world_size());
    let lead = rank == 0;
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let t = &config.train;

    let started = setup::start::<B>(config, options, device, collective)?;
    let has_embeddings = started.engine.model().has_embeddings();
    let val_loader = setup::val_loader(config, has_embeddings, lead)?;
    let loader = &started.train_loader;
    let plan = setup::plan_steps(
        config,
        loader,
        planner,
        &started.resumed,
        world,
        lead,
        run_dir,
    )?;
    let total = plan.total;
    let first_step = setup::resumed_from(&started.resumed);
    let (mut metrics, evals) = open_logs(lead, run_dir, first_step)?;
    let mut progress = Progress::new(total, options.progress && lead, t.log_every);
    let (counters, last_eval) = resumed_counters(&started.resumed, total);
    let mut validator = Validator::new(val_loader, config, total, evals, last_eval);
    let saver = Saver::new(
        committer,
        run_dir.clone(),
        rank,
        world,
        options.checkpoint_write,
        config.checkpoint.async_save,
    );
    let mut checkpointer = Checkpointer::new(
        saver,
        &config.checkpoint,
        total,
        started.table,
        started.resolved_json,
    );
    let mut trainer = Trainer {
        config,
        options,
        device,
        collective,
        grad_reduce,
        engine: started.engine,
        batches: Batches::new(started.train_loader, planner, plan.first),
        schedule: plan.schedule,
        bucket: bucket_elems(config.dist.bucket_mb),
        counters,
    };

    // Grown as the run goes: `total` may be far more steps than this process will run.
    let mut losses = Vec::with_capacity((total as usize).min(1 << 16));
    let (mut done, mut interrupted) = (first_step, false);
    for step in (first_step + 1)..=total {
        done = step;
        let outcome = trainer.train_step(step)?;
        if let Some(m) = metrics.as_mut() {
            m.write(&outcome.metrics)?;
        }
        progress.step(&outcome.metrics);
        losses.push(outcome.metrics.loss);
        let bad = trainer.counters.consecutive_bad;
        if bad >= t.max_nonfinite_steps {
            progress.finish();
            return Err(TrainError::NonFinite { step, count: bad });
        }
        validator.maybe_validate(step, outcome.stop, &mut trainer, &mut progress)?;
        checkpointer.maybe_save(step, outcome.stop, &mut trainer, validator.last.as_ref())?;
        if outcome.stop {
            interrupted = true;
            if lead {
                tracing::warn!("stopping after step {step} on a signal; the checkpoint of step {step} holds the run");
            }
            break;
        }
    }
    progress.finish();
    // The last save must be committed before the run reports success.
    let checkpoint = checkpointer.finish()?;

    let model_path = run_dir.join(MODEL_FILE);
    if lead && !interrupted {
        save_model(trainer.engine.model(), &model_path)?;
        tracing::info!("saved {}", model_path.display());
    }
    // Every rank returns once the weights are written.
    trainer.collective.barrier()?;
    Ok(TrainSummary {
        steps: done,
        skipped: trainer.counters.skipped,
        losses,
        eval: validator.last,
        model_path,
        param_counts: started.param_counts,
        resumed_from: first_step,
        interrupted,
        checkpoint,
    })
}

/// Rank 0's `metrics.jsonl` and `eval.jsonl` (None on the other ranks), without the lines of
/// steps after `first_step`: they belong to the run that was interrupted.
fn open_logs(
    lead: bool,
    run_dir: &Path,
    first_step: u64,
) -> Result<(Option<JsonLines>, Option<JsonLines>), TrainError> {
    if !lead {
        return Ok((None, None));
    }
    let (metrics, evals) = (run_dir.join("metrics.jsonl"), run_dir.join("eval.jsonl"));
    // Lines after the step the run starts from, or torn, are not this run's history.
    for path in [&metrics, &evals] {
        truncate_after_step(path, first_step)?;
    }
    Ok((
        Some(JsonLines::append(&metrics)?),
        Some(JsonLines::append(&evals)?),
    ))
}

/// What the checkpoint a run resumes from had counted, and its last evaluation (zeros and
/// none for a fresh start).
fn resumed_counters(
    resumed: &Option<weft_checkpoint::Checkpoint>,
    total: u64,
) -> (Counters, Option<Retrieval>) {
    let Some(c) = resumed else {
        return (Counters::default(), None);
    };
    let st = &c.state;
    if st.scheduler.total != total {
        tracing::warn!(
            "the checkpoint's schedule ran over {} steps, this run's over {total}: the learning rate follows the new length",
            st.scheduler.total
        );
    }
    let counters = Counters {
        samples_seen: st.samples_seen,
        skipped: st.skipped_steps,
        consecutive_bad: st.consecutive_nonfinite,
        micro_index: st.rng.objective_draws,
    };
    let last_eval = st
        .last_eval
        .clone()
        .and_then(|v| serde_json::from_value(v).ok());
    (counters, last_eval)
}

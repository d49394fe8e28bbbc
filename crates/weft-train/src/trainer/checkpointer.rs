//! The trainer's checkpoints: [`Checkpointer`] decides when one is due (every
//! `checkpoint.every_steps`, at the last step, on a stop request), builds the trainer state
//! and hands a snapshot of the engine's buffers to the [`Saver`], which writes it on a
//! background thread (at most one save in flight) and has it committed.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use weft_checkpoint::{
    write_rank, CheckpointError, Committer, ParamTable, RngState, SchedulerState, Snapshot,
    TrainerState, WriteOptions,
};
use weft_data::DataCursor;

use super::step::Trainer;
use crate::error::TrainError;
use crate::eval::Retrieval;

/// When a run saves itself, and what its checkpoints hold besides the buffers.
pub struct Checkpointer {
    saver: Saver,
    /// `checkpoint.every_steps` (0: only at the end and on a stop request).
    every_steps: u64,
    /// The run's last step.
    last_step: u64,
    /// `checkpoint.async_save`.
    async_save: bool,
    /// This rank writes the trainer state (rank 0).
    lead: bool,
    /// The names and shapes of the parameters.
    table: Arc<ParamTable>,
    /// The resolved config, as the trainer state holds it.
    config: serde_json::Value,
}

impl Checkpointer {
    /// The checkpointer of a run of `last_step` steps.
    pub fn new(
        saver: Saver,
        checkpoint: &weft_config::CheckpointConfig,
        last_step: u64,
        table: Arc<ParamTable>,
        config: serde_json::Value,
    ) -> Self {
        Self {
            lead: saver.rank == 0,
            saver,
            every_steps: checkpoint.every_steps,
            last_step,
            async_save: checkpoint.async_save,
            table,
            config,
        }
    }

    /// Whether step `step` saves: every `checkpoint.every_steps`, the last step, a stop.
    pub fn is_due(&self, step: u64, stop: bool) -> bool {
        (self.every_steps > 0 && step.is_multiple_of(self.every_steps))
            || step == self.last_step
            || stop
    }

    /// Save the checkpoint of `step` when it is due: wait for the save in flight, snapshot the
    /// engine, hand it to the saver (rank 0 with the trainer state and the job's data cursor).
    /// When none is due, a background save that has failed (a full disk) fails the run now,
    /// not at the next save.
    pub fn maybe_save<B: AutodiffBackend>(
        &mut self,
        step: u64,
        stop: bool,
        trainer: &mut Trainer<'_, B>,
        last_eval: Option<&Retrieval>,
    ) -> Result<(), TrainError> {
        if !self.is_due(step, stop) {
            return self.saver.poll();
        }
        // A save still in flight must finish first (at most one at a time).
        let waited = Instant::now();
        self.saver.wait()?;
        let waited = waited.elapsed();
        let stalled = Instant::now();
        let state = if self.lead {
            let cursor = trainer.batches.planner.cursor(step)?;
            Some(self.trainer_state(step, cursor, trainer, last_eval))
        } else {
            None
        };
        let snap = trainer
            .engine
            .snapshot(&self.table, self.saver.spare.take());
        self.saver.save(step, snap, state)?;
        let stall = stalled.elapsed();
        if self.lead {
            tracing::info!(
                "checkpoint of step {step}: training stalled {:.1} ms ({}){}",
                stall.as_secs_f64() * 1e3,
                if self.async_save {
                    "copy to host; written in the background"
                } else {
                    "written and committed before training goes on"
                },
                if waited.as_millis() > 0 {
                    format!(
                        ", after {:.1} ms waiting for the previous save",
                        waited.as_secs_f64() * 1e3
                    )
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }

    /// What the checkpoint of `step` holds besides the buffers.
    fn trainer_state<B: AutodiffBackend>(
        &self,
        step: u64,
        cursor: DataCursor,
        trainer: &Trainer<'_, B>,
        last_eval: Option<&Retrieval>,
    ) -> TrainerState {
        let (c, schedule) = (&trainer.counters, &trainer.schedule);
        TrainerState {
            format: weft_checkpoint::state::FORMAT,
            weft_version: env!("CARGO_PKG_VERSION").to_string(),
            step,
            epoch: cursor.epoch,
            samples_seen: c.samples_seen,
            skipped_steps: c.skipped,
            consecutive_nonfinite: c.consecutive_bad,
            scheduler: SchedulerState {
                name: "warmup_cosine".into(),
                peak: schedule.peak,
                floor: schedule.floor,
                warmup: schedule.warmup,
                total: schedule.total,
                next_step: step,
            },
            rng: RngState {
                seed: trainer.config.seed,
                objective_draws: c.micro_index,
            },
            data_cursor: cursor,
            world_size: self.saver.world,
            config: self.config.clone(),
            last_eval: last_eval.map(|r| serde_json::to_value(r).expect("metrics serialise")),
            files: Default::default(),
        }
    }

    /// Waits for the last save: it must be committed before the run reports success. Returns
    /// the last committed checkpoint.
    pub fn finish(&mut self) -> Result<Option<PathBuf>, TrainError> {
        self.saver.wait()?;
        Ok(self.saver.last.clone())
    }
}

/// The writer thread of a save: the committed directory and the buffers, to reuse.
type Writer = JoinHandle<Result<(PathBuf, Snapshot), CheckpointError>>;

/// Writes this rank's checkpoints and hands them to the committer.
pub struct Saver {
    committer: Arc<dyn Committer + Send>,
    run_dir: PathBuf,
    rank: usize,
    world: usize,
    write: WriteOptions,
    async_save: bool,
    in_flight: Option<(u64, Writer)>,
    /// The last committed checkpoint.
    pub last: Option<PathBuf>,
    /// The buffers of the last save, to copy the next one into.
    pub spare: Option<Snapshot>,
}

impl Saver {
    /// A saver for `rank` of `world`.
    pub fn new(
        committer: Arc<dyn Committer + Send>,
        run_dir: PathBuf,
        rank: usize,
        world: usize,
        write: WriteOptions,
        async_save: bool,
    ) -> Self {
        Self {
            committer,
            run_dir,
            rank,
            world,
            write,
            async_save,
            in_flight: None,
            last: None,
            spare: None,
        }
    }

    /// Waits for the save in flight, if any; its failure is this call's.
    pub fn wait(&mut self) -> Result<(), TrainError> {
        if let Some((step, handle)) = self.in_flight.take() {
            let dir = handle
                .join()
                .unwrap_or_else(|_| {
                    Err(CheckpointError::Commit {
                        step,
                        reason: "the writer thread panicked".into(),
                    })
                })
                .map_err(|e| TrainError::Checkpoint {
                    step,
                    source: Box::new(e),
                })?;
            self.last = Some(dir.0);
            self.spare = Some(dir.1);
        }
        Ok(())
    }

    /// The outcome of the save in flight, if it has ended, without waiting; its failure is
    /// this call's.
    pub fn poll(&mut self) -> Result<(), TrainError> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|(_, h)| h.is_finished())
        {
            self.wait()?;
        }
        Ok(())
    }

    /// Saves `snap` as checkpoint `step` (`state` from rank 0): in the background when
    /// asynchronous, else before it returns. Waits first for the previous save.
    pub fn save(
        &mut self,
        step: u64,
        snap: Snapshot,
        state: Option<TrainerState>,
    ) -> Result<(), TrainError> {
        self.wait()?;
        let (committer, run_dir, rank, world, write) = (
            Arc::clone(&self.committer),
            self.run_dir.clone(),
            self.rank,
            self.world,
            self.write,
        );
        let job = move || {
            let started = Instant::now();
            let report = match write_rank(&run_dir, step, rank, world, &snap, write) {
                Ok(r) => r,
                Err(e) => {
                    // The others must not wait for this rank's report.
                    committer.abandon(step, &e.to_string());
                    return Err(e);
                }
            };
            let written = started.elapsed();
            if let Some(pause) = write.pause_after_write {
                std::thread::sleep(pause);
            }
            let dir = committer.commit(report, state)?;
            tracing::debug!(
                "rank {rank}: checkpoint {step} written in {written:?}, committed after {:?}",
                started.elapsed()
            );
            Ok((dir, snap))
        };
        let handle = std::thread::Builder::new()
            .name("weft-checkpoint".into())
            .spawn(job)
            .map_err(|e| TrainError::Checkpoint {
                step,
                source: Box::new(CheckpointError::Commit {
                    step,
                    reason: format!("cannot start the writer thread: {e}"),
                }),
            })?;
        self.in_flight = Some((step, handle));
        if !self.async_save {
            self.wait()?;
        }
        Ok(())
    }
}

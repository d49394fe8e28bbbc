//! The trainer's side of checkpoints: snapshots of the flat buffers at a step boundary,
//! written on a background thread (at most one save in flight) and handed to the committer;
//! and the restore of a checkpoint into the engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use weft_checkpoint::{
    write_rank, CheckpointError, Committer, Family, ParamTable, Snapshot, TrainerState, WriteOptions,
};

use crate::error::TrainError;
use crate::params::ParamInfo;

/// The checkpoint layout of the parameters `layout`.
pub fn checkpoint_layout(layout: &[ParamInfo]) -> Arc<ParamTable> {
    Arc::new(ParamTable {
        names: layout.iter().map(|p| p.path.clone()).collect(),
        shapes: layout.iter().map(|p| p.shape.clone()).collect(),
    })
}

/// Parameter values and AdamW state read from a checkpoint, flat in the layout's order.
pub struct Restored {
    /// Parameter values.
    pub values: Vec<f32>,
    /// First moments.
    pub exp_avg: Vec<f32>,
    /// Second moments.
    pub exp_avg_sq: Vec<f32>,
    /// Updates applied per parameter.
    pub steps: Vec<u64>,
}

/// Reads the tensors of `layout` from `ckpt`; a missing tensor or another shape is an error
/// naming it.
pub fn read_restored(
    ckpt: &weft_checkpoint::Checkpoint,
    layout: &ParamTable,
) -> Result<Restored, CheckpointError> {
    let values = ckpt.read_flat(Family::Model, &layout.wanted())?;
    let exp_avg = ckpt.read_flat(Family::Optimizer, &layout.moment_names("exp_avg"))?;
    let exp_avg_sq = ckpt.read_flat(Family::Optimizer, &layout.moment_names("exp_avg_sq"))?;
    let names: Vec<String> = layout.names.iter().map(|n| format!("{n}.step")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let steps = ckpt
        .read(Family::Optimizer, &refs)?
        .into_iter()
        .map(|t| match t.i64.as_slice() {
            [s] if *s >= 0 => Ok(*s as u64),
            _ => Err(CheckpointError::Tensor {
                name: t.name,
                reason: "expected one non-negative i64".into(),
            }),
        })
        .collect::<Result<_, _>>()?;
    Ok(Restored {
        values,
        exp_avg,
        exp_avg_sq,
        steps,
    })
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

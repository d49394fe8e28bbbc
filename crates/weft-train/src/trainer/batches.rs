//! A rank's stream of training micro-batches across epochs ([`Batches`]).

use weft_data::{Batch, BatchStream, Loader, Planner, Progress as DataProgress, Share};

use crate::error::TrainError;

/// A rank's batches, epoch after epoch, from the shares its planner hands out, and where the
/// rank stands in its data (the data cursor's part).
pub struct Batches<'p> {
    loader: Loader,
    /// Where the shares come from (the coordinator in a job).
    pub planner: &'p mut dyn Planner,
    /// The next epoch's share, when already asked for.
    next_share: Option<Share>,
    stream: Option<BatchStream>,
    batch_size: usize,
    /// Where the rank stands: epoch, steps taken in it, positions consumed.
    epoch: u64,
    epoch_step: u64,
    consumed: u64,
}

impl<'p> Batches<'p> {
    /// The batches of `loader`, from the share `first` on.
    pub fn new(loader: Loader, planner: &'p mut dyn Planner, first: Share) -> Self {
        Self {
            loader,
            planner,
            batch_size: first.batch_size,
            epoch: first.plan.epoch,
            epoch_step: first.step,
            consumed: first.consumed,
            next_share: Some(first),
            stream: None,
        }
    }

    /// The next micro-batch, asking the planner for the next epoch's share when one ends.
    pub fn next_batch(&mut self) -> Result<Batch, TrainError> {
        for _ in 0..2 {
            if self.stream.is_none() {
                let share = match self.next_share.take() {
                    Some(s) => s,
                    None => self.planner.share(self.epoch)?,
                };
                (self.epoch, self.epoch_step, self.consumed) =
                    (share.plan.epoch, share.step, share.consumed);
                self.stream = Some(self.loader.stream_share(&share)?);
            }
            if let Some(batch) = self.stream.as_mut().and_then(Iterator::next) {
                let batch = batch?;
                (self.epoch_step, self.consumed) = (batch.step + 1, batch.consumed);
                return Ok(batch);
            }
            self.stream = None;
            self.epoch += 1;
        }
        Err(TrainError::NoSteps {
            rows: self.loader.catalog().planned_rows(),
            batch: self.batch_size,
            accum: 1,
        })
    }

    /// Tell the planner where this rank stands after optimizer step `step`.
    pub fn record(
        &mut self,
        rank: usize,
        step: u64,
        samples: u64,
        seconds: f64,
        data_wait_s: f64,
    ) -> Result<(), TrainError> {
        Ok(self.planner.record(&DataProgress {
            rank,
            epoch: self.epoch,
            epoch_step: self.epoch_step,
            consumed: self.consumed,
            step,
            samples,
            seconds,
            data_wait_s,
        })?)
    }
}

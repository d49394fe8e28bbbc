//! The job's data plan, hosted by the coordinator. Rank 0 opens it with the dataset's units
//! and the run's starting cursor; every rank then asks it for its [`Share`] of each epoch and
//! reports its [`Progress`] after each step, which moves the job's data cursor (the one a
//! checkpoint records).
//!
//! Ranks report asynchronously, so at any moment one rank may have reported a step more than
//! another. [`JobData::cursor_at`] gives the cursor as of one optimizer step: every rank's
//! position at the end of that step, from the last [`KEEP_STEPS`] reports of each rank.

use std::collections::{BTreeMap, VecDeque};

use weft_data::plan::next_epoch_if;
use weft_data::{DataCursor, PlanOptions, Progress, Share, Units};

/// Reports kept per rank for [`JobData::cursor_at`]. The ranks of a job move in lockstep (every
/// step all-reduces), so their reports are at most a step or two apart.
pub const KEEP_STEPS: usize = 16;

/// The dataset and the job's data cursor.
#[derive(Debug, Clone)]
pub struct JobData {
    units: Units,
    cursor: DataCursor,
    /// The cursor at the start of each recent epoch (its options, generation and sequence).
    starts: BTreeMap<u64, DataCursor>,
    /// The last reports of each rank.
    reports: Vec<VecDeque<Progress>>,
}

impl JobData {
    /// The plan of `units` from `start`; the start must be a cursor of that dataset.
    pub fn open(units: Units, start: DataCursor) -> Result<Self, String> {
        start
            .steps(&units)
            .map_err(|e| format!("rank 0's data cursor does not fit its dataset: {e}"))?;
        let world = start.options.world_size;
        Ok(Self {
            units,
            starts: BTreeMap::from([(start.epoch, start.clone())]),
            cursor: start,
            reports: vec![VecDeque::new(); world],
        })
    }

    /// The share of `rank` in `epoch` (the current epoch, or the next one, which moves the
    /// cursor on). The rank's dataset and data options must be the job's.
    pub fn share(
        &mut self,
        rank: usize,
        epoch: u64,
        dataset: &str,
        options: &PlanOptions,
    ) -> Result<Share, String> {
        if dataset != self.units.fingerprint {
            return Err(format!(
                "rank {rank} reads dataset {dataset} but rank 0 reads dataset {} (different files or row groups)",
                self.units.fingerprint
            ));
        }
        if *options != self.cursor.options {
            return Err(format!(
                "rank {rank}'s data options {options:?} differ from rank 0's {:?}",
                self.cursor.options
            ));
        }
        next_epoch_if(&mut self.cursor, epoch).map_err(|e| format!("rank {rank}: {e}"))?;
        if !self.starts.contains_key(&self.cursor.epoch) {
            self.starts.insert(self.cursor.epoch, self.cursor.clone());
            while self.starts.len() > 2 {
                self.starts.pop_first();
            }
        }
        self.cursor
            .share(&self.units, rank)
            .map_err(|e| format!("rank {rank}: {e}"))
    }

    /// Takes a rank's progress into the cursor. A report of the epoch before the cursor's
    /// comes from a rank that finished it after another rank had moved on: it changes nothing.
    pub fn progress(&mut self, p: &Progress) -> Result<(), String> {
        let reports = self.reports.get_mut(p.rank).ok_or_else(|| {
            format!(
                "rank {} reports in a job of {} ranks",
                p.rank, self.cursor.options.world_size
            )
        })?;
        if reports.back().is_some_and(|last| last.step >= p.step) {
            return Err(format!(
                "rank {} reports step {} after step {}",
                p.rank,
                p.step,
                reports.back().map_or(0, |l| l.step)
            ));
        }
        reports.push_back(p.clone());
        if reports.len() > KEEP_STEPS {
            reports.pop_front();
        }
        if p.epoch + 1 == self.cursor.epoch {
            return Ok(());
        }
        self.cursor.advance(p).map_err(|e| e.to_string())
    }

    /// The job's data cursor at the end of optimizer step `step`: `None` while some rank has
    /// not reported it yet, an error when it is too old to be known any more.
    pub fn cursor_at(&self, step: u64) -> Option<Result<DataCursor, String>> {
        let mut at = Vec::with_capacity(self.reports.len());
        for (rank, reports) in self.reports.iter().enumerate() {
            match reports.iter().find(|p| p.step == step) {
                Some(p) => at.push(p),
                None if reports.back().is_none_or(|p| p.step < step) => return None,
                None => {
                    return Some(Err(format!(
                        "rank {rank}'s position at step {step} is no longer kept"
                    )))
                }
            }
        }
        let epoch = at[0].epoch;
        if let Some(p) = at
            .iter()
            .find(|p| p.epoch != epoch || p.epoch_step != at[0].epoch_step)
        {
            return Some(Err(format!(
                "at step {step} rank {} is at epoch {} step {} but rank 0 at epoch {epoch} step {}",
                p.rank, p.epoch, p.epoch_step, at[0].epoch_step
            )));
        }
        let Some(start) = self.starts.get(&epoch) else {
            return Some(Err(format!("the start of epoch {epoch} is no longer kept")));
        };
        let mut cursor = start.clone();
        cursor.step = at[0].epoch_step;
        cursor.consumed = at.iter().map(|p| p.consumed).collect();
        Some(Ok(cursor))
    }

    /// The job's data cursor.
    pub fn cursor(&self) -> &DataCursor {
        &self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_data::LastBatch;

    fn units() -> Units {
        Units {
            fingerprint: "abc".into(),
            rows: vec![10, 7, 13],
        }
    }

    fn options(world_size: usize) -> PlanOptions {
        PlanOptions {
            seed: 3,
            world_size,
            batch_size: 4,
            shuffle: true,
            shuffle_buffer: 8,
            last_batch: LastBatch::Drop,
        }
    }

    fn progress(rank: usize, epoch: u64, epoch_step: u64, consumed: u64, step: u64) -> Progress {
        Progress {
            rank,
            epoch,
            epoch_step,
            consumed,
            step,
            samples: 4,
            seconds: 0.1,
            data_wait_s: 0.0,
        }
    }

    #[test]
    fn shares_are_the_cursor_s_and_progress_moves_it() {
        let start = DataCursor::new(&units(), options(2), 0);
        let mut job = JobData::open(units(), start.clone()).unwrap();
        for rank in 0..2 {
            let share = job.share(rank, 0, "abc", &options(2)).unwrap();
            assert_eq!(share, start.share(&units(), rank).unwrap());
        }
        job.progress(&progress(1, 0, 1, 4, 1)).unwrap();
        assert_eq!(job.cursor().consumed, vec![0, 4]);
        assert_eq!(job.cursor().step, 1);
        assert!(job.cursor_at(1).is_none(), "rank 0 has not reported step 1");
        job.progress(&progress(1, 0, 2, 8, 2)).unwrap();
        job.progress(&progress(0, 0, 1, 4, 1)).unwrap();
        // As of step 1, not rank 1's later report.
        let mut at1 = start.clone();
        at1.record(0, 4, 0);
        at1.record(1, 4, 0);
        assert_eq!(job.cursor_at(1).unwrap().unwrap(), at1);
        // The next epoch starts afresh; a late report of the last one changes nothing.
        let next = job.share(0, 1, "abc", &options(2)).unwrap();
        assert_eq!(next, start.next_epoch().share(&units(), 0).unwrap());
        job.progress(&progress(1, 0, 3, 12, 3)).unwrap();
        assert_eq!(job.cursor().epoch, 1);
        assert_eq!(job.cursor().consumed, vec![0, 0]);
        job.progress(&progress(0, 1, 1, 4, 3)).unwrap();
        assert!(job.cursor_at(3).unwrap().unwrap_err().contains("epoch 1"));
        assert!(job
            .progress(&progress(0, 1, 1, 4, 3))
            .unwrap_err()
            .contains("after step 3"));
    }

    #[test]
    fn a_rank_with_other_data_is_named() {
        let mut job = JobData::open(units(), DataCursor::new(&units(), options(2), 0)).unwrap();
        let e = job.share(1, 0, "xyz", &options(2)).unwrap_err();
        assert!(
            e.contains("rank 1 reads dataset xyz but rank 0 reads dataset abc"),
            "{e}"
        );
        let mut other = options(2);
        other.batch_size = 8;
        let e = job.share(1, 0, "abc", &other).unwrap_err();
        assert!(e.contains("rank 1's data options"), "{e}");
        let e = job.share(1, 2, "abc", &options(2)).unwrap_err();
        assert!(e.contains("epoch 2"), "{e}");
        let e = job.progress(&progress(5, 0, 1, 4, 1)).unwrap_err();
        assert!(e.contains("rank 5"), "{e}");
    }

    #[test]
    fn a_start_of_other_data_is_refused() {
        let mut other = units();
        other.fingerprint = "def".into();
        let e = JobData::open(units(), DataCursor::new(&other, options(2), 0)).unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
    }
}

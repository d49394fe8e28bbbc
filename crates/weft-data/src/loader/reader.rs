//! The reader thread: it replays the rank's shuffle order, reads the rows it needs and hands
//! them out in emission order, one credit per row.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::catalog::{Catalog, RowReader};
use crate::error::{DataError, Result};
use crate::plan::RankPlan;

use super::{Job, Msg, Skip};

pub(super) struct ReaderTask {
    pub(super) catalog: Arc<Catalog>,
    pub(super) plan: RankPlan,
    pub(super) consumed: u64,
    pub(super) skip_bad_files: bool,
    pub(super) read_batch_rows: usize,
    pub(super) stop: Arc<AtomicBool>,
}

/// Holds rows read ahead of their turn and sends them out in emission order.
struct Emitter {
    order: crate::plan::ShuffleOrder,
    pending: Option<u64>,
    held: HashMap<u64, Job>,
    seq: u64,
    credit_rx: Receiver<()>,
    job_tx: Sender<Job>,
}

impl Emitter {
    /// Send every row whose turn has come; false when the pipeline is shutting down.
    fn drain(&mut self) -> bool {
        while let Some(p) = self.pending {
            let Some(mut job) = self.held.remove(&p) else {
                break;
            };
            if self.credit_rx.recv().is_err() {
                return false;
            }
            job.seq = self.seq;
            if self.job_tx.send(job).is_err() {
                return false;
            }
            self.seq += 1;
            self.pending = self.order.next();
        }
        true
    }
}

impl ReaderTask {
    pub(super) fn run(self, credit_rx: Receiver<()>, job_tx: Sender<Job>, done_tx: Sender<Msg>) {
        if let Err(e) = self.read(credit_rx, job_tx) {
            let _ = done_tx.send(Msg::Fatal(e));
        }
    }

    fn read(&self, credit_rx: Receiver<()>, job_tx: Sender<Job>) -> Result<()> {
        let mut order = self.plan.order();
        order.fast_forward(self.consumed);
        let runs = self.plan.runs(&order.unread_ranges());
        let pending = order.next();
        let mut em = Emitter {
            order,
            pending,
            held: HashMap::new(),
            seq: 0,
            credit_rx,
            job_tx,
        };
        let mut reader = RowReader::new(Arc::clone(&self.catalog), self.read_batch_rows);
        for run in runs {
            let mut positions = run.positions.iter().flat_map(|&(a, b)| a..b);
            let mut open = true;
            let rows = self.catalog.rows_of(run.unit, &run.rows);
            let result = reader.read(run.unit, &rows, |raw| {
                let pos = positions.next().expect("one position per selected row");
                em.held.insert(
                    pos,
                    Job {
                        seq: 0,
                        pad: run.pad,
                        unit: raw.unit,
                        row: raw.row,
                        raw: Some(raw),
                        failed: None,
                    },
                );
                open = em.drain() && !self.stop.load(Ordering::Relaxed);
                open
            });
            if !open {
                return Ok(());
            }
            if let Err(e) = result {
                if !self.skip_bad_files {
                    return Err(e);
                }
                tracing::warn!(error = %e, "skipping the rest of an unreadable row group (data.skip_bad_files = true)");
                let message = e.to_string();
                let rows = rows.iter().flat_map(|&(a, b)| a..b);
                let all: Vec<(u64, u64)> = run
                    .positions
                    .iter()
                    .flat_map(|&(a, b)| a..b)
                    .zip(rows)
                    .collect();
                let done = all.len() - positions.count();
                for &(pos, row) in &all[done..] {
                    em.held.insert(
                        pos,
                        Job {
                            seq: 0,
                            pad: run.pad,
                            unit: run.unit,
                            row,
                            raw: None,
                            failed: Some(Skip {
                                reason: "bad_file",
                                counted: false,
                                message: message.clone(),
                            }),
                        },
                    );
                }
                if !em.drain() {
                    return Ok(());
                }
            }
        }
        if em.pending.is_some() && !self.stop.load(Ordering::Relaxed) {
            return Err(DataError::Pipeline(format!(
                "rank {}: position {:?} of the plan was never read",
                self.plan.rank, em.pending
            )));
        }
        // Padding pass: the rank's rows again, in plan order, for the assembler to fill the
        // last steps if bad rows left it short. Credits bound how far this reads ahead; the
        // pipeline stops it as soon as the epoch's steps are complete.
        let Emitter {
            credit_rx,
            job_tx,
            mut seq,
            ..
        } = em;
        for run in self.plan.runs(&[(0, self.plan.len)]) {
            let mut open = true;
            let rows = self.catalog.rows_of(run.unit, &run.rows);
            let result = reader.read(run.unit, &rows, |raw| {
                open = credit_rx.recv().is_ok()
                    && !self.stop.load(Ordering::Relaxed)
                    && job_tx
                        .send(Job {
                            seq,
                            pad: true,
                            unit: raw.unit,
                            row: raw.row,
                            raw: Some(raw),
                            failed: None,
                        })
                        .is_ok();
                seq += 1;
                open
            });
            if !open || result.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}

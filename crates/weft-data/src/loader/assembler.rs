//! The assembler: it puts the workers' results back in emission order, counts skips, fills
//! batches and returns a credit for every row it has taken.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use crate::error::{DataError, Result};

use super::{Batch, Msg, Sample, Skip, SkipStats, TokenBatch};

pub(super) struct Assembler {
    pub(super) rank: usize,
    pub(super) epoch: u64,
    pub(super) steps: u64,
    pub(super) step: u64,
    pub(super) base: u64,
    pub(super) expected: u64,
    pub(super) batch_size: usize,
    pub(super) image_size: usize,
    pub(super) context_length: Option<usize>,
    pub(super) max_bad_fraction: f64,
    pub(super) min_rows: u64,
    pub(super) stats: Arc<Mutex<SkipStats>>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Assembler {
    pub(super) fn run(
        mut self,
        done: Receiver<Msg>,
        credits: Sender<()>,
        out: Sender<Result<Batch>>,
    ) {
        if let Err(e) = self.assemble(done, credits, &out) {
            let _ = out.send(Err(e));
        }
    }

    fn assemble(
        &mut self,
        done: Receiver<Msg>,
        credits: Sender<()>,
        out: &Sender<Result<Batch>>,
    ) -> Result<()> {
        type Entry = (String, PathBuf, std::result::Result<Sample, Skip>);
        let mut reorder: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut next = 0u64;
        let mut current: Vec<Sample> = Vec::with_capacity(self.batch_size);
        // Usable rows of the padding pass, to cycle through if even that pass runs short.
        let mut pad_pool: Vec<Sample> = Vec::new();
        if self.expected == 0 {
            self.check_fraction(true)?;
        }
        while self.step < self.steps {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match done.recv() {
                Ok(Msg::Fatal(e)) => return Err(e),
                Ok(Msg::Done {
                    seq,
                    key,
                    file,
                    result,
                }) => {
                    reorder.insert(seq, (key, file, result));
                }
                Err(_) if next < self.expected => {
                    return Err(DataError::Pipeline(format!(
                        "rank {}: workers stopped after {next} of {} rows",
                        self.rank, self.expected
                    )))
                }
                Err(_) => {
                    // The padding pass is over too: cycle through its usable rows.
                    if pad_pool.is_empty() {
                        return Err(DataError::NoUsableRows {
                            rank: self.rank,
                            epoch: self.epoch,
                        });
                    }
                    let mut i = 0;
                    while self.step < self.steps {
                        current.push(pad_pool[i % pad_pool.len()].clone());
                        i += 1;
                        if current.len() == self.batch_size && !self.emit(&mut current, next, out) {
                            return Ok(());
                        }
                    }
                    return Ok(());
                }
            }
            while let Some((key, file, result)) = reorder.remove(&next) {
                let main = next < self.expected;
                next += 1;
                let _ = credits.send(());
                match (main, result) {
                    (true, Ok(sample)) => {
                        self.count(None)?;
                        current.push(sample);
                    }
                    (true, Err(skip)) => {
                        // Failed img2dataset downloads (`status`) are expected and common, and
                        // unreadable row groups were already reported: only bad rows are logged.
                        if skip.counted {
                            tracing::warn!(
                                rank = self.rank,
                                key = %key,
                                file = %file.display(),
                                reason = skip.reason,
                                "skipping row: {}",
                                skip.message
                            );
                        }
                        self.count(Some(&skip))?;
                    }
                    (false, Ok(mut sample)) => {
                        sample.pad = true;
                        if pad_pool.len() < self.batch_size {
                            pad_pool.push(sample.clone());
                        }
                        current.push(sample);
                    }
                    (false, Err(_)) => {}
                }
                if main && next == self.expected {
                    self.check_fraction(true)?;
                }
                if current.len() == self.batch_size && !self.emit(&mut current, next, out) {
                    return Ok(());
                }
                if self.step >= self.steps {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Send the full batch in `current`; false when the consumer is gone.
    fn emit(&mut self, current: &mut Vec<Sample>, next: u64, out: &Sender<Result<Batch>>) -> bool {
        let samples = std::mem::take(current);
        let batch = self.batch(&samples, self.base + next.min(self.expected));
        out.send(Ok(batch)).is_ok()
    }

    fn count(&mut self, skip: Option<&Skip>) -> Result<()> {
        {
            let mut stats = self.stats.lock().expect("stats lock");
            stats.seen += 1;
            if let Some(skip) = skip {
                *stats.by_reason.entry(skip.reason.to_string()).or_default() += 1;
                if skip.counted {
                    stats.bad += 1;
                }
            }
        }
        self.check_fraction(false)
    }

    fn check_fraction(&self, at_end: bool) -> Result<()> {
        let stats = self.stats.lock().expect("stats lock");
        let enough = at_end || stats.seen >= self.min_rows;
        if enough && stats.seen > 0 && stats.bad as f64 > self.max_bad_fraction * stats.seen as f64
        {
            return Err(DataError::TooManyBadRows {
                rank: self.rank,
                bad: stats.bad,
                seen: stats.seen,
                max_fraction: self.max_bad_fraction,
                by_reason: stats.by_reason.clone(),
            });
        }
        Ok(())
    }

    fn batch(&mut self, samples: &[Sample], consumed: u64) -> Batch {
        let mut images = Vec::with_capacity(samples.len() * 3 * self.image_size * self.image_size);
        for s in samples {
            images.extend_from_slice(&s.image);
        }
        let tokens = self.context_length.map(|l| {
            let mut input_ids = Vec::with_capacity(samples.len() * l);
            let mut attention_mask = Vec::with_capacity(samples.len() * l);
            for s in samples {
                let t = s
                    .tokens
                    .as_ref()
                    .expect("tokenized when a tokenizer is set");
                input_ids.extend_from_slice(&t.ids);
                attention_mask.extend_from_slice(&t.attention_mask);
            }
            TokenBatch {
                input_ids,
                attention_mask,
                context_length: l,
            }
        });
        let batch = Batch {
            epoch: self.epoch,
            step: self.step,
            rank: self.rank,
            consumed,
            images,
            image_size: self.image_size,
            tokens,
            captions: samples.iter().map(|s| s.caption.clone()).collect(),
            keys: samples.iter().map(|s| s.key.clone()).collect(),
            rows: samples.iter().map(|s| s.row).collect(),
            is_pad: samples.iter().map(|s| s.pad).collect(),
        };
        self.step += 1;
        batch
    }
}

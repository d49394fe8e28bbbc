//! The pipeline that turns one rank's share of an epoch into batches.
//!
//! ```text
//! reader thread ──rows──▶ N decode workers ──samples──▶ assembler ──batches──▶ consumer
//!      ▲                                                     │
//!      └───────────────────── credits ◀──────────────────────┘
//! ```
//! - The reader replays the rank's shuffle order, reads the rows it needs (only the mapped
//!   columns, a few rows at a time) and hands them out in emission order, one credit per row.
//! - Workers decode, crop, resize, normalize and tokenize; a bad row becomes a skip reason.
//! - The assembler puts results back in emission order, counts skips, fills batches of
//!   `batch_size` usable samples and returns a credit for every row it has taken.
//!
//! Rows in flight are bounded by the credits and finished batches by `prefetch_batches`, so
//! memory does not grow with the dataset. Augmentation randomness is seeded per row
//! (`seed, epoch, unit, row`), so batches do not depend on the number of workers or on timing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver};
use serde::Serialize;

use crate::catalog::{Catalog, RawRow};
use crate::error::{DataError, Result};
use crate::image::ImageTransform;
use crate::plan::{DataCursor, Share};
use crate::text::{TextEncoder, Tokens};

mod assembler;
mod reader;
mod worker;

use assembler::Assembler;
use reader::ReaderTask;
pub use worker::precheck;
use worker::WorkerTask;

/// Where a sample came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RowId {
    /// Index into [`Catalog::units`].
    pub unit: u32,
    /// Row within the unit's row group.
    pub row: u64,
}

/// Token ids of a batch, row-major `[batch, context_length]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Tokens per caption.
    pub context_length: usize,
}

/// One batch of one rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Epoch of the batch.
    pub epoch: u64,
    /// Step within the epoch, from 0 (the same on every rank).
    pub step: u64,
    /// The rank that produced it.
    pub rank: usize,
    /// Positions of the rank's order consumed once this batch is taken: store it in the
    /// [`DataCursor`] with [`DataCursor::record`].
    pub consumed: u64,
    /// Images, CHW `f32`, `[batch, 3, image_size, image_size]` row-major.
    pub images: Vec<f32>,
    /// Side of the images.
    pub image_size: usize,
    /// Token ids, when a tokenizer is configured.
    pub tokens: Option<TokenBatch>,
    /// The captions as read.
    pub captions: Vec<String>,
    /// Row keys (key column, or `file#row_group:row`).
    pub keys: Vec<String>,
    /// Where each sample came from.
    pub rows: Vec<RowId>,
    /// True for samples repeated to pad the last batches; give them zero weight.
    pub is_pad: Vec<bool>,
}

impl Batch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the batch has no sample.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Rows a rank has skipped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SkipStats {
    /// Rows processed (usable or not).
    pub seen: u64,
    /// Skipped rows that count against `max_bad_fraction`.
    pub bad: u64,
    /// Skipped rows by reason (`status` and `bad_file` do not count against the fraction).
    pub by_reason: BTreeMap<String, u64>,
}

/// Options of the pipeline.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// Image transform (train or eval).
    pub transform: ImageTransform,
    /// Decode threads.
    pub workers: usize,
    /// Finished batches kept ready.
    pub prefetch_batches: usize,
    /// Skipped-row fraction that stops the run.
    pub max_bad_fraction: f64,
    /// Rows seen before the fraction is checked mid-epoch.
    pub min_rows_for_bad_fraction: u64,
    /// Skip row groups that fail to read, with a warning.
    pub skip_bad_files: bool,
    /// Rows decoded from Parquet at a time.
    pub read_batch_rows: usize,
}

/// Builds batches for any rank and epoch of one dataset.
#[derive(Clone)]
pub struct Loader {
    catalog: Arc<Catalog>,
    options: LoaderOptions,
    text: Option<Arc<TextEncoder>>,
}

impl Loader {
    /// A loader over `catalog`.
    pub fn new(catalog: Arc<Catalog>, options: LoaderOptions, text: Option<TextEncoder>) -> Self {
        Self {
            catalog,
            options,
            text: text.map(Arc::new),
        }
    }

    /// The dataset.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The options.
    pub fn options(&self) -> &LoaderOptions {
        &self.options
    }

    /// The text encoder, if any.
    pub fn text(&self) -> Option<&TextEncoder> {
        self.text.as_deref()
    }

    /// Batches of `rank` from where `cursor` stands to the end of its epoch.
    pub fn stream(&self, cursor: &DataCursor, rank: usize) -> Result<BatchStream> {
        self.stream_share(&cursor.share(&self.catalog, rank)?)
    }

    /// Batches of a rank's [`Share`] (handed out by a planner), from where it stands to the end
    /// of its epoch. The share must be of this loader's dataset.
    pub fn stream_share(&self, share: &Share) -> Result<BatchStream> {
        let fingerprint = self.catalog.fingerprint();
        if share.dataset != fingerprint {
            return Err(DataError::Cursor(format!(
                "rank {}'s share is of dataset {} but its files are dataset {fingerprint}",
                share.plan.rank, share.dataset
            )));
        }
        let plan = share.plan.clone();
        let rank = plan.rank;
        let consumed = share.consumed;
        if consumed > plan.len {
            return Err(DataError::Cursor(format!(
                "rank {rank} consumed {consumed} of only {} rows",
                plan.len
            )));
        }
        if let Some(p) = plan.pieces.iter().find(|p| {
            p.segment.start + p.segment.len
                > self
                    .catalog
                    .units
                    .get(p.segment.unit as usize)
                    .map_or(0, |u| u.usable)
        }) {
            return Err(DataError::Cursor(format!(
                "rank {rank}'s share names rows {}..{} of unit {}, outside the dataset",
                p.segment.start,
                p.segment.start + p.segment.len,
                p.segment.unit
            )));
        }
        let batch_size = share.batch_size;
        let workers = self.options.workers.max(1);
        let credits = batch_size + 4 * workers;
        let (credit_tx, credit_rx) = bounded::<()>(credits);
        for _ in 0..credits {
            credit_tx.send(()).expect("fresh channel has room");
        }
        let (job_tx, job_rx) = bounded::<Job>(2 * workers);
        let (done_tx, done_rx) = unbounded::<Msg>();
        let (out_tx, out_rx) = bounded::<Result<Batch>>(self.options.prefetch_batches.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(SkipStats::default()));
        let mut threads = Vec::new();

        let reader = ReaderTask {
            catalog: Arc::clone(&self.catalog),
            plan: plan.clone(),
            consumed,
            skip_bad_files: self.options.skip_bad_files,
            read_batch_rows: self.options.read_batch_rows,
            stop: Arc::clone(&stop),
        };
        {
            let done_tx = done_tx.clone();
            threads.push(spawn("weft-data-reader", move || {
                reader.run(credit_rx, job_tx, done_tx)
            })?);
        }
        for i in 0..workers {
            let worker = WorkerTask {
                catalog: Arc::clone(&self.catalog),
                transform: self.options.transform.clone(),
                text: self.text.clone(),
                seed: share.seed,
                epoch: plan.epoch,
            };
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            threads.push(spawn(&format!("weft-data-worker-{i}"), move || {
                worker.run(job_rx, done_tx)
            })?);
        }
        drop((job_rx, done_tx));
        let assembler = Assembler {
            rank,
            epoch: plan.epoch,
            steps: plan.steps,
            step: share.step,
            base: consumed,
            expected: plan.len - consumed,
            batch_size,
            image_size: self.options.transform.size as usize,
            context_length: self.text.as_ref().map(|t| t.context_length()),
            max_bad_fraction: self.options.max_bad_fraction,
            min_rows: self.options.min_rows_for_bad_fraction,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
        };
        threads.push(spawn("weft-data-assembler", move || {
            assembler.run(done_rx, credit_tx, out_tx)
        })?);
        Ok(BatchStream {
            rx: Some(out_rx),
            stop,
            threads,
            stats,
            steps: plan.steps,
            finished: false,
        })
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| DataError::Pipeline(format!("cannot start thread {name}: {e}")))
}

/// The batches of one rank for the rest of an epoch. Dropping it stops the pipeline.
pub struct BatchStream {
    rx: Option<Receiver<Result<Batch>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<Mutex<SkipStats>>,
    steps: u64,
    finished: bool,
}

impl BatchStream {
    /// Steps of the whole epoch (not only the ones left).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Skipped rows so far.
    pub fn stats(&self) -> SkipStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.finished {
            return None;
        }
        match self.rx.as_ref()?.recv() {
            Ok(Ok(batch)) => Some(Ok(batch)),
            Ok(Err(e)) => {
                self.finished = true;
                Some(Err(e))
            }
            Err(_) => {
                self.finished = true;
                None
            }
        }
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.rx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Why a row was skipped.
#[derive(Debug, Clone)]
struct Skip {
    reason: &'static str,
    counted: bool,
    message: String,
}

struct Job {
    seq: u64,
    pad: bool,
    unit: u32,
    row: u64,
    raw: Option<RawRow>,
    failed: Option<Skip>,
}

#[derive(Clone)]
struct Sample {
    image: Vec<f32>,
    tokens: Option<Tokens>,
    caption: String,
    key: String,
    row: RowId,
    pad: bool,
}

enum Msg {
    Done {
        seq: u64,
        key: String,
        file: PathBuf,
        result: std::result::Result<Sample, Skip>,
    },
    Fatal(DataError),
}

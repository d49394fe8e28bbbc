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

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use fast_image_resize::Resizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::catalog::{Catalog, RawRow, RowReader};
use crate::error::{DataError, Result};
use crate::image::{decode_rgb, ImageTransform};
use crate::plan::{derive_seed, DataCursor, RankPlan, Share};
use crate::text::{TextEncoder, Tokens};

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

struct ReaderTask {
    catalog: Arc<Catalog>,
    plan: RankPlan,
    consumed: u64,
    skip_bad_files: bool,
    read_batch_rows: usize,
    stop: Arc<AtomicBool>,
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
    fn run(self, credit_rx: Receiver<()>, job_tx: Sender<Job>, done_tx: Sender<Msg>) {
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

struct WorkerTask {
    catalog: Arc<Catalog>,
    transform: ImageTransform,
    text: Option<Arc<TextEncoder>>,
    seed: u64,
    epoch: u64,
}

impl WorkerTask {
    fn run(self, jobs: Receiver<Job>, done: Sender<Msg>) {
        let mut resizer = Resizer::new();
        for job in jobs {
            let file = self.catalog.unit_path(job.unit).to_path_buf();
            let key = job
                .raw
                .as_ref()
                .map(|r| r.key.clone())
                .unwrap_or_else(|| format!("row {} of unit {}", job.row, job.unit));
            let seq = job.seq;
            let result = match job.failed {
                Some(skip) => Err(skip),
                None => {
                    let raw = job.raw.expect("a job without failure has a row");
                    std::panic::catch_unwind(AssertUnwindSafe(|| {
                        self.process(raw, job.pad, &mut resizer)
                    }))
                    .unwrap_or_else(|_| {
                        Err(skip("decode_error", "the decoder panicked".to_string()))
                    })
                }
            };
            if done
                .send(Msg::Done {
                    seq,
                    key,
                    file,
                    result,
                })
                .is_err()
            {
                return;
            }
        }
    }

    fn process(
        &self,
        raw: RawRow,
        pad: bool,
        resizer: &mut Resizer,
    ) -> std::result::Result<Sample, Skip> {
        let row = classify(&raw)?;
        let (bytes, caption) = row;
        let img = decode_rgb(bytes).map_err(|e| skip("decode_error", e))?;
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[
            self.seed,
            self.epoch,
            raw.unit as u64,
            raw.row,
            3,
        ]));
        let mut image = Vec::with_capacity(self.transform.sample_len());
        self.transform
            .apply(&img, &mut rng, resizer, &mut image)
            .map_err(|e| skip("decode_error", e))?;
        let tokens = match &self.text {
            Some(t) => Some(
                t.encode(caption)
                    .map_err(|e| skip("tokenize_error", e.to_string()))?,
            ),
            None => None,
        };
        Ok(Sample {
            image,
            tokens,
            caption: caption.to_string(),
            key: raw.key.clone(),
            row: RowId {
                unit: raw.unit,
                row: raw.row,
            },
            pad,
        })
    }
}

fn skip(reason: &'static str, message: String) -> Skip {
    Skip {
        reason,
        counted: true,
        message,
    }
}

/// The checks that need no decoding: status, null image, empty caption. Returns the image
/// bytes and the caption of a row that passes.
fn classify(raw: &RawRow) -> std::result::Result<(&[u8], &str), Skip> {
    if !raw.status_ok {
        return Err(Skip {
            reason: "status",
            counted: false,
            message: "img2dataset status is not success".to_string(),
        });
    }
    let bytes = raw.image.as_deref().ok_or_else(|| {
        let message = match &raw.image_path {
            Some(p) => format!("the image bytes are null and its path {p:?} cannot be read"),
            None => "the image is null".to_string(),
        };
        skip("null_image", message)
    })?;
    if bytes.is_empty() {
        return Err(skip("null_image", "the image is empty".to_string()));
    }
    let caption = raw.text.as_deref().map(str::trim).unwrap_or("");
    if caption.is_empty() {
        return Err(skip(
            "empty_caption",
            "the caption is null or empty".to_string(),
        ));
    }
    Ok((bytes, caption))
}

/// The reason a raw row would be skipped before decoding, if any (`status`, `null_image`,
/// `empty_caption`), and whether it counts against `max_bad_fraction`.
pub fn precheck(raw: &RawRow) -> Option<(&'static str, bool)> {
    classify(raw).err().map(|s| (s.reason, s.counted))
}

struct Assembler {
    rank: usize,
    epoch: u64,
    steps: u64,
    step: u64,
    base: u64,
    expected: u64,
    batch_size: usize,
    image_size: usize,
    context_length: Option<usize>,
    max_bad_fraction: f64,
    min_rows: u64,
    stats: Arc<Mutex<SkipStats>>,
    stop: Arc<AtomicBool>,
}

impl Assembler {
    fn run(mut self, done: Receiver<Msg>, credits: Sender<()>, out: Sender<Result<Batch>>) {
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

//! Shard planning, per-rank shuffling and the data cursor.
//!
//! # The plan of an epoch
//! The units (file, row group) are shuffled with a generator seeded by `(seed, epoch)` and
//! concatenated into one sequence of `N` rows. With `W` ranks and per-rank batch `B`, every rank
//! gets `S` steps, `S = floor(N / (W·B))` (`last_batch = "drop"`) or `ceil(N / (W·B))`
//! (`"pad"`), and rank `r` takes the rows `[r·S·B, (r+1)·S·B)` of the sequence: whole units,
//! except at most one unit at each boundary between two ranks, which is split by row range. In
//! pad mode the sequence wraps around to its start and those rows are flagged as padding. The
//! plan depends only on the dataset, `(seed, epoch)`, `W`, `B` and the options. `N` counts usable
//! rows only: a row whose img2dataset `status` is not `success` is in no plan
//! ([`crate::usable`]), and a segment's rows number the usable rows of its unit.
//!
//! # Within a rank
//! A shuffle buffer of `data.shuffle_buffer` row positions mixes the rank's rows across units.
//! It works on positions, not on data, with a generator seeded by `(seed, epoch, generation,
//! rank)`, so the order in which a rank emits its rows is a pure function of the plan and can be
//! replayed without reading anything.
//!
//! # The cursor
//! [`DataCursor`] records, for every rank, how many positions of its order it has consumed.
//! Resuming with the same world size replays the shuffle buffer to that point and continues with
//! exactly the rows an uninterrupted run would have produced. Resuming with another world size
//! ([`DataCursor::reshard`]) collects the positions no rank has consumed into a new sequence and
//! plans only that, so within the epoch no row is lost or seen twice.
//!
//! # Who plans
//! Planning needs only the dataset's [`Units`] (fingerprint and rows per unit), not its files.
//! A rank gets its [`Share`] of each epoch from a [`Planner`]: [`LocalPlanner`] in one process,
//! the coordinator in a multi-process job (it holds the job's cursor, which every rank
//! advances with its [`Progress`]).

use std::borrow::Cow;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
pub use weft_config::LastBatch;

use crate::catalog::Catalog;
use crate::error::{DataError, Result};

/// A run of consecutive rows of one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Index into [`Catalog::units`].
    pub unit: u32,
    /// First row within the unit's row group.
    pub start: u64,
    /// Number of rows.
    pub len: u64,
}

/// What planning needs of a dataset: its fingerprint and the rows of each unit, in unit order.
/// A unit's rows are its usable rows ([`crate::catalog::Unit::usable`]), numbered from 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Units {
    /// [`Catalog::fingerprint`].
    pub fingerprint: String,
    /// Rows of every unit.
    pub rows: Vec<u64>,
}

/// A dataset as planning sees it: [`Catalog`] has its units from the files; [`Units`] carries
/// them to a coordinator that has no files.
pub trait DatasetUnits {
    /// The dataset's units.
    fn units(&self) -> Cow<'_, Units>;
}

impl DatasetUnits for Units {
    fn units(&self) -> Cow<'_, Units> {
        Cow::Borrowed(self)
    }
}

impl DatasetUnits for Catalog {
    fn units(&self) -> Cow<'_, Units> {
        Cow::Owned(Units {
            fingerprint: self.fingerprint(),
            rows: self.units.iter().map(|u| u.usable).collect(),
        })
    }
}

impl<T: DatasetUnits + ?Sized> DatasetUnits for Arc<T> {
    fn units(&self) -> Cow<'_, Units> {
        (**self).units()
    }
}

/// Everything that decides the order of the data, apart from the dataset itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Seed of the unit shuffle, the row shuffle and the augmentations.
    pub seed: u64,
    /// Ranks.
    pub world_size: usize,
    /// Samples per batch on each rank.
    pub batch_size: usize,
    /// Shuffle units and rows.
    pub shuffle: bool,
    /// Rows in the per-rank shuffle buffer.
    pub shuffle_buffer: usize,
    /// Drop or pad the last partial global batch.
    pub last_batch: LastBatch,
}

/// Where every rank stands in the data. Small, serializable, and enough to resume exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataCursor {
    /// [`Catalog::fingerprint`] of the dataset.
    pub dataset: String,
    /// The options the plan was made with.
    pub options: PlanOptions,
    /// Current epoch, from 0.
    pub epoch: u64,
    /// How many times this epoch was re-planned for another world size.
    pub generation: u32,
    /// Steps completed in this epoch (the same on every rank).
    pub step: u64,
    /// Positions consumed by each rank in its order (bad rows included).
    pub consumed: Vec<u64>,
    /// The rows left to plan after a re-plan; `None` for a fresh epoch (all units).
    pub sequence: Option<Vec<Segment>>,
}

/// One rank's share of an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankPlan {
    /// The rank.
    pub rank: usize,
    /// The epoch.
    pub epoch: u64,
    /// Steps every rank takes in this epoch (this generation).
    pub steps: u64,
    /// Rows this rank reads (`steps · batch_size` positions).
    pub len: u64,
    /// The rank's positions as pieces of units, in position order.
    pub pieces: Vec<Piece>,
    /// Seed of the rank's shuffle buffer.
    pub shuffle_seed: u64,
    /// Capacity of the rank's shuffle buffer (0: no row shuffle).
    pub shuffle_buffer: usize,
}

/// A segment placed at a position range of a rank's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// The rows.
    pub segment: Segment,
    /// Position of its first row in the rank's plan.
    pub pos: u64,
    /// Rows repeated to pad the last global batch.
    pub pad: bool,
}

/// SplitMix64 finaliser: mixes seeds and indices into independent generator seeds.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed derived from several values.
pub fn derive_seed(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x5745_4654_u64, |acc, p| mix(acc ^ mix(*p)))
}

impl DataCursor {
    /// The start of `epoch` of the dataset `data`.
    pub fn new(data: &impl DatasetUnits, options: PlanOptions, epoch: u64) -> Self {
        Self {
            dataset: data.units().fingerprint.clone(),
            consumed: vec![0; options.world_size],
            options,
            epoch,
            generation: 0,
            step: 0,
            sequence: None,
        }
    }

    /// The start of the next epoch.
    pub fn next_epoch(&self) -> Self {
        Self {
            dataset: self.dataset.clone(),
            options: self.options.clone(),
            epoch: self.epoch + 1,
            generation: 0,
            step: 0,
            consumed: vec![0; self.options.world_size],
            sequence: None,
        }
    }

    /// Record that `rank` consumed up to `consumed` positions when it finished step `step`
    /// (0-based, within the epoch).
    pub fn record(&mut self, rank: usize, consumed: u64, step: u64) {
        self.consumed[rank] = consumed;
        self.step = self.step.max(step + 1);
    }

    /// Steps of the current epoch (this generation).
    pub fn steps(&self, data: &impl DatasetUnits) -> Result<u64> {
        let units = data.units();
        self.check(&units)?;
        let n = self.sequence_len(&units);
        steps_for(n, &self.options)
    }

    /// Whether every step of the epoch has been taken.
    pub fn epoch_done(&self, data: &impl DatasetUnits) -> Result<bool> {
        Ok(self.step >= self.steps(data)?)
    }

    fn check(&self, units: &Units) -> Result<()> {
        if self.dataset != units.fingerprint {
            return Err(DataError::Cursor(format!(
                "it was made for dataset {} but the files given are dataset {} (files or row groups changed)",
                self.dataset, units.fingerprint
            )));
        }
        if self.consumed.len() != self.options.world_size {
            return Err(DataError::Cursor(format!(
                "{} consumed counts for world size {}",
                self.consumed.len(),
                self.options.world_size
            )));
        }
        if self.options.batch_size == 0 || self.options.world_size == 0 {
            return Err(DataError::Cursor(
                "batch size and world size must be at least 1".into(),
            ));
        }
        if let Some(seq) = &self.sequence {
            for s in seq {
                let rows = *units.rows.get(s.unit as usize).ok_or_else(|| {
                    DataError::Cursor(format!(
                        "segment names unit {} of {}",
                        s.unit,
                        units.rows.len()
                    ))
                })?;
                if s.start + s.len > rows {
                    return Err(DataError::Cursor(format!(
                        "segment rows {}..{} outside unit {} of {} rows",
                        s.start,
                        s.start + s.len,
                        s.unit,
                        rows
                    )));
                }
            }
        }
        Ok(())
    }

    fn sequence_len(&self, units: &Units) -> u64 {
        match &self.sequence {
            Some(seq) => seq.iter().map(|s| s.len).sum(),
            None => units.rows.iter().sum(),
        }
    }

    /// The epoch's sequence of rows before it is split among ranks.
    fn base_sequence(&self, units: &Units) -> Vec<Segment> {
        if let Some(seq) = &self.sequence {
            return seq.clone();
        }
        let mut order: Vec<u32> = (0..units.rows.len() as u32).collect();
        if self.options.shuffle {
            let mut rng =
                ChaCha8Rng::seed_from_u64(derive_seed(&[self.options.seed, self.epoch, 1]));
            // Fisher-Yates, written out so that the order never depends on a crate's version.
            for i in (1..order.len()).rev() {
                let j = rng.random_range(0..=i);
                order.swap(i, j);
            }
        }
        order
            .into_iter()
            .map(|u| Segment {
                unit: u,
                start: 0,
                len: units.rows[u as usize],
            })
            .collect()
    }

    /// The share of `rank` in the current epoch.
    pub fn plan_rank(&self, data: &impl DatasetUnits, rank: usize) -> Result<RankPlan> {
        let units = data.units();
        self.check(&units)?;
        let o = &self.options;
        if rank >= o.world_size {
            return Err(DataError::Cursor(format!(
                "rank {rank} outside world size {}",
                o.world_size
            )));
        }
        let seq = self.base_sequence(&units);
        let n: u64 = seq.iter().map(|s| s.len).sum();
        let steps = steps_for(n, o)?;
        let per_rank = steps * o.batch_size as u64;
        let from = rank as u64 * per_rank;
        let pieces = slice_sequence(&seq, n, from, from + per_rank);
        Ok(RankPlan {
            rank,
            epoch: self.epoch,
            steps,
            len: per_rank,
            pieces,
            shuffle_seed: derive_seed(&[
                o.seed,
                self.epoch,
                self.generation as u64,
                rank as u64,
                2,
            ]),
            shuffle_buffer: if o.shuffle { o.shuffle_buffer } else { 0 },
        })
    }

    /// A cursor for `world_size` ranks of `batch_size` that continues this one: the positions
    /// not yet consumed by any rank become the sequence of the re-planned epoch. With the same
    /// world and batch size the cursor is returned as it is, so the run continues exactly.
    pub fn reshard(
        &self,
        data: &impl DatasetUnits,
        world_size: usize,
        batch_size: usize,
    ) -> Result<Self> {
        let units = data.units();
        self.check(&units)?;
        if world_size == self.options.world_size && batch_size == self.options.batch_size {
            return Ok(self.clone());
        }
        if world_size == 0 || batch_size == 0 {
            return Err(DataError::Cursor(
                "world size and batch size must be at least 1".into(),
            ));
        }
        let mut sequence = Vec::new();
        for rank in 0..self.options.world_size {
            let plan = self.plan_rank(&*units, rank)?;
            for seg in plan.remaining(self.consumed[rank]) {
                push_coalesced(&mut sequence, seg);
            }
        }
        let mut options = self.options.clone();
        options.world_size = world_size;
        options.batch_size = batch_size;
        Ok(Self {
            dataset: self.dataset.clone(),
            consumed: vec![0; world_size],
            options,
            epoch: self.epoch,
            generation: self.generation + 1,
            step: 0,
            sequence: Some(sequence),
        })
    }
}

impl DataCursor {
    /// What `rank` needs to stream the rest of its part of the current epoch (the loader
    /// checks it against its dataset: [`crate::Loader::stream_share`]).
    pub fn share(&self, data: &impl DatasetUnits, rank: usize) -> Result<Share> {
        let plan = self.plan_rank(data, rank)?;
        let consumed = self.consumed[rank];
        Ok(Share {
            dataset: self.dataset.clone(),
            plan,
            seed: self.options.seed,
            batch_size: self.options.batch_size,
            consumed,
            step: self.step,
        })
    }

    /// Takes a rank's [`Progress`] into the cursor. Progress of an epoch other than the
    /// cursor's, or of a rank outside it, is an error that names it.
    pub fn advance(&mut self, p: &Progress) -> Result<()> {
        if p.epoch != self.epoch || p.rank >= self.consumed.len() {
            return Err(DataError::Cursor(format!(
                "rank {} reports epoch {} but the cursor is at epoch {} of {} ranks",
                p.rank,
                p.epoch,
                self.epoch,
                self.consumed.len()
            )));
        }
        self.consumed[p.rank] = p.consumed;
        self.step = self.step.max(p.epoch_step);
        Ok(())
    }
}

/// What one rank needs to stream the rest of its part of an epoch: its plan, how far it has
/// read it, and the run's seed and per-rank batch size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// [`Catalog::fingerprint`] of the dataset planned.
    pub dataset: String,
    /// The rank's plan of the epoch.
    pub plan: RankPlan,
    /// The run's seed (augmentations).
    pub seed: u64,
    /// Samples per batch on each rank.
    pub batch_size: usize,
    /// Positions of the plan's order already consumed.
    pub consumed: u64,
    /// Steps of the epoch already taken.
    pub step: u64,
}

/// Where a rank stands after an optimizer step, and what that step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The rank.
    pub rank: usize,
    /// Its epoch.
    pub epoch: u64,
    /// Steps (batches) of the epoch it has taken.
    pub epoch_step: u64,
    /// Positions of its order it has consumed in the epoch.
    pub consumed: u64,
    /// Optimizer steps of the run taken, from 1.
    pub step: u64,
    /// Real (not padding) samples it trained on in that step.
    pub samples: u64,
    /// Wall time of the step, in seconds.
    pub seconds: f64,
    /// Of which waiting for data.
    pub data_wait_s: f64,
}

/// Where a rank gets its share of every epoch, and where it reports its progress.
pub trait Planner {
    /// Starts the run's data: this rank reads the dataset `data`; `start` is where the run
    /// begins (in a job, rank 0's start is the job's and the others' are checked against it).
    fn open(&mut self, data: &Units, start: &DataCursor) -> Result<()>;
    /// This rank's share of `epoch`: the current epoch, or the one after it.
    fn share(&mut self, epoch: u64) -> Result<Share>;
    /// This rank finished an optimizer step.
    fn record(&mut self, progress: &Progress) -> Result<()>;
    /// The data cursor at the end of optimizer step `step`, the last one recorded (in a job,
    /// every rank's position, once every rank has recorded that step).
    fn cursor(&mut self, step: u64) -> Result<DataCursor>;
}

/// The planner of one process, and of a rank that plans for itself.
#[derive(Debug, Default)]
pub struct LocalPlanner {
    rank: usize,
    state: Option<(Units, DataCursor)>,
}

impl LocalPlanner {
    /// A planner for `rank`.
    pub fn new(rank: usize) -> Self {
        Self { rank, state: None }
    }

    fn state(&mut self) -> Result<&mut (Units, DataCursor)> {
        self.state
            .as_mut()
            .ok_or_else(|| DataError::Cursor("the planner was not opened".into()))
    }
}

impl Planner for LocalPlanner {
    fn open(&mut self, data: &Units, start: &DataCursor) -> Result<()> {
        start.check(data)?;
        self.state = Some((data.clone(), start.clone()));
        Ok(())
    }

    fn share(&mut self, epoch: u64) -> Result<Share> {
        let rank = self.rank;
        let (units, cursor) = self.state()?;
        next_epoch_if(cursor, epoch)?;
        cursor.share(&*units, rank)
    }

    fn record(&mut self, progress: &Progress) -> Result<()> {
        self.state()?.1.advance(progress)
    }

    fn cursor(&mut self, _step: u64) -> Result<DataCursor> {
        Ok(self.state()?.1.clone())
    }
}

/// Moves `cursor` on to `epoch` when that is the next one; any epoch but the current one and
/// the next is an error.
pub fn next_epoch_if(cursor: &mut DataCursor, epoch: u64) -> Result<()> {
    if epoch == cursor.epoch + 1 {
        *cursor = cursor.next_epoch();
    } else if epoch != cursor.epoch {
        return Err(DataError::Cursor(format!(
            "epoch {epoch} asked for, but the cursor is at epoch {}",
            cursor.epoch
        )));
    }
    Ok(())
}

fn steps_for(n: u64, o: &PlanOptions) -> Result<u64> {
    let global = (o.world_size * o.batch_size) as u64;
    let steps = match o.last_batch {
        LastBatch::Drop => n / global,
        LastBatch::Pad => n.div_ceil(global),
    };
    if steps == 0 {
        return Err(DataError::TooFewRows {
            rows: n,
            world_size: o.world_size,
            batch_size: o.batch_size,
        });
    }
    Ok(steps)
}

/// Positions `[from, to)` of the sequence repeated forever; rows past the first pass are padding.
fn slice_sequence(seq: &[Segment], n: u64, from: u64, to: u64) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut pos = from;
    while pos < to {
        let pass_start = (pos / n) * n;
        let mut offset = pass_start;
        for s in seq {
            let (a, b) = (offset, offset + s.len);
            offset = b;
            let lo = pos.max(a);
            let hi = to.min(b);
            if lo < hi {
                pieces.push(Piece {
                    segment: Segment {
                        unit: s.unit,
                        start: s.start + (lo - a),
                        len: hi - lo,
                    },
                    pos: lo - from,
                    pad: pass_start > 0,
                });
                pos = hi;
            }
            if pos >= to {
                break;
            }
        }
    }
    pieces
}

fn push_coalesced(out: &mut Vec<Segment>, seg: Segment) {
    if let Some(last) = out.last_mut() {
        if last.unit == seg.unit && last.start + last.len == seg.start {
            last.len += seg.len;
            return;
        }
    }
    out.push(seg);
}

impl RankPlan {
    /// The rank's emission order, to be advanced one position at a time.
    pub fn order(&self) -> ShuffleOrder {
        ShuffleOrder::new(self.len, self.shuffle_buffer, self.shuffle_seed)
    }

    /// Position ranges as (unit, rows, pad) runs: `ranges` must be sorted and disjoint.
    pub fn runs(&self, ranges: &[(u64, u64)]) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for &(a, b) in ranges {
            let mut pos = a;
            while pos < b {
                let i = self
                    .pieces
                    .partition_point(|p| p.pos + p.segment.len <= pos);
                let p = &self.pieces[i];
                let end = b.min(p.pos + p.segment.len);
                let row = p.segment.start + (pos - p.pos);
                let row_end = row + (end - pos);
                match runs.last_mut() {
                    Some(r)
                        if r.unit == p.segment.unit
                            && r.pad == p.pad
                            && r.rows.last().is_some_and(|&(_, e)| e <= row) =>
                    {
                        r.rows.push((row, row_end));
                        r.positions.push((pos, end));
                    }
                    _ => runs.push(Run {
                        unit: p.segment.unit,
                        pad: p.pad,
                        rows: vec![(row, row_end)],
                        positions: vec![(pos, end)],
                    }),
                }
                pos = end;
            }
        }
        runs
    }

    /// The rows (not padding) whose positions are not among the first `consumed` emitted.
    pub fn remaining(&self, consumed: u64) -> Vec<Segment> {
        let mut order = self.order();
        order.fast_forward(consumed.min(self.len));
        let mut out = Vec::new();
        for run in self.runs(&order.unread_ranges()) {
            if run.pad {
                continue;
            }
            for (a, b) in run.rows {
                push_coalesced(
                    &mut out,
                    Segment {
                        unit: run.unit,
                        start: a,
                        len: b - a,
                    },
                );
            }
        }
        out
    }
}

/// Rows of one unit that map to positions of a rank's plan, both in increasing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The unit.
    pub unit: u32,
    /// Padding rows.
    pub pad: bool,
    /// Row ranges within the unit, increasing.
    pub rows: Vec<(u64, u64)>,
    /// The position range of each row range.
    pub positions: Vec<(u64, u64)>,
}

/// The order in which a rank emits its positions: a shuffle buffer over `0..len`.
#[derive(Debug, Clone)]
pub struct ShuffleOrder {
    len: u64,
    capacity: usize,
    next_read: u64,
    buffer: Vec<u64>,
    rng: ChaCha8Rng,
}

impl ShuffleOrder {
    /// Positions `0..len` through a buffer of `capacity` (0 or 1: in order).
    pub fn new(len: u64, capacity: usize, seed: u64) -> Self {
        Self {
            len,
            capacity: capacity.max(1),
            next_read: 0,
            buffer: Vec::with_capacity(capacity.min(1 << 20)),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Skip `n` emissions (replay).
    pub fn fast_forward(&mut self, n: u64) {
        for _ in 0..n {
            if self.next().is_none() {
                break;
            }
        }
    }

    /// Positions not emitted yet that the order has not read either, plus the ones waiting in
    /// its buffer, as sorted ranges: what a reader must fetch to continue.
    pub fn unread_ranges(&self) -> Vec<(u64, u64)> {
        let mut buffered = self.buffer.clone();
        buffered.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for p in buffered.into_iter().chain(self.next_read..self.len) {
            match ranges.last_mut() {
                Some((_, e)) if *e == p => *e += 1,
                _ => ranges.push((p, p + 1)),
            }
        }
        ranges
    }
}

impl Iterator for ShuffleOrder {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        while self.buffer.len() < self.capacity && self.next_read < self.len {
            self.buffer.push(self.next_read);
            self.next_read += 1;
        }
        if self.buffer.is_empty() {
            return None;
        }
        let j = if self.buffer.len() == 1 {
            0
        } else {
            self.rng.random_range(0..self.buffer.len())
        };
        Some(self.buffer.swap_remove(j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_order_is_a_permutation_and_replays() {
        let mut a = ShuffleOrder::new(1000, 64, 7);
        let all: Vec<u64> = a.by_ref().collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(all[..100], (0..100).collect::<Vec<_>>()[..]);
        let mut b = ShuffleOrder::new(1000, 64, 7);
        b.fast_forward(300);
        let rest: Vec<u64> = b.collect();
        assert_eq!(rest, all[300..]);
    }

    #[test]
    fn unread_ranges_cover_the_rest() {
        let mut o = ShuffleOrder::new(500, 32, 3);
        let first: Vec<u64> = o.by_ref().take(200).collect();
        let mut left: Vec<u64> = o
            .unread_ranges()
            .into_iter()
            .flat_map(|(a, b)| a..b)
            .collect();
        left.extend(first);
        left.sort_unstable();
        assert_eq!(left, (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn no_shuffle_is_in_order() {
        let o = ShuffleOrder::new(10, 0, 1);
        assert_eq!(o.collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn slice_wraps_with_padding() {
        let seq = vec![
            Segment {
                unit: 0,
                start: 0,
                len: 3,
            },
            Segment {
                unit: 1,
                start: 0,
                len: 2,
            },
        ];
        let p = slice_sequence(&seq, 5, 4, 8);
        assert_eq!(
            p,
            vec![
                Piece {
                    segment: Segment {
                        unit: 1,
                        start: 1,
                        len: 1
                    },
                    pos: 0,
                    pad: false
                },
                Piece {
                    segment: Segment {
                        unit: 0,
                        start: 0,
                        len: 3
                    },
                    pos: 1,
                    pad: true
                },
            ]
        );
    }
}

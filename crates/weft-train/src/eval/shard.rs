//! Evaluation sharded across the ranks of a job: each rank's share of the rows
//! ([`eval_batches`]), and every rank's results brought together on every rank in the order
//! of their [`RowId`]s ([`gather_rows`], [`gather_strings`]).

use weft_collective::{Collective, ReduceOp};
use weft_config::Config;
use weft_data::{BatchStream, DataCursor, Loader, RowId, Split};

use crate::error::TrainError;

/// This rank's share of `loader`'s rows for an evaluation over the ranks of `collective`: the
/// validation plan (no shuffle, the last batch padded) cut for that many ranks.
pub fn eval_batches(
    config: &Config,
    loader: &Loader,
    collective: &dyn Collective,
) -> Result<BatchStream, TrainError> {
    let options = weft_data::plan_options(config, Split::Val, collective.world_size());
    let cursor = DataCursor::new(loader.catalog(), options, 0);
    Ok(loader.stream(&cursor, collective.rank())?)
}

/// Every rank's rows, gathered on every rank in [`RowId`] order. `rows[i]` is the id of this
/// rank's `i`-th row and `values[i * width..]` its `width` values; the result holds the ids and
/// values of all ranks' rows, sorted by id (so one rank alone gets its rows in that order too).
pub fn gather_rows(
    collective: &mut dyn Collective,
    rows: &[RowId],
    values: &[f32],
    width: usize,
) -> Result<(Vec<RowId>, Vec<f32>), TrainError> {
    // Ids travel as f32: the unit and two 24-bit halves of the row, all exact.
    const EXACT: u64 = 1 << 24;
    if let Some(id) = rows
        .iter()
        .find(|id| u64::from(id.unit) >= EXACT || id.row >= EXACT * EXACT)
    {
        return Err(TrainError::EvalShards {
            reason: format!("row {id:?} is past the 2^24 units or 2^48 rows that travel exactly"),
        });
    }
    let mut meta = [rows.len() as f32, width as f32];
    collective.all_reduce(&mut meta, ReduceOp::Max)?;
    let (most, width) = (meta[0] as usize, meta[1] as usize);
    if values.len() != rows.len() * width {
        return Err(TrainError::EvalShards {
            reason: format!(
                "rank {}: {} values for {} rows of width {width}",
                collective.rank(),
                values.len(),
                rows.len()
            ),
        });
    }
    let stride = 4 + width;
    let mut send = vec![0f32; most * stride];
    for (i, id) in rows.iter().enumerate() {
        let s = &mut send[i * stride..(i + 1) * stride];
        s[0] = 1.0;
        s[1] = id.unit as f32;
        s[2] = (id.row % EXACT) as f32;
        s[3] = (id.row / EXACT) as f32;
        s[4..].copy_from_slice(&values[i * width..(i + 1) * width]);
    }
    let mut recv = vec![0f32; collective.world_size() * send.len()];
    collective.all_gather(&send, &mut recv)?;
    let mut all: Vec<(RowId, &[f32])> = recv
        .chunks(stride.max(1))
        .filter(|c| c[0] == 1.0)
        .map(|c| {
            let id = RowId {
                unit: c[1] as u32,
                row: c[2] as u64 + c[3] as u64 * EXACT,
            };
            (id, &c[4..])
        })
        .collect();
    all.sort_by_key(|(id, _)| (id.unit, id.row));
    if let Some(w) = all.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(TrainError::EvalShards {
            reason: format!("row {:?} was evaluated by two ranks", w[0].0),
        });
    }
    let ids = all.iter().map(|(id, _)| *id).collect();
    let values = all.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    Ok((ids, values))
}

/// [`gather_rows`] of one string per row: the UTF-8 bytes travel as f32 values, exactly.
pub fn gather_strings<S: AsRef<str>>(
    collective: &mut dyn Collective,
    rows: &[RowId],
    strings: &[S],
) -> Result<(Vec<RowId>, Vec<String>), TrainError> {
    let longest = strings.iter().map(|s| s.as_ref().len()).max().unwrap_or(0);
    let mut longest = [longest as f32];
    collective.all_reduce(&mut longest, ReduceOp::Max)?;
    let width = 1 + longest[0] as usize;
    let mut values = vec![0f32; rows.len() * width];
    for (v, s) in values.chunks_mut(width).zip(strings) {
        let s = s.as_ref();
        v[0] = s.len() as f32;
        v[1..]
            .iter_mut()
            .zip(s.bytes())
            .for_each(|(x, b)| *x = f32::from(b));
    }
    let (ids, all) = gather_rows(collective, rows, &values, width)?;
    let strings = all
        .chunks(width)
        .map(|v| {
            let bytes: Vec<u8> = v[1..1 + v[0] as usize].iter().map(|&b| b as u8).collect();
            String::from_utf8(bytes).map_err(|e| TrainError::EvalShards {
                reason: format!("a gathered string is not UTF-8: {e}"),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((ids, strings))
}

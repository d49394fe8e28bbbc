//! Each rank's share of a checkpoint: which tensors it writes (contiguous runs of the
//! parameter order, balanced by bytes) and the writing of its model and optimizer shards.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::commit::{ShardFile, ShardReport};
use crate::error::{io, Result};
use crate::files::{tmp_dir, Family};
use crate::write::{write_safetensors, Data, TensorOut, WriteOptions};

/// The owner of each tensor: ranks take contiguous runs of tensors, in order, each run about
/// `1/world` of the bytes (a tensor goes to the rank whose part holds its middle byte).
pub fn assign(bytes: &[u64], world: usize) -> Vec<usize> {
    let total: u64 = bytes.iter().sum();
    let mut before = 0u64;
    bytes
        .iter()
        .map(|&b| {
            let middle = before as u128 * 2 + b as u128;
            before += b;
            if total == 0 {
                return 0;
            }
            ((middle * world as u128 / (2 * total as u128)) as usize).min(world - 1)
        })
        .collect()
}

/// The names and shapes of the parameters, in the trainer's flat order.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamTable {
    /// Module paths.
    pub names: Vec<String>,
    /// Shapes.
    pub shapes: Vec<Vec<usize>>,
}

impl ParamTable {
    /// Elements of each parameter.
    pub fn numels(&self) -> Vec<usize> {
        self.shapes.iter().map(|s| s.iter().product()).collect()
    }

    /// (name, shape) pairs.
    pub fn wanted(&self) -> Vec<(String, Vec<usize>)> {
        self.names
            .iter()
            .cloned()
            .zip(self.shapes.iter().cloned())
            .collect()
    }

    /// The optimizer tensors' (name, shape) pairs for one moment suffix.
    pub fn moment_names(&self, suffix: &str) -> Vec<(String, Vec<usize>)> {
        self.names
            .iter()
            .zip(&self.shapes)
            .map(|(n, s)| (format!("{n}.{suffix}"), s.clone()))
            .collect()
    }
}

/// What a checkpoint holds of the model and optimizer, copied off the training buffers at a
/// step boundary (so that training can go on while it is written).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Names and shapes.
    pub params: Arc<ParamTable>,
    /// Parameter values, flat.
    pub values: Vec<f32>,
    /// AdamW first moments, flat.
    pub exp_avg: Vec<f32>,
    /// AdamW second moments, flat.
    pub exp_avg_sq: Vec<f32>,
    /// AdamW updates applied, per parameter.
    pub steps: Vec<u64>,
}

impl Snapshot {
    /// A copy of the training buffers, into `spare`'s allocations when given (a snapshot of an
    /// earlier save: its memory is already mapped, so the copy runs at memory speed).
    pub fn copy_of(
        table: &Arc<ParamTable>,
        values: &[f32],
        exp_avg: &[f32],
        exp_avg_sq: &[f32],
        steps: &[u64],
        spare: Option<Snapshot>,
    ) -> Snapshot {
        let mut s = spare.unwrap_or_else(|| Snapshot {
            params: Arc::clone(table),
            values: Vec::new(),
            exp_avg: Vec::new(),
            exp_avg_sq: Vec::new(),
            steps: Vec::new(),
        });
        s.params = Arc::clone(table);
        for (dst, src) in [
            (&mut s.values, values),
            (&mut s.exp_avg, exp_avg),
            (&mut s.exp_avg_sq, exp_avg_sq),
        ] {
            dst.clear();
            dst.extend_from_slice(src);
        }
        s.steps.clear();
        s.steps.extend_from_slice(steps);
        s
    }
}

/// Writes the shards of `rank` of `world` for checkpoint `step` into `step-N.tmp` of
/// `run_dir` (each file fsynced) and reports them.
pub fn write_rank(
    run_dir: &Path,
    step: u64,
    rank: usize,
    world: usize,
    snap: &Snapshot,
    options: WriteOptions,
) -> Result<ShardReport> {
    let dir = tmp_dir(run_dir, step);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let numels = snap.params.numels();
    let owner = assign(
        &numels.iter().map(|&n| n as u64 * 4).collect::<Vec<_>>(),
        world,
    );
    let mut offsets = Vec::with_capacity(numels.len());
    let mut at = 0;
    for n in &numels {
        offsets.push(at..at + n);
        at += n;
    }
    let mine: Vec<usize> = (0..numels.len()).filter(|&i| owner[i] == rank).collect();
    let steps: Vec<i64> = snap.steps.iter().map(|&s| s as i64).collect();
    let meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("weft_step".to_string(), step.to_string()),
    ]);
    let mut files = Vec::new();
    for family in Family::ALL {
        let mut tensors = Vec::new();
        for &i in &mine {
            let (name, shape, range) = (
                &snap.params.names[i],
                &snap.params.shapes[i],
                offsets[i].clone(),
            );
            match family {
                Family::Model => tensors.push(TensorOut {
                    name: name.clone(),
                    shape: shape.clone(),
                    data: Data::F32(&snap.values[range]),
                }),
                Family::Optimizer => {
                    tensors.push(TensorOut {
                        name: format!("{name}.exp_avg"),
                        shape: shape.clone(),
                        data: Data::F32(&snap.exp_avg[range.clone()]),
                    });
                    tensors.push(TensorOut {
                        name: format!("{name}.exp_avg_sq"),
                        shape: shape.clone(),
                        data: Data::F32(&snap.exp_avg_sq[range]),
                    });
                    tensors.push(TensorOut {
                        name: format!("{name}.step"),
                        shape: vec![],
                        data: Data::I64(&steps[i..=i]),
                    });
                }
            }
        }
        let path = dir.join(family.shard(rank, world));
        let record = write_safetensors(&path, &tensors, &meta, options)?;
        files.push(ShardFile {
            family: family.into(),
            record,
            tensors: tensors
                .iter()
                .map(|t| (t.name.clone(), t.data.byte_len()))
                .collect(),
        });
    }
    Ok(ShardReport {
        rank,
        world_size: world,
        step,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_contiguous_balanced_and_cover_everything() {
        let bytes = [400, 4, 4, 400, 4, 800, 4, 400, 4, 4];
        for world in 1..=12 {
            let owner = assign(&bytes, world);
            assert!(owner.windows(2).all(|w| w[0] <= w[1]), "{owner:?}");
            assert!(owner.iter().all(|&r| r < world));
            let total: u64 = bytes.iter().sum();
            let largest = *bytes.iter().max().unwrap();
            for r in 0..world {
                let mine: u64 = bytes
                    .iter()
                    .zip(&owner)
                    .filter(|(_, &o)| o == r)
                    .map(|(b, _)| b)
                    .sum();
                assert!(
                    mine <= total / world as u64 + largest,
                    "world {world} rank {r}: {mine}"
                );
            }
        }
        assert_eq!(assign(&[4, 4, 4, 4], 2), [0, 0, 1, 1]);
    }
}

//! The engine's buffers as a checkpoint holds them: the names and shapes of the parameters
//! ([`param_table`]) and the values and AdamW state read back for a resume
//! ([`read_restored`]).

use std::sync::Arc;

use weft_checkpoint::{CheckpointError, Family, ParamTable};

use crate::params::ParamInfo;

/// The names and shapes of `params`, as the checkpoint files hold them.
pub fn param_table(params: &[ParamInfo]) -> Arc<ParamTable> {
    Arc::new(ParamTable {
        names: params.iter().map(|p| p.path.clone()).collect(),
        shapes: params.iter().map(|p| p.shape.clone()).collect(),
    })
}

/// Parameter values and AdamW state read from a checkpoint, flat in parameter order.
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

/// Reads the tensors of `table` from `ckpt`; a missing tensor or another shape is an error
/// naming it.
pub fn read_restored(
    ckpt: &weft_checkpoint::Checkpoint,
    table: &ParamTable,
) -> Result<Restored, CheckpointError> {
    let values = ckpt.read_flat(Family::Model, &table.wanted())?;
    let exp_avg = ckpt.read_flat(Family::Optimizer, &table.moment_names("exp_avg"))?;
    let exp_avg_sq = ckpt.read_flat(Family::Optimizer, &table.moment_names("exp_avg_sq"))?;
    let names: Vec<String> = table.names.iter().map(|n| format!("{n}.step")).collect();
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

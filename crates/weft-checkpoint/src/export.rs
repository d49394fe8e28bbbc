//! One consolidated model file from a sharded checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Result;
use crate::files::Family;
use crate::load::Checkpoint;
use crate::write::{write_safetensors, Data, FileRecord, TensorOut, WriteOptions};

/// The dtype of an exported file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDtype {
    /// As trained.
    F32,
    /// Rounded to bfloat16.
    Bf16,
}

/// Writes every model tensor of `ckpt` into one safetensors file at `out`.
pub fn export(ckpt: &Checkpoint, out: &Path, dtype: ExportDtype) -> Result<FileRecord> {
    let tensors = ckpt.read_all(Family::Model)?;
    let outs: Vec<TensorOut<'_>> = tensors
        .iter()
        .map(|t| TensorOut {
            name: t.name.clone(),
            shape: t.shape.clone(),
            data: match dtype {
                ExportDtype::F32 => Data::F32(&t.f32),
                ExportDtype::Bf16 => Data::Bf16(&t.f32),
            },
        })
        .collect();
    let meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("weft_step".to_string(), ckpt.state.step.to_string()),
    ]);
    write_safetensors(out, &outs, &meta, WriteOptions::default())
}

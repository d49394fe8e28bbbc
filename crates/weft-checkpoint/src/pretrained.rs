//! Weights to start a new run from (`train.init_from`, open_clip's `--pretrained`, LAVIS's
//! `pretrained`): a safetensors file, a run directory or a checkpoint directory, matched to
//! the model's parameters by name.
//!
//! Only the parameter values are taken: the optimizer, the schedule and the data order start
//! afresh. A parameter of the model that the weights lack keeps its initial value (a head the
//! earlier run did not have); a tensor of the weights that the model lacks is left unused. A
//! parameter found with another shape is an error naming it, and so are weights of which no
//! tensor is a parameter of the model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{io, CheckpointError, Result};
use crate::files::{checkpoints_dir, Family, MODEL_FILE, TRAINER_STATE};
use crate::load::{open_verified, resolve, Resume};
use crate::shard::ParamTable;

/// One tensor of the weights: its shape and its values as f32, or why it has none (not a
/// floating-point tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements, widened to f32 (F32, BF16 and F16 files), or its dtype when it is not a
    /// floating-point tensor.
    pub values: std::result::Result<Vec<f32>, String>,
}

/// Weights read for [`Pretrained::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Pretrained {
    /// What was read: the safetensors file, or the checkpoint directory.
    pub source: PathBuf,
    /// The tensors, by name.
    pub tensors: BTreeMap<String, WeightTensor>,
}

/// Which parameters [`Pretrained::apply`] set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// What was read (the safetensors file or the checkpoint directory).
    pub source: PathBuf,
    /// Parameters set from the weights.
    pub loaded: Vec<String>,
    /// Parameters the weights lack: they keep their initial values.
    pub missing: Vec<String>,
    /// Tensors of the weights that are no parameter of the model.
    pub unused: Vec<String>,
}

/// Reads the weights at `path`:
/// - a safetensors file (`model.safetensors` of `weft train`, `weft checkpoint export` in f32
///   or bf16, or another tool's file with the same tensor names);
/// - a committed checkpoint directory (`RUN_DIR/checkpoints/step-N`), verified first;
/// - a run directory: its `model.safetensors`, else its newest committed checkpoint that
///   verifies (a run that stopped before its end).
pub fn read_pretrained(path: &Path) -> Result<Pretrained> {
    let not_weights = |reason: String| CheckpointError::NotWeights {
        path: path.to_path_buf(),
        reason,
    };
    if !path.exists() {
        return Err(not_weights("it does not exist".into()));
    }
    if path.is_file() {
        return read_file(path);
    }
    let from_checkpoint = |dir: &Path| -> Result<Pretrained> {
        let ckpt = open_verified(dir)?;
        let tensors = ckpt
            .read_all(Family::Model)?
            .into_iter()
            .map(|t| {
                let values = if t.i64.is_empty() {
                    Ok(t.f32)
                } else {
                    Err("I64".to_string())
                };
                (
                    t.name,
                    WeightTensor {
                        shape: t.shape,
                        values,
                    },
                )
            })
            .collect();
        Ok(Pretrained {
            source: dir.to_path_buf(),
            tensors,
        })
    };
    if path.join(TRAINER_STATE).exists() {
        return from_checkpoint(path);
    }
    let model = path.join(MODEL_FILE);
    if model.is_file() {
        return read_file(&model);
    }
    match resolve(path, &Resume::Auto)? {
        Some(ckpt) => from_checkpoint(&ckpt.dir),
        None => Err(not_weights(format!(
            "a directory without {MODEL_FILE}, {TRAINER_STATE} or a committed checkpoint in {}",
            checkpoints_dir(path).display()
        ))),
    }
}

/// Every tensor of one safetensors file.
fn read_file(path: &Path) -> Result<Pretrained> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::NotWeights {
        path: path.to_path_buf(),
        reason: format!("not a safetensors file ({e})"),
    })?;
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let data = t.data();
            let values = match t.dtype() {
                Dtype::F32 => Ok(data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect()),
                Dtype::BF16 => Ok(data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect()),
                Dtype::F16 => Ok(data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect()),
                other => Err(format!("{other:?}")),
            };
            (
                name,
                WeightTensor {
                    shape: t.shape().to_vec(),
                    values,
                },
            )
        })
        .collect();
    Ok(Pretrained {
        source: path.to_path_buf(),
        tensors,
    })
}

impl Pretrained {
    /// Sets the parameters of `table` that the weights hold in `values` (flat, in the table's
    /// order); the others keep their values. Changes nothing and fails when a parameter is
    /// found with another shape or not as floats, or when no tensor is a parameter.
    pub fn apply(&self, table: &ParamTable, values: &mut [f32]) -> Result<InitReport> {
        let numels = table.numels();
        assert_eq!(
            numels.iter().sum::<usize>(),
            values.len(),
            "flat parameter buffer size"
        );
        let mut report = InitReport {
            source: self.source.clone(),
            loaded: Vec::new(),
            missing: Vec::new(),
            unused: Vec::new(),
        };
        let mut found = Vec::new();
        let mut offset = 0;
        for ((name, shape), n) in table.names.iter().zip(&table.shapes).zip(&numels) {
            let range = offset..offset + n;
            offset += n;
            let Some(t) = self.tensors.get(name) else {
                report.missing.push(name.clone());
                continue;
            };
            if &t.shape != shape {
                return Err(CheckpointError::Tensor {
                    name: name.clone(),
                    reason: format!(
                        "shape {:?} in {}, {shape:?} in the model",
                        t.shape,
                        self.source.display()
                    ),
                });
            }
            let v = t.values.as_ref().map_err(|dtype| CheckpointError::Tensor {
                name: name.clone(),
                reason: format!(
                    "dtype {dtype} in {}, expected F32, BF16 or F16",
                    self.source.display()
                ),
            })?;
            found.push((range, v));
            report.loaded.push(name.clone());
        }
        if found.is_empty() {
            let first = |v: Vec<&String>| {
                v.into_iter()
                    .take(3)
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(CheckpointError::NotWeights {
                path: self.source.clone(),
                reason: format!(
                    "none of its {} tensors is a parameter of the model (it has {}; the model \
                     has {})",
                    self.tensors.len(),
                    first(self.tensors.keys().collect()),
                    first(table.names.iter().collect())
                ),
            });
        }
        for (range, v) in found {
            values[range].copy_from_slice(v);
        }
        report.unused = self
            .tensors
            .keys()
            .filter(|k| !table.names.contains(k))
            .cloned()
            .collect();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::{write_safetensors, Data, TensorOut, WriteOptions};

    fn table() -> ParamTable {
        ParamTable {
            names: vec!["a.weight".into(), "b.bias".into(), "head.weight".into()],
            shapes: vec![vec![2, 2], vec![3], vec![1, 2]],
        }
    }

    fn write(path: &Path, tensors: &[(&str, Vec<usize>, Data<'_>)]) {
        let outs: Vec<TensorOut<'_>> = tensors
            .iter()
            .map(|(n, s, d)| TensorOut {
                name: n.to_string(),
                shape: s.clone(),
                data: *d,
            })
            .collect();
        write_safetensors(path, &outs, &BTreeMap::new(), WriteOptions::default()).unwrap();
    }

    #[test]
    fn matching_tensors_are_set_and_the_others_keep_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [0.5, -0.25, 8.0];
        let extra = [9.0];
        write(
            &file,
            &[
                ("a.weight", vec![2, 2], Data::F32(&a)),
                // Exactly representable in bf16: read back unchanged.
                ("b.bias", vec![3], Data::Bf16(&b)),
                ("old_head.weight", vec![1], Data::F32(&extra)),
            ],
        );
        let w = read_pretrained(&file).unwrap();
        let mut values = vec![-1.0; 9];
        let r = w.apply(&table(), &mut values).unwrap();
        assert_eq!(values, [1.0, 2.0, 3.0, 4.0, 0.5, -0.25, 8.0, -1.0, -1.0]);
        assert_eq!(r.loaded, ["a.weight", "b.bias"]);
        assert_eq!(r.missing, ["head.weight"]);
        assert_eq!(r.unused, ["old_head.weight"]);
    }

    #[test]
    fn another_shape_is_an_error_naming_the_tensor_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        write(
            &file,
            &[
                ("a.weight", vec![4], Data::F32(&[1.0; 4])),
                ("b.bias", vec![3], Data::F32(&[1.0; 3])),
            ],
        );
        let mut values = vec![-1.0; 9];
        let e = read_pretrained(&file)
            .unwrap()
            .apply(&table(), &mut values)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.weight") && e.contains("[4]") && e.contains("[2, 2]"),
            "{e}"
        );
        assert_eq!(values, [-1.0; 9]);
    }

    #[test]
    fn weights_of_another_model_and_missing_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        write(&file, &[("encoder.x", vec![1], Data::F32(&[1.0]))]);
        let e = read_pretrained(&file)
            .unwrap()
            .apply(&table(), &mut [0.0; 9])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("none of its 1 tensors") && e.contains("`encoder.x`"),
            "{e}"
        );
        assert!(e.contains("`a.weight`"), "{e}");

        let e = read_pretrained(&dir.path().join("nope")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // A directory without weights.
        let e = read_pretrained(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(MODEL_FILE) && e.contains("committed checkpoint"),
            "{e}"
        );
        // A run directory's model file.
        std::fs::rename(&file, dir.path().join(MODEL_FILE)).unwrap();
        let w = read_pretrained(dir.path()).unwrap();
        assert_eq!(w.source, dir.path().join(MODEL_FILE));
        // Not a safetensors file.
        std::fs::write(dir.path().join(MODEL_FILE), b"not safetensors").unwrap();
        let e = read_pretrained(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
    }
}

//! Reading a run's checkpoints and metrics back, to compare two runs bit for bit.

use std::path::{Path, PathBuf};

use weft_checkpoint::{open_verified, Family};

/// The newest committed checkpoint of the run directory `run` (its `latest` pointer).
pub fn latest(run: &Path) -> PathBuf {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    run.join("checkpoints").join(name.trim())
}

/// How many steps rank 0 has logged so far in the run's metrics.jsonl (0 before it exists): a
/// running job's progress.
pub fn steps_logged(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The lines of the run's metrics.jsonl.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every tensor of a family of the checkpoint in `dir`, as bits.
pub fn bits(dir: &Path, family: Family) -> Vec<(String, Vec<u32>, Vec<i64>)> {
    open_verified(dir)
        .unwrap()
        .read_all(family)
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.f32.iter().map(|x| x.to_bits()).collect(), t.i64))
        .collect()
}

/// The tensors of a safetensors file (f32), as bits, by name.
pub fn file_bits(path: &Path) -> Vec<(String, Vec<u32>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out: Vec<(String, Vec<u32>)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, t)| {
            let [a, b] = [0, 1].map(|k| t["data_offsets"][k].as_u64().unwrap() as usize);
            let values = data[a..b]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name.clone(), values)
        })
        .collect();
    out.sort();
    out
}

/// Runs `a` (uninterrupted) and `b` (interrupted and resumed) of `steps` steps end alike: every
/// tensor of their newest checkpoints, every step's loss and sample count (the steps `b` ran
/// after its last checkpoint before the interruption are gone from its metrics), and the final
/// weights, bit for bit.
pub fn assert_same_end(a: &Path, b: &Path, steps: usize, what: &str) {
    for family in Family::ALL {
        assert_eq!(
            bits(&latest(a), family),
            bits(&latest(b), family),
            "{what}: {family:?} after {steps} steps"
        );
    }
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), steps, "{what}: metrics of the whole run");
    assert_eq!(mb.len(), steps, "{what}: metrics of the resumed run");
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x["loss"], y["loss"], "{what}: step {}", x["step"]);
        assert_eq!(x["samples_seen"], y["samples_seen"]);
    }
    assert_eq!(
        file_bits(&a.join("model.safetensors")),
        file_bits(&b.join("model.safetensors")),
        "{what}: the final weights"
    );
}

//! Data parallelism changes nothing but the speed: 2 processes with per-rank batch B/2 train
//! what 1 process with batch B trains on the same global batches, with the real binary on
//! 127.0.0.1 (`weft launch` against `weft train`), the tiny config and every objective.
//!
//! Rank r of 2 reads rows `[r·N/2, (r+1)·N/2)` of the epoch's sequence (the data plan); the
//! one-process dataset holds the same rows in the order of the global batches, so that its
//! step k reads exactly the rows the two ranks read at step k, rank 0's first. Shuffling and
//! augmentation are off; every random draw of the objectives is keyed by the sample's row in
//! the global batch.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{ok, two_rank_train_args, weft_within};
use common::train::sample_dir;
use weft_data::synth::{encode, write_hf_parquet, Scene, SynthFormat};

const STEPS: usize = 20;
const GLOBAL_BATCH: usize = 16;

fn repo() -> PathBuf {
    sample_dir().join("../..")
}

/// Row `i` of the dataset: a synthetic scene and its caption.
fn row(i: usize) -> (Option<Vec<u8>>, Option<String>) {
    let scene = Scene::generate(11, i as u64, 64);
    let png = encode(&scene.render(64), SynthFormat::Png).unwrap();
    (Some(png), Some(scene.caption()))
}

/// The tensors of a safetensors file, as f32, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = Vec::new();
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(t["dtype"], "F32", "{name}");
        let [a, b] = [0, 1].map(|k| t["data_offsets"][k].as_u64().unwrap() as usize);
        let values = data[a..b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.push((name.clone(), values));
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

/// The `itc` loss of every step in `metrics.jsonl`.
fn itc_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["itc"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn sets(data: &Path, batch: usize) -> Vec<String> {
    [
        format!("data.train=[\"{}\"]", data.display()),
        "data.val=[]".into(),
        format!("data.batch_size={batch}"),
        "data.shuffle=false".into(),
        "data.workers=1".into(),
        "data.crop_scale=[1.0, 1.0]".into(),
        "data.crop_ratio=[1.0, 1.0]".into(),
        "data.hflip=false".into(),
        format!("train.max_steps={STEPS}"),
        "train.eval_every=0".into(),
        "train.threads=1".into(),
    ]
    .iter()
    .flat_map(|kv| ["--set".to_string(), kv.clone()])
    .collect()
}

/// `launch --nproc-per-node 2 -- train --run-dir RUN SETS...`.
/// A 2-rank job over `data` with per-rank batch 8 and the settings `extra` on top of [`sets`].
fn job_args(run: &Path, data: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = two_rank_train_args(run, sets(data, 8));
    for kv in extra {
        args.push("--set".into());
        args.push((*kv).into());
    }
    args
}

/// Runs the [`job_args`] job to its end; its metrics lines and their `samples_seen`.
fn run_job(run: &Path, data: &Path, extra: &[&str]) -> (Vec<serde_json::Value>, Vec<Option<u64>>) {
    let args = job_args(run, data, extra);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&weft_within(&repo(), &argv, Duration::from_secs(300)));
    let lines = common::ckpt::metrics(run);
    let seen = lines.iter().map(|l| l["samples_seen"].as_u64()).collect();
    (lines, seen)
}

#[test]
fn two_ranks_of_half_the_batch_train_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let n = STEPS * GLOBAL_BATCH;
    let half = GLOBAL_BATCH / 2;
    let rows: Vec<_> = (0..n).map(row).collect();
    // Two ranks: the rows in order (rank 0 reads the first half, rank 1 the second).
    let split = dir.path().join("split");
    std::fs::create_dir_all(&split).unwrap();
    write_hf_parquet(&split.join("part-0.parquet"), &rows, 64).unwrap();
    // One process: global batch k = rank 0's batch k, then rank 1's.
    let whole = dir.path().join("whole");
    std::fs::create_dir_all(&whole).unwrap();
    let interleaved: Vec<_> = (0..STEPS)
        .flat_map(|k| (k * half..(k + 1) * half).chain(n / 2 + k * half..n / 2 + (k + 1) * half))
        .map(|i| rows[i].clone())
        .collect();
    write_hf_parquet(&whole.join("part-0.parquet"), &interleaved, 64).unwrap();

    let one = dir.path().join("one");
    let mut args = vec![
        "train".to_string(),
        "--run-dir".into(),
        one.display().to_string(),
    ];
    args.extend(sets(&whole, GLOBAL_BATCH));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&weft_within(&repo(), &argv, Duration::from_secs(300)));

    let two = dir.path().join("two");
    let args = two_rank_train_args(&two, sets(&split, half));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&weft_within(&repo(), &argv, Duration::from_secs(300)));
    assert!(two.join("logs/rank-0.log").exists() && two.join("logs/rank-1.log").exists());

    let (a, b) = (itc_losses(&one), itc_losses(&two));
    assert_eq!((a.len(), b.len()), (STEPS, STEPS));
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "step {}: ITC {x} (1 process) vs {y} (2 ranks)",
            step + 1
        );
    }
    let (p, q) = (
        tensors(&one.join("model.safetensors")),
        tensors(&two.join("model.safetensors")),
    );
    assert_eq!(p.len(), q.len());
    for ((name, x), (name2, y)) in p.iter().zip(&q) {
        assert_eq!(name, name2);
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = x.iter().zip(y).fold(0f32, |m, (u, v)| m.max((u - v).abs()));
        assert!(
            worst <= 1e-5 * scale,
            "{name}: parameters differ by {worst} (largest magnitude {scale})"
        );
    }
}

#[test]
fn a_job_trains_through_padded_last_batches() {
    // 100 rows, 2 ranks of 8, `last_batch = "pad"`: 7 steps an epoch, the last global batch
    // holds 4 real rows and 12 padding rows. Every rank runs every step at its full size. Two
    // epochs: the coordinator hands out the second epoch's shares too.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let rows: Vec<_> = (0..100).map(row).collect();
    write_hf_parquet(&data.join("part-0.parquet"), &rows, 32).unwrap();
    let run = dir.path().join("run");
    let args = job_args(
        &run,
        &data,
        &[
            "train.max_steps=0",
            "train.epochs=2",
            "data.last_batch=\"pad\"",
        ],
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = weft_within(&repo(), &argv, Duration::from_secs(300));
    ok(&out);
    // The coordinator's own count over both ranks' reports.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("job finished: 14 steps, 200 samples"),
        "launcher log: {log}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 14);
    // Every real row once an epoch, padding not counted.
    assert_eq!(lines[6]["samples_seen"], 100);
    assert_eq!(lines[7]["epoch"], 1);
    assert_eq!(lines[13]["samples_seen"], 200);
}

#[test]
fn steps_whose_global_batch_is_all_padding_update_nothing() {
    // 64 rows, 2 ranks of 8: rank 0 plans rows 0-31, rank 1 rows 32-63, 4 steps. Rows 16-31
    // and 48-63 have no image, so each rank runs out after 2 steps and pads the last 2: their
    // global batches are all padding. Steps 3 and 4 must change neither the weights nor
    // AdamW's moments: the step-4 checkpoint is the step-2 one, bit for bit.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let rows: Vec<_> = (0..64)
        .map(|i| match i % 32 {
            0..16 => row(i),
            _ => (None, row(i).1),
        })
        .collect();
    write_hf_parquet(&data.join("part-0.parquet"), &rows, 32).unwrap();
    let run = dir.path().join("run");
    let (lines, seen) = run_job(
        &run,
        &data,
        &[
            "train.max_steps=0",
            "train.epochs=1",
            "checkpoint.every_steps=2",
            "checkpoint.keep_last=0",
            "data.max_bad_fraction=1.0",
        ],
    );
    assert_eq!(seen, [Some(16), Some(32), Some(32), Some(32)], "{lines:?}");
    let ckpt = |step: u32| run.join(format!("checkpoints/step-{step:08}"));
    for family in weft_checkpoint::Family::ALL {
        let (two, four) = (
            common::ckpt::bits(&ckpt(2), family),
            common::ckpt::bits(&ckpt(4), family),
        );
        assert!(!two.is_empty());
        assert!(two == four, "{family:?} changed in steps of padding only");
    }
}

#[test]
fn failed_downloads_cost_a_job_no_step() {
    // 64 img2dataset rows in 2 row groups of 32; every other row of the first failed to
    // download. The plan holds the 48 downloads: 2 ranks of 8 take 3 full steps. (Planned over
    // all 64 rows, rank 0 would get the first group and run out after 2 steps, and the job
    // would take a 4th step for rank 1's rows alone: samples seen 16, 32, 40, 48.)
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let rows: Vec<_> = (0..64)
        .map(|i| {
            let ok = i >= 32 || i % 2 == 0;
            let (jpg, caption) = row(i);
            common::I2dRow {
                jpg: if ok { jpg } else { None },
                caption,
                key: format!("{i:09}"),
                status: if ok { "success" } else { "failed_to_download" }.into(),
            }
        })
        .collect();
    common::write_img2dataset_in_groups(&data.join("00000.parquet"), &rows, "jpg", "caption", 32);
    let run = dir.path().join("run");
    let (lines, seen) = run_job(
        &run,
        &data,
        &[
            "train.max_steps=0",
            "train.epochs=1",
            "data.max_bad_fraction=0.0",
        ],
    );
    assert_eq!(seen, [Some(16), Some(32), Some(48)], "{lines:?}");
    let log = std::fs::read_to_string(run.join("logs/rank-1.log")).unwrap();
    assert!(
        log.contains("64 rows; 16 of them failed downloads by column \"status\""),
        "{log}"
    );
}

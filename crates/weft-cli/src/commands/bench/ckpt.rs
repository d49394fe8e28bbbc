//! `weft bench ckpt`: checkpoint save bandwidth next to the raw disk's (dd with fsync), and
//! the stall of an asynchronous save.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Arguments of `weft bench ckpt`.
#[derive(clap::Args, Debug)]
pub struct BenchCkptArgs {
    /// Checkpoint sizes in MiB (parameters and both AdamW moments together).
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    mb: Vec<u64>,
    /// Where to write (default: a fresh directory under the system's temporary directory;
    /// give one on the disk your runs use).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// One size's results.
#[derive(serde::Serialize, Debug)]
struct CkptBench {
    mb: u64,
    /// `dd if=/dev/zero bs=1M conv=fsync` of the same bytes into the same directory.
    dd_mb_per_s: f64,
    /// weft: write the shards (hashing, fsync) and commit.
    save_mb_per_s: f64,
    /// Save bandwidth over dd's.
    ratio: f64,
    /// Copying the buffers off the training state into the previous save's buffers.
    copy_ms: f64,
    /// The training thread's stall when it starts an asynchronous save.
    stall_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `weft bench ckpt`: checkpoint save bandwidth against the raw disk's, and the stall of an
/// asynchronous save.
pub fn run(args: BenchCkptArgs) -> anyhow::Result<()> {
    let root = args
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("weft-bench-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = bench_in(&args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn bench_in(args: &BenchCkptArgs, root: &Path) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::Instant;
    use weft_checkpoint::{write_rank, LocalCommitter, ParamTable, Snapshot, WriteOptions};
    let mut results = Vec::new();
    for &mb in &args.mb {
        // Parameters of 4 MiB each; params + two moments = mb.
        let elems = (mb << 20) / 4 / 3;
        let per = 1usize << 20;
        let count = (elems as usize).div_ceil(per).max(1);
        let table = Arc::new(ParamTable {
            names: (0..count).map(|i| format!("blocks.{i}.weight")).collect(),
            shapes: (0..count)
                .map(|i| vec![per.min(elems as usize - i * per).max(1)])
                .collect(),
        });
        let n: usize = table.numels().iter().sum();
        let values: Vec<f32> = (0..n).map(|i| (i % 977) as f32 * 1e-3).collect();
        let state = Snapshot {
            params: Arc::clone(&table),
            exp_avg: values.clone(),
            exp_avg_sq: values.clone(),
            values,
            steps: vec![1; count],
        };
        let bytes = (3 * n * 4) as f64;
        let (mut dd, mut save, mut copy, mut stall) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // The trainer copies into the buffers of its previous save: warm them once.
        let copy_into = |spare: Option<Snapshot>| {
            Snapshot::copy_of(
                &table,
                &state.values,
                &state.exp_avg,
                &state.exp_avg_sq,
                &state.steps,
                spare,
            )
        };
        let mut spare = Some(copy_into(None));
        // Each measurement starts with nothing left to write back from the one before.
        let settle = || {
            let _ = std::process::Command::new("sync").status();
        };
        for rep in 0..args.repeat {
            let ddfile = root.join("dd.bin");
            settle();
            let t = Instant::now();
            let status = std::process::Command::new("dd")
                .args(["if=/dev/zero", &format!("of={}", ddfile.display()), "bs=1M"])
                .arg(format!("count={}", (bytes as u64) >> 20))
                .arg("conv=fsync")
                .stderr(std::process::Stdio::null())
                .status()
                .context("running dd")?;
            anyhow::ensure!(status.success(), "dd failed: {status}");
            dd.push(bytes / t.elapsed().as_secs_f64());
            std::fs::remove_file(&ddfile)?;

            let t = Instant::now();
            let snap = copy_into(spare.take());
            copy.push(t.elapsed().as_secs_f64());
            let run = root.join(format!("run-{mb}-{rep}"));
            let committer = LocalCommitter {
                run_dir: run.clone(),
                keep_last: 1,
            };
            settle();
            let t = Instant::now();
            let report = write_rank(&run, 1, 0, 1, &snap, WriteOptions::default())?;
            weft_checkpoint::Committer::commit(&committer, report, Some(bench_state(1)))?;
            save.push(bytes / t.elapsed().as_secs_f64());
            std::fs::remove_dir_all(&run)?;

            // The stall of an asynchronous save: copy, then hand to a writer thread.
            settle();
            let t = Instant::now();
            let snap = copy_into(Some(snap));
            let run2 = root.join(format!("async-{mb}-{rep}"));
            let handle = std::thread::spawn(move || {
                write_rank(&run2, 1, 0, 1, &snap, WriteOptions::default()).map(|_| (run2, snap))
            });
            stall.push(t.elapsed().as_secs_f64());
            let (run2, snap) = handle.join().expect("writer")?;
            spare = Some(snap);
            std::fs::remove_dir_all(&run2)?;
        }
        let (dd, save) = (median(dd), median(save));
        results.push(CkptBench {
            mb,
            dd_mb_per_s: dd / (1u64 << 20) as f64,
            save_mb_per_s: save / (1u64 << 20) as f64,
            ratio: save / dd,
            copy_ms: median(copy) * 1e3,
            stall_ms: median(stall) * 1e3,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!(
            "{:>8} {:>12} {:>12} {:>7} {:>10} {:>10}",
            "MiB", "dd MiB/s", "save MiB/s", "ratio", "copy ms", "stall ms"
        );
        for r in &results {
            println!(
                "{:>8} {:>12.0} {:>12.0} {:>7.2} {:>10.1} {:>10.1}",
                r.mb, r.dd_mb_per_s, r.save_mb_per_s, r.ratio, r.copy_ms, r.stall_ms
            );
        }
    }
    Ok(())
}

/// A trainer state for the benchmark's commits.
fn bench_state(step: u64) -> weft_checkpoint::TrainerState {
    let units = weft_data::Units {
        fingerprint: "bench".into(),
        rows: vec![1],
    };
    let options = weft_data::PlanOptions {
        seed: 0,
        world_size: 1,
        batch_size: 1,
        shuffle: false,
        shuffle_buffer: 0,
        last_batch: weft_data::LastBatch::Drop,
    };
    weft_checkpoint::TrainerState {
        format: weft_checkpoint::state::FORMAT,
        weft_version: env!("CARGO_PKG_VERSION").into(),
        step,
        epoch: 0,
        samples_seen: 0,
        skipped_steps: 0,
        consecutive_nonfinite: 0,
        scheduler: weft_checkpoint::SchedulerState {
            name: "none".into(),
            peak: 0.0,
            floor: 0.0,
            warmup: 0,
            total: 1,
            next_step: step,
        },
        rng: weft_checkpoint::RngState {
            seed: 0,
            objective_draws: 0,
        },
        data_cursor: weft_data::DataCursor::new(&units, options, 0),
        world_size: 1,
        config: serde_json::json!({}),
        last_eval: None,
        files: Default::default(),
    }
}

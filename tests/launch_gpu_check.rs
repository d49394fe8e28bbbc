//! `launch/gpu-check.sh`, the one script a lent GPU runs, with stand-ins for `weft`,
//! `nvidia-smi` and the PyTorch reference (no GPU here): a gzipped weft unpacked, every
//! command in order within the budget, its JSON gathered into results.json, at most 8 files in OUT_DIR (what the device
//! tool brings back), the summary with the weft / PyTorch step-time ratio, and commands past
//! the budget timed out or skipped, the script failing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::process::{output_within, repo};

fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A `weft` that answers each command of the script with JSON of the doctor's shape (the
/// clip-vit-b16 steps sleep `CLIP_SLEEP` seconds first), and writes a run directory's metrics.
const WEFT: &str = r#"#!/usr/bin/env bash
echo "stand-in weft $*" >&2
args=" $* "
precision=f32
case "$args" in *train.precision=bf16*) precision=bf16 ;; esac
case "$args" in
*" --no-steps "*)
    echo '{"gpu": {"status": "ok", "gpus": [{"name": "Stand-in GPU"}], "driver_cuda": "13.0",
      "built_cuda": "13.0", "libraries": [{"loaded": true, "paths": ["/x/libnccl.so.2"]}],
      "links": ["libnccl.so -> /x/libnccl.so.2"]},
      "nccl": {"status": "ok", "device_ms": 1.5, "host_staged_ms": 3.0}, "steps": []}' ;;
*" train "*)
    dir=$(echo "$args" | sed 's/.*--run-dir \([^ ]*\).*/\1/')
    mkdir -p "$dir"
    echo '{"step": 1, "loss": 3.5}' >"$dir/metrics.jsonl"
    echo '{"step": 1, "t2i_r1": 9.0}' >"$dir/eval.jsonl" ;;
*clip-vit-b16*)
    sleep "${CLIP_SLEEP:-0}"
    if [ "$precision" = bf16 ]; then t=0.3; else t=0.6; fi
    echo "{\"steps\": [{\"config\": \"configs/clip-vit-b16.toml\", \"status\": \"ok\",
      \"precision\": \"$precision\", \"batch\": 256, \"step_time_s\": $t, \"mfu\": 0.4}]}" ;;
*tiny.toml*)
    echo '{"steps": [{"config": "configs/tiny.toml", "status": "ok", "precision": "f32",
      "batch": 64, "step_time_s": 0.01}]}' ;;
*) echo "unexpected: $*" >&2; exit 2 ;;
esac
"#;

/// The PyTorch reference's JSON: 0.5 s a step in f32, 0.25 in bf16.
const PYTHON: &str = r#"#!/usr/bin/env bash
case " $* " in
*" bf16 "*) echo '{"step_time_median_s": 0.25, "samples_per_s": 1024}' ;;
*) echo '{"step_time_median_s": 0.5, "samples_per_s": 512}' ;;
esac
"#;

struct Check {
    out: PathBuf,
    output: Output,
    _dir: tempfile::TempDir,
}

impl Check {
    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name)).unwrap()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
}

/// The script with the stand-ins; `gzipped`: the stand-in weft as `weft.gz`, the way
/// launch/gpu-pack.sh packs the real one to travel.
fn gpu_check(gzipped: bool, envs: &[(&str, &str)]) -> Check {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    script(&bin.join("weft"), WEFT);
    let weft = if gzipped {
        let status = Command::new("gzip").arg(bin.join("weft")).status().unwrap();
        assert!(status.success());
        bin.join("weft.gz")
    } else {
        bin.join("weft")
    };
    script(&bin.join("python-torch"), PYTHON);
    script(
        &bin.join("nvidia-smi"),
        "#!/bin/sh\necho 'GPU 0: Stand-in GPU'\n",
    );
    let out = dir.path().join("out");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = output_within(
        Command::new("bash")
            .arg(repo().join("launch/gpu-check.sh"))
            .arg(&out)
            .current_dir(repo())
            .env("PATH", path)
            .env("WEFT", weft)
            .env("PYTHON", bin.join("python-torch"))
            .envs(envs.iter().copied()),
        Duration::from_secs(120),
        "gpu-check.sh",
    );
    Check {
        out,
        output,
        _dir: dir,
    }
}

const NAMES: [&str; 8] = [
    "nvidia-smi",
    "doctor-checks",
    "doctor-tiny",
    "doctor-clip-f32",
    "torch-clip-f32",
    "doctor-clip-bf16",
    "torch-clip-bf16",
    "train-tiny",
];

#[test]
fn every_check_runs_in_order_and_comes_back_in_at_most_8_files() {
    let c = gpu_check(true, &[]);
    let stdout = c.stdout();
    assert_eq!(c.output.status.code(), Some(0), "{stdout}");
    let commands = c.file("commands.txt");
    assert!(
        commands.starts_with("weft: ")
            && commands
                .lines()
                .next()
                .unwrap()
                .contains("weft.gz unpacked to "),
        "{commands}"
    );
    let started: Vec<&str> = commands
        .lines()
        .filter_map(|l| l.strip_prefix("== "))
        .map(|l| l.split([' ', ':']).next().unwrap())
        .collect();
    assert_eq!(started, NAMES, "{commands}");
    assert_eq!(commands.matches("   exit 0 after").count(), 8, "{commands}");
    assert!(
        commands.contains("--set train.precision=bf16 --json"),
        "{commands}"
    );

    let mut files: Vec<String> = std::fs::read_dir(&c.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "commands.txt",
            "log.txt",
            "results.json",
            "train-tiny-eval.jsonl",
            "train-tiny-metrics.jsonl"
        ]
    );
    let results: serde_json::Value = serde_json::from_str(&c.file("results.json")).unwrap();
    for name in &NAMES[1..7] {
        assert!(results[name].is_object(), "{name} missing: {results}");
    }
    assert_eq!(results["doctor-clip-bf16"]["steps"][0]["precision"], "bf16");
    assert_eq!(results["torch-clip-f32"]["step_time_median_s"], 0.5);
    assert!(c
        .file("log.txt")
        .contains("stand-in weft train --set train.device=cuda"));
    assert!(c.file("train-tiny-metrics.jsonl").contains("\"loss\": 3.5"));

    // The summary: libraries and links, NCCL, each step, and the ratio to PyTorch.
    assert!(stdout.contains("gpu: ok | Stand-in GPU"), "{stdout}");
    assert!(
        stdout.contains("links made by weft: ['libnccl.so -> /x/libnccl.so.2']"),
        "{stdout}"
    );
    assert!(stdout.contains("nccl: ok  | device ms 1.5"), "{stdout}");
    assert!(
        stdout.contains("torch-clip-f32: step 0.5 s | 512 samples/s | weft/torch step time 1.2 "),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("torch-clip-bf16: step 0.25 s | 1024 samples/s | weft/torch step time 1.2 "),
        "{stdout}"
    );
}

#[test]
fn commands_past_the_budget_time_out_or_are_skipped_and_the_script_fails() {
    // 30 s in all; each clip-vit-b16 step sleeps 60 s: the f32 one is stopped when the budget
    // runs out, and everything after it is skipped.
    let c = gpu_check(false, &[("BUDGET", "30"), ("CLIP_SLEEP", "60")]);
    let commands = c.file("commands.txt");
    assert_eq!(c.output.status.code(), Some(1), "{commands}");
    assert!(
        commands.contains("== doctor-clip-f32 (limit ")
            && commands.contains("timed out (exit 124)"),
        "{commands}"
    );
    for name in &NAMES[4..] {
        assert!(
            commands.contains(&format!("== {name}: skipped, ")),
            "{name} not skipped: {commands}"
        );
    }
    let results: serde_json::Value = serde_json::from_str(&c.file("results.json")).unwrap();
    // What ran before the budget ran out is kept.
    assert_eq!(results["doctor-checks"]["gpu"]["status"], "ok");
    let stdout = c.stdout();
    assert!(
        stdout.contains("doctor-clip-f32: no step reported")
            && stdout.contains("weft/torch step time None"),
        "{stdout}"
    );
}

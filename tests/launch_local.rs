//! `launch/local.sh`: it trains N processes of the real binary through `weft launch` to a
//! committed checkpoint; N defaults to the GPUs that `nvidia-smi -L` lists, else 2; bad
//! arguments get a usage line or the missing config's name.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ckpt::latest;
use common::train::sample_dir;
use weft_checkpoint::open_verified;

fn repo() -> PathBuf {
    sample_dir().join("../..").canonicalize().unwrap()
}

/// `bash launch/local.sh args...` from the repository root, killed and failed after `limit`.
fn local_sh(args: &[&str], envs: &[(&str, String)], limit: Duration) -> Output {
    let mut child = Command::new("bash")
        .arg(repo().join("launch/local.sh"))
        .args(args)
        .current_dir(repo())
        .env("WEFT", env!("CARGO_BIN_EXE_weft"))
        .env("WEFT_LOG", "info")
        .env_remove("WEFT_RUN_DIR")
        .env_remove("WEFT_RANK")
        .env_remove("RANK")
        .env_remove("SLURM_PROCID")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            // weft launch stops its workers when it gets SIGTERM; SIGKILL after that.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "local.sh {args:?} timed out: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A directory holding an executable `name` with the shell `body`.
fn fake(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn local_sh_trains_two_processes_to_a_committed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let s = sample_dir();
    let sets = [
        format!("data.train=[\"{}\"]", s.join("train").display()),
        "data.val=[]".into(),
        "data.batch_size=8".into(),
        "data.workers=1".into(),
        "train.max_steps=6".into(),
        "checkpoint.every_steps=3".into(),
    ];
    let mut args = vec!["configs/tiny.toml", "2", "--run-dir", run.to_str().unwrap()];
    for kv in &sets {
        args.extend(["--set", kv]);
    }
    let out = local_sh(&args, &[], Duration::from_secs(300));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("local.sh: 2 processes"), "{err}");
    let newest = latest(&run);
    assert!(newest.ends_with("step-00000006"), "{newest:?}");
    assert_eq!(open_verified(&newest).unwrap().state.world_size, 2);
    assert!(run.join("model.safetensors").exists());
}

#[test]
fn n_defaults_to_the_gpus_nvidia_smi_lists_else_two() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path();
    // A weft that prints its arguments, and an nvidia-smi that lists three GPUs.
    fake(bin, "weft", "echo \"$@\"");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let envs = |weft: &str| {
        vec![
            ("PATH", path.clone()),
            ("WEFT", bin.join(weft).display().to_string()),
        ]
    };
    let args_of = |out: &Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    fake(
        bin,
        "nvidia-smi",
        "printf 'GPU 0: H100 (UUID: a)\\nGPU 1: H100 (UUID: b)\\nGPU 2: H100 (UUID: c)\\n'",
    );
    let limit = Duration::from_secs(30);
    let out = local_sh(
        &["configs/tiny.toml", "--set", "train.max_steps=5"],
        &envs("weft"),
        limit,
    );
    assert_eq!(
        args_of(&out),
        "launch --nproc-per-node 3 -- train --config configs/tiny.toml --set train.max_steps=5"
    );
    // An explicit N wins.
    let out = local_sh(&["configs/tiny.toml", "4"], &envs("weft"), limit);
    assert_eq!(
        args_of(&out),
        "launch --nproc-per-node 4 -- train --config configs/tiny.toml"
    );
    // No GPU (nvidia-smi fails, as on a machine without a driver): 2.
    fake(
        bin,
        "nvidia-smi",
        "echo 'NVIDIA-SMI has failed' >&2; exit 9",
    );
    let out = local_sh(&["configs/tiny.toml"], &envs("weft"), limit);
    assert_eq!(
        args_of(&out),
        "launch --nproc-per-node 2 -- train --config configs/tiny.toml"
    );
}

#[test]
fn bad_arguments_get_usage_or_the_missing_config_named() {
    let limit = Duration::from_secs(30);
    let out = local_sh(&[], &[], limit);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: launch/local.sh CONFIG [N]"));
    let out = local_sh(&["configs/nope.toml", "2"], &[], limit);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config configs/nope.toml does not exist"),
        "{err}"
    );
    let out = local_sh(&["configs/tiny.toml", "0"], &[], limit);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("N must be at least 1"));
}

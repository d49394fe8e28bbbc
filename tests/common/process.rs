//! Running the real `weft` binary from a test, with a time limit.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run `weft args...` in `cwd` (logs at `info`), killed and failed after `limit`.
pub fn weft_within(cwd: &Path, args: &[&str], limit: Duration) -> Output {
    weft_env_within(cwd, args, &[], limit)
}

/// [`weft_within`] with extra environment variables.
pub fn weft_env_within(
    cwd: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(cwd)
        .env("WEFT_LOG", "info");
    output_within(&mut command, limit, &format!("weft {args:?}"))
}

/// Run `command` with stdout and stderr captured (stdin closed), killed and failed (naming
/// `what`, with its stderr) after `limit`.
pub fn output_within(command: &mut Command, limit: Duration, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("{what} timed out: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The stdout of a run that must have succeeded (else fail with its stderr).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The repository (where `datasets/sample` and `configs/` are).
pub fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// `weft args...` in the repository within `limit`; its stdout (failing with its stderr).
pub fn weft_ok(args: &[&str], limit: Duration) -> String {
    ok(&weft_within(&repo(), args, limit))
}

/// `--set` values that shrink the default config's model for tests that train through the
/// binary: 32-pixel images in batches of 32, width 16, one block per encoder.
pub const SMALL_MODEL: [&str; 7] = [
    "data.image_size=32",
    "data.batch_size=32",
    "model.embed_dim=16",
    "model.vision.width=16",
    "model.vision.depth=1",
    "model.text.width=16",
    "model.text.depth=1",
];

/// `weft train --run-dir RUN --set S...` in the repository (the default config, the sample
/// dataset), within 5 minutes.
pub fn train_with_sets<S: AsRef<str>>(run: &Path, sets: &[S]) {
    train_on(None, run, sets);
}

/// [`train_with_sets`], with `ranks` as the workers of `weft launch --nproc-per-node RANKS --`.
pub fn train_on<S: AsRef<str>>(ranks: Option<&str>, run: &Path, sets: &[S]) {
    let mut args = Vec::new();
    if let Some(n) = ranks {
        args.extend(["launch", "--nproc-per-node", n, "--"]);
    }
    args.extend(["train", "--run-dir", run.to_str().unwrap()]);
    for s in sets {
        args.extend(["--set", s.as_ref()]);
    }
    weft_ok(&args, Duration::from_secs(300));
}

/// The JSON object that `weft args...` (a `--json` command) prints, run in the repository
/// within 5 minutes; with `ranks`, as the workers of `weft launch --nproc-per-node RANKS --`.
pub fn weft_json(ranks: Option<&str>, args: &[&str]) -> serde_json::Value {
    let mut all = Vec::new();
    if let Some(n) = ranks {
        all.extend(["launch", "--nproc-per-node", n, "--"]);
    }
    all.extend(args);
    let out = weft_ok(&all, Duration::from_secs(300));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("weft {all:?}: {e}: {out}"))
}

/// The arguments of a two-rank training job on this machine:
/// `launch --nproc-per-node 2 -- train --run-dir RUN` and then `extra`.
pub fn two_rank_train_args(run: &Path, extra: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut args: Vec<String> = [
        "launch",
        "--nproc-per-node",
        "2",
        "--",
        "train",
        "--run-dir",
    ]
    .map(String::from)
    .to_vec();
    args.push(run.display().to_string());
    args.extend(extra);
    args
}

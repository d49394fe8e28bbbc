//! A run directory is one run's (issue 30, cases 6 to 9), with the real binary: a second
//! `weft train` in a directory another one trains in is refused, naming the first, and writes
//! no metrics; `--resume never` over committed checkpoints is refused and deletes nothing, and
//! `--resume restart` moves them aside and starts afresh; the
//! ranks of a job that resume from different checkpoints fail, naming both; a metrics line torn
//! by a crash is dropped when the run resumes, and `weft report` reads the run; a background
//! save that fails (a file-size limit standing in for a full disk) fails the run at once,
//! naming the file.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::dist::{coordinator, train_sets, weft, worker_with, Proc};

/// `weft train` of the small model into `run`, with `extra` arguments.
fn train(run: &Path, extra: &[&str]) -> Proc {
    Proc::spawn(
        "weft train",
        weft()
            .arg("train")
            .args(["--run-dir", &run.display().to_string()])
            .args(train_sets())
            .args(extra),
    )
}

/// A run of 4 steps that commits the checkpoints of steps 2 and 4.
const FOUR_STEPS_SAVED_EVERY_2: [&str; 4] = [
    "--set",
    "train.max_steps=4",
    "--set",
    "checkpoint.every_steps=2",
];

/// `weft train` into `run` with `extra`, which must succeed within 2 minutes; its stderr.
fn train_to_end(run: &Path, extra: &[&str]) -> String {
    let mut p = train(run, extra);
    let status = p.wait_within(Duration::from_secs(120));
    let err = p.stderr();
    assert!(status.is_some_and(|s| s.success()), "{err}");
    err
}

/// The names in `run`'s checkpoint directory, sorted, and its `latest`.
fn checkpoints(run: &Path) -> (Vec<String>, String) {
    let dir = run.join("checkpoints");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    (names, std::fs::read_to_string(dir.join("latest")).unwrap())
}

#[test]
fn a_second_trainer_in_the_same_run_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut first = train(&run, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while common::ckpt::steps_logged(&run) < 2 {
        assert!(Instant::now() < deadline, "the first run did not start");
        if first.child.try_wait().unwrap().is_some() {
            panic!("the first run ended: {}", first.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = train(&run, &[]);
    let status = second
        .wait_within(Duration::from_secs(60))
        .expect("refused promptly");
    let err = second.stderr();
    assert!(!status.success(), "{err}");
    assert!(err.contains("in use by weft train on"), "{err}");
    assert!(err.contains(&format!("(pid {})", first.pid())), "{err}");
    // The first trains on; its metrics are its own, one line a step.
    let steps = common::ckpt::steps_logged(&run);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the first run ended"
    );
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_within(Duration::from_secs(5)).unwrap();
    let metrics = common::ckpt::metrics(&run);
    assert!(metrics.len() >= steps);
    for (i, m) in metrics.iter().enumerate() {
        assert_eq!(m["step"], serde_json::json!(i + 1), "{m}");
    }
}

#[test]
fn resume_never_over_checkpoints_is_refused_and_restart_moves_them_aside() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_to_end(&run, &FOUR_STEPS_SAVED_EVERY_2);
    let before = checkpoints(&run);
    let mut again = train(&run, &["--resume", "never", "--set", "train.max_steps=2"]);
    let status = again.wait_within(Duration::from_secs(60)).expect("refused");
    let err = again.stderr();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("--resume never would start another run") && err.contains("--run-dir"),
        "{err}"
    );
    assert_eq!(checkpoints(&run), before);
    assert_eq!(common::ckpt::metrics(&run).len(), 4);
    // What it says to do: --resume restart moves the old run aside and starts afresh.
    assert!(err.contains("--resume restart"), "{err}");
    let err = train_to_end(&run, &["--resume", "restart", "--set", "train.max_steps=2"]);
    assert!(err.contains("the previous run is set aside in"), "{err}");
    let previous = run.join("previous/1");
    assert_eq!(checkpoints(&previous), before);
    assert_eq!(common::ckpt::metrics(&previous).len(), 4);
    assert_eq!(common::ckpt::metrics(&run).len(), 2);
    let (names, latest) = checkpoints(&run);
    assert_eq!(
        (names, latest.trim()),
        (
            vec!["latest".to_string(), "step-00000002".into()],
            "step-00000002"
        )
    );
}

#[test]
fn a_torn_metrics_line_is_dropped_on_resume_and_the_report_reads_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let every = ["--set", "checkpoint.every_steps=2"];
    train_to_end(
        &run,
        &[&every[..], &["--set", "train.max_steps=4"]].concat(),
    );
    // A crash (or a full disk) in the middle of the line of step 5.
    let metrics = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"step\":5,\"loss\":4.2");
    std::fs::write(&metrics, text).unwrap();
    let err = train_to_end(
        &run,
        &[&every[..], &["--set", "train.max_steps=6"]].concat(),
    );
    assert!(err.contains("dropped 1 line(s) that do not parse"), "{err}");
    let steps: Vec<serde_json::Value> = common::ckpt::metrics(&run)
        .iter()
        .map(|m| m["step"].clone())
        .collect();
    assert_eq!(
        steps,
        (1..=6).map(|s| serde_json::json!(s)).collect::<Vec<_>>()
    );
    let out = weft()
        .args(["report", &run.display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ranks_that_resume_from_different_checkpoints_fail_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_to_end(&run, &FOUR_STEPS_SAVED_EVERY_2);
    // Rank 1 reads a stale checkpoint, as from an old copy of the run directory.
    let step = |s: u32| {
        run.join(format!("checkpoints/step-{s:08}"))
            .display()
            .to_string()
    };
    let token = "tok-stale-copy";
    let (mut coord, addr) = coordinator(2, token);
    let ranks = [(0, step(4)), (1, step(2))].map(|(rank, from)| {
        let extra = ["--resume", &from, "--set", "train.max_steps=6"];
        worker_with(rank, 2, &addr, token, &run, &extra)
    });
    for (rank, mut p) in ranks.into_iter().enumerate() {
        let status = p
            .wait_within(Duration::from_secs(60))
            .expect("fails promptly");
        let err = p.stderr();
        assert!(!status.success(), "{err}");
        let (mine, theirs) = if rank == 0 { ("4", "2") } else { ("2", "4") };
        let want = format!("rank {rank} resumes from step {mine} (state digest");
        assert!(err.contains(&want), "{err}");
        let want = format!("rank {} from step {theirs} (state digest", 1 - rank);
        assert!(err.contains(&want), "{err}");
        assert!(err.contains(&format!("step-0000000{mine}")), "{err}");
    }
    assert!(coord.wait_within(Duration::from_secs(30)).is_some());
}

#[test]
fn a_failed_background_save_fails_the_run_at_once_naming_the_file() {
    // Once: a background save that failed on a full disk was not reported until the next
    // save, or at all; the run trained on without a checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // 100 blocks of 512 bytes: metrics lines and the small files fit, a checkpoint's shards
    // (over 100 KB) do not.
    let mut p = Proc::spawn(
        "weft train",
        common::dist::weft_with_max_file_size(100)
            .arg("train")
            .args(["--run-dir", &run.display().to_string()])
            .args(train_sets())
            .args(["--set", "train.max_steps=200"])
            .args(["--set", "checkpoint.every_steps=50"])
            .args(["--set", "checkpoint.async_save=true"]),
    );
    let status = p.wait_within(Duration::from_secs(120));
    let err = p.stderr();
    assert!(status.is_some_and(|s| !s.success()), "{err}");
    assert!(
        err.contains("saving the checkpoint of step 50: ")
            && err.contains("/checkpoints/step-00000050.tmp/model-00001-of-00001.safetensors: ")
            && err.contains("File too large"),
        "{err}"
    );
    // At once: a few steps after 50, not at the next save (step 100).
    let steps = common::ckpt::steps_logged(&run);
    assert!((50..60).contains(&steps), "{steps} steps logged: {err}");
    // Nothing already written is lost or torn, and nothing half-written is committed.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    assert!(!run.join("checkpoints/latest").exists());
}

//! `weft train`, `weft eval` and `weft bench train` as a user runs them: the real binary.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::process::{ok, weft_within};
use common::train::sample_dir;

/// Run `weft args...` in `cwd`, killed after 300 s.
fn weft(cwd: &Path, args: &[&str]) -> Output {
    weft_within(cwd, args, Duration::from_secs(300))
}

/// `--set` flags of a small, quick model on the sample dataset.
fn small(sets: &mut Vec<String>) {
    let s = sample_dir();
    for kv in [
        format!("data.train=[\"{}\"]", s.join("train").display()),
        format!("data.val=[\"{}\"]", s.join("val").display()),
        format!("data.tokenizer={}", s.join("tokenizer.json").display()),
        "data.image_size=32".into(),
        "data.batch_size=32".into(),
        "model.embed_dim=16".into(),
        "model.vision.width=16".into(),
        "model.vision.depth=1".into(),
        "model.vision.heads=2".into(),
        "model.text.width=16".into(),
        "model.text.depth=1".into(),
        "model.text.heads=2".into(),
        "model.text.context_length=12".into(),
        "model.fusion.depth=1".into(),
        "model.fusion.heads=2".into(),
        "model.decoder.depth=1".into(),
        "model.decoder.heads=2".into(),
        "train.max_steps=3".into(),
        "train.warmup_steps=1".into(),
        "train.log_every=1".into(),
    ] {
        sets.push("--set".into());
        sets.push(kv);
    }
}

#[test]
fn train_then_eval_the_saved_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args: Vec<String> = vec![
        "train".into(),
        "--run-dir".into(),
        run.display().to_string(),
    ];
    small(&mut args);
    for kv in ["loss.itm=1", "loss.mlm=1", "loss.lm=1", "loss.mim=1"] {
        args.push("--set".into());
        args.push(kv.into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // Run from the repository root (configs/tiny.toml is the base config there).
    let root = sample_dir().join("../..");
    let out = weft(&root, &refs);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config: configs/tiny.toml"), "{stderr}");
    assert!(stderr.contains("parameters (vision"), "{stderr}");
    assert!(stdout.contains("final eval: text->image R@1"), "{stdout}");
    for f in [
        "config.toml",
        "tokenizer.json",
        "metrics.jsonl",
        "eval.jsonl",
        "model.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    let eval_line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run.join("eval.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(eval_line["n"], 500);

    // The saved weights give the same numbers through `weft eval`, from anywhere: the model
    // file, the last checkpoint's directory, and the run directory without its model file
    // (a run that stopped before its end: its newest checkpoint).
    let val = sample_dir().join("val").display().to_string();
    let model = run.join("model.safetensors");
    let ckpt = run.join("checkpoints/step-00000003");
    for (what, path) in [
        ("model file", &model),
        ("checkpoint", &ckpt),
        ("run dir", &run),
    ] {
        if what == "run dir" {
            std::fs::remove_file(&model).unwrap();
        }
        let out = weft(
            dir.path(),
            &[
                "eval",
                "--checkpoint",
                &path.display().to_string(),
                "--data",
                &val,
                "--json",
            ],
        );
        let r: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        for k in ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"] {
            assert_eq!(
                r[k], eval_line[k],
                "{what} {k}: eval {} vs training {}",
                r[k], eval_line[k]
            );
        }
    }
}

#[test]
fn eval_names_a_missing_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = weft(
        dir.path(),
        &["eval", "--checkpoint", "nope/model.safetensors"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope/model.safetensors") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn train_without_config_outside_the_repository_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = weft(dir.path(), &["train"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("configs/tiny.toml") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn bench_train_prints_step_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec![
        "bench".into(),
        "train".into(),
        "--steps".into(),
        "2".into(),
        "--warmup".into(),
        "1".into(),
        "--json".into(),
    ];
    small(&mut args);
    args.extend(["--set".into(), "model.text.vocab_size=64".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r: serde_json::Value = serde_json::from_str(&ok(&weft(dir.path(), &refs))).unwrap();
    assert_eq!(r["steps"], 2);
    assert!(r["step_time_median_s"].as_f64().unwrap() > 0.0);
    assert!(r["last_loss"].as_f64().unwrap().is_finite());
}

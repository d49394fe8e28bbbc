//! The shards of a 2-rank checkpoint and the files `weft ckpt export` writes load in Python's
//! `safetensors` (`safe_open`) with the names, shapes, dtypes and values weft reads.
//!
//! Needs a Python with `safetensors` and `numpy`: `WEFT_PYTHON` (`.ci/run` makes a virtual
//! environment and sets it), else `python3`. Without one the test says it is skipped, except
//! under CI (`CI=true`), where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::{ok, two_rank_train_args, weft_within};
use common::train::sample_dir;
use weft_checkpoint::{open_verified, Family};

fn python() -> Option<String> {
    let py = std::env::var("WEFT_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = Command::new(&py)
        .args(["-c", "import safetensors, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(py);
    }
    let why = format!("{py} cannot import safetensors and numpy (set WEFT_PYTHON)");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPED checkpoint_python: {why}");
    None
}

fn read_in_python(py: &str, files: &[PathBuf]) -> serde_json::Value {
    let script = sample_dir().join("../../tests/python/read_safetensors.py");
    let out = Command::new(py).arg(script).args(files).output().unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sum(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x)).sum()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs())
}

#[test]
fn shards_and_exports_load_in_python_safetensors() {
    let Some(py) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let repo = sample_dir().join("../..");
    let run_s = run.display().to_string();
    let sets = [
        "--set",
        "train.max_steps=2",
        "--set",
        "data.val=[]",
        "--set",
        "train.threads=1",
    ];
    let args = two_rank_train_args(&run, sets.map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&weft_within(&repo, &args, Duration::from_secs(300)));
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let ckpt_dir = run.join("checkpoints").join(name.trim());
    let ckpt = open_verified(&ckpt_dir).unwrap();
    let f32_out = dir.path().join("model-f32.safetensors");
    let bf16_out = dir.path().join("model-bf16.safetensors");
    for (out, dtype) in [(&f32_out, "f32"), (&bf16_out, "bf16")] {
        let o = out.display().to_string();
        ok(&weft_within(
            &repo,
            &["ckpt", "export", &run_s, "--out", &o, "--dtype", dtype],
            Duration::from_secs(60),
        ));
    }
    let mut files: Vec<PathBuf> = ckpt
        .state
        .files
        .keys()
        .filter(|f| f.ends_with(".safetensors"))
        .map(|f| ckpt_dir.join(f))
        .collect();
    assert_eq!(files.len(), 4, "2 model and 2 optimizer shards: {files:?}");
    files.push(f32_out.clone());
    files.push(bf16_out.clone());
    let py = read_in_python(&py, &files);
    let key = |p: &Path| p.display().to_string();

    // Every model tensor, in its shard and in both exports.
    let model = ckpt.read_all(Family::Model).unwrap();
    let map = ckpt.weight_map(Family::Model).unwrap();
    assert!(
        model
            .iter()
            .any(|t| t.name == "vision.blocks.0.attn.query.weight"),
        "module paths"
    );
    for t in &model {
        let shard = &py[key(&ckpt_dir.join(&map[&t.name]))]["tensors"][&t.name];
        let export = &py[key(&f32_out)]["tensors"][&t.name];
        let half = &py[key(&bf16_out)]["tensors"][&t.name];
        for (what, e, dtype) in [
            ("shard", shard, "F32"),
            ("export", export, "F32"),
            ("bf16", half, "BF16"),
        ] {
            assert_eq!(e["dtype"], dtype, "{what} {}", t.name);
            assert_eq!(e["shape"], serde_json::json!(t.shape), "{what} {}", t.name);
        }
        for e in [shard, export] {
            assert!(
                close(e["sum"].as_f64().unwrap(), sum(&t.f32)),
                "{}: {e}",
                t.name
            );
        }
    }
    assert_eq!(
        py[key(&f32_out)]["tensors"].as_object().unwrap().len(),
        model.len()
    );
    // The optimizer state, keyed by parameter name.
    let optim = ckpt.read_all(Family::Optimizer).unwrap();
    let omap = ckpt.weight_map(Family::Optimizer).unwrap();
    assert_eq!(optim.len(), 3 * model.len());
    for t in &optim {
        let e = &py[key(&ckpt_dir.join(&omap[&t.name]))]["tensors"][&t.name];
        assert_eq!(e["shape"], serde_json::json!(t.shape), "{}", t.name);
        let expect = if t.name.ends_with(".step") {
            t.i64.iter().map(|&x| x as f64).sum()
        } else {
            sum(&t.f32)
        };
        assert!(close(e["sum"].as_f64().unwrap(), expect), "{}: {e}", t.name);
    }
}

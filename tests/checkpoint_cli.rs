//! `weft ckpt inspect` and `weft ckpt verify` on a run's checkpoint: the state as JSON, a
//! passing verify, and a verify that names the damaged file and exits non-zero.

mod common;

use std::time::Duration;

use common::process::{ok, weft_within};
use common::train::sample_dir;

#[test]
fn inspect_and_verify_a_run_s_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.display().to_string();
    let repo = sample_dir().join("../..");
    let limit = Duration::from_secs(300);
    ok(&weft_within(
        &repo,
        &[
            "train",
            "--run-dir",
            &run_s,
            "--set",
            "train.max_steps=3",
            "--set",
            "data.val=[]",
        ],
        limit,
    ));
    let json = ok(&weft_within(
        &repo,
        &["ckpt", "inspect", &run_s, "--json"],
        limit,
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["state"]["step"], 3);
    assert_eq!(v["state"]["world_size"], 1);
    let tensors = v["model_tensors"].as_object().unwrap();
    assert!(tensors.len() > 10, "{v}");
    assert!(tensors
        .values()
        .all(|f| f == "model-00001-of-00001.safetensors"));
    let text = ok(&weft_within(&repo, &["ckpt", "inspect", &run_s], limit));
    assert!(text.contains("step         3"), "{text}");
    let verified = ok(&weft_within(&repo, &["ckpt", "verify", &run_s], limit));
    assert!(
        verified.contains("committed step 3") && verified.ends_with("OK\n"),
        "{verified}"
    );

    let shard = run.join("checkpoints/step-00000003/optimizer-00001-of-00001.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let out = weft_within(&repo, &["ckpt", "verify", &run_s], limit);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("optimizer-00001-of-00001.safetensors is corrupt"),
        "{err}"
    );
}

//! `train.device = "wgpu"`: refused with what to do in a weft built without the `wgpu`
//! feature; with it (on Mesa's lavapipe where there is no GPU), training from the same weights
//! follows the CPU's losses.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::{repo, weft_env_within, SMALL_MODEL};

/// `weft train` into `run` with the small model for `steps` steps and `extra` settings.
fn train(run: &Path, steps: u32, extra: &[String]) -> std::process::Output {
    let mut args: Vec<String> = vec![
        "train".into(),
        "--run-dir".into(),
        run.display().to_string(),
    ];
    let sets = SMALL_MODEL
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("train.max_steps={steps}"),
            "train.eval_every=0".into(),
            "train.threads=1".into(),
            "data.val=[]".into(),
        ])
        .chain(extra.iter().cloned());
    for s in sets {
        args.extend(["--set".into(), s]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // Pin Mesa's lavapipe where it is installed: the test then runs the same on any machine.
    let lvp = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json";
    let envs: Vec<(&str, &str)> = if Path::new(lvp).exists() {
        vec![("VK_ICD_FILENAMES", lvp), ("VK_DRIVER_FILES", lvp)]
    } else {
        Vec::new()
    };
    weft_env_within(&repo(), &argv, &envs, Duration::from_secs(600))
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn without_the_feature_wgpu_is_refused_with_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(
        &dir.path().join("run"),
        1,
        &["train.device=\"wgpu\"".into()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("built without the wgpu feature") && err.contains("--features wgpu"),
        "{err}"
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_follows_the_cpu_from_the_same_weights() {
    use common::process::ok;
    let dir = tempfile::tempdir().unwrap();
    // The same start on both: burn's random generators differ between backends.
    let start = dir.path().join("start");
    ok(&train(&start, 1, &[]));
    let init = format!("train.init_from=\"{}\"", start.display());
    let losses = |device: &str| {
        let run = dir.path().join(device);
        let device = format!("train.device=\"{device}\"");
        ok(&train(&run, 3, &[init.clone(), device]));
        common::ckpt::metrics(&run)
            .iter()
            .map(|m| m["loss"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let (cpu, wgpu) = (losses("cpu"), losses("wgpu"));
    assert_eq!(cpu.len(), 3);
    for (step, (c, w)) in cpu.iter().zip(&wgpu).enumerate() {
        assert!((c - w).abs() < 1e-3, "step {}: cpu {c}, wgpu {w}", step + 1);
    }
}

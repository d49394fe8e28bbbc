//! The `weft` binary end to end: synth, inspect, tokenizer, bench, config.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::process::{ok, weft_within};

/// Run `weft args...` in `cwd`, killed after 120 s.
fn weft(cwd: &Path, args: &[&str]) -> Output {
    weft_within(cwd, args, Duration::from_secs(120))
}

#[test]
fn synth_inspect_tokenizer_bench() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&weft(
        d,
        &[
            "data",
            "synth",
            "--out",
            "ds",
            "--rows",
            "60",
            "--shards",
            "2",
            "--image-size",
            "24",
            "--row-group-size",
            "10",
        ],
    ));
    let json: serde_json::Value = serde_json::from_str(&ok(&weft(
        d,
        &["data", "inspect", "ds", "--json", "--full"],
    )))
    .unwrap();
    assert_eq!(json["layout"], "huggingface");
    assert_eq!(json["files"], 2);
    assert_eq!(json["row_groups"], 6);
    assert_eq!(json["rows"], 60);
    assert_eq!(json["usable_rows"], 60);
    assert_eq!(json["bad_rows"], serde_json::json!({}));
    assert_eq!(json["image_size"]["max_width"], 24);
    let text = ok(&weft(
        d,
        &["data", "inspect", "ds/part-00000-of-00002.parquet"],
    ));
    assert!(
        text.contains("huggingface layout: image=image.bytes text=text"),
        "{text}"
    );
    assert!(text.contains("rows        30"), "{text}");

    let out = weft(
        d,
        &[
            "data",
            "tokenizer",
            "--train",
            "--out",
            "tok.json",
            "--vocab-size",
            "120",
            "ds",
        ],
    );
    assert!(ok(&out).contains("wrote tok.json"));
    let enc: serde_json::Value = serde_json::from_str(&ok(&weft(
        d,
        &[
            "data",
            "tokenizer",
            "--set",
            "data.tokenizer=tok.json",
            "--set",
            "model.text.context_length=12",
            "--encode",
            "a red circle above a blue square",
        ],
    )))
    .unwrap();
    assert_eq!(enc["decoded"], "a red circle above a blue square");
    assert_eq!(enc["ids"].as_array().unwrap().len(), 12);

    let out = ok(&weft(
        d,
        &[
            "bench",
            "data",
            "ds",
            "--workers",
            "2",
            "--batches",
            "3",
            "--json",
            "--set",
            "data.batch_size=8",
            "--set",
            "data.image_size=16",
            "--set",
            "data.tokenizer=tok.json",
            "--run-dir",
            "run",
        ],
    ));
    let bench: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = bench["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["workers"], 2);
    assert_eq!(results[1]["images"], 24);
    assert!(results[0]["images_per_s"].as_f64().unwrap() > 0.0);
    assert!(d.join("run/config.toml").is_file());
    assert!(d.join("run/bench-data.json").is_file());
}

#[test]
fn inspect_reports_bad_rows_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("messy.parquet");
    let mut rows: Vec<(Option<Vec<u8>>, Option<String>)> = (0..6)
        .map(|i| (Some(common::png_for(i)), Some(format!("c {i}"))))
        .collect();
    rows[1].0 = Some(b"garbage".to_vec());
    rows[3].0 = None;
    rows[4].1 = Some(" ".into());
    common::write_hf(&p, &rows, 4);
    let json: serde_json::Value = serde_json::from_str(&ok(&weft(
        dir.path(),
        &["data", "inspect", "messy.parquet", "--json"],
    )))
    .unwrap();
    assert_eq!(json["rows"], 6);
    assert_eq!(json["usable_rows"], 3);
    assert_eq!(
        json["bad_rows"],
        serde_json::json!({"decode_error": 1, "null_image": 1, "empty_caption": 1})
    );
    // No status column: every row is planned, the bad ones are skipped while loading.
    assert_eq!(json["planned_rows"], 6);
}

#[test]
fn inspect_counts_the_planned_rows_and_the_steps_of_an_epoch() {
    let dir = tempfile::tempdir().unwrap();
    // 20 rows, 7 of them failed downloads: 13 planned.
    let rows: Vec<common::I2dRow> = (0..20)
        .map(|i| {
            let ok = i % 3 != 1;
            common::I2dRow {
                jpg: ok.then(|| common::png_for(i)),
                caption: Some(format!("c {i}")),
                key: format!("{i:03}"),
                status: if ok { "success" } else { "failed_to_download" }.into(),
            }
        })
        .collect();
    common::write_img2dataset_in_groups(&dir.path().join("d.parquet"), &rows, "jpg", "caption", 6);
    let inspect = |args: &[&str]| {
        let mut all = vec!["data", "inspect", "d.parquet", "--set", "data.batch_size=3"];
        all.extend_from_slice(args);
        ok(&weft(dir.path(), &all))
    };
    let json: serde_json::Value = serde_json::from_str(&inspect(&["--json"])).unwrap();
    assert_eq!(json["rows"], 20);
    assert_eq!(json["planned_rows"], 13);
    assert_eq!(json["usable_rows"], 13);
    assert_eq!(json["bad_rows"], serde_json::json!({"status": 7}));
    // 13 rows in batches of 3 on one rank, the last partial batch dropped.
    assert_eq!(json["steps_per_epoch"], 4);
    assert_eq!(
        json["epoch"],
        serde_json::json!({"world_size": 1, "batch_size": 3, "grad_accum": 1, "last_batch": "drop"})
    );
    // Optimizer steps, as `weft train` counts them: 4 batches, 2 accumulated a step.
    let json: serde_json::Value =
        serde_json::from_str(&inspect(&["--json", "--set", "train.grad_accum=2"])).unwrap();
    assert_eq!(json["steps_per_epoch"], 2);
    assert_eq!(json["epoch"]["grad_accum"], 2);
    let json: serde_json::Value = serde_json::from_str(&inspect(&[
        "--json",
        "--world-size",
        "2",
        "--set",
        "data.last_batch=pad",
    ]))
    .unwrap();
    // Global batches of 6: 2 full and one padded.
    assert_eq!(json["steps_per_epoch"], 3);

    let text = inspect(&["--world-size", "2"]);
    assert!(
        text.contains("planned     13 (7 failed downloads by column \"status\" left out)"),
        "{text}"
    );
    assert!(
        text.contains("epoch       2 steps of 3 x 2 ranks (dropping the last partial batch)"),
        "{text}"
    );
    let text = inspect(&["--set", "train.grad_accum=2"]);
    assert!(
        text.contains(
            "epoch       2 steps of 3 x 1 rank x accum 2 (dropping the last partial batch)"
        ),
        "{text}"
    );
    let text = inspect(&["--world-size", "5"]);
    assert!(
        text.contains("epoch       no step: 13 planned rows do not fill one batch of 3 x 5 ranks"),
        "{text}"
    );
    let out = weft(
        dir.path(),
        &["data", "inspect", "d.parquet", "--world-size", "0"],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_errors_and_print_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("bad.toml"), "[data]\nimage_size = \"abc\"\n").unwrap();
    let out = weft(d, &["--config", "bad.toml", "config"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: data.image_size: expected an integer >= 0, found \"abc\" in bad.toml"),
        "{err}"
    );

    let printed = ok(&weft(
        d,
        &[
            "data",
            "inspect",
            "x",
            "--print-config",
            "--set",
            "data.image_size=96",
        ],
    ));
    assert!(printed.contains("image_size = 96"), "{printed}");
    let c: weft_config::Config = toml::from_str(&printed).unwrap();
    assert_eq!(c.data.image_size, 96);

    let path = ok(&weft(d, &["config", "--run-dir", "run", "--set", "seed=9"]));
    assert_eq!(path.trim(), "run/config.toml");
    let back = weft_config::ConfigLoader::new()
        .file(d.join("run/config.toml"))
        .load()
        .unwrap();
    assert_eq!(back.seed, 9);

    let out = weft(d, &["data", "inspect", "missing-dir"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("error: no Parquet files found for missing-dir"));
}

#[test]
fn bench_allreduce_between_processes() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&weft(
        dir.path(),
        &[
            "bench",
            "allreduce",
            "--nproc",
            "3",
            "--sizes",
            "4K,1M",
            "--iters",
            "2",
            "--json",
        ],
    ));
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["nproc"], 3);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["bytes"], 4096);
    assert_eq!(rows[1]["bytes"], 1 << 20);
    for r in rows {
        let (alg, bus) = (
            r["algbw_gbps"].as_f64().unwrap(),
            r["busbw_gbps"].as_f64().unwrap(),
        );
        assert!(
            alg > 0.0 && (bus - alg * 4.0 / 3.0).abs() < 1e-9 * bus.max(1.0),
            "{r}"
        );
    }
    let bad = weft(dir.path(), &["bench", "allreduce", "--sizes", "1Q"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--sizes"));
}

/// `weft launch --print-env` with the given variables (and no other launcher's).
fn print_env(vars: &[(&str, &str)]) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_weft"));
    c.args(["launch", "--print-env"]);
    for k in [
        "WEFT_RANK",
        "RANK",
        "SLURM_PROCID",
        "WEFT_COORDINATOR",
        "MASTER_ADDR",
    ] {
        c.env_remove(k);
    }
    c.envs(vars.iter().copied());
    c.output().unwrap()
}

#[test]
fn launch_print_env_shows_what_slurm_and_torchrun_set() {
    let out = ok(&print_env(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_JOB_NODELIST", "gpu[07-08],cpu3"),
        ("SLURM_JOB_ID", "4242"),
    ]));
    for want in [
        "launcher: slurm",
        "rank: 0",
        "world_size: 8",
        "coordinator: gpu07:29742",
        "nodes: gpu07 gpu08 cpu3",
        "hosts the coordinator: yes (rank 0)",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    let out = ok(&print_env(&[
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "head"),
        ("MASTER_PORT", "29500"),
    ]));
    assert!(
        out.contains("launcher: torchrun") && out.contains("coordinator: head:29501"),
        "{out}"
    );
    // A malformed variable is named.
    let bad = print_env(&[("SLURM_PROCID", "x"), ("SLURM_NTASKS", "2")]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("SLURM_PROCID") && err.contains("\"x\""),
        "{err}"
    );
}

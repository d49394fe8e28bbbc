//! `weft report` of a real run made by the real binary: a small model trained with all five
//! objectives and evaluated every few steps, stopped and resumed once; the PNG plots must be
//! images of the asked size with something drawn, and the page must embed them and name every
//! metric of metrics.jsonl and eval.jsonl, the config and both starts' environment.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::process::{repo, train_with_sets, weft_ok, weft_within, SMALL_MODEL};
use common::train::STEP_MEASURES;

fn train(run: &Path, steps: usize) {
    let max = format!("train.max_steps={steps}");
    let mut sets = SMALL_MODEL.to_vec();
    sets.extend([
        "train.warmup_steps=2",
        "train.eval_every=3",
        "train.log_every=1",
        "train.threads=1",
        max.as_str(),
    ]);
    train_with_sets(run, &sets);
}

/// The keys of every line of a JSON-lines file.
fn keys(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object().unwrap().keys().cloned().collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_report_of_a_resumed_run_embeds_every_plot_and_names_every_metric() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, 6);
    train(&run, 9); // resumes from step 6
    let starts = std::fs::read_to_string(run.join("runs.jsonl")).unwrap();
    let starts: Vec<serde_json::Value> = starts
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_eq!(starts[0]["resumed_from_step"], 0);
    assert_eq!(starts[1]["resumed_from_step"], 6);
    assert_eq!(starts[1]["world_size"], 1);
    assert!(starts[1]["backend"].as_str().unwrap().contains("flex"));

    let out = dir.path().join("out/page.html");
    let printed = weft_ok(
        &[
            "report",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--width",
            "640",
            "--height",
            "320",
        ],
        Duration::from_secs(120),
    );
    assert!(printed.contains("page.html"), "{printed}");
    let html = std::fs::read_to_string(&out).unwrap();

    // The plots: beside the page in out/page/, one per loss component and per training
    // measure, the evaluation's recalls and ranks.
    let plots = dir.path().join("out/page");
    let mut names: Vec<String> = std::fs::read_dir(&plots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = STEP_MEASURES
        .iter()
        .map(|k| format!("train_{k}.png"))
        .chain(["eval_recall.png".into(), "eval_rank.png".into()])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    for name in &names {
        let path = plots.join(name);
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (640, 320), "{name}");
        let drawn = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(
            drawn > 2_000 && drawn < 640 * 320 / 2,
            "{name}: {drawn} pixels drawn"
        );
        // Embedded as the very bytes written.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&path).unwrap());
        assert!(html.contains(&b64), "{name} is not embedded");
    }
    assert_eq!(html.matches("data:image/png;base64,").count(), names.len());

    // Every metric is named, and nothing is fetched from elsewhere.
    let mut metrics = keys(&run.join("metrics.jsonl"));
    metrics.extend(keys(&run.join("eval.jsonl")));
    assert!(
        metrics.contains("i2t_r1") && metrics.contains("mim"),
        "{metrics:?}"
    );
    for m in &metrics {
        assert!(
            html.contains(&format!("<td>{m}</td>")) || html.contains(&format!("<th>{m}</th>")),
            "{m} not named"
        );
    }
    assert!(
        !html.contains("src=\"http") && !html.contains("<script"),
        "self-contained"
    );
    // The environment of both starts, and the resolved config.
    assert!(html.contains("<th>resume 1</th>") && html.contains("autodiff&lt;flex&gt;"));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let first_line = config.lines().find(|l| l.contains('=')).unwrap();
    assert!(
        html.contains(&first_line.replace('"', "&quot;")),
        "{first_line}"
    );

    // Not a run directory: said so.
    let o = weft_within(
        &repo(),
        &["report", dir.path().to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no metrics.jsonl"), "{err}");
}

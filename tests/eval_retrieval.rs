//! `weft eval` retrieval with the real binary: Recall@K, mean and median ranks both ways, and
//! ALBEF's re-ranking of the top K by the ITM head.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::{train_with_sets, weft_ok};

/// `weft eval` of `run` on the sample's validation split with `--rerank-k 5`, as JSON.
fn eval_rerank(run: &Path) -> serde_json::Value {
    let out = weft_ok(
        &[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            "datasets/sample/val",
            "--rerank-k",
            "5",
            "--json",
        ],
        Duration::from_secs(300),
    );
    serde_json::from_str(&out).unwrap()
}

#[test]
fn itm_re_ranking_reorders_only_the_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_with_sets(
        &run,
        &[
            "data.val=[]",
            "train.max_steps=40",
            "train.threads=1",
            "loss.lm=0",
            "loss.mim=0",
        ],
    );
    let r = eval_rerank(&run);
    let x = &r["itm_rerank"];
    assert_eq!(
        (r["n"].as_u64(), x["n"].as_u64(), r["rerank_k"].as_u64()),
        (Some(500), Some(500), Some(5)),
        "{r}"
    );
    for dir in ["i2t", "t2i"] {
        // A true item in the ITC top 5 stays in the top 5 (only its place among them can
        // change); one outside keeps its ITC rank: Recall@5 and @10 cannot move.
        for k in ["r5", "r10"] {
            let key = format!("{dir}_{k}");
            assert_eq!(r[&key], x[&key], "{key}: {r}");
        }
        let (mean, median) = (
            r[format!("{dir}_mean_rank")].as_f64().unwrap(),
            r[format!("{dir}_median_rank")].as_f64().unwrap(),
        );
        assert!(
            (1.0..=500.0).contains(&mean) && (1.0..=500.0).contains(&median),
            "{r}"
        );
        assert_eq!(median.fract(), 0.0);
    }
    // Without ITM there is nothing to re-rank with: ITC only, and no re-ranked entry.
    let itc = dir.path().join("itc");
    train_with_sets(
        &itc,
        &[
            "data.val=[]",
            "train.max_steps=1",
            "train.threads=1",
            "loss.itm=0",
            "loss.mlm=0",
            "loss.lm=0",
            "loss.mim=0",
        ],
    );
    let r = eval_rerank(&itc);
    assert!(
        r.get("itm_rerank").is_none() && r.get("i2t_r1").is_some(),
        "{r}"
    );
}

//! `weft eval` retrieval with the real binary: Recall@K, mean and median ranks both ways,
//! ALBEF's re-ranking of the top K by the ITM head, and the evaluation sharded across the
//! ranks of `weft launch`, which must give one rank's numbers.

mod common;

use std::path::Path;

use common::process::{train_on, train_with_sets, weft_json, SMALL_MODEL};

/// `weft eval` of `run` on the sample's validation split with `--rerank-k 5`, as JSON.
fn eval_rerank(run: &Path) -> serde_json::Value {
    weft_json(
        None,
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
    )
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

#[test]
fn retrieval_sharded_across_ranks_gives_one_ranks_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_with_sets(
        &run,
        &[
            "data.val=[]",
            "train.max_steps=20",
            "train.threads=1",
            "loss.lm=0",
            "loss.mim=0",
        ],
    );
    let eval = [
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        "datasets/sample/val",
        "--json",
    ];
    let one = weft_json(None, &eval);
    assert_eq!(one["n"], 500, "{one}");
    // 500 rows in batches of 64: 2 ranks get 4 batches each, 3 ranks 3, 3 and 2 (the last
    // padded); every number must be the same, mean ranks included.
    for ranks in ["2", "3"] {
        assert_eq!(weft_json(Some(ranks), &eval), one, "{ranks} ranks");
    }
    // ITM re-ranking: every rank embeds all rows and re-scores its share of the queries.
    let mut rerank = eval.to_vec();
    rerank.extend(["--rerank-k", "5"]);
    let one = weft_json(None, &rerank);
    assert!(one["itm_rerank"]["n"] == 500, "{one}");
    assert_eq!(weft_json(Some("3"), &rerank), one, "re-ranked on 3 ranks");
}

/// The rows that `log` says its rank embedded for a retrieval evaluation, one entry per
/// evaluation: `(rank, world, rows)`.
fn embedded(log: &Path) -> Vec<(usize, usize, usize)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("retrieval: rank ")?;
            let w: Vec<&str> = rest.split_whitespace().collect();
            // "R of W embedded N rows"
            Some((w[0].parse().ok()?, w[2].parse().ok()?, w[4].parse().ok()?))
        })
        .collect()
}

#[test]
fn evaluation_during_training_is_shared_by_the_ranks_and_gives_weft_evals_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut sets = SMALL_MODEL.to_vec();
    sets.extend([
        "loss.lm=0",
        "loss.mim=0",
        "train.max_steps=4",
        "train.eval_every=2",
        "train.threads=1",
    ]);
    train_on(Some("2"), &run, &sets);
    // Steps 2 and 4, every one of the 500 validation rows, each embedded by one rank.
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(run.join("eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<_> = evals.iter().map(|e| e["step"].as_u64()).collect();
    assert_eq!(steps, [Some(2), Some(4)], "{evals:?}");
    let logs = [0, 1].map(|r| embedded(&run.join(format!("logs/rank-{r}.log"))));
    for (r, log) in logs.iter().enumerate() {
        assert_eq!(log.len(), 2, "rank {r}: {log:?}");
        assert!(log
            .iter()
            .all(|&(rank, world, rows)| (rank, world) == (r, 2) && rows > 0));
    }
    for e in 0..2 {
        assert_eq!(logs[0][e].2 + logs[1][e].2, 500, "{logs:?}");
    }
    // The last one is what `weft eval` of the final weights on one process gives, to the bit.
    let last = evals[1].as_object().unwrap();
    let one = weft_json(
        None,
        &[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            "datasets/sample/val",
            "--json",
        ],
    );
    assert_eq!(last["n"], 500);
    for (key, value) in last {
        if !["step", "samples_seen"].contains(&key.as_str()) {
            assert_eq!(
                &one[key], value,
                "{key}: training {last:?}, weft eval {one}"
            );
        }
    }
}

//! Captioning end to end with the real binary: a small captioning model trained for a few
//! steps on the sample dataset, then `weft eval --task caption` with greedy decoding and beam
//! search, scored with BLEU, ROUGE-L and CIDEr-D against the validation captions, on one rank
//! and sharded across three (the same numbers); a model without the LM objective is refused
//! with an error that says why.

mod common;

use std::time::Duration;

use common::process::{repo, train_with_sets, weft_json, weft_within};

/// A model with the LM and ITC objectives at these weights (the others off), `steps` steps.
fn train(run: &std::path::Path, lm: &str, itc: &str, steps: usize) {
    let sets = [
        "data.val=[]".to_string(),
        "data.batch_size=32".into(),
        "train.threads=1".into(),
        format!("train.max_steps={steps}"),
        "train.warmup_steps=5".into(),
        format!("loss.itc={itc}"),
        "loss.itm=0".into(),
        "loss.mlm=0".into(),
        "loss.mim=0".into(),
        format!("loss.lm={lm}"),
    ];
    train_with_sets(run, &sets);
}

#[test]
fn captions_of_a_trained_decoder_are_scored_greedy_and_by_beam_search() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, "1.0", "0", 150);
    let eval = [
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        "datasets/sample/val",
        "--task",
        "caption",
        "--beams",
        "2",
        "--json",
    ];
    let c = weft_json(None, &eval);
    assert_eq!(c["images"], 500, "{c}");
    assert_eq!(c["greedy"]["n"], 500);
    assert_eq!(c["beam"]["n"], 500);
    assert_eq!(c["examples"].as_array().unwrap().len(), 5);
    for decoding in ["greedy", "beam"] {
        let s = &c[decoding];
        for m in ["bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"] {
            let v = s[m].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{decoding} {m} = {v}");
        }
        // The sample's captions have one template ("a red circle above an orange square"):
        // a decoder that learnt it gets most words right.
        assert!(s["bleu1"].as_f64().unwrap() > 0.5, "{decoding}: {s}");
        assert!(s["cider_d"].as_f64().unwrap() > 0.0, "{decoding}: {s}");
    }
    let e = &c["examples"][0];
    assert!(!e["greedy"].as_str().unwrap().is_empty(), "{e}");

    // Sharded across 3 ranks under weft launch: the same captions and scores, to the bit.
    assert_eq!(weft_json(Some("3"), &eval), c);

    // An ITC-only model has no decoder.
    let itc = dir.path().join("itc");
    train(&itc, "0", "1", 1);
    let o = weft_within(
        &repo(),
        &[
            "eval",
            "--checkpoint",
            itc.to_str().unwrap(),
            "--data",
            "datasets/sample/val",
            "--task",
            "caption",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no captioning decoder (loss.lm is 0)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

//! Zero-shot classification end to end with the real binary, on a tiny labelled fixture: IDX
//! files (the MNIST format) of four classes → `weft data import-idx` → a tokenizer → a few
//! training steps of a CLIP-style model on the captions → `weft eval --task zeroshot` on
//! held-out images of the classes, asked with other prompts than the captions.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::process::{ok, repo, weft_within};

const CLASSES: [&str; 4] = ["apple", "boat", "cloud", "drum"];

/// An IDX image file and its label file: class k lights quadrant k of a 28×28 image, with
/// pseudo-random speckle.
fn write_idx(dir: &Path, name: &str, n: usize, seed: u32) -> (PathBuf, PathBuf) {
    let mut images = [0x0000_0803u32, n as u32, 28, 28]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect::<Vec<u8>>();
    let mut labels = [0x0000_0801u32, n as u32]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect::<Vec<u8>>();
    let mut state = seed;
    for i in 0..n {
        let class = i % 4;
        labels.push(class as u8);
        let (r0, c0) = ((class / 2) * 14, (class % 2) * 14);
        for r in 0..28 {
            for c in 0..28 {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = (state >> 27) as u8;
                let lit = (r0 + 2..r0 + 12).contains(&r) && (c0 + 2..c0 + 12).contains(&c);
                images.push(if lit { 200 + noise } else { noise });
            }
        }
    }
    let (img, lab) = (
        dir.join(format!("{name}-images")),
        dir.join(format!("{name}-labels")),
    );
    std::fs::write(&img, images).unwrap();
    std::fs::write(&lab, labels).unwrap();
    (img, lab)
}

fn weft(args: &[&str]) -> String {
    ok(&weft_within(&repo(), args, Duration::from_secs(300)))
}

/// `weft eval --task zeroshot` of `run` on `data`, with more arguments; after `launch` (e.g.
/// `["launch", "--nproc-per-node", "3", "--"]`) if given.
fn zero_shot(launch: &[&str], run: &Path, data: &Path, more: &[&str]) -> Output {
    let mut args = launch.to_vec();
    args.extend([
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--task",
        "zeroshot",
    ]);
    args.extend(more);
    weft_within(&repo(), &args, Duration::from_secs(300))
}

#[test]
fn a_model_trained_on_captions_classifies_held_out_images_zero_shot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let classes = CLASSES.join(",");
    for (split, n, seed) in [("train", 512, 1), ("test", 96, 2)] {
        let (img, lab) = write_idx(d, split, n, seed);
        let out = d.join(split).join("part-0.parquet");
        let printed = weft(&[
            "data",
            "import-idx",
            "--images",
            img.to_str().unwrap(),
            "--labels",
            lab.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--classes",
            &classes,
            "--row-group-size",
            "128",
        ]);
        assert!(printed.contains(&format!("({n} rows)")), "{printed}");
    }
    let train = d.join("train");
    let tok = d.join("tokenizer.json");
    weft(&[
        "data",
        "tokenizer",
        "--train",
        "--out",
        tok.to_str().unwrap(),
        "--vocab-size",
        "64",
        train.to_str().unwrap(),
    ]);
    let run = d.join("run");
    let sets = [
        format!("data.train=[\"{}\"]", train.display()),
        "data.val=[]".into(),
        format!("data.tokenizer=\"{}\"", tok.display()),
        "data.image_size=28".into(),
        "data.batch_size=32".into(),
        "data.workers=1".into(),
        "model.vision.patch_size=7".into(),
        "model.vision.width=32".into(),
        "model.vision.depth=1".into(),
        "model.vision.heads=2".into(),
        "model.text.width=32".into(),
        "model.text.depth=1".into(),
        "model.text.heads=2".into(),
        "model.text.context_length=12".into(),
        "model.embed_dim=32".into(),
        "train.max_steps=240".into(),
        "train.warmup_steps=5".into(),
        "train.lr=3e-3".into(),
        "train.threads=1".into(),
    ];
    let mut args = vec![
        "train".to_string(),
        "--run-dir".into(),
        run.display().to_string(),
    ];
    for s in &sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    weft(&argv);

    let test = d.join("test");
    let prompts = ["--prompts", "a photo of a {}.", "--prompts", "{}", "--json"];
    let out = ok(&zero_shot(&[], &run, &test, &prompts));
    let z: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(z["n"], 96, "{z}");
    assert_eq!(z["chance_top1"], 25.0, "{z}");
    let rows = z["per_class"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["class"].as_str().unwrap()).collect();
    assert_eq!(names, CLASSES, "the distinct labels, sorted");
    assert!(rows.iter().all(|r| r["n"] == 24), "{z}");
    let top1 = z["top1"].as_f64().unwrap();
    assert!(top1 >= 75.0, "zero-shot top-1 {top1}% (chance 25%): {z}");
    assert_eq!(z["top5"], 100.0, "4 classes are all in the top 5");

    // Sharded across 3 ranks (96 images in batches of 32: one batch each): the same result.
    let launch = ["launch", "--nproc-per-node", "3", "--"];
    let sharded = ok(&zero_shot(&launch, &run, &test, &prompts));
    let sharded: serde_json::Value = serde_json::from_str(&sharded).unwrap();
    assert_eq!(sharded, z);

    // A missing label column is named, with the columns there are.
    let o = zero_shot(&[], &run, &test, &["--label-column", "class"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "no label column \"class\" (--label-column); columns present: [image, text, label]"
        ),
        "{err}"
    );
}

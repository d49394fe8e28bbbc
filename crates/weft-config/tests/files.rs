//! Every config in configs/ loads, validates and enables the objectives its name promises.

use std::path::PathBuf;

use weft_config::{Config, ConfigLoader};

fn load(name: &str) -> Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name);
    ConfigLoader::new()
        .file(&path)
        .load()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn objectives(c: &Config) -> Vec<&'static str> {
    let l = &c.loss;
    [
        ("itc", l.itc),
        ("itm", l.itm),
        ("mlm", l.mlm),
        ("lm", l.lm),
        ("mim", l.mim),
    ]
    .into_iter()
    .filter(|(_, w)| *w > 0.0)
    .map(|(n, _)| n)
    .collect()
}

#[test]
fn shipped_configs_enable_what_they_promise() {
    assert_eq!(
        objectives(&load("tiny.toml")),
        ["itc", "itm", "mlm", "lm", "mim"]
    );
    assert_eq!(objectives(&load("tiny-bench.toml")), ["itc"]);
    assert_eq!(
        objectives(&load("tiny-bench-albef.toml")),
        ["itc", "itm", "mlm"]
    );
    assert_eq!(objectives(&load("clip-vit-b16.toml")), ["itc"]);
    assert_eq!(objectives(&load("albef-base.toml")), ["itc", "itm", "mlm"]);
    assert_eq!(objectives(&load("blip-base.toml")), ["itc", "itm", "lm"]);
    assert_eq!(objectives(&load("fashion-mnist.toml")), ["itc"]);
}

#[test]
fn every_file_in_configs_loads() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".toml") {
            load(&name);
            n += 1;
        }
    }
    assert!(n >= 6);
}

#[test]
fn tiny_bench_matches_the_shared_shape() {
    // ../shared/bench/tiny-bench.json, "tiny-clip-v1".
    let c = load("tiny-bench.toml");
    assert_eq!((c.data.image_size, c.data.batch_size), (64, 64));
    let v = &c.model.vision;
    assert_eq!(
        (v.patch_size, v.width, v.depth, v.heads, v.mlp_ratio),
        (8, 192, 4, 3, 4)
    );
    let t = &c.model.text;
    assert_eq!(
        (t.vocab_size, t.context_length, t.width, t.depth, t.heads),
        (8192, 32, 192, 4, 3)
    );
    assert_eq!(c.model.embed_dim, 128);
    assert_eq!(
        (c.train.lr, c.train.betas, c.train.eps, c.train.weight_decay),
        (5e-4, [0.9, 0.999], 1e-8, 0.1)
    );
}

#[test]
fn model_errors_name_the_key() {
    let err = ConfigLoader::new()
        .overrides(["model.vision.patch_size=5"])
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.vision.patch_size") && err.contains("--set"),
        "{err}"
    );
    let err = ConfigLoader::new()
        .overrides(["loss.itc=0"])
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("enable at least one"), "{err}");
    let err = ConfigLoader::new()
        .overrides(["loss.itm=1", "model.fusion.heads=5"])
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.fusion.heads") && err.contains("--set model.fusion.heads=5"),
        "{err}"
    );
    let err = ConfigLoader::new()
        .overrides(["train.min_lr=1"])
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.min_lr"), "{err}");
}

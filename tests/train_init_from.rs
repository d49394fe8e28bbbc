//! `train.init_from`: a new run starts from the weights of an earlier one (open_clip's
//! `--pretrained`), matched by name, with a fresh optimizer; an ITC-only pretrain followed by
//! a run with every objective keeps the new heads' initialisation.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::{Autodiff, Flex};
use common::train::{set_objectives, small_train_config};
use weft_config::{Config, ConfigLoader, RUN_CONFIG_FILE};
use weft_train::params::{flat_params, params};
use weft_train::weights::{build_model, load_model, MODEL_FILE};
use weft_train::{train, TrainOptions};

type B = Autodiff<Flex>;

/// The parameters of the weights a run saved, by name, read through burn (not through the
/// reader under test).
fn saved(run_dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let config = ConfigLoader::new()
        .file(run_dir.join(RUN_CONFIG_FILE))
        .load()
        .unwrap();
    let dev = Default::default();
    let mut model = build_model::<Flex>(&config, 0, &dev);
    load_model(&mut model, &run_dir.join(MODEL_FILE)).unwrap();
    let values = flat_params(&model);
    let mut out = BTreeMap::new();
    let mut at = 0;
    for p in params(&model) {
        out.insert(p.path.clone(), values[at..at + p.numel()].to_vec());
        at += p.numel();
    }
    out
}

fn run(
    config: &Config,
    run_dir: &Path,
) -> Result<weft_train::TrainSummary, weft_train::TrainError> {
    let options = TrainOptions {
        run_dir: run_dir.to_path_buf(),
        ..Default::default()
    };
    train::<B>(config, &options, &Default::default())
}

/// A run of one step whose update cannot move a weight by more than about 1e-30: its saved
/// weights are its initial ones to within that.
fn frozen(init_from: Option<&Path>) -> Config {
    let mut c = small_train_config();
    c.train.max_steps = 1;
    c.train.lr = 1e-30;
    c.train.min_lr = 0.0;
    c.train.init_from = init_from.map(|p| p.display().to_string());
    c.validate().unwrap();
    c
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-20)
}

#[test]
fn a_run_starts_from_the_matching_weights_of_an_earlier_run() {
    let _one = common::train::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // The earlier run: ITC only (no fusion encoder, ITM, MLM, LM or MIM modules).
    let mut itc = small_train_config();
    set_objectives(&mut itc, [1.0, 0.0, 0.0, 0.0, 0.0]);
    itc.train.max_steps = 2;
    let pre = dir.path().join("itc");
    let summary = run(&itc, &pre).unwrap();
    let pretrained = saved(&pre);

    // Every objective, from the ITC run's directory, and from scratch.
    let from_run = dir.path().join("from-run");
    run(&frozen(Some(&pre)), &from_run).unwrap();
    let scratch = dir.path().join("scratch");
    run(&frozen(None), &scratch).unwrap();
    let (got, fresh) = (saved(&from_run), saved(&scratch));

    let mut taken = 0;
    for (name, values) in &got {
        match pretrained.get(name) {
            Some(p) => {
                assert!(close(values, p), "{name} is not the pretrained value");
                taken += 1;
            }
            None => assert!(close(values, &fresh[name]), "{name} lost its initial value"),
        }
    }
    assert_eq!(
        taken,
        pretrained.len(),
        "every pretrained tensor is a parameter"
    );
    assert!(got.len() > pretrained.len(), "the new heads are there");
    // The pretrained weights are not the initialisation (else the test proves nothing).
    assert!(pretrained.iter().any(|(n, p)| !close(p, &fresh[n])));

    // From the ITC run's last checkpoint directory: the same weights.
    let from_ckpt = dir.path().join("from-ckpt");
    let ckpt = summary.checkpoint.expect("a checkpoint at the end");
    run(&frozen(Some(&ckpt)), &from_ckpt).unwrap();
    let again = saved(&from_ckpt);
    assert!(pretrained.iter().all(|(n, p)| close(&again[n], p)));
}

#[test]
fn weights_that_do_not_fit_are_errors_naming_the_tensor_or_path() {
    let _one = common::train::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let pre = dir.path().join("pre");
    run(&frozen(None), &pre).unwrap();

    // Another embedding width: the ITC projections differ.
    let mut wider = frozen(Some(&pre));
    wider.model.embed_dim = 32;
    let e = run(&wider, &dir.path().join("wider"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("train.init_from: tensor ") && e.contains("[16, 32]"),
        "{e}"
    );
    assert!(
        e.contains("model.safetensors") && e.contains("in the model"),
        "{e}"
    );

    let missing = dir.path().join("no-such-run");
    let e = run(&frozen(Some(&missing)), &dir.path().join("m"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-such-run") && e.contains("does not exist"),
        "{e}"
    );

    // A run resuming from its own checkpoint does not read train.init_from.
    let mut resumed = frozen(Some(&missing));
    resumed.train.max_steps = 2;
    let s = run(&resumed, &pre).unwrap();
    assert_eq!(s.resumed_from, 1);
}

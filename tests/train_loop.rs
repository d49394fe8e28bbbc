//! The training loop: overfitting, determinism, non-finite steps, accumulation, run files.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use common::train::{
    caption_batch, random_images, set_objectives, small_train_config, special_tokens, STEP_MEASURES,
};
use weft_config::UpdateOn;
use weft_model::ObjectiveBatch;
use weft_train::engine::Engine;
use weft_train::eval::retrieval_from_embeddings;
use weft_train::trainer::step::objective_rng;
use weft_train::weights::build_model;
use weft_train::{train, TrainError, TrainOptions};

type B = Autodiff<Flex>;

#[test]
fn a_tiny_model_overfits_8_pairs_to_recall_1() {
    let _one = common::train::one_training_at_a_time();
    let mut config = small_train_config();
    set_objectives(&mut config, [1.0, 0.0, 0.0, 0.0, 0.0]);
    config.train.grad_clip = 0.0;
    config.train.weight_decay = 0.0;
    let dev = Default::default();
    let (b, l, s) = (8, 8, config.data.image_size);
    let model = build_model::<B>(&config, 64, &dev);
    let mut engine = Engine::new(model, &config, special_tokens(), &dev);
    let batch = caption_batch::<B>(b, l, s, &dev);
    let mut first = None;
    let mut last = 0.0;
    for step in 0..150 {
        let micro = engine.micro(&batch, &mut objective_rng(0, step), false, &dev);
        first.get_or_insert(micro.loss);
        last = micro.loss;
        engine.apply(micro.grads, 1, 3e-3);
    }
    let image: Vec<f32> = engine
        .model()
        .image_embedding(batch.images.clone())
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let text: Vec<f32> = engine
        .model()
        .text_embedding(batch.ids_tensor(), Some(batch.padding_tensor()))
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let r = retrieval_from_embeddings(&image, &text, b, config.model.embed_dim);
    assert_eq!(
        (r.i2t_r1, r.t2i_r1),
        (100.0, 100.0),
        "loss {first:?} -> {last}"
    );
}

#[test]
fn the_same_seed_gives_identical_loss_sequences() {
    let _one = common::train::one_training_at_a_time();
    let config = small_train_config();
    let run = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let options = TrainOptions {
            run_dir: dir.path().join(name),
            ..Default::default()
        };
        let summary = train::<B>(&config, &options, &Default::default()).unwrap();
        let metrics = std::fs::read_to_string(options.run_dir.join("metrics.jsonl")).unwrap();
        (summary.losses, metrics)
    };
    let (a, metrics) = run("a");
    let (b, _) = run("b");
    assert_eq!(a.len(), 4);
    assert!(a.iter().all(|x| x.is_finite()));
    // Bit for bit.
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b));
    // Another seed gives another sequence.
    let mut other = config.clone();
    other.seed = 1;
    let dir = tempfile::tempdir().unwrap();
    let options = TrainOptions {
        run_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let c = train::<B>(&other, &options, &Default::default())
        .unwrap()
        .losses;
    assert_ne!(bits(&a), bits(&c));
    // Every line carries every field.
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for key in ["step", "epoch", "samples_seen"]
        .iter()
        .chain(&STEP_MEASURES)
    {
        assert!(
            lines[3].get(key).is_some(),
            "metrics line lacks {key}: {}",
            lines[3]
        );
    }
    assert_eq!(lines[3]["samples_seen"], 64);
}

#[test]
fn a_nan_loss_skips_the_step_and_too_many_stop_the_run() {
    let _one = common::train::one_training_at_a_time();
    let mut config = small_train_config();
    set_objectives(&mut config, [1.0, 0.0, 0.0, 0.0, 1.0]);
    config.train.max_nonfinite_steps = 2;
    let dir = tempfile::tempdir().unwrap();
    let options = TrainOptions {
        run_dir: dir.path().join("one"),
        nonfinite_loss_at: vec![2],
        ..Default::default()
    };
    let summary = train::<B>(&config, &options, &Default::default()).unwrap();
    assert_eq!(summary.skipped, 1);
    assert!(summary.losses[1].is_nan());
    assert!(summary.losses[2].is_finite() && summary.losses[3].is_finite());
    let metrics = std::fs::read_to_string(options.run_dir.join("metrics.jsonl")).unwrap();
    let skipped: Vec<bool> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["skipped"] == true)
        .collect();
    assert_eq!(skipped, [false, true, false, false]);

    // The skipped step left the weights alone: a run whose step 2 is skipped continues from
    // the weights of step 1, so its step-3 loss differs from the clean run's.
    let clean = train::<B>(
        &config,
        &TrainOptions {
            run_dir: dir.path().join("clean"),
            ..Default::default()
        },
        &Default::default(),
    )
    .unwrap();
    assert_eq!(clean.losses[0].to_bits(), summary.losses[0].to_bits());
    assert_ne!(clean.losses[2].to_bits(), summary.losses[2].to_bits());

    let options = TrainOptions {
        run_dir: dir.path().join("two"),
        nonfinite_loss_at: vec![2, 3],
        ..Default::default()
    };
    match train::<B>(&config, &options, &Default::default()) {
        Err(e @ TrainError::NonFinite { step: 3, count: 2 }) => {
            assert!(e.to_string().contains("train.max_nonfinite_steps"), "{e}")
        }
        other => panic!("expected a non-finite stop at step 3, got {other:?}"),
    }
}

#[test]
fn gradient_accumulation_averages() {
    let _one = common::train::one_training_at_a_time();
    // The gradient of one batch of 16 equals the accumulated gradient of 2 x 8 only when the
    // micro-batch gradients are averaged.
    let dev = Default::default();
    let mut config = small_train_config();
    // MIM only: ITC is not separable over micro-batches; MIM is.
    set_objectives(&mut config, [0.0, 0.0, 0.0, 0.0, 1.0]);
    // Every patch masked: the masks do not depend on which micro-batch a row is in.
    config.loss.mim_mask_ratio = 1.0;
    config.train.grad_clip = 0.0;
    let s = config.data.image_size;
    let images = random_images::<B>(16, s, 2, &dev);
    let l = 4;
    let make = |imgs: Tensor<B, 4>| {
        let n = imgs.dims()[0];
        ObjectiveBatch {
            images: imgs,
            ids: [1, 9, 9, 2].repeat(n),
            attention_mask: vec![1; n * l],
            len: l,
            is_pad: Vec::new(),
        }
    };
    let special = special_tokens();
    let full = make(images.clone());
    let halves = [
        make(images.clone().narrow(0, 0, 8)),
        make(images.clone().narrow(0, 8, 8)),
    ];
    let mut one = Engine::new(
        build_model::<B>(&config, 64, &dev),
        &config,
        special.clone(),
        &dev,
    );
    let mut two = Engine::new(build_model::<B>(&config, 64, &dev), &config, special, &dev);
    let seed_rng = || objective_rng(0, 0);
    let g = one.micro(&full, &mut seed_rng(), false, &dev).grads;
    let (full_norm, applied) = one.apply(g, 1, 1e-2);
    assert!(applied);
    let mut rng = seed_rng();
    let a = two.micro(&halves[0], &mut rng, false, &dev).grads.unwrap();
    let b = two.micro(&halves[1], &mut rng, false, &dev).grads.unwrap();
    // apply() reports the norm of the averaged gradient: a sum would be twice as large.
    let (accum_norm, applied) = two.apply(Some(a.accumulate(b)), 2, 1e-2);
    assert!(applied);
    assert!(
        (full_norm - accum_norm).abs() < 1e-4 * full_norm,
        "{full_norm} vs {accum_norm}"
    );
}

#[test]
fn the_update_on_the_device_trains_what_the_host_update_trains() {
    let _one = common::train::one_training_at_a_time();
    // Without clipping the two paths run the same f32 operations: the same bits. With it, the
    // norm is an f32 sum on the device and an f64 sum on the host, so the clip factors (and
    // everything after) differ in the last bits.
    for clip in [0.0, 0.5] {
        let mut config = small_train_config();
        config.train.grad_clip = clip;
        let run = |update_on: UpdateOn| {
            let dir = tempfile::tempdir().unwrap();
            let mut c = config.clone();
            c.train.update_on = update_on;
            let options = TrainOptions {
                run_dir: dir.path().join("run"),
                ..Default::default()
            };
            let summary = train::<B>(&c, &options, &Default::default()).unwrap();
            let tensors = common::ckpt::file_bits(&options.run_dir.join("model.safetensors"));
            (summary.losses, tensors)
        };
        let (host_losses, host) = run(UpdateOn::Host);
        let (device_losses, device) = run(UpdateOn::Device);
        let names = |t: &[(String, Vec<u32>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&host), names(&device));
        if clip == 0.0 {
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&host_losses), bits(&device_losses));
            assert!(host == device, "the final weights differ");
        } else {
            for (a, b) in host_losses.iter().zip(&device_losses) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs(),
                    "loss {a} (host) vs {b} (device)"
                );
            }
        }
    }
}

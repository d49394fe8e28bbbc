//! Mixed precision (`train.precision = "bf16"`, `weft_kernels::autocast`): the products take
//! bf16 operands, everything else (parameters, gradients, AdamW, norms, softmax, losses) stays
//! f32, and training still learns. Run on flex, whose bf16 kernels stand in for a GPU's.

#[path = "common/train.rs"]
mod train_common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_config::Precision;
use weft_train::engine::Engine;
use weft_train::trainer::step::objective_rng;
use weft_train::weights::build_model;

type B = Autodiff<Flex>;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn autocast_products_are_bf16_and_their_results_f32() {
    let dev = Default::default();
    let x = Tensor::<Flex, 2>::from_data(TensorData::new(values(8 * 64, 1), [8, 64]), &dev);
    let w = Tensor::<Flex, 2>::from_data(TensorData::new(values(64 * 32, 2), [64, 32]), &dev);
    let b = Tensor::<Flex, 1>::from_data(TensorData::new(values(32, 3), [32]), &dev);
    let full: Vec<f32> = weft_kernels::linear(x.clone(), w.clone(), Some(b.clone()))
        .into_data()
        .to_vec()
        .unwrap();
    // By hand: the operands rounded to bf16, the product and the bias in f32.
    let round = |t: Tensor<Flex, 2>| t.cast(FloatDType::BF16).cast(FloatDType::F32);
    let by_hand: Vec<f32> = (round(x.clone()).matmul(round(w.clone())) + b.clone().unsqueeze())
        .into_data()
        .to_vec()
        .unwrap();
    let low = {
        let _bf16 = weft_kernels::autocast(Some(FloatDType::BF16));
        assert_eq!(weft_kernels::product_dtype(), Some(FloatDType::BF16));
        weft_kernels::linear(x.clone(), w.clone(), Some(b.clone()))
    };
    assert_eq!(
        weft_kernels::product_dtype(),
        None,
        "the guard restores f32"
    );
    assert_eq!(low.dtype(), DType::F32);
    let low: Vec<f32> = low.into_data().to_vec().unwrap();
    assert_ne!(low, full, "the bf16 product differs from the f32 one");
    // The product is stored in bf16 too (as on a GPU and under torch.autocast): within one
    // bf16 rounding (2^-8) of the largest value.
    let d = max_rel_diff(&low, &by_hand);
    assert!(d < 4e-3, "bf16 product vs rounded operands: {d}");
    let d = max_rel_diff(&low, &full);
    assert!(d < 1e-2, "bf16 product vs f32: {d}");
}

#[test]
fn bf16_training_keeps_f32_gradients_close_to_f32_training_and_learns() {
    let dev = Default::default();
    let mut f32_config = train_common::small_train_config();
    f32_config.train.grad_clip = 0.0;
    let mut bf16_config = f32_config.clone();
    bf16_config.train.precision = Precision::Bf16;
    let model = build_model::<B>(&f32_config, 64, &dev);
    let special = train_common::special_tokens();
    let data = train_common::caption_batch::<B>(
        8,
        f32_config.model.text.context_length,
        f32_config.data.image_size,
        &dev,
    );
    let mut full = Engine::new(model.clone(), &f32_config, special.clone(), &dev);
    let mut mixed = Engine::new(model, &bf16_config, special, &dev);
    let grads = |e: &Engine<B>, i| {
        let m = e.micro(&data, &mut objective_rng(0, i), false, &dev);
        (m.loss, m.grads.expect("finite"))
    };
    let (loss32, g32) = grads(&full, 0);
    let (loss16, g16) = grads(&mixed, 0);
    assert_eq!(
        g16.buffer.dtype(),
        DType::F32,
        "gradients of f32 parameters are f32"
    );
    let (a, _) = g32.clone().into_vec();
    let (b, _) = g16.clone().into_vec();
    let dot: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let cosine = dot / (norm(&a) * norm(&b));
    assert!(cosine > 0.99, "cosine of bf16 and f32 gradients {cosine}");
    assert!(
        (loss16 - loss32).abs() < 2e-3 * loss32.abs(),
        "{loss16} vs {loss32}"
    );
    assert_ne!(
        a, b,
        "the bf16 step computed something else than the f32 one"
    );
    full.apply(Some(g32), 1, 2e-3);
    mixed.apply(Some(g16), 1, 2e-3);
    let mut last = (0.0, 0.0);
    for i in 1..40 {
        let (l32, g32) = grads(&full, i);
        let (l16, g16) = grads(&mixed, i);
        full.apply(Some(g32), 1, 2e-3);
        mixed.apply(Some(g16), 1, 2e-3);
        last = (l32, l16);
    }
    // Both overfit the batch alike.
    assert!(last.1 < 0.7 * loss16, "bf16 loss {loss16} -> {}", last.1);
    assert!(
        (last.1 - last.0).abs() < 1e-2 * last.0,
        "bf16 {} vs f32 {}",
        last.1,
        last.0
    );
}

//! `weft bench train`: the time of one optimizer step on a fixed synthetic batch.
//!
//! The batch is random images and random full-length captions (no padding), built once, so
//! that only the model step is timed: forward of every enabled objective, backward, flat
//! gradients, global-norm clipping, weight decay and AdamW, exactly as in [`crate::train`].

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use weft_config::Config;
use weft_data::text::SPECIAL_TOKENS;
use weft_model::{ObjectiveBatch, SpecialTokens};

use crate::engine::Engine;
use crate::trainer::step::objective_rng;
use crate::weights::build_model;

/// Timings of a train bench.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    /// Timed steps.
    pub steps: u64,
    /// Untimed warmup steps.
    pub warmup: u64,
    /// Samples per step.
    pub batch: usize,
    /// Median step time in seconds.
    pub step_time_median_s: f64,
    /// Mean step time in seconds.
    pub step_time_mean_s: f64,
    /// Samples per second at the median step time.
    pub samples_per_s: f64,
    /// Parameters of the model.
    pub params: usize,
    /// The last total loss (a sanity check that the step ran).
    pub last_loss: f64,
    /// FLOPs of the matrix products of one forward pass of every enabled objective
    /// ([`weft_kernels::flops`]).
    pub forward_flops: u64,
    /// FLOPs of one training step: three times the forward's (the backward pass computes two
    /// products for each forward one).
    pub step_flops: f64,
    /// `step_flops` over the median step time, in TFLOP/s.
    pub achieved_tflops: f64,
}

/// Time `steps` optimizer steps (after `warmup` untimed ones) of the config's model on a
/// synthetic batch of `data.batch_size` samples. The vocabulary is `model.text.vocab_size`
/// (which must be set: the bench reads no tokenizer); ids 0..7 are the special tokens.
pub fn bench_train<B: AutodiffBackend>(
    config: &Config,
    steps: u64,
    warmup: u64,
    device: &B::Device,
) -> TrainBench {
    let vocab = config.model.text.vocab_size.max(SPECIAL_TOKENS.len() + 1);
    let b = config.data.batch_size;
    let l = config.model.text.context_length;
    let s = config.data.image_size;
    let model = build_model::<B>(config, vocab, device);
    let params: usize = model.param_counts().iter().map(|(_, n)| n).sum();
    let special = SpecialTokens {
        mask: 3,
        bos: 4,
        all: (0..SPECIAL_TOKENS.len() as u32).collect(),
    };
    let mut engine = Engine::new(model, config, special, device);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let first = SPECIAL_TOKENS.len() as u32;
    let mut ids = Vec::with_capacity(b * l);
    for _ in 0..b {
        ids.push(1); // [CLS]
        for _ in 1..l - 1 {
            ids.push(rng.random_range(first..vocab as u32));
        }
        ids.push(2); // [SEP]
    }
    let batch = ObjectiveBatch {
        images: Tensor::<B, 4>::random([b, 3, s, s], Distribution::Normal(0.0, 1.0), device),
        ids,
        attention_mask: vec![1; b * l],
        len: l,
        is_pad: Vec::new(),
    };
    let mut times = Vec::with_capacity(steps as usize);
    let mut last_loss = f64::NAN;
    let mut forward_flops = 0;
    for i in 0..warmup + steps {
        let started = Instant::now();
        let mut rng = objective_rng(config.seed, i);
        let counter = (i == 0).then(weft_kernels::flops::Counter::start);
        let micro = engine.micro(&batch, &mut rng, false, device);
        if let Some(c) = counter {
            forward_flops = c.finish();
        }
        last_loss = micro.loss;
        engine.apply(micro.grads, 1, config.train.lr);
        // Wait for the backend before reading the clock.
        let _ = B::sync(device);
        if i >= warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let step_flops = 3.0 * forward_flops as f64;
    TrainBench {
        steps,
        warmup,
        batch: b,
        step_time_median_s: median,
        step_time_mean_s: mean,
        samples_per_s: b as f64 / median,
        params,
        last_loss,
        forward_flops,
        step_flops,
        achieved_tflops: step_flops / median / 1e12,
    }
}

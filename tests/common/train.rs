//! Helpers of the training tests: small configs and synthetic batches.
// Included by several test crates (also as `#[path]` modules), each using some of it.
#![allow(dead_code)]

use std::path::PathBuf;

use weft_config::Config;
use weft_model::SpecialTokens;

/// The special ids of weft's tokenizers: `[MASK]` 3, `[BOS]` 4, specials 0..7.
pub fn special_tokens() -> SpecialTokens {
    SpecialTokens {
        mask: 3,
        bos: 4,
        all: (0..7).collect(),
    }
}

/// Set the objective weights `[itc, itm, mlm, lm, mim]`.
pub fn set_objectives(c: &mut Config, [itc, itm, mlm, lm, mim]: [f64; 5]) {
    c.loss.itc = itc;
    c.loss.itm = itm;
    c.loss.mlm = mlm;
    c.loss.lm = lm;
    c.loss.mim = mim;
}

/// The committed sample dataset.
pub fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/sample")
}

/// A very small model with every objective on, reading the sample dataset.
pub fn small_train_config() -> Config {
    let s = sample_dir();
    let mut c = Config::default();
    c.data.train = vec![s.join("train").display().to_string()];
    c.data.val = vec![];
    c.data.tokenizer = Some(s.join("tokenizer.json").display().to_string());
    c.data.image_size = 32;
    c.data.batch_size = 16;
    c.data.shuffle_buffer = 256;
    c.model.embed_dim = 16;
    c.model.vision.patch_size = 8;
    c.model.vision.width = 16;
    c.model.vision.depth = 1;
    c.model.vision.heads = 2;
    c.model.vision.mlp_ratio = 2;
    c.model.text.context_length = 12;
    c.model.text.width = 16;
    c.model.text.depth = 1;
    c.model.text.heads = 2;
    c.model.text.mlp_ratio = 2;
    c.model.fusion.depth = 1;
    c.model.fusion.heads = 2;
    c.model.fusion.mlp_ratio = 2;
    c.model.decoder = c.model.fusion.clone();
    set_objectives(&mut c, [1.0; 5]);
    c.train.max_steps = 4;
    c.train.warmup_steps = 1;
    c.train.lr = 1e-3;
    c.train.log_every = 1;
    c.validate().unwrap();
    c
}

/// Images `[b, 3, s, s]` of values uniform in [-2, 2) from a generator of their own (the
/// backend's global generator is shared with the model builds of tests running in parallel).
pub fn random_images<B: burn::tensor::backend::Backend>(
    b: usize,
    s: usize,
    seed: u64,
    device: &B::Device,
) -> burn::tensor::Tensor<B, 4> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..b * 3 * s * s)
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect();
    burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(values, [b, 3, s, s]), device)
}

/// `b` captions of `l` tokens (`[CLS]`, ids 7..64 drawn from seed 5, `[SEP]`; no padding) with
/// random images of side `s` (seed 1): a batch to overfit.
pub fn caption_batch<B: burn::tensor::backend::Backend>(
    b: usize,
    l: usize,
    s: usize,
    device: &B::Device,
) -> weft_model::ObjectiveBatch<B> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let ids: Vec<u32> = (0..b * l)
        .map(|k| match k % l {
            0 => 1,
            t if t == l - 1 => 2,
            _ => rng.random_range(7..64),
        })
        .collect();
    weft_model::ObjectiveBatch {
        images: random_images::<B>(b, s, 1, device),
        ids,
        attention_mask: vec![1; b * l],
        len: l,
        is_pad: Vec::new(),
    }
}

/// Keeps every other test of this process that takes it from training while alive.
///
/// Two trainings on parallel test threads of one process were seen to end in different last
/// bits (about one run in ten of `tests/train_loop.rs`, also with `RAYON_NUM_THREADS=1`; never
/// with `--test-threads=1`). burn-autodiff 0.21 keeps one process-wide locator of autodiff
/// graphs and cleans other threads' graphs after each backward pass
/// (`GraphCleaner::cleanup_orphaned_entries`), the likely cause. weft trains one model per
/// process, so only tests that compare runs bit for bit in one process need this.
pub fn one_training_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The measures of every line of `metrics.jsonl` beside its step, epoch and samples seen: the
/// weighted loss, each objective's, and the training measures (one report plot each).
pub const STEP_MEASURES: [&str; 11] = [
    "loss",
    "itc",
    "itm",
    "mlm",
    "lm",
    "mim",
    "lr",
    "grad_norm",
    "samples_per_s",
    "step_time_s",
    "data_wait_fraction",
];

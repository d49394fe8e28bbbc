//! Every module that an enabled objective uses receives a non-zero gradient.

#[path = "common/train.rs"]
mod train_common;

use burn::backend::{Autodiff, Flex};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use weft_model::ObjectiveBatch;
use weft_train::grads::flat::FlatGrads;
use weft_train::params::params;
use weft_train::weights::build_model;

type B = Autodiff<Flex>;

fn batch(b: usize, l: usize, s: usize) -> ObjectiveBatch<B> {
    let dev = Default::default();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in 0..b {
        let real = 4 + r % (l - 4);
        for t in 0..l {
            let id = match t {
                0 => 1,
                t if t == real - 1 => 2,
                t if t < real => 7 + ((r * 5 + t * 3) % 40) as u32,
                _ => 0,
            };
            ids.push(id);
            mask.push(u32::from(t < real));
        }
    }
    ObjectiveBatch {
        images: train_common::random_images::<B>(b, s, 3, &dev),
        ids,
        attention_mask: mask,
        len: l,
        is_pad: Vec::new(),
    }
}

#[test]
fn every_parameter_of_every_objective_gets_a_gradient() {
    for tied in [true, false] {
        let mut config = train_common::small_train_config();
        config.model.tie_word_embeddings = tied;
        let dev = Default::default();
        let model = build_model::<B>(&config, 64, &dev);
        let special = train_common::special_tokens();
        let b = batch(6, config.model.text.context_length, config.data.image_size);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let out = model.losses(&b, &config.loss, &special, &mut rng);
        let names: Vec<&str> = out.parts.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["itc", "itm", "mlm", "lm", "mim"]);
        let grads = GradientsParams::from_grads(out.total.backward(), &model);
        let infos = params(&model);
        let flat = FlatGrads::<Flex>::from_grads(&grads, &infos, &dev);
        let values: Vec<f32> = flat.buffer.into_data().to_vec().unwrap();
        let mut offset = 0;
        for (p, has) in infos.iter().zip(&flat.has_grad) {
            let n = p.numel();
            assert!(*has, "{} has no gradient (tied = {tied})", p.path);
            let sum: f32 = values[offset..offset + n].iter().map(|x| x.abs()).sum();
            assert!(
                sum > 0.0,
                "{} has an all-zero gradient (tied = {tied})",
                p.path
            );
            offset += n;
        }
        assert!(infos.iter().any(|p| p.path == "itc.logit_scale"));
        assert!(infos.iter().any(|p| p.path == "mim.mask_token"));
    }
}

#[test]
fn a_disabled_objective_leaves_its_module_out() {
    let mut config = train_common::small_train_config();
    train_common::set_objectives(&mut config, [1.0, 0.0, 0.0, 1.0, 0.0]);
    let model = build_model::<B>(&config, 64, &Default::default());
    let paths: Vec<String> = params(&model).into_iter().map(|p| p.path).collect();
    assert!(paths.iter().all(|p| !p.starts_with("fusion.")
        && !p.starts_with("itm.")
        && !p.starts_with("mlm.")
        && !p.starts_with("mim.")));
    assert!(paths.iter().any(|p| p.starts_with("decoder.")));
}

#[test]
fn weight_decay_skips_biases_norms_embeddings_and_temperature() {
    let config = train_common::small_train_config();
    let model = build_model::<B>(&config, 64, &Default::default());
    for p in params(&model) {
        let expect =
            p.path.ends_with(".weight") && p.shape.len() >= 2 && !p.path.contains("embedding");
        assert_eq!(p.decays(), expect, "{}", p.path);
    }
}

/// Each loss and the flat gradients of one step of `model`.
fn step(
    model: &weft_model::VlModel<B>,
    config: &weft_config::Config,
    b: &ObjectiveBatch<B>,
) -> (Vec<(&'static str, f32)>, Vec<bool>, Vec<f32>) {
    let dev = Default::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let out = model.losses(b, &config.loss, &train_common::special_tokens(), &mut rng);
    let losses = out
        .parts
        .iter()
        .map(|(n, l)| (*n, l.clone().into_scalar()))
        .collect();
    let grads = GradientsParams::from_grads(out.total.backward(), model);
    let flat = FlatGrads::<Flex>::from_grads(&grads, &params(model), &dev);
    (
        losses,
        flat.has_grad,
        flat.buffer.into_data().to_vec().unwrap(),
    )
}

#[test]
fn pruning_unread_tokens_gives_the_same_losses_and_gradients() {
    let objectives = [
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0, 1.0],
    ];
    for weights in objectives {
        let mut config = train_common::small_train_config();
        train_common::set_objectives(&mut config, weights);
        config.model.vision.depth = 2;
        config.model.text.depth = 2;
        config.model.fusion.depth = 2;
        let dev = Default::default();
        let pruned = build_model::<B>(&config, 64, &dev);
        assert!(pruned.prune_unread_tokens, "on by default");
        let mut full = pruned.clone();
        full.prune_unread_tokens = false;
        let b = batch(6, config.model.text.context_length, config.data.image_size);
        assert!(b.attention_mask.contains(&0), "the batch has padding");

        let (loss_p, has_p, grad_p) = step(&pruned, &config, &b);
        let (loss_f, has_f, grad_f) = step(&full, &config, &b);
        assert_eq!(loss_p.len(), weights.iter().filter(|w| **w > 0.0).count());
        for ((name, p), (_, f)) in loss_p.iter().zip(&loss_f) {
            assert!(
                (p - f).abs() <= 1e-5 * f.abs(),
                "{weights:?} {name}: pruned {p} vs full {f}"
            );
        }
        assert_eq!(has_p, has_f);
        assert!(has_p.iter().all(|h| *h), "every parameter has a gradient");
        let scale = grad_f.iter().fold(0f32, |m, g| m.max(g.abs()));
        assert!(scale > 0.0);
        for (i, (p, f)) in grad_p.iter().zip(&grad_f).enumerate() {
            assert!(
                (p - f).abs() <= 1e-4 * scale,
                "{weights:?} gradient {i}: pruned {p} vs full {f}"
            );
        }
    }
}

/// A job of `world` ranks as seen by one rank: the gathered embeddings are known in advance.
struct Gathered {
    rank: usize,
    world: usize,
    all: Vec<f32>,
}

impl weft_model::FeatureGather for Gathered {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_gather(&mut self, local: &[f32]) -> Vec<f32> {
        let n = local.len();
        if n * self.world != self.all.len() {
            // The rows' padding flags and token counts: no padding and no tokens on any rank.
            assert!(local.iter().all(|&x| x == 0.0), "{local:?}");
            return vec![0.0; n * self.world];
        }
        assert_eq!(
            local,
            &self.all[self.rank * n..(self.rank + 1) * n],
            "this rank's slice"
        );
        self.all.clone()
    }
    fn all_reduce_sum(&mut self, _buf: &mut [f32]) {
        unreachable!("ITC alone reduces nothing")
    }
}

/// Rows `rows` of a batch.
fn slice_batch(b: &ObjectiveBatch<B>, rows: std::ops::Range<usize>) -> ObjectiveBatch<B> {
    pick_rows(b, &rows.collect::<Vec<_>>(), 0)
}

/// Rows `rows` of a batch, the last `pads` of them flagged as padding.
fn pick_rows(b: &ObjectiveBatch<B>, rows: &[usize], pads: usize) -> ObjectiveBatch<B> {
    let l = b.len;
    let index = weft_kernels::index_tensor::<B>(rows, &b.images.device());
    ObjectiveBatch {
        images: b.images.clone().select(0, index),
        ids: rows
            .iter()
            .flat_map(|&r| b.ids[r * l..(r + 1) * l].to_vec())
            .collect(),
        attention_mask: rows
            .iter()
            .flat_map(|&r| b.attention_mask[r * l..(r + 1) * l].to_vec())
            .collect(),
        len: l,
        is_pad: (0..rows.len()).map(|i| i + pads >= rows.len()).collect(),
    }
}

#[test]
fn itc_over_the_global_batch_matches_one_process() {
    let mut config = train_common::small_train_config();
    train_common::set_objectives(&mut config, [1.0, 0.0, 0.0, 0.0, 0.0]);
    config.loss.itc_label_smoothing = 0.1;
    let dev = Default::default();
    let model = build_model::<B>(&config, 64, &dev);
    let world = 2;
    let full = batch(8, config.model.text.context_length, config.data.image_size);
    let (single_loss, _, single_grad) = step(&model, &config, &full);

    let halves: Vec<_> = (0..world)
        .map(|r| slice_batch(&full, r * 4..(r + 1) * 4))
        .collect();
    let values = |t: Tensor<B, 2>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
    let mut all = Vec::new();
    for h in &halves {
        all.extend(values(model.image_embedding(h.images.clone()).unwrap()));
        all.extend(values(
            model
                .text_embedding(h.ids_tensor(), Some(h.padding_tensor()))
                .unwrap(),
        ));
    }
    let mut mean = vec![0.0f32; single_grad.len()];
    for (rank, half) in halves.iter().enumerate() {
        let mut gather = Gathered {
            rank,
            world,
            all: all.clone(),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let out = model.losses_with(
            half,
            &config.loss,
            &train_common::special_tokens(),
            &mut rng,
            Some(&mut gather),
        );
        let loss: f32 = out.parts[0].1.clone().into_scalar();
        let want = single_loss[0].1;
        assert!(
            (loss - want).abs() <= 1e-6 * want.abs(),
            "rank {rank}: {loss} vs one process {want}"
        );
        let grads = GradientsParams::from_grads(out.total.backward(), &model);
        let flat = FlatGrads::<Flex>::from_grads(&grads, &params(&model), &dev);
        let g: Vec<f32> = flat.buffer.into_data().to_vec().unwrap();
        for (m, g) in mean.iter_mut().zip(g) {
            *m += g / world as f32;
        }
    }
    let scale = single_grad.iter().fold(0f32, |m, g| m.max(g.abs()));
    assert!(scale > 0.0);
    for (i, (m, s)) in mean.iter().zip(&single_grad).enumerate() {
        assert!(
            (m - s).abs() <= 1e-5 * scale,
            "gradient {i}: mean over ranks {m} vs one process {s}"
        );
    }
}

/// The ranks of an in-process job, one thread each: every collective waits for all of them.
#[derive(Clone)]
struct Threads {
    rank: usize,
    world: usize,
    shared: std::sync::Arc<(std::sync::Mutex<Vec<Vec<f32>>>, std::sync::Barrier)>,
}

impl Threads {
    fn exchange(&mut self, local: &[f32]) -> Vec<Vec<f32>> {
        let (slots, barrier) = &*self.shared;
        slots.lock().unwrap()[self.rank] = local.to_vec();
        barrier.wait();
        let all = slots.lock().unwrap().clone();
        barrier.wait();
        all
    }
}

impl weft_model::FeatureGather for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_gather(&mut self, local: &[f32]) -> Vec<f32> {
        self.exchange(local).concat()
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) {
        let all = self.exchange(buf);
        for (i, v) in buf.iter_mut().enumerate() {
            *v = all.iter().map(|r| r[i]).sum();
        }
    }
}

/// A rank's loss, components and flat gradients.
type RankResult = (f64, Vec<(&'static str, f64)>, Vec<f32>);

/// One micro-batch of `config`'s objectives on each of `shards`, each a rank of an in-process
/// job (one thread each): every rank's loss, components and flat gradients.
fn ranks(
    config: &weft_config::Config,
    model: &weft_model::VlModel<B>,
    shards: Vec<ObjectiveBatch<B>>,
) -> Vec<RankResult> {
    let world = shards.len();
    let special = train_common::special_tokens();
    let dev = Default::default();
    let engines: Vec<_> = (0..world)
        .map(|_| weft_train::engine::Engine::new(model.clone(), config, special.clone(), &dev))
        .collect();
    let shared = std::sync::Arc::new((
        std::sync::Mutex::new(vec![Vec::new(); world]),
        std::sync::Barrier::new(world),
    ));
    std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .iter()
            .zip(shards)
            .enumerate()
            .map(|(rank, (engine, shard))| {
                let mut gather = Threads {
                    rank,
                    world,
                    shared: shared.clone(),
                };
                s.spawn(move || {
                    let dev = Default::default();
                    let micro = engine.micro_with(
                        &shard,
                        &mut ChaCha8Rng::seed_from_u64(5),
                        false,
                        &dev,
                        Some(&mut gather),
                    );
                    let (g, _) = micro.grads.expect("finite").into_vec();
                    (micro.loss, micro.parts, g)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// One process's micro-batch of `config`'s objectives on `batch`: its components and flat
/// gradients.
fn one_process(
    config: &weft_config::Config,
    model: &weft_model::VlModel<B>,
    batch: &ObjectiveBatch<B>,
) -> (Vec<(&'static str, f64)>, Vec<f32>) {
    let dev = Default::default();
    let special = train_common::special_tokens();
    let single = weft_train::engine::Engine::new(model.clone(), config, special, &dev);
    let one = single.micro(batch, &mut ChaCha8Rng::seed_from_u64(5), false, &dev);
    (one.parts, one.grads.expect("finite").into_vec().0)
}

/// The largest difference between the mean of `results`' gradients and `single`, relative to
/// `single`'s largest magnitude.
fn gradient_gap(single: &[f32], results: &[RankResult]) -> f32 {
    let scale = single.iter().fold(0f32, |m, g| m.max(g.abs()));
    let world = results.len() as f32;
    let worst = (0..single.len())
        .map(|i| (results.iter().map(|r| r.2[i]).sum::<f32>() / world - single[i]).abs())
        .fold(0f32, f32::max);
    worst / scale
}

/// The mean over `results`' ranks of every component and every gradient is `one`'s.
fn assert_mean_is(
    one: &(Vec<(&'static str, f64)>, Vec<f32>),
    results: &[RankResult],
    model: &weft_model::VlModel<B>,
) {
    let world = results.len();
    let (parts, single_grad) = one;
    assert_eq!(parts.len(), 5, "{parts:?}");
    for (k, (name, want)) in parts.iter().enumerate() {
        let mean: f64 = results.iter().map(|r| r.1[k].1).sum::<f64>() / world as f64;
        assert_eq!(results[0].1[k].0, *name);
        assert!(
            (mean - want).abs() <= 1e-5 * want.abs().max(1e-3),
            "{name}: mean over ranks {mean} vs one process {want}"
        );
    }
    let scale = single_grad.iter().fold(0f32, |m, g| m.max(g.abs()));
    assert!(scale > 0.0);
    let mut offset = 0;
    for p in params(model) {
        for (j, want) in single_grad[offset..offset + p.numel()].iter().enumerate() {
            let mean: f32 = results.iter().map(|r| r.2[offset + j]).sum::<f32>() / world as f32;
            assert!(
                (mean - want).abs() <= 2e-5 * scale,
                "{} [{j}]: mean over ranks {mean} vs one process {want}",
                p.path
            );
        }
        offset += p.numel();
    }
}

#[test]
fn every_objective_over_ranks_matches_one_process() {
    // ITM's hard negatives come from the global batch and pair one rank's texts with another's
    // images; MLM and LM are normalised by global token counts; every sample draws its masks
    // from its own generator. The mean of the ranks' gradients is the one-process gradient.
    let config = train_common::small_train_config();
    let full = batch(8, config.model.text.context_length, config.data.image_size);
    let model = build_model::<B>(&config, 64, &Default::default());
    let one = one_process(&config, &model, &full);
    let results = ranks(
        &config,
        &model,
        (0..2)
            .map(|r| slice_batch(&full, r * 4..(r + 1) * 4))
            .collect(),
    );
    assert_mean_is(&one, &results, &model);
}

#[test]
fn padding_rows_of_a_rank_weigh_nothing_in_any_objective() {
    // The last global batch of an epoch: rank 0 holds rows 0-3, rank 1 rows 4 and 5 and two
    // copies of rows 0 and 1 that only fill its batch. Every objective must train what one
    // process trains on rows 0-5: the copies are no ITC or ITM negative, have no MLM, LM or
    // MIM target, and every mean is over the real rows of the global batch.
    let config = train_common::small_train_config();
    let full = batch(8, config.model.text.context_length, config.data.image_size);
    let model = build_model::<B>(&config, 64, &Default::default());
    let one = one_process(&config, &model, &slice_batch(&full, 0..6));
    let shards = vec![slice_batch(&full, 0..4), pick_rows(&full, &[4, 5, 0, 1], 2)];
    assert_mean_is(&one, &ranks(&config, &model, shards), &model);
    // Without the flags the copies train (torch's DistributedSampler): another gradient.
    let unflagged = vec![slice_batch(&full, 0..4), pick_rows(&full, &[4, 5, 0, 1], 0)];
    let results = ranks(&config, &model, unflagged);
    let gap = gradient_gap(&one.1, &results);
    assert!(gap > 1e-3, "unflagged copies trained like padding ({gap})");
    // One process: padding rows at the end of a batch change nothing either.
    let padded = one_process(
        &config,
        &model,
        &pick_rows(&full, &[0, 1, 2, 3, 4, 5, 0, 1], 2),
    );
    assert_mean_is(&one, &[(0.0, padded.0, padded.1)], &model);
}

#[test]
fn a_seed_builds_the_same_initial_parameters_every_time_and_another_seed_others() {
    let mut config = train_common::small_train_config();
    let dev = Default::default();
    let first = weft_train::params::flat_params(&build_model::<B>(&config, 64, &dev));
    // The generator has moved on since: the build must seed it again.
    let again = weft_train::params::flat_params(&build_model::<B>(&config, 64, &dev));
    assert_eq!(first.len(), again.len());
    assert!(first == again, "same seed, other initial parameters");
    config.seed += 1;
    let other = weft_train::params::flat_params(&build_model::<B>(&config, 64, &dev));
    let same = first.iter().zip(&other).filter(|(a, b)| a == b).count();
    // Only the deterministic initialisations (LayerNorm's ones and zeros, zero biases) agree.
    assert!(
        same < first.len() / 2,
        "{same} of {} values equal",
        first.len()
    );
}

//! The FLOP counter (`weft_kernels::flops`, behind `weft bench train`'s and `weft doctor`'s
//! FLOPs and MFU) against hand counts of the products of a small CLIP-style model.

#[path = "common/train.rs"]
mod train_common;

use burn::backend::{Autodiff, Flex};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use weft_model::ObjectiveBatch;
use weft_train::weights::build_model;

type B = Autodiff<Flex>;

/// Forward products of one pre-norm encoder of `depth` layers over `t` tokens of width `w`
/// (MLP ratio `r`) for `b` samples, of which a head reads the first token: with `pruned`,
/// the last layer computes queries, the output projection and the MLP at that token only.
fn encoder(b: u64, t: u64, w: u64, r: u64, depth: u64, pruned: bool) -> u64 {
    let full = 2 * b * t * w * w * 4 // query, key, value, output projections
        + 2 * 2 * b * t * t * w // Q·Kᵀ and P·V
        + 2 * 2 * b * t * w * (r * w); // MLP in and out
    let last = if pruned {
        2 * 2 * b * t * w * w // keys and values of every token
            + 2 * 2 * b * w * w // the first token's query and output projection
            + 2 * 2 * b * t * w // its attention over every key
            + 2 * 2 * b * w * (r * w) // its MLP
    } else {
        full
    };
    (depth - 1) * full + last
}

fn counted(prune: bool) -> (u64, u64) {
    let mut config = train_common::small_train_config();
    train_common::set_objectives(&mut config, [1.0, 0.0, 0.0, 0.0, 0.0]);
    config.model.prune_unread_tokens = prune;
    config.model.vision.depth = 2;
    config.model.text.depth = 3;
    let dev = Default::default();
    let (b, l, s) = (4, config.model.text.context_length, config.data.image_size);
    let model = build_model::<B>(&config, 64, &dev);
    let mut ids = Vec::new();
    for _ in 0..b {
        ids.push(1);
        ids.extend(std::iter::repeat_n(9, l - 2));
        ids.push(2);
    }
    let batch = ObjectiveBatch {
        images: train_common::random_images::<B>(b, s, 1, &dev),
        ids,
        attention_mask: vec![1; b * l],
        len: l,
        is_pad: Vec::new(),
    };
    let counter = weft_kernels::flops::Counter::start();
    let out = model.losses_with(
        &batch,
        &config.loss,
        &train_common::special_tokens(),
        &mut ChaCha8Rng::seed_from_u64(0),
        None,
    );
    let flops = counter.finish();
    drop(out);
    let (b, l, s) = (b as u64, l as u64, s as u64);
    let m = &config.model;
    let (p, vw, tw, e) = (
        m.vision.patch_size as u64,
        m.vision.width as u64,
        m.text.width as u64,
        m.embed_dim as u64,
    );
    let patches = (s / p) * (s / p);
    let want = 2 * b * patches * (3 * p * p) * vw // patch embedding
        + encoder(b, patches + 1, vw, m.vision.mlp_ratio as u64, 2, prune)
        + encoder(b, l, tw, m.text.mlp_ratio as u64, 3, prune)
        + 2 * b * vw * e
        + 2 * b * tw * e // the two projections
        + 2 * b * b * e; // the logits
    (flops, want)
}

#[test]
fn the_forward_of_itc_counts_every_product_once() {
    for prune in [false, true] {
        let (flops, want) = counted(prune);
        assert_eq!(flops, want, "prune_unread_tokens = {prune}");
    }
    // Pruning the last layers saves products, and the counter sees it.
    assert!(counted(true).0 < counted(false).0);
}

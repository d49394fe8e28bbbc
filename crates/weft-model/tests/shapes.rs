//! Shapes of every module of weft-model, and the masks that shape attention.

use burn::backend::Flex;
use burn::tensor::{Bool, Distribution, Int, Tensor, TensorData};
use weft_model::block::AttentionBias;
use weft_model::fusion::FusionEncoder;
use weft_model::heads::{ItcHead, MimHead, MlmHead};
use weft_model::objectives::patch_targets;
use weft_model::text::{TextDecoderConfig, TextEncoderConfig};
use weft_model::vision::VisionTransformerConfig;
use weft_model::{Objectives, VlModelConfig};

type B = Flex;

fn ids(rows: &[&[i64]]) -> Tensor<B, 2, Int> {
    let l = rows[0].len();
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), l]), &Default::default())
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
}

fn vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

#[test]
fn vision_encoder_shapes() {
    let dev = Default::default();
    let vit = VisionTransformerConfig::new(32, 8, 24, 2, 2).init::<B>(&dev);
    let images = Tensor::<B, 4>::random([3, 3, 32, 32], Distribution::Default, &dev);
    assert_eq!(vit.embed_patches(images.clone()).dims(), [3, 16, 24]);
    // The patch embedding (a product over the patch matrix) is the stride-p convolution.
    let conv = vit.patch_embed.forward(images.clone()).reshape([3, 24, 16]);
    let conv = vec(conv.swap_dims(1, 2));
    let patches = vec(vit.embed_patches(images.clone()));
    assert!(close(&patches, &conv) && conv.iter().any(|v| v.abs() > 0.1));
    assert_eq!(vit.forward(images.clone()).dims(), [3, 17, 24]);
    let mask = Tensor::<B, 3>::zeros([3, 16, 1], &dev);
    let token = Tensor::<B, 3>::zeros([1, 1, 24], &dev);
    // An all-zero mask changes nothing.
    let masked = vit.forward_masked(images.clone(), mask, token);
    assert!(close(&vec(masked), &vec(vit.forward(images))));
}

#[test]
fn text_encoder_decoder_and_fusion_shapes() {
    let dev = Default::default();
    let text = TextEncoderConfig::new(50, 6, 16, 2, 2).init::<B>(&dev);
    let x = ids(&[&[1, 9, 10, 2, 0, 0], &[1, 11, 12, 13, 14, 2]]);
    let h = text.forward(x.clone(), None);
    assert_eq!(h.dims(), [2, 6, 16]);
    let image = Tensor::<B, 3>::random([2, 5, 24], Distribution::Default, &dev);
    let fusion = FusionEncoder::<B>::new(16, 24, 2, 2, 4, &dev);
    assert_eq!(
        fusion
            .forward(h, &AttentionBias::none(), image.clone())
            .dims(),
        [2, 6, 16]
    );
    for tied in [true, false] {
        let dec = TextDecoderConfig::new(50, 6, 16, 24, 1, 2)
            .with_tie_word_embeddings(tied)
            .init::<B>(&dev);
        assert_eq!(
            dec.forward(x.clone(), None, image.clone()).dims(),
            [2, 6, 50]
        );
        assert_eq!(dec.lm_head.is_some(), !tied);
    }
}

#[test]
fn padding_keys_do_not_change_real_positions() {
    let dev = Default::default();
    let text = TextEncoderConfig::new(50, 6, 16, 2, 2).init::<B>(&dev);
    let pad: Tensor<B, 2, Bool> = Tensor::from_data(
        TensorData::new(vec![false, false, false, false, true, true], [1, 6]),
        &dev,
    );
    let a = text.forward(ids(&[&[1, 9, 10, 2, 0, 0]]), Some(pad.clone()));
    let b = text.forward(ids(&[&[1, 9, 10, 2, 33, 44]]), Some(pad));
    let real = |t: Tensor<B, 3>| vec(t.narrow(1, 0, 4));
    assert!(close(&real(a.clone()), &real(b.clone())));
    // Without the mask, the padded tokens do leak into the real positions.
    let c = text.forward(ids(&[&[1, 9, 10, 2, 33, 44]]), None);
    assert!(!close(&real(a), &real(c)));
}

#[test]
fn decoder_is_causal() {
    let dev = Default::default();
    let dec = TextDecoderConfig::new(50, 6, 16, 24, 2, 2).init::<B>(&dev);
    let image = Tensor::<B, 3>::random([1, 5, 24], Distribution::Default, &dev);
    let a = dec.forward(ids(&[&[4, 9, 10, 11, 12, 13]]), None, image.clone());
    let b = dec.forward(ids(&[&[4, 9, 10, 30, 31, 32]]), None, image);
    // Positions 0..3 see only tokens 0..=position, which are equal.
    assert!(close(
        &vec(a.clone().narrow(1, 0, 3)),
        &vec(b.clone().narrow(1, 0, 3))
    ));
    assert!(!close(&vec(a.narrow(1, 3, 1)), &vec(b.narrow(1, 3, 1))));
}

#[test]
fn head_shapes() {
    let dev = Default::default();
    let itc = ItcHead::<B>::new(24, 16, 8, (1.0f64 / 0.07).ln(), 100f64.ln(), &dev);
    let img = itc.image_embedding(Tensor::random([3, 5, 24], Distribution::Default, &dev));
    let txt = itc.text_embedding(Tensor::random([3, 4, 16], Distribution::Default, &dev));
    assert_eq!(img.dims(), [3, 8]);
    assert_eq!(txt.dims(), [3, 8]);
    for norm in vec(img.square().sum_dim(1)) {
        assert!((norm - 1.0).abs() < 1e-5);
    }
    let scale: f32 = itc.scale().into_scalar();
    assert!((scale - 1.0 / 0.07).abs() < 1e-3);
    let emb = Tensor::<B, 2>::random([50, 16], Distribution::Default, &dev);
    for tied in [true, false] {
        let mlm = MlmHead::<B>::new(16, 50, tied, &dev);
        let h = Tensor::random([7, 16], Distribution::Default, &dev);
        assert_eq!(mlm.forward(h, emb.clone()).dims(), [7, 50]);
    }
    let mim = MimHead::<B>::new(24, 8, 3, &dev);
    assert_eq!(mim.predictor.weight.dims(), [24, 192]);
    let images = Tensor::<B, 4>::random([2, 3, 32, 32], Distribution::Default, &dev);
    let t = patch_targets(images, 8);
    assert_eq!(t.dims(), [2, 16, 192]);
    let mean = vec(t.clone().mean_dim(2));
    let var = vec(t.square().mean_dim(2));
    assert!(mean.iter().all(|m| m.abs() < 1e-4));
    assert!(var.iter().all(|v| (v - 1.0).abs() < 1e-3));
}

#[test]
fn logit_scale_is_clamped() {
    let dev = Default::default();
    let itc = ItcHead::<B>::new(4, 4, 4, 10.0, 100f64.ln(), &dev);
    let scale: f32 = itc.scale().into_scalar();
    assert!((scale - 100.0).abs() < 1e-2, "{scale}");
}

#[test]
fn only_the_needed_modules_are_built() {
    let dev = Default::default();
    let config = |o: Objectives| {
        VlModelConfig::new(
            VisionTransformerConfig::new(16, 8, 8, 1, 2),
            TextEncoderConfig::new(20, 4, 8, 1, 2),
            1,
            2,
            4,
            1,
            2,
            4,
            8,
            2.0,
            4.6,
            true,
            o,
        )
        .init::<B>(&dev)
    };
    let names = |o| -> Vec<&str> { config(o).param_counts().iter().map(|(n, _)| *n).collect() };
    let none = Objectives::new(false, false, false, false, false);
    let itc = Objectives { itc: true, ..none };
    let itm = Objectives { itm: true, ..none };
    let mlm = Objectives { mlm: true, ..none };
    let lm = Objectives { lm: true, ..none };
    let mim = Objectives { mim: true, ..none };
    assert_eq!(names(itc), ["vision", "text", "itc"]);
    assert_eq!(names(itm), ["vision", "text", "itc", "fusion", "itm"]);
    assert_eq!(names(mlm), ["vision", "text", "fusion", "mlm"]);
    assert_eq!(names(lm), ["vision", "decoder"]);
    assert_eq!(names(mim), ["vision", "mim"]);
}

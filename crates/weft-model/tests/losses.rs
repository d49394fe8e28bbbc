//! Every objective against a small case computed by hand (in f64), and the ITM sampler.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use weft_model::objectives::{
    cross_entropy, itc_loss, mask_tokens, mim_loss, patch_mask, sample_hard_negatives,
    shift_for_lm, Sampling,
};

type B = Flex;

fn t2(v: &[f32], r: usize, c: usize) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v.to_vec(), [r, c]), &Default::default())
}

fn scalar(t: Tensor<B, 1>) -> f64 {
    f64::from(t.into_scalar())
}

/// -log softmax(row)[target] in f64.
fn nll(row: &[f64], target: usize) -> f64 {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    lse - row[target]
}

#[test]
fn cross_entropy_by_hand() {
    let logits = [1.0, 2.0, 3.0, 1.0, 1.0, 1.0];
    let expect = (nll(&[1.0, 2.0, 3.0], 2) + nll(&[1.0, 1.0, 1.0], 0)) / 2.0;
    let got = scalar(cross_entropy(t2(&logits, 2, 3), &[2, 0], None, 0.0));
    assert!((got - expect).abs() < 1e-5, "{got} vs {expect}");
    // Weight 0 ignores the second row.
    let got = scalar(cross_entropy(
        t2(&logits, 2, 3),
        &[2, 0],
        Some(&[1.0, 0.0]),
        0.0,
    ));
    assert!((got - nll(&[1.0, 2.0, 3.0], 2)).abs() < 1e-5);
    // Label smoothing 0.1: 0.9 * nll + 0.1 * mean_j(-log p_j).
    let row = [1.0, 2.0, 3.0];
    let mean_nll = (0..3).map(|j| nll(&row, j)).sum::<f64>() / 3.0;
    let expect = 0.9 * nll(&row, 2) + 0.1 * mean_nll;
    let got = scalar(cross_entropy(
        t2(&row.map(|x| x as f32), 1, 3),
        &[2],
        None,
        0.1,
    ));
    assert!((got - expect).abs() < 1e-5, "{got} vs {expect}");
    // All weights zero: 0, not NaN.
    let got = scalar(cross_entropy(
        t2(&logits, 2, 3),
        &[2, 0],
        Some(&[0.0, 0.0]),
        0.0,
    ));
    assert_eq!(got, 0.0);
}

#[test]
fn itc_is_symmetric_infonce_by_hand() {
    let image = [1.0f32, 0.0, 0.0, 1.0];
    let text = [1.0f32, 0.0, 0.6, 0.8];
    let s = 2.0f64;
    // logits[i][j] = s * <image_i, text_j>
    let l = [[s * 1.0, s * 0.6], [s * 0.0, s * 0.8]];
    let i2t = (nll(&l[0], 0) + nll(&l[1], 1)) / 2.0;
    let t2i = (nll(&[l[0][0], l[1][0]], 0) + nll(&[l[0][1], l[1][1]], 1)) / 2.0;
    let expect = (i2t + t2i) / 2.0;
    let scale = Tensor::<B, 1>::from_data(TensorData::new(vec![2.0f32], [1]), &Default::default());
    let (loss, logits) = itc_loss(t2(&image, 2, 2), t2(&text, 2, 2), scale, 0.0);
    assert!((scalar(loss) - expect).abs() < 1e-5);
    let logits: Vec<f32> = logits.into_data().to_vec().unwrap();
    assert!((f64::from(logits[1]) - 1.2).abs() < 1e-6);
}

#[test]
fn itm_negatives_never_pick_a_positive() {
    let b = 6;
    // Rows 1 and 4 share a caption: they are positives of each other too.
    let positive = |i: usize, j: usize| i == j || (i == 1 && j == 4) || (i == 4 && j == 1);
    for trial in 0..300 {
        // The diagonal and the duplicate pair score highest, so a sampler that ignored the mask
        // would pick them almost always.
        let logits: Vec<f32> = (0..b * b)
            .map(|k| {
                let (i, j) = (k / b, k % b);
                if positive(i, j) {
                    50.0
                } else {
                    ((k * 7 + trial) % 11) as f32 / 3.0
                }
            })
            .collect();
        let neg = sample_hard_negatives(&logits, b, b, positive, &Sampling::new(trial as u64));
        for i in 0..b {
            let img = neg.image_for_text[i];
            let txt = neg.text_for_image[i];
            assert!(!positive(img, i), "text {i} got positive image {img}");
            assert!(!positive(i, txt), "image {i} got positive text {txt}");
        }
    }
}

#[test]
fn itm_negatives_follow_the_similarities() {
    let b = 3;
    // Image 0 is far more similar to text 2 than to text 1.
    let logits = [9.0, 0.0, 8.0, 0.0, 9.0, 0.0, 0.0, 0.0, 9.0];
    let mut hits = 0;
    for seed in 0..200 {
        let neg = sample_hard_negatives(&logits, b, b, |i, j| i == j, &Sampling::new(seed));
        hits += usize::from(neg.text_for_image[0] == 2);
    }
    assert!(hits > 190, "{hits}");
    // Every candidate positive: the next index stands in.
    let neg = sample_hard_negatives(&[0.0; 4], 2, 2, |_, _| true, &Sampling::new(0));
    assert_eq!(neg.text_for_image, vec![1, 0]);
}

#[test]
fn mlm_masks_15_percent_with_80_10_10() {
    let l = 20;
    let rows = 500;
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in 0..rows {
        for t in 0..l {
            let (id, m) = match t {
                0 => (1, 1),
                15 => (2, 1),
                16.. => (0, 0),
                _ => (10 + ((r + t) % 50) as u32, 1),
            };
            ids.push(id);
            mask.push(m);
        }
    }
    let special: Vec<u32> = (0..7).collect();
    let m = mask_tokens(&ids, &mask, l, 64, &special, 3, 0.15, &Sampling::new(3));
    let candidates = rows * 14;
    let frac = m.positions.len() as f64 / candidates as f64;
    assert!((frac - 0.15).abs() < 0.02, "{frac}");
    let (mut masked, mut kept, mut random) = (0, 0, 0);
    for (&p, &target) in m.positions.iter().zip(&m.targets) {
        assert_eq!(ids[p] as usize, target);
        assert!(
            !special.contains(&ids[p]) && mask[p] == 1,
            "chose a special or pad"
        );
        match m.input_ids[p] {
            3 => masked += 1,
            x if x == ids[p] => kept += 1,
            x => {
                assert!(!special.contains(&x));
                random += 1
            }
        }
    }
    let n = m.positions.len() as f64;
    assert!((masked as f64 / n - 0.8).abs() < 0.04);
    // A random replacement may draw the original token: "kept" is 10% plus a little.
    assert!((kept as f64 / n - 0.1).abs() < 0.04);
    assert!((random as f64 / n - 0.1).abs() < 0.04);
    // Unchosen positions are untouched.
    for (i, (&got, &orig)) in m.input_ids.iter().zip(&ids).enumerate() {
        if !m.positions.contains(&i) {
            assert_eq!(got, orig);
        }
    }
}

#[test]
fn mlm_always_predicts_something() {
    let m = mask_tokens(
        &[1, 20, 2, 0],
        &[1, 1, 1, 0],
        4,
        30,
        &[0, 1, 2, 3],
        3,
        1e-9,
        &Sampling::new(0),
    );
    assert_eq!(m.positions, vec![1]);
    assert_eq!(m.targets, vec![20]);
}

#[test]
fn lm_shift_by_hand() {
    // [CLS] a b [SEP] [PAD]
    let lm = shift_for_lm(&[1, 20, 21, 2, 0], &[1, 1, 1, 1, 0], 5, 4);
    assert_eq!(lm.len, 4);
    assert_eq!(lm.input_ids, vec![4, 20, 21, 2]);
    assert_eq!(lm.targets, vec![20, 21, 2, 0]);
    assert_eq!(lm.weights, vec![1.0, 1.0, 1.0, 0.0]);
    assert_eq!(lm.padding, vec![false, false, false, false]);
}

#[test]
fn mim_loss_by_hand_and_mask_counts() {
    let dev = Default::default();
    // 1 image, 2 patches of 2 values; only patch 1 is masked.
    let pred = Tensor::<B, 3>::from_data(
        TensorData::new(vec![9.0f32, 9.0, 1.0, 3.0], [1, 2, 2]),
        &dev,
    );
    let target = Tensor::<B, 3>::from_data(
        TensorData::new(vec![0.0f32, 0.0, 0.0, 1.0], [1, 2, 2]),
        &dev,
    );
    let mask = Tensor::<B, 2>::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 2]), &dev);
    // ((1-0)^2 + (3-1)^2) / 2 = 2.5; the unmasked patch's error does not count.
    assert!((scalar(mim_loss(pred, target, mask)) - 2.5).abs() < 1e-6);
    let m = patch_mask(4, 16, 0.75, &Sampling::new(0));
    for row in m.chunks(16) {
        assert_eq!(row.iter().sum::<f32>(), 12.0);
    }
    assert_ne!(&m[..16], &m[16..32], "masks differ between images");
}

//! weft-kernels' fused linear, LayerNorm, GELU, attention and position embeddings against
//! burn's own composition of the same operations: outputs and every input gradient, on awkward
//! sizes, with every mask shape; gradients that add up over several fused ops (a whole
//! pre-norm block, a weight used twice); the forward-only flex path; bit-identical results for
//! any thread count; NaN propagation.

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use burn_flex::Flex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_kernels::reference;

type Ad = Autodiff<Flex>;

fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| scale * (rng.random::<f32>() * 2.0 - 1.0))
        .collect()
}

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    seed: u64,
    shape: [usize; D],
    scale: f32,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::from_data(
        TensorData::new(values(seed, n, scale), shape),
        &Default::default(),
    )
}

fn vec_of<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: fused {g} vs reference {w} (scale {scale})"
        );
    }
    // The comparison must be able to fail: the values are not all zero.
    assert!(want.iter().any(|v| v.abs() > 0.0), "{what}: all zero");
}

/// Runs `f` on fresh tracked inputs, weights the output by a fixed random tensor, and returns
/// the output and the gradient of every input.
fn run<const D: usize, const N: usize>(
    inputs: &[(u64, Vec<usize>, f32); N],
    f: impl Fn(&[Tensor<Ad, 3>]) -> Tensor<Ad, D>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let xs: Vec<Tensor<Ad, 3>> = inputs
        .iter()
        .map(|(seed, shape, scale)| {
            let mut s = shape.clone();
            while s.len() < 3 {
                s.insert(0, 1);
            }
            tensor::<Ad, 3>(*seed, [s[0], s[1], s[2]], *scale).require_grad()
        })
        .collect();
    let y = f(&xs);
    let weights = Tensor::<Ad, D>::from_data(
        TensorData::new(values(99, y.shape().num_elements(), 1.0), y.shape()),
        &Default::default(),
    );
    let grads = (y.clone() * weights).sum().backward();
    let gs = xs
        .iter()
        .map(|x| vec_of(x.grad(&grads).expect("every input gets a gradient")))
        .collect();
    (vec_of(y), gs)
}

#[test]
fn linear_matches_burn_forward_and_backward() {
    // 70 rows (not a multiple of the 32-row task), 13 -> 19 features.
    let inputs = [
        (5, vec![70, 13], 2.0),
        (6, vec![13, 19], 1.0),
        (7, vec![19], 1.0),
    ];
    let lin = |fused: bool| {
        move |x: &[Tensor<Ad, 3>]| {
            let (a, w) = (
                x[0].clone().reshape([70, 13]),
                x[1].clone().reshape([13, 19]),
            );
            let b = Some(x[2].clone().reshape([19]));
            if fused {
                weft_kernels::linear(a, w, b)
            } else {
                reference::linear(a, w, b)
            }
        }
    };
    let (y, g) = run(&inputs, lin(true));
    let (y_ref, g_ref) = run(&inputs, lin(false));
    assert_close("linear y", &y, &y_ref, 1e-5);
    for (i, name) in ["dx", "dw", "db"].iter().enumerate() {
        assert_close(name, &g[i], &g_ref[i], 1e-5);
    }
}

#[test]
fn linear_with_a_residual_matches_burn_forward_and_backward() {
    let inputs = [
        (8, vec![70, 13], 2.0),
        (9, vec![13, 19], 1.0),
        (10, vec![19], 1.0),
        (11, vec![70, 19], 1.0),
    ];
    let lin = |fused: bool| {
        move |x: &[Tensor<Ad, 3>]| {
            let (a, w) = (
                x[0].clone().reshape([70, 13]),
                x[1].clone().reshape([13, 19]),
            );
            let (b, r) = (x[2].clone().reshape([19]), x[3].clone().reshape([70, 19]));
            // The residual also feeds another op, as in a block, so its gradients add up.
            let r = r.clone() * 2.0 + r.sin();
            if fused {
                weft_kernels::linear_add(a, w, b, r)
            } else {
                reference::linear(a, w, Some(b)) + r
            }
        }
    };
    let (y, g) = run(&inputs, lin(true));
    let (y_ref, g_ref) = run(&inputs, lin(false));
    assert_close("linear_add y", &y, &y_ref, 1e-5);
    for (i, name) in ["dx", "dw", "db", "dresidual"].iter().enumerate() {
        assert_close(name, &g[i], &g_ref[i], 1e-5);
    }
}

#[test]
fn layer_norm_matches_burn_forward_and_backward() {
    // 70 rows (not a multiple of the 32-row task), width 20 (not a multiple of 8 lanes).
    let inputs = [
        (1, vec![7, 10, 20], 3.0),
        (2, vec![20], 1.0),
        (3, vec![20], 1.0),
    ];
    let ln = |fused: bool| {
        move |x: &[Tensor<Ad, 3>]| {
            let (g, b) = (x[1].clone().reshape([20]), x[2].clone().reshape([20]));
            let shifted = x[0].clone().add_scalar(5.0);
            if fused {
                weft_kernels::layer_norm(shifted, g, b, 1e-5)
            } else {
                reference::layer_norm(shifted, g, b, 1e-5)
            }
        }
    };
    let (y, g) = run(&inputs, ln(true));
    let (y_ref, g_ref) = run(&inputs, ln(false));
    assert_close("layer_norm y", &y, &y_ref, 1e-5);
    for (i, name) in ["dx", "dgamma", "dbeta"].iter().enumerate() {
        assert_close(name, &g[i], &g_ref[i], 1e-4);
    }
}

#[test]
fn gelu_matches_burn_forward_and_backward() {
    let inputs = [(4, vec![3, 33, 37], 5.0)];
    let (y, g) = run(&inputs, |x| weft_kernels::gelu(x[0].clone()));
    let (y_ref, g_ref) = run(&inputs, |x| reference::gelu(x[0].clone()));
    assert_close("gelu y", &y, &y_ref, 1e-6);
    assert_close("gelu dx", &g[0], &g_ref[0], 1e-5);
}

/// `[B, 1, 1, Lk]` padding (the last `pad[b]` keys of sample b), optionally plus causal.
fn bias(batch: usize, lq: usize, lk: usize, pad: Option<&[usize]>, causal: bool) -> Tensor<Ad, 4> {
    let rows = if causal { lq } else { 1 };
    let bsz = if pad.is_some() { batch } else { 1 };
    let mut v = vec![0.0f32; bsz * rows * lk];
    for b in 0..bsz {
        for i in 0..rows {
            for j in 0..lk {
                let padded = pad.is_some_and(|p| j >= lk - p[b]);
                if padded || (causal && j > i) {
                    v[(b * rows + i) * lk + j] = -1.0e9;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [bsz, 1, rows, lk]), &Default::default())
}

#[test]
fn attention_matches_burn_with_every_mask_shape() {
    let (batch, heads, d) = (3, 4, 5);
    let w = heads * d;
    let pads = [0usize, 2, 4];
    let cases: [(&str, usize, usize, Option<Tensor<Ad, 4>>); 5] = [
        ("cross, no mask", 7, 9, None),
        (
            "self, padding",
            9,
            9,
            Some(bias(batch, 9, 9, Some(&pads), false)),
        ),
        ("self, causal", 9, 9, Some(bias(batch, 9, 9, None, true))),
        (
            "self, causal+padding",
            9,
            9,
            Some(bias(batch, 9, 9, Some(&pads), true)),
        ),
        (
            "cross, padding",
            7,
            9,
            Some(bias(batch, 7, 9, Some(&pads), false)),
        ),
    ];
    for (name, lq, lk, mask) in cases {
        let inputs = [
            (10, vec![batch, lq, w], 2.0),
            (11, vec![batch, lk, w], 2.0),
            (12, vec![batch, lk, w], 1.0),
        ];
        let attend = |fused: bool| {
            let mask = mask.clone();
            move |x: &[Tensor<Ad, 3>]| {
                let (q, k, v) = (x[0].clone(), x[1].clone(), x[2].clone());
                if fused {
                    weft_kernels::attention(q, k, v, heads, mask.clone())
                } else {
                    reference::attention(q, k, v, heads, mask.clone())
                }
            }
        };
        let (y, g) = run(&inputs, attend(true));
        let (y_ref, g_ref) = run(&inputs, attend(false));
        assert_close(&format!("{name}: out"), &y, &y_ref, 1e-5);
        for (i, what) in ["dq", "dk", "dv"].iter().enumerate() {
            assert_close(&format!("{name}: {what}"), &g[i], &g_ref[i], 1e-4);
        }
    }
}

#[test]
fn indexed_attention_matches_selected_keys_and_values() {
    // 7 query samples over 4 key/value samples: sample 1 is used three times, sample 2 by
    // nobody (its gradients must be zero), with padding that follows the query samples.
    let index = [0usize, 1, 3, 1, 0, 1, 3];
    let (batch, kv_batch, lq, lk, heads, d) = (index.len(), 4, 5, 6, 2, 3);
    let w = heads * d;
    let pads = [0usize, 1, 2, 3, 0, 1, 2];
    let inputs = [
        (20, vec![batch, lq, w], 2.0),
        (21, vec![kv_batch, lk, w], 2.0),
        (22, vec![kv_batch, lk, w], 1.0),
    ];
    let attend = |fused: bool| {
        move |x: &[Tensor<Ad, 3>]| {
            let (q, k, v) = (x[0].clone(), x[1].clone(), x[2].clone());
            let mask = Some(bias(batch, lq, lk, Some(&pads), false));
            if fused {
                weft_kernels::attention_indexed(q, k, v, heads, mask, Some(&index))
            } else {
                let i = weft_kernels::index_tensor::<Ad>(&index, &Default::default());
                let (k, v) = (k.select(0, i.clone()), v.select(0, i));
                reference::attention(q, k, v, heads, mask)
            }
        }
    };
    let (y, g) = run(&inputs, attend(true));
    let (y_ref, g_ref) = run(&inputs, attend(false));
    assert_close("indexed: out", &y, &y_ref, 1e-5);
    for (i, what) in ["dq", "dk", "dv"].iter().enumerate() {
        assert_close(&format!("indexed: {what}"), &g[i], &g_ref[i], 1e-4);
    }
    let unused = 2 * lk * w..3 * lk * w;
    assert!(
        g[1][unused.clone()].iter().all(|&x| x == 0.0),
        "dk of sample 2"
    );
    assert!(g[2][unused].iter().all(|&x| x == 0.0), "dv of sample 2");

    // The flex (evaluation) path too.
    let t = |seed, shape: [usize; 3], scale| tensor::<Flex, 3>(seed, shape, scale);
    let flex = weft_kernels::attention_indexed(
        t(20, [batch, lq, w], 2.0),
        t(21, [kv_batch, lk, w], 2.0),
        t(22, [kv_batch, lk, w], 1.0),
        heads,
        None,
        Some(&index),
    );
    let i = weft_kernels::index_tensor::<Flex>(&index, &Default::default());
    let want = reference::attention(
        t(20, [batch, lq, w], 2.0),
        t(21, [kv_batch, lk, w], 2.0).select(0, i.clone()),
        t(22, [kv_batch, lk, w], 1.0).select(0, i),
        heads,
        None,
    );
    assert_close("indexed: flex out", &vec_of(flex), &vec_of(want), 1e-5);
}

#[test]
fn attention_over_chosen_rows_matches_full_attention_then_select() {
    // 5 query samples of 6 tokens over 3 key/value samples; each sample keeps some of its
    // rows (sample 2 none, sample 4 all), as an encoder's last layer keeps the tokens its
    // heads read.
    let index = [2usize, 0, 1, 0, 2];
    let keep: [&[usize]; 5] = [&[0], &[1, 3, 4], &[], &[0, 5], &[0, 1, 2, 3, 4, 5]];
    let (batch, kv_batch, lq, lk, heads, d) = (index.len(), 3, 6, 7, 2, 4);
    let w = heads * d;
    let pads = [0usize, 2, 1, 3, 0];
    let mut rows = vec![0usize];
    let mut flat = Vec::new();
    for (b, k) in keep.iter().enumerate() {
        flat.extend(k.iter().map(|i| b * lq + i));
        rows.push(flat.len());
    }
    let inputs = [
        (30, vec![batch, lq, w], 2.0),
        (31, vec![kv_batch, lk, w], 2.0),
        (32, vec![kv_batch, lk, w], 1.0),
    ];
    for fused in [true, false] {
        let attend = |x: &[Tensor<Ad, 3>]| {
            let (q, k, v) = (x[0].clone(), x[1].clone(), x[2].clone());
            let mask = Some(bias(batch, lq, lk, Some(&pads), false));
            let picked = weft_kernels::index_tensor::<Ad>(&flat, &Default::default());
            let out = if fused {
                let q = q.reshape([batch * lq, w]).select(0, picked);
                weft_kernels::attention_rows(q, &rows, k, v, heads, mask, Some(&index))
            } else {
                let i = weft_kernels::index_tensor::<Ad>(&index, &Default::default());
                let (k, v) = (k.select(0, i.clone()), v.select(0, i));
                reference::attention(q, k, v, heads, mask)
                    .reshape([batch * lq, w])
                    .select(0, picked)
            };
            out.unsqueeze_dim::<3>(0)
        };
        let (y, g) = run(&inputs, attend);
        let (y_ref, g_ref) = run(&inputs, |x: &[Tensor<Ad, 3>]| {
            let (q, k, v) = (x[0].clone(), x[1].clone(), x[2].clone());
            let mask = Some(bias(batch, lq, lk, Some(&pads), false));
            let picked = weft_kernels::index_tensor::<Ad>(&flat, &Default::default());
            let q = q.reshape([batch * lq, w]).select(0, picked);
            reference::attention_rows(q, &rows, k, v, heads, mask, Some(&index))
                .unsqueeze_dim::<3>(0)
        });
        let name = if fused { "fused rows" } else { "full + select" };
        assert_close(&format!("{name}: out"), &y, &y_ref, 1e-5);
        for (i, what) in ["dq", "dk", "dv"].iter().enumerate() {
            assert_close(&format!("{name}: {what}"), &g[i], &g_ref[i], 1e-4);
        }
        // The rows that were not kept get no gradient.
        let dropped = (2 * lq * w)..(3 * lq * w);
        assert!(
            g[0][dropped].iter().all(|&x| x == 0.0),
            "{name}: dq of sample 2"
        );
    }
}

#[test]
fn positions_match_burn_forward_and_backward() {
    // With a CLS-like prefix of 2 tokens and without, from a table longer than needed.
    for prefix in [2usize, 0] {
        let inputs = [
            (13, vec![3, 9, 6], 2.0),
            (14, vec![1, prefix.max(1), 6], 1.0),
            (15, vec![1, 14, 6], 1.0),
        ];
        let embed = |fused: bool| {
            move |x: &[Tensor<Ad, 3>]| {
                let (t, pos) = (x[0].clone(), x[2].clone());
                // The tokens also feed another op, so their gradients add up.
                let t = t.clone() * 3.0 + t.sin();
                let pre = (prefix > 0).then(|| x[1].clone());
                let y = if fused {
                    weft_kernels::add_positions(t, pre, pos)
                } else {
                    let pre = pre.unwrap_or_else(|| Tensor::zeros([1, 0, 6], &Default::default()));
                    reference::add_positions(t, pre, pos)
                };
                // Without a prefix, x[1] still needs a gradient for `run`.
                y + x[1].clone().sum().reshape([1, 1, 1])
            }
        };
        let (y, g) = run(&inputs, embed(true));
        let (y_ref, g_ref) = run(&inputs, embed(false));
        assert_close("positions y", &y, &y_ref, 1e-6);
        for (i, name) in ["dx", "dprefix", "dpositions"].iter().enumerate() {
            assert_close(&format!("prefix {prefix}: {name}"), &g[i], &g_ref[i], 1e-5);
        }
        // Rows of the table past the tokens used get no gradient.
        assert!(g[2][(prefix + 9) * 6..].iter().all(|&v| v == 0.0));
    }
}

type Lin = fn(Tensor<Ad, 3>, Tensor<Ad, 2>, Tensor<Ad, 1>) -> Tensor<Ad, 3>;
type Ln = fn(Tensor<Ad, 3>, Tensor<Ad, 1>, Tensor<Ad, 1>, f64) -> Tensor<Ad, 3>;

/// A pre-norm Transformer block in which the fused ops add up gradients: the block input feeds
/// LayerNorm and the residual, the normalised tokens feed Q, K and V (rank-3 linears), and one
/// weight serves both Q and K.
#[test]
fn gradients_add_up_over_a_whole_block() {
    let w = 12;
    let inputs = [
        (50, vec![2, 7, w], 2.0),
        (51, vec![1, w, w], 0.5),
        (52, vec![1, w, w], 0.5),
        (53, vec![1, w, w], 0.5),
        (54, vec![1, 1, w], 1.0),
        (55, vec![1, 1, w], 1.0),
    ];
    let block = |fused: bool| {
        move |x: &[Tensor<Ad, 3>]| {
            let m = |i: usize| x[i].clone().reshape([w, w]);
            let v = |i: usize| x[i].clone().reshape([w]);
            let tokens = x[0].clone() * 1.5;
            let (lin, ln): (Lin, Ln) = if fused {
                (
                    |x, w, b| weft_kernels::linear(x, w, Some(b)),
                    weft_kernels::layer_norm,
                )
            } else {
                (
                    |x, w, b| reference::linear(x, w, Some(b)),
                    reference::layer_norm,
                )
            };
            let h = ln(tokens.clone(), v(4), v(5), 1e-5);
            let (q, k, val) = (
                lin(h.clone(), m(1), v(4)),
                lin(h.clone(), m(1), v(5)),
                lin(h, m(2), v(4)),
            );
            let a = if fused {
                weft_kernels::attention(q, k, val, 3, None)
            } else {
                reference::attention(q, k, val, 3, None)
            };
            let x1 = if fused {
                weft_kernels::linear_add(a, m(3), v(5), tokens)
            } else {
                reference::linear(a, m(3), Some(v(5))) + tokens
            };
            let h = ln(x1.clone(), v(5), v(4), 1e-5);
            let h = if fused {
                weft_kernels::gelu(lin(h, m(2), v(4)))
            } else {
                reference::gelu(lin(h, m(2), v(4)))
            };
            if fused {
                weft_kernels::linear_add(h, m(3), v(4), x1)
            } else {
                reference::linear(h, m(3), Some(v(4))) + x1
            }
        }
    };
    let (y, g) = run(&inputs, block(true));
    let (y_ref, g_ref) = run(&inputs, block(false));
    assert_close("block y", &y, &y_ref, 1e-5);
    for (i, name) in ["dx", "dw_qk", "dw_v", "dw_o", "dgamma", "dbeta"]
        .iter()
        .enumerate()
    {
        assert_close(name, &g[i], &g_ref[i], 1e-4);
    }
}

#[test]
fn the_flex_forward_path_matches_the_training_path() {
    let x = || tensor::<Flex, 3>(20, [2, 11, 24], 2.0);
    let g = || tensor::<Flex, 1>(21, [24], 1.0);
    let b = || tensor::<Flex, 1>(22, [24], 1.0);
    let ln = vec_of(weft_kernels::layer_norm(x(), g(), b(), 1e-5));
    let ln_ref = vec_of(reference::layer_norm(x(), g(), b(), 1e-5));
    assert_close("flex layer_norm", &ln, &ln_ref, 1e-5);
    let w = || tensor::<Flex, 2>(24, [24, 7], 1.0);
    let c = || tensor::<Flex, 1>(25, [7], 1.0);
    let x2 = || x().reshape([22, 24]);
    let li = vec_of(weft_kernels::linear(x2(), w(), Some(c())));
    let li_ref = vec_of(reference::linear(x2(), w(), Some(c())));
    assert_close("flex linear", &li, &li_ref, 1e-5);
    let ge = vec_of(weft_kernels::gelu(x()));
    assert_close("flex gelu", &ge, &vec_of(reference::gelu(x())), 1e-6);
    let k = || tensor::<Flex, 3>(23, [2, 5, 24], 1.0);
    let at = vec_of(weft_kernels::attention(x(), k(), k(), 3, None));
    let at_ref = vec_of(reference::attention(x(), k(), k(), 3, None));
    assert_close("flex attention", &at, &at_ref, 1e-5);
    let pre = || tensor::<Flex, 3>(26, [1, 1, 24], 1.0);
    let pos = || tensor::<Flex, 3>(27, [1, 13, 24], 1.0);
    let po = vec_of(weft_kernels::add_positions(x(), Some(pre()), pos()));
    let po_ref = vec_of(reference::add_positions(x(), pre(), pos()));
    assert_close("flex positions", &po, &po_ref, 1e-6);
    let li3 = vec_of(weft_kernels::linear(x(), w(), Some(c())));
    assert_close("flex rank-3 linear", &li3, &li_ref, 1e-5);
}

#[test]
fn patches_match_burn_reshape_and_permute() {
    let img = || tensor::<Flex, 4>(60, [2, 3, 12, 8], 1.0);
    let got = vec_of(weft_kernels::patches(img(), 4));
    assert_eq!(got, vec_of(reference::patches(img(), 4)), "flex");
    // Training: images are constants; a tracked image takes burn's path and gets a gradient.
    let ad = || tensor::<Ad, 4>(60, [2, 3, 12, 8], 1.0);
    assert_eq!(vec_of(weft_kernels::patches(ad(), 4)), got, "autodiff");
    let tracked = ad().require_grad();
    let grads = weft_kernels::patches(tracked.clone(), 4).sum().backward();
    let g = vec_of(tracked.grad(&grads).expect("a gradient"));
    assert!(g.iter().all(|&v| v == 1.0));
}

#[test]
fn results_are_the_same_bits_for_any_thread_count() {
    let once = || {
        let inputs = [
            (30, vec![4, 65, 24], 2.0),
            (31, vec![4, 65, 24], 2.0),
            (32, vec![4, 65, 24], 1.0),
        ];
        let (y, mut g) = run(&inputs, |x| {
            let h = weft_kernels::attention(x[0].clone(), x[1].clone(), x[2].clone(), 3, None);
            let w = x[1].clone().slice([0..1, 0..24]).reshape([24, 24]);
            let bias = Some(x[2].clone().slice([1..2, 0..1]).reshape([24]));
            let h = weft_kernels::linear(h.reshape([4 * 65, 24]), w, bias).reshape([4, 65, 24]);
            let gamma = x[1].clone().slice([0..1, 0..1]).reshape([24]);
            let beta = x[2].clone().slice([0..1, 0..1]).reshape([24]);
            weft_kernels::gelu(weft_kernels::layer_norm(h, gamma, beta, 1e-5))
        });
        g.push(y);
        g
    };
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let one = pool(1).install(once);
    let three = pool(3).install(once);
    assert_eq!(one, three);
}

#[test]
fn nan_inputs_stay_nan() {
    let mut v = values(40, 2 * 16, 1.0);
    v[3] = f32::NAN;
    let x =
        || Tensor::<Flex, 2>::from_data(TensorData::new(v.clone(), [2, 16]), &Default::default());
    let ge = vec_of(weft_kernels::gelu(x()));
    assert!(ge[3].is_nan() && ge[4].is_finite());
    let ones = Tensor::<Flex, 1>::ones([16], &Default::default());
    let ln = vec_of(weft_kernels::layer_norm(
        x(),
        ones.clone(),
        ones.zeros_like(),
        1e-5,
    ));
    assert!(
        ln[..16].iter().all(|v| v.is_nan()),
        "the row with a NaN is all NaN"
    );
    assert!(
        ln[16..].iter().all(|v| v.is_finite()),
        "the other row is untouched"
    );
    let q = x().reshape([1, 2, 16]);
    let at = vec_of(weft_kernels::attention(q.clone(), q.clone(), q, 2, None));
    assert!(
        at.iter().any(|v| v.is_nan()),
        "a NaN score reaches the output"
    );
}

//! `x·weight + bias` ([`linear`]) and `residual + x·weight + bias` ([`linear_add`], a linear
//! layer closing a residual connection): dispatch, the fused autodiff steps, and the burn-op
//! reference ([`linear_reference`]).

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::{Flex, FlexTensor};

use crate::autocast::product_dtype;
use crate::autodiff::{key, record, register, wanted, Key};
use crate::ops::matmul::matmul_reference;
use crate::route::{contiguous, data, dims_of, flex, prim, route, wrap, Route};
use crate::{cpu, flops, AdFlex};

/// `x·weight + bias` for `x: [..., in]` (every leading dimension is a row), `weight: [in, out]`
/// (burn's `Linear` layout). Without a bias it is burn's own linear op on every backend.
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let (w_in, out) = in_out(&x, &weight);
    flops::linear(x.dims()[..D - 1].iter().product(), w_in, out);
    let Some(bias) = bias else {
        return rows_linear(x, weight, None);
    };
    match route(&x) {
        Route::Reference => rows_linear(x, weight, Some(bias)),
        _ => linear_fused(x, weight, bias, None, out),
    }
}

/// `residual + x·weight + bias`: a linear layer closing a residual connection, in one pass
/// (`x: [..., in]`, `residual: [..., out]`).
pub fn linear_add<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    residual: Tensor<B, D>,
) -> Tensor<B, D> {
    let (w_in, out) = in_out(&x, &weight);
    let mut expected = x.dims();
    expected[D - 1] = out;
    assert_eq!(residual.dims(), expected, "linear: residual shape");
    flops::linear(expected[..D - 1].iter().product(), w_in, out);
    match route(&x) {
        Route::Reference => rows_linear(x, weight, Some(bias)) + residual,
        _ => linear_fused(x, weight, bias, Some(residual), out),
    }
}

/// The weight's `(in, out)`, after checking that `in` is `x`'s width.
fn in_out<B: Backend, const D: usize>(x: &Tensor<B, D>, weight: &Tensor<B, 2>) -> (usize, usize) {
    let d_in = x.dims()[D - 1];
    let [w_in, out] = weight.dims();
    assert_eq!(
        d_in, w_in,
        "linear: input width {d_in} but weight [{w_in}, {out}]"
    );
    (w_in, out)
}

/// The fused kernels' routes of [`linear`] and [`linear_add`] (autodiff or forward-only flex).
fn linear_fused<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    residual: Option<Tensor<B, D>>,
    out: usize,
) -> Tensor<B, D> {
    match route(&x) {
        Route::Autodiff => wrap::<AdFlex, B, D>(linear_ad(
            prim::<AdFlex, B, D>(x),
            prim::<AdFlex, B, 2>(weight),
            prim::<AdFlex, B, 1>(bias),
            residual.map(prim::<AdFlex, B, D>),
        )),
        Route::Flex => {
            let x = contiguous(prim::<Flex, B, D>(x));
            let w = contiguous(prim::<Flex, B, 2>(weight));
            let b = contiguous(prim::<Flex, B, 1>(bias));
            let r = residual.map(|r| contiguous(prim::<Flex, B, D>(r)));
            let y = cpu::linear::forward(data(&x), data(&w), data(&b), r.as_ref().map(data));
            wrap::<Flex, B, D>(flex(y, with_last(&x, out)))
        }
        Route::Reference => unreachable!("weft-kernels: the reference route is the caller's"),
    }
}

/// burn's linear op on `x` seen as one `[rows, in]` matrix (one product, not a batch of them).
fn rows_linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let mut shape = x.dims();
    let d_in = shape[D - 1];
    let rows = shape[..D - 1].iter().product::<usize>();
    shape[D - 1] = weight.dims()[1];
    linear_reference(x.reshape([rows, d_in]), weight, bias).reshape(shape)
}

/// The shape of `t` with its last dimension replaced by `last`.
fn with_last(t: &FlexTensor, last: usize) -> Vec<usize> {
    let mut shape = dims_of(t);
    if let Some(l) = shape.last_mut() {
        *l = last;
    }
    shape
}

/// What a linear layer's backward pass keeps: its input and weight, and the keys of input,
/// weight and bias.
type LinearState = (FlexTensor, FlexTensor, [Key; 3]);

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, keys) = ops.state;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        linear_grads((x, w), dy, wanted(ops.parents, keys), grads);
    }
}

#[derive(Debug)]
struct LinearAddBackward;

impl Backward<Flex, 4> for LinearAddBackward {
    type State = (LinearState, Key);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw, pb, pr] = ops.parents;
        let ((x, w, [kx, kw, kb]), kr) = ops.state;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        // d(residual) = dy: the same buffer, registered after `linear_grads` has let go of it.
        let d_residual = pr.map(|_| dy.clone());
        let targets = wanted([px, pw, pb], [kx, kw, kb]);
        linear_grads((x, w), dy, targets, grads);
        if let Some(dy) = d_residual {
            register(grads, &kr, dy);
        }
    }
}

/// `x·w + b`, plus `r` when given (a residual), as a node of the autodiff graph.
fn linear_ad(
    x: FloatTensor<AdFlex>,
    w: FloatTensor<AdFlex>,
    b: FloatTensor<AdFlex>,
    r: Option<FloatTensor<AdFlex>>,
) -> FloatTensor<AdFlex> {
    let xs = contiguous(x.primitive.clone());
    let ws = contiguous(w.primitive.clone());
    let bs = contiguous(b.primitive.clone());
    let rs = r.as_ref().map(|r| contiguous(r.primitive.clone()));
    let out = bs.layout().shape().num_elements();
    let y = cpu::linear::forward(data(&xs), data(&ws), data(&bs), rs.as_ref().map(data));
    let y = flex(y, with_last(&xs, out));
    let keys = || [key(&x), key(&w), key(&b)];
    match &r {
        None => record(LinearBackward, [&x, &w, &b], || (xs, ws, keys()), y),
        Some(r) => {
            let state = || ((xs, ws, keys()), key(r));
            record(LinearAddBackward, [&x, &w, &b, r], state, y)
        }
    }
}

/// The input, weight and bias gradients of a linear layer from its output gradient, for the
/// inputs that want one.
fn linear_grads(
    (x, w): (FlexTensor, FlexTensor),
    dy: FlexTensor,
    [kx, kw, kb]: [Option<Key>; 3],
    grads: &mut Gradients,
) {
    let [d_in, out] = [dims_of(&w)[0], dims_of(&w)[1]];
    let (dx, dw, db) = cpu::linear::backward(
        data(&x),
        data(&w),
        data(&dy),
        (d_in, out),
        (kx.is_some(), kw.is_some()),
    );
    if let (Some(k), Some(dx)) = (kx, dx) {
        register(grads, &k, flex(dx, dims_of(&x)));
    }
    if let (Some(k), Some(dw)) = (kw, dw) {
        register(grads, &k, flex(dw, vec![d_in, out]));
    }
    if let Some(k) = kb {
        register(grads, &k, flex(db, vec![out]));
    }
}

/// burn's own linear op (what `burn::nn::Linear` calls); under [`crate::autocast()`] the product
/// is [`matmul_reference`]'s and the bias is added in f32.
pub fn linear_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    if product_dtype().is_none() {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let y = matmul_reference(x, weight.unsqueeze());
    match bias {
        Some(b) => y + b.unsqueeze(),
        None => y,
    }
}

//! Fused CPU kernels for the Transformer hot path, each with its own backward pass.
//!
//! burn's autodiff builds LayerNorm, GELU and multi-head attention out of many small tensor
//! ops: each is a pass over memory with its own graph node, flex runs most element-wise ops on
//! one thread, and the head split/merge of attention copies strided views. This crate gives
//! each of the three one fused forward and one fused backward ([`cpu`]), written over `f32`
//! slices, parallel (rayon) over rows or (sample, head) pairs, vectorised (AVX2 where the CPU
//! has it), with attention's products done by the `gemm` crate directly on strided heads.
//!
//! # Dispatch
//! [`linear`], [`layer_norm`], [`gelu`] and [`attention`] take tensors of any burn backend:
//! - `Autodiff<Flex>` (CPU training): the fused kernels, registered as burn-autodiff
//!   [`Backward`] steps;
//! - `Flex` (CPU evaluation): the fused forward kernels;
//! - anything else (CUDA), or a dtype other than f32: the composition of burn ops in
//!   [`reference`], which is also what the tests hold the fused kernels to.
//!
//! The backend is recognised by `TypeId` and the primitive tensors are converted by a safe
//! `Any` downcast, so the models stay generic over `B: Backend`.

pub mod cpu;
pub mod reference;

use std::any::{Any, TypeId};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexTensor};

/// Asks glibc's allocator to keep the memory it frees (up to 1 GiB) for the next allocation.
///
/// A CPU training step allocates and frees the same large activation and gradient buffers
/// (megabytes each) every step. By default glibc serves blocks that large with fresh `mmap`s, or
/// hands the top of the heap back to the kernel when they are freed, so every step pays page
/// faults and the kernel's zeroing of each page again: about a tenth of the tiny-bench step.
/// Keeping them (as PyTorch's CPU caching allocator does) costs the peak memory of one step,
/// held until exit. Does nothing on other platforms or C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // 32 MiB is glibc's largest mmap threshold on 64-bit; larger blocks are still mmapped.
        const MMAP_THRESHOLD: i32 = 32 << 20;
        const TRIM_THRESHOLD: i32 = 1 << 30;
        #[allow(unsafe_code)]
        // SAFETY: mallopt only changes allocator tuning parameters, under glibc's own lock;
        // it does not touch any allocation.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// The CPU training backend the fused backward passes are written for.
pub type AdFlex = Autodiff<Flex, NoCheckpointing>;

fn is<B: 'static, T: 'static>() -> bool {
    TypeId::of::<B>() == TypeId::of::<T>()
}

/// Moves a value to the type it is known (by `TypeId`) to be.
fn same<T: 'static, U: 'static>(value: T) -> U {
    match (Box::new(value) as Box<dyn Any>).downcast::<U>() {
        Ok(v) => *v,
        Err(_) => unreachable!("weft-kernels: called only after a TypeId check"),
    }
}

fn prim<A: Backend, B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<A> {
    same(t.into_primitive().tensor())
}

fn wrap<A: Backend, B: Backend, const D: usize>(p: FloatTensor<A>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(same::<_, FloatTensor<B>>(p)))
}

/// The route a call takes (see the crate docs).
enum Route {
    Autodiff,
    Flex,
    Reference,
}

fn route<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Route {
    if x.dtype() != DType::F32 {
        Route::Reference
    } else if is::<B, AdFlex>() {
        Route::Autodiff
    } else if is::<B, Flex>() {
        Route::Flex
    } else {
        Route::Reference
    }
}

/// A contiguous copy of `t` only where it is not contiguous already.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn data(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("weft-kernels: a contiguous f32 tensor")
}

fn dims_of(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// The values of `t` as an owned vector: no copy when `t` is contiguous and nothing else holds
/// its buffer (as for most gradients), so a backward kernel can overwrite it in place.
fn owned(t: FlexTensor) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("weft-kernels: an f32 tensor")
}

fn flex(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

// ---------------------------------------------------------------------------------------------
// Linear

/// `x·weight + bias` for `x: [N, in]`, `weight: [in, out]` (burn's `Linear` layout).
/// Without a bias it is burn's own linear op on every backend.
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    let [_, d_in] = x.dims();
    let [w_in, out] = weight.dims();
    assert_eq!(
        d_in, w_in,
        "linear: input width {d_in} but weight [{w_in}, {out}]"
    );
    let Some(bias) = bias else {
        return reference::linear(x, weight, None);
    };
    match route(&x) {
        Route::Autodiff => wrap::<AdFlex, B, 2>(linear_ad(
            prim::<AdFlex, B, 2>(x),
            prim::<AdFlex, B, 2>(weight),
            prim::<AdFlex, B, 1>(bias),
        )),
        Route::Flex => {
            let x = contiguous(prim::<Flex, B, 2>(x));
            let w = contiguous(prim::<Flex, B, 2>(weight));
            let b = contiguous(prim::<Flex, B, 1>(bias));
            let y = cpu::linear::forward(data(&x), data(&w), data(&b), None);
            wrap::<Flex, B, 2>(flex(y, vec![dims_of(&x)[0], out]))
        }
        Route::Reference => reference::linear(x, weight, Some(bias)),
    }
}

/// `residual + x·weight + bias`: a linear layer closing a residual connection, in one pass.
pub fn linear_add<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    residual: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let [n, d_in] = x.dims();
    let [w_in, out] = weight.dims();
    assert_eq!(
        d_in, w_in,
        "linear: input width {d_in} but weight [{w_in}, {out}]"
    );
    assert_eq!(residual.dims(), [n, out], "linear: residual shape");
    match route(&x) {
        Route::Autodiff => wrap::<AdFlex, B, 2>(linear_add_ad(
            prim::<AdFlex, B, 2>(x),
            prim::<AdFlex, B, 2>(weight),
            prim::<AdFlex, B, 1>(bias),
            prim::<AdFlex, B, 2>(residual),
        )),
        Route::Flex => {
            let x = contiguous(prim::<Flex, B, 2>(x));
            let w = contiguous(prim::<Flex, B, 2>(weight));
            let b = contiguous(prim::<Flex, B, 1>(bias));
            let r = contiguous(prim::<Flex, B, 2>(residual));
            let y = cpu::linear::forward(data(&x), data(&w), data(&b), Some(data(&r)));
            wrap::<Flex, B, 2>(flex(y, vec![n, out]))
        }
        Route::Reference => reference::linear(x, weight, Some(bias)) + residual,
    }
}

#[derive(Debug)]
struct LinearAddBackward;

impl Backward<Flex, 4> for LinearAddBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b, node_r] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        if let Some(node) = node_r {
            // d(residual) = dy: the same buffer, shared (flex copies on write).
            grads.register::<Flex>(node.id, dy.clone());
        }
        let ids = [node_x, node_w, node_b].map(|n| n.map(|n| n.id));
        linear_grads(ops.state, dy, ids, grads);
    }
}

fn linear_add_ad(
    x: FloatTensor<AdFlex>,
    w: FloatTensor<AdFlex>,
    b: FloatTensor<AdFlex>,
    r: FloatTensor<AdFlex>,
) -> FloatTensor<AdFlex> {
    let xs = contiguous(x.primitive.clone());
    let ws = contiguous(w.primitive.clone());
    let bs = contiguous(b.primitive.clone());
    let rs = contiguous(r.primitive.clone());
    let out = bs.layout().shape().num_elements();
    let y = cpu::linear::forward(data(&xs), data(&ws), data(&bs), Some(data(&rs)));
    let y = flex(y, vec![dims_of(&xs)[0], out]);
    let nodes = [
        x.node.clone(),
        w.node.clone(),
        b.node.clone(),
        r.node.clone(),
    ];
    match LinearAddBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xs, ws), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// The input, weight and bias gradients of a linear layer from its output gradient.
fn linear_grads(
    (x, w): (FlexTensor, FlexTensor),
    dy: FlexTensor,
    [node_x, node_w, node_b]: [Option<burn_autodiff::NodeId>; 3],
    grads: &mut Gradients,
) {
    let [d_in, out] = [dims_of(&w)[0], dims_of(&w)[1]];
    let (dx, dw, db) = cpu::linear::backward(
        data(&x),
        data(&w),
        data(&dy),
        (d_in, out),
        (node_x.is_some(), node_w.is_some()),
    );
    if let (Some(id), Some(dx)) = (node_x, dx) {
        grads.register::<Flex>(id, flex(dx, dims_of(&x)));
    }
    if let (Some(id), Some(dw)) = (node_w, dw) {
        grads.register::<Flex>(id, flex(dw, vec![d_in, out]));
    }
    if let Some(id) = node_b {
        grads.register::<Flex>(id, flex(db, vec![out]));
    }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        linear_grads(ops.state, dy, ops.parents.map(|n| n.map(|n| n.id)), grads);
    }
}

fn linear_ad(
    x: FloatTensor<AdFlex>,
    w: FloatTensor<AdFlex>,
    b: FloatTensor<AdFlex>,
) -> FloatTensor<AdFlex> {
    let xs = contiguous(x.primitive.clone());
    let ws = contiguous(w.primitive.clone());
    let bs = contiguous(b.primitive.clone());
    let out = bs.layout().shape().num_elements();
    let y = cpu::linear::forward(data(&xs), data(&ws), data(&bs), None);
    let y = flex(y, vec![dims_of(&xs)[0], out]);
    match LinearBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xs, ws), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// LayerNorm over the last dimension: `(x − mean)/√(var + eps)·gamma + beta`.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    match route(&x) {
        Route::Autodiff => wrap::<AdFlex, B, D>(layer_norm_ad(
            prim::<AdFlex, B, D>(x),
            prim::<AdFlex, B, 1>(gamma),
            prim::<AdFlex, B, 1>(beta),
            eps as f32,
        )),
        Route::Flex => {
            let x = contiguous(prim::<Flex, B, D>(x));
            let g = contiguous(prim::<Flex, B, 1>(gamma));
            let b = contiguous(prim::<Flex, B, 1>(beta));
            let (y, _) = cpu::norm::forward(data(&x), data(&g), data(&b), eps as f32);
            wrap::<Flex, B, D>(flex(y, dims_of(&x)))
        }
        Route::Reference => reference::layer_norm(x, gamma, beta, eps),
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = (FlexTensor, FlexTensor, Arc<cpu::norm::Stats>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = owned(grads.consume::<Flex>(&ops.node));
        let (x, gamma, stats) = ops.state;
        let (dx, dgamma, dbeta) = cpu::norm::backward(data(&x), dy, &stats, data(&gamma));
        let w = dgamma.len();
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(dx, dims_of(&x)));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex(dgamma, vec![w]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex(dbeta, vec![w]));
        }
    }
}

fn layer_norm_ad(
    x: FloatTensor<AdFlex>,
    gamma: FloatTensor<AdFlex>,
    beta: FloatTensor<AdFlex>,
    eps: f32,
) -> FloatTensor<AdFlex> {
    let xs = contiguous(x.primitive.clone());
    let gs = contiguous(gamma.primitive.clone());
    let bs = contiguous(beta.primitive.clone());
    let (y, stats) = cpu::norm::forward(data(&xs), data(&gs), data(&bs), eps);
    let out = flex(y, dims_of(&xs));
    match LayerNormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xs, gs, Arc::new(stats)), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

// ---------------------------------------------------------------------------------------------
// GELU

/// Exact GELU, `x·Φ(x)` (erf form, as PyTorch's default `nn.GELU()`).
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match route(&x) {
        Route::Autodiff => wrap::<AdFlex, B, D>(gelu_ad(prim::<AdFlex, B, D>(x))),
        Route::Flex => {
            let x = contiguous(prim::<Flex, B, D>(x));
            wrap::<Flex, B, D>(flex(cpu::gelu::forward(data(&x)), dims_of(&x)))
        }
        Route::Reference => reference::gelu(x),
    }
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        if let Some(node) = node_x {
            let mut g = owned(grads.consume::<Flex>(&ops.node));
            let x = ops.state;
            cpu::gelu::backward_in_place(data(&x), &mut g);
            grads.register::<Flex>(node.id, flex(g, dims_of(&x)));
        }
    }
}

fn gelu_ad(x: FloatTensor<AdFlex>) -> FloatTensor<AdFlex> {
    let xs = contiguous(x.primitive.clone());
    let out = flex(cpu::gelu::forward(data(&xs)), dims_of(&xs));
    match GeluBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(xs, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

/// Multi-head scaled dot-product attention on `[B, L, W]` tokens:
/// `softmax(Q_h·K_hᵀ/√(W/H) + bias)·V_h` for each of `heads` heads, heads merged back into
/// `[B, Lq, W]`. `bias` is an additive mask `[B or 1, 1, Lq or 1, Lk]` (the same for every
/// head); it is a constant: no gradient flows into it.
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    let [batch, lq, w] = q.dims();
    let [kb, lk, kw] = k.dims();
    assert_eq!(
        (kb, kw),
        (batch, w),
        "attention: keys must match the queries' batch and width"
    );
    assert_eq!(
        k.dims(),
        v.dims(),
        "attention: keys and values differ in shape"
    );
    assert_eq!(
        w % heads,
        0,
        "attention: width {w} is not a multiple of {heads} heads"
    );
    let dims = cpu::attention::Dims {
        batch,
        lq,
        lk,
        heads,
        head_dim: w / heads,
    };
    if let Some(b) = &bias {
        let [bb, one, bq, bk] = b.dims();
        assert!(
            (bb == 1 || bb == batch) && one == 1 && (bq == 1 || bq == lq) && bk == lk,
            "attention: bias {:?} does not broadcast to [{batch}, 1, {lq}, {lk}]",
            b.dims()
        );
    }
    match route(&q) {
        Route::Autodiff => {
            let bias = bias.map(|b| {
                let b = prim::<AdFlex, B, 4>(b);
                assert!(!b.is_tracked(), "attention: the bias must be a constant");
                contiguous(b.primitive)
            });
            wrap::<AdFlex, B, 3>(attention_ad(
                dims,
                prim::<AdFlex, B, 3>(q),
                prim::<AdFlex, B, 3>(k),
                prim::<AdFlex, B, 3>(v),
                bias,
            ))
        }
        Route::Flex => {
            let q = contiguous(prim::<Flex, B, 3>(q));
            let k = contiguous(prim::<Flex, B, 3>(k));
            let v = contiguous(prim::<Flex, B, 3>(v));
            let bias = bias.map(|b| contiguous(prim::<Flex, B, 4>(b)));
            let (out, _) = cpu::attention::forward(
                &dims,
                data(&q),
                data(&k),
                data(&v),
                bias.as_ref().map(|b| bias_view(b, &dims)),
            );
            wrap::<Flex, B, 3>(flex(out, vec![batch, lq, w]))
        }
        Route::Reference => reference::attention(q, k, v, heads, bias),
    }
}

fn bias_view<'a>(b: &'a FlexTensor, dims: &cpu::attention::Dims) -> cpu::attention::Bias<'a> {
    let shape = dims_of(b);
    cpu::attention::Bias {
        data: data(b),
        batch_stride: if shape[0] == 1 { 0 } else { shape[2] * dims.lk },
        row_stride: if shape[2] == 1 { 0 } else { dims.lk },
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = (cpu::attention::Dims, [FlexTensor; 3], FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let dout = contiguous(grads.consume::<Flex>(&ops.node));
        let (dims, [q, k, v], probs) = ops.state;
        let (dq, dk, dv) = cpu::attention::backward(
            &dims,
            data(&q),
            data(&k),
            data(&v),
            data(&probs),
            data(&dout),
        );
        for (node, grad, like) in [(node_q, dq, &q), (node_k, dk, &k), (node_v, dv, &v)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, flex(grad, dims_of(like)));
            }
        }
    }
}

fn attention_ad(
    dims: cpu::attention::Dims,
    q: FloatTensor<AdFlex>,
    k: FloatTensor<AdFlex>,
    v: FloatTensor<AdFlex>,
    bias: Option<FlexTensor>,
) -> FloatTensor<AdFlex> {
    let qs = contiguous(q.primitive.clone());
    let ks = contiguous(k.primitive.clone());
    let vs = contiguous(v.primitive.clone());
    let (out, probs) = cpu::attention::forward(
        &dims,
        data(&qs),
        data(&ks),
        data(&vs),
        bias.as_ref().map(|b| bias_view(b, &dims)),
    );
    let out = flex(out, vec![dims.batch, dims.lq, dims.width()]);
    match AttentionBackward
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let probs = flex(probs, vec![dims.batch, dims.heads, dims.lq, dims.lk]);
            prep.finish((dims, [qs, ks, vs], probs), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

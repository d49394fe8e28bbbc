//! Fused CPU kernels for the Transformer hot path, each with its own backward pass.
//!
//! burn's autodiff builds LayerNorm, GELU, multi-head attention and the position embeddings
//! out of many small tensor ops: each is a pass over memory with its own graph node, flex runs
//! most element-wise ops on one thread, and the head split/merge of attention copies strided
//! views. This crate gives each one fused forward and one fused backward ([`cpu`]), written
//! over `f32` slices, parallel (rayon) over rows or (sample, head) pairs, vectorised (AVX2
//! where the CPU has it), with the products done by the `gemm` crate directly on strided heads.
//!
//! The backward passes also add up the gradients of a tensor read by several ops (the input of
//! a residual block, the tokens that feed Q, K and V) in parallel, where burn would add them on
//! one thread.
//!
//! # Dispatch
//! [`linear`], [`linear_add`], [`layer_norm`], [`gelu`], [`attention`] (and
//! [`attention_indexed`]) and [`add_positions`]
//! take tensors of any burn backend:
//! - `Autodiff<Flex>` (CPU training): the fused kernels, registered as burn-autodiff
//!   [`Backward`] steps;
//! - `Flex` (CPU evaluation): the fused forward kernels;
//! - anything else (CUDA), or a dtype other than f32: the composition of burn ops in
//!   [`reference`], which is also what the tests hold the fused kernels to.
//!
//! The backend is recognised by `TypeId` and the primitive tensors are converted by a safe
//! `Any` downcast, so the models stay generic over `B: Backend`.
//!
//! # Mixed precision
//! While an [`autocast`] guard is alive on a thread, [`linear`], [`linear_add`], [`matmul`]
//! and the attention products of that thread take the [`reference`] route with bf16 (or f16)
//! operands and give f32 results, as PyTorch's `torch.autocast` does for its matmuls:
//! parameters, gradients, LayerNorm, softmax and the losses stay f32. The casts are burn ops,
//! so autodiff casts every gradient back to the f32 of its parameter.

pub mod cpu;
pub mod flops;
pub mod reference;

use std::any::{Any, TypeId};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, FloatDType, Tensor, TensorData, TensorPrimitive};
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

thread_local! {
    static PRODUCT_DTYPE: std::cell::Cell<Option<FloatDType>> = const { std::cell::Cell::new(None) };
}

/// While alive, the matrix products of this thread run in the guard's dtype (see the crate
/// docs); dropping it restores what was there before.
#[must_use = "autocast lasts as long as the guard"]
pub struct Autocast {
    previous: Option<FloatDType>,
}

/// Mixed precision on this thread until the guard drops: products in `dtype` (`None`, or
/// `Some(FloatDType::F32)`: full precision).
pub fn autocast(dtype: Option<FloatDType>) -> Autocast {
    let dtype = dtype.filter(|d| *d != FloatDType::F32);
    Autocast {
        previous: PRODUCT_DTYPE.with(|c| c.replace(dtype)),
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        PRODUCT_DTYPE.with(|c| c.set(self.previous));
    }
}

/// The dtype of this thread's matrix products under [`autocast`], `None` for f32.
pub fn product_dtype() -> Option<FloatDType> {
    PRODUCT_DTYPE.with(std::cell::Cell::get)
}

/// `a·b` (burn's batched matmul), with the operands in the [`autocast`] dtype when one is on
/// and an f32 result.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    let (da, db) = (a.dims(), b.dims());
    let batch: usize = da[..D - 2].iter().product();
    flops::product(batch * da[D - 2], db[D - 1], da[D - 1]);
    reference::matmul(a, b)
}

/// The route a call takes (see the crate docs).
enum Route {
    Autodiff,
    Flex,
    Reference,
}

fn route<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Route {
    if x.dtype() != DType::F32 || product_dtype().is_some() {
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

/// A stand-in for an op's input in its backward state: the input's graph node without its
/// values or its reference count, used only to look up and register the input's gradient.
type Key = FloatTensor<AdFlex>;

fn key(input: &FloatTensor<AdFlex>) -> Key {
    let mut key = input.clone();
    key.primitive = flex(Vec::new(), vec![0]);
    // burn frees graph nodes by this count: the stand-in must not hold the input's.
    key.rc = Arc::new(*input.rc);
    key
}

/// The keys of the inputs that want a gradient (those with a parent node in the graph).
fn wanted<P, const N: usize>(parents: [Option<P>; N], keys: [Key; N]) -> [Option<Key>; N] {
    let mut keys = keys.map(Some);
    for (k, p) in keys.iter_mut().zip(&parents) {
        if p.is_none() {
            *k = None;
        }
    }
    keys
}

/// Adds `grad` to the gradient of the input `key` stands for.
///
/// burn's `Gradients::register` adds a second gradient of the same node (a tensor read by
/// several ops: the input of a residual block, the normalised tokens that feed Q, K and V)
/// with flex's add, which runs on one thread below 4M elements: about a tenth of the
/// tiny-bench step went there. Here the one already registered is taken out and added in
/// parallel, in place when `grad` is not shared.
fn register(grads: &mut Gradients, key: &Key, grad: FlexTensor) {
    let Some(previous) = grads.remove::<Flex>(key) else {
        grads.register::<Flex>(key.node.id, grad);
        return;
    };
    let shape = dims_of(&grad);
    let previous = contiguous(previous);
    let mut sum = owned(grad);
    cpu::add_into(&mut sum, data(&previous));
    grads.register::<Flex>(key.node.id, flex(sum, shape));
}

// ---------------------------------------------------------------------------------------------
// Linear

/// `x·weight + bias` for `x: [..., in]` (every leading dimension is a row), `weight: [in, out]`
/// (burn's `Linear` layout). Without a bias it is burn's own linear op on every backend.
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let d_in = x.dims()[D - 1];
    let [w_in, out] = weight.dims();
    assert_eq!(
        d_in, w_in,
        "linear: input width {d_in} but weight [{w_in}, {out}]"
    );
    flops::linear(x.dims()[..D - 1].iter().product(), w_in, out);
    let Some(bias) = bias else {
        return rows_linear(x, weight, None);
    };
    match route(&x) {
        Route::Autodiff => wrap::<AdFlex, B, D>(linear_ad(
            prim::<AdFlex, B, D>(x),
            prim::<AdFlex, B, 2>(weight),
            prim::<AdFlex, B, 1>(bias),
        )),
        Route::Flex => {
            let x = contiguous(prim::<Flex, B, D>(x));
            let w = contiguous(prim::<Flex, B, 2>(weight));
            let b = contiguous(prim::<Flex, B, 1>(bias));
            let y = cpu::linear::forward(data(&x), data(&w), data(&b), None);
            wrap::<Flex, B, D>(flex(y, with_last(&x, out)))
        }
        Route::Reference => rows_linear(x, weight, Some(bias)),
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
    reference::linear(x.reshape([rows, d_in]), weight, bias).reshape(shape)
}

/// The shape of `t` with its last dimension replaced by `last`.
fn with_last(t: &FlexTensor, last: usize) -> Vec<usize> {
    let mut shape = dims_of(t);
    if let Some(l) = shape.last_mut() {
        *l = last;
    }
    shape
}

/// `residual + x·weight + bias`: a linear layer closing a residual connection, in one pass
/// (`x: [..., in]`, `residual: [..., out]`).
pub fn linear_add<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    residual: Tensor<B, D>,
) -> Tensor<B, D> {
    let d_in = x.dims()[D - 1];
    let [w_in, out] = weight.dims();
    assert_eq!(
        d_in, w_in,
        "linear: input width {d_in} but weight [{w_in}, {out}]"
    );
    let mut expected = x.dims();
    expected[D - 1] = out;
    assert_eq!(residual.dims(), expected, "linear: residual shape");
    flops::linear(expected[..D - 1].iter().product(), w_in, out);
    match route(&x) {
        Route::Autodiff => wrap::<AdFlex, B, D>(linear_add_ad(
            prim::<AdFlex, B, D>(x),
            prim::<AdFlex, B, 2>(weight),
            prim::<AdFlex, B, 1>(bias),
            prim::<AdFlex, B, D>(residual),
        )),
        Route::Flex => {
            let x = contiguous(prim::<Flex, B, D>(x));
            let w = contiguous(prim::<Flex, B, 2>(weight));
            let b = contiguous(prim::<Flex, B, 1>(bias));
            let r = contiguous(prim::<Flex, B, D>(residual));
            let y = cpu::linear::forward(data(&x), data(&w), data(&b), Some(data(&r)));
            wrap::<Flex, B, D>(flex(y, with_last(&x, out)))
        }
        Route::Reference => rows_linear(x, weight, Some(bias)) + residual,
    }
}

/// What a linear layer's backward pass keeps: its input and weight, and the keys of input,
/// weight and bias.
type LinearState = (FlexTensor, FlexTensor, [Key; 3]);

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
    let y = flex(y, with_last(&xs, out));
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
        OpsKind::Tracked(prep) => prep.finish(((xs, ws, [key(&x), key(&w), key(&b)]), key(&r)), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
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
    let y = flex(y, with_last(&xs, out));
    match LinearBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xs, ws, [key(&x), key(&w), key(&b)]), y),
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
    type State = (FlexTensor, FlexTensor, Arc<cpu::norm::Stats>, [Key; 3]);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = owned(grads.consume::<Flex>(&ops.node));
        let (x, gamma, stats, keys) = ops.state;
        let [kx, kg, kb] = wanted(ops.parents, keys);
        let (dx, dgamma, dbeta) = cpu::norm::backward(data(&x), dy, &stats, data(&gamma));
        let w = dgamma.len();
        if let Some(k) = kx {
            register(grads, &k, flex(dx, dims_of(&x)));
        }
        if let Some(k) = kg {
            register(grads, &k, flex(dgamma, vec![w]));
        }
        if let Some(k) = kb {
            register(grads, &k, flex(dbeta, vec![w]));
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
        OpsKind::Tracked(prep) => {
            let keys = [key(&x), key(&gamma), key(&beta)];
            prep.finish((xs, gs, Arc::new(stats), keys), out)
        }
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
    type State = (FlexTensor, Key);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, kx) = ops.state;
        if let [Some(k)] = wanted(ops.parents, [kx]) {
            let mut g = owned(grads.consume::<Flex>(&ops.node));
            cpu::gelu::backward_in_place(data(&x), &mut g);
            register(grads, &k, flex(g, dims_of(&x)));
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
        OpsKind::Tracked(prep) => prep.finish((xs, key(&x)), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

// ---------------------------------------------------------------------------------------------
// Positions

/// The first tokens of an encoder: `[prefix; x_b] + positions[..P + N]` for every sample `b`,
/// with `x: [B, N, W]` the sample's own tokens, `prefix: [1, P, W]` tokens shared by every
/// sample (ViT's CLS; none for text) and `positions: [1, L ≥ P + N, W]` a learned table of
/// which the first `P + N` rows are used. Gives `[B, P + N, W]`.
pub fn add_positions<B: Backend>(
    x: Tensor<B, 3>,
    prefix: Option<Tensor<B, 3>>,
    positions: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [batch, tokens, width] = x.dims();
    let prefix = prefix.unwrap_or_else(|| Tensor::zeros([1, 0, width], &x.device()));
    let [one, p, pw] = prefix.dims();
    let [one_pos, rows, pos_w] = positions.dims();
    assert!(
        one == 1 && pw == width,
        "add_positions: prefix {:?} is not [1, P, {width}]",
        prefix.dims()
    );
    assert!(
        one_pos == 1 && pos_w == width && rows >= p + tokens,
        "add_positions: positions {:?} is not [1, >= {}, {width}]",
        positions.dims(),
        p + tokens
    );
    let dims = cpu::embed::Dims {
        batch,
        prefix: p,
        tokens,
        positions: rows,
        width,
    };
    match route(&x) {
        Route::Autodiff => wrap::<AdFlex, B, 3>(add_positions_ad(
            dims,
            prim::<AdFlex, B, 3>(x),
            prim::<AdFlex, B, 3>(prefix),
            prim::<AdFlex, B, 3>(positions),
        )),
        Route::Flex => {
            let x = contiguous(prim::<Flex, B, 3>(x));
            let prefix = contiguous(prim::<Flex, B, 3>(prefix));
            let pos = contiguous(prim::<Flex, B, 3>(positions));
            let y = cpu::embed::forward(&dims, data(&x), data(&prefix), data(&pos));
            wrap::<Flex, B, 3>(flex(y, vec![batch, dims.len(), width]))
        }
        Route::Reference => reference::add_positions(x, prefix, positions),
    }
}

/// The patch matrix `[B·(H/p)·(W/p), C·p·p]` of `[B, C, H, W]` images, in the layout of a
/// `[width, C, p, p]` convolution kernel reshaped to `[width, C·p·p]`: a stride-`p`, `p×p`
/// convolution is this matrix times the reshaped kernel. The images are data, not parameters:
/// when they require a gradient, burn's reshape and permute are used.
pub fn patches<B: Backend>(images: Tensor<B, 4>, p: usize) -> Tensor<B, 2> {
    let [b, c, h, w] = images.dims();
    assert!(
        p > 0 && h % p == 0 && w % p == 0,
        "patches: {h}×{w} images do not split into {p}×{p} patches"
    );
    let rows = b * (h / p) * (w / p);
    let cut = |x: FlexTensor| {
        flex(
            cpu::embed::patches(data(&contiguous(x)), (b, c, h, w), p),
            vec![rows, c * p * p],
        )
    };
    match route(&images) {
        Route::Autodiff => {
            let x = prim::<AdFlex, B, 4>(images.clone());
            if x.is_tracked() {
                return reference::patches(images, p);
            }
            let inner = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(cut(x.primitive)));
            same(Tensor::<AdFlex, 2>::from_inner(inner))
        }
        Route::Flex => wrap::<Flex, B, 2>(cut(prim::<Flex, B, 4>(images))),
        Route::Reference => reference::patches(images, p),
    }
}

#[derive(Debug)]
struct PositionsBackward;

impl Backward<Flex, 3> for PositionsBackward {
    type State = (cpu::embed::Dims, [Key; 3]);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (d, keys) = ops.state;
        let [kx, kp, kpos] = wanted(ops.parents, keys);
        let dy = owned(grads.consume::<Flex>(&ops.node));
        let (dx, dprefix, dpos) = cpu::embed::backward(&d, dy, kx.is_some());
        if let (Some(k), Some(dx)) = (kx, dx) {
            register(grads, &k, flex(dx, vec![d.batch, d.tokens, d.width]));
        }
        if let Some(k) = kp {
            register(grads, &k, flex(dprefix, vec![1, d.prefix, d.width]));
        }
        if let Some(k) = kpos {
            register(grads, &k, flex(dpos, vec![1, d.positions, d.width]));
        }
    }
}

fn add_positions_ad(
    d: cpu::embed::Dims,
    x: FloatTensor<AdFlex>,
    prefix: FloatTensor<AdFlex>,
    pos: FloatTensor<AdFlex>,
) -> FloatTensor<AdFlex> {
    let xs = contiguous(x.primitive.clone());
    let ps = contiguous(prefix.primitive.clone());
    let poss = contiguous(pos.primitive.clone());
    let y = cpu::embed::forward(&d, data(&xs), data(&ps), data(&poss));
    let y = flex(y, vec![d.batch, d.len(), d.width]);
    match PositionsBackward
        .prepare::<NoCheckpointing>([x.node.clone(), prefix.node.clone(), pos.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((d, [key(&x), key(&prefix), key(&pos)]), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
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
    attention_indexed(q, k, v, heads, bias, None)
}

/// [`attention`] where query sample `b` attends to key/value sample `kv_index[b]`: `k` and `v`
/// are `[Bkv, Lk, W]` and several query samples may share one of them (the re-paired pairs of
/// ITM and the MLM pass over one batch's image tokens), with no per-pair copy; the gradients of
/// a shared sample add up. `None` is [`attention`].
pub fn attention_indexed<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 4>>,
    kv_index: Option<&[usize]>,
) -> Tensor<B, 3> {
    let [batch, lq, w] = q.dims();
    let rows = cpu::attention::uniform_rows(batch, lq);
    let dims = attention_dims(batch, &rows, &k, &v, w, heads, kv_index);
    check_bias(bias.as_ref(), batch, Some(lq), dims.lk);
    match route(&q) {
        Route::Reference => reference::attention_indexed(q, k, v, heads, bias, kv_index),
        _ => attention_fused(q, k, v, bias, dims, rows, kv_index),
    }
}

/// [`attention_indexed`] for a chosen set of query rows per sample: `q` is `[R, W]`, the
/// queries of sample `b` being rows `query_rows[b]..query_rows[b + 1]` (`B + 1` increasing
/// offsets from 0; a sample may have none), and so is the output. Keys and values are whole
/// `[Bkv, Lk, W]` samples. For the last layer of an encoder whose heads read only some tokens
/// (ITM the first, MLM the masked ones): the other rows' queries, output projections and MLPs
/// are never computed. `bias` must be a key mask (`[B or 1, 1, 1, Lk]`).
pub fn attention_rows<B: Backend>(
    q: Tensor<B, 2>,
    query_rows: &[usize],
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    bias: Option<Tensor<B, 4>>,
    kv_index: Option<&[usize]>,
) -> Tensor<B, 2> {
    let [total, w] = q.dims();
    assert!(
        !query_rows.is_empty() && query_rows[0] == 0,
        "attention: query rows must start at 0"
    );
    let batch = query_rows.len() - 1;
    assert_eq!(
        query_rows[batch], total,
        "attention: the query rows end at {} but q has {total} rows",
        query_rows[batch]
    );
    let dims = attention_dims(batch, query_rows, &k, &v, w, heads, kv_index);
    check_bias(bias.as_ref(), batch, None, dims.lk);
    match route(&q) {
        Route::Reference => reference::attention_rows(q, query_rows, k, v, heads, bias, kv_index),
        _ => attention_fused(q, k, v, bias, dims, query_rows.to_vec(), kv_index),
    }
}

/// The sizes of an attention call, after checking keys, values, rows and index.
fn attention_dims<B: Backend>(
    batch: usize,
    rows: &[usize],
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    w: usize,
    heads: usize,
    kv_index: Option<&[usize]>,
) -> cpu::attention::Dims {
    let [kv_batch, lk, kw] = k.dims();
    assert_eq!(kw, w, "attention: keys must match the queries' width");
    // Q·Kᵀ and P·V of every query row, over all heads.
    let queries = rows.last().copied().unwrap_or(0);
    flops::product(queries, lk, w);
    flops::product(queries, w, lk);
    assert_eq!(
        k.dims(),
        v.dims(),
        "attention: keys and values differ in shape"
    );
    assert!(
        rows.windows(2).all(|r| r[0] <= r[1]),
        "attention: query rows must increase"
    );
    match kv_index {
        None => assert_eq!(
            kv_batch, batch,
            "attention: keys must match the queries' batch"
        ),
        Some(index) => {
            assert_eq!(
                index.len(),
                batch,
                "attention: one key/value index per query sample"
            );
            assert!(
                index.iter().all(|&j| j < kv_batch),
                "attention: key/value index out of range ({kv_batch} samples)"
            );
        }
    }
    assert!(
        heads > 0 && w.is_multiple_of(heads),
        "attention: width {w} is not a multiple of {heads} heads"
    );
    cpu::attention::Dims {
        batch,
        kv_batch,
        lk,
        heads,
        head_dim: w / heads,
    }
}

/// Checks that `bias` broadcasts to `[batch, 1, lq, lk]` (`lq: None`: to one row, a key
/// mask).
fn check_bias<B: Backend>(bias: Option<&Tensor<B, 4>>, batch: usize, lq: Option<usize>, lk: usize) {
    if let Some(b) = bias {
        let [bb, one, bq, bk] = b.dims();
        assert!(
            (bb == 1 || bb == batch) && one == 1 && (bq == 1 || Some(bq) == lq) && bk == lk,
            "attention: bias {:?} does not broadcast to [{batch}, 1, {}, {lk}]",
            b.dims(),
            lq.map_or("1".to_string(), |l| l.to_string())
        );
    }
}

/// The fused kernels' route of the attention functions (autodiff or forward-only flex).
fn attention_fused<B: Backend, const D: usize>(
    q: Tensor<B, D>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Option<Tensor<B, 4>>,
    dims: cpu::attention::Dims,
    rows: Vec<usize>,
    kv_index: Option<&[usize]>,
) -> Tensor<B, D> {
    let shape = q.dims();
    match route(&q) {
        Route::Autodiff => {
            let bias = bias.map(|b| {
                let b = prim::<AdFlex, B, 4>(b);
                assert!(!b.is_tracked(), "attention: the bias must be a constant");
                contiguous(b.primitive)
            });
            let layout = AttentionLayout {
                rows: rows.into(),
                kv_index: kv_index.map(Arc::from),
            };
            wrap::<AdFlex, B, D>(attention_ad(
                dims,
                layout,
                prim::<AdFlex, B, D>(q),
                prim::<AdFlex, B, 3>(k),
                prim::<AdFlex, B, 3>(v),
                bias,
            ))
        }
        Route::Flex => {
            let q = contiguous(prim::<Flex, B, D>(q));
            let k = contiguous(prim::<Flex, B, 3>(k));
            let v = contiguous(prim::<Flex, B, 3>(v));
            let bias = bias.map(|b| contiguous(prim::<Flex, B, 4>(b)));
            let layout = cpu::attention::Layout {
                query_rows: &rows,
                kv_index,
            };
            let (out, _) = cpu::attention::forward(
                &dims,
                &layout,
                data(&q),
                data(&k),
                data(&v),
                bias.as_ref().map(|b| bias_view(b, &dims)),
            );
            wrap::<Flex, B, D>(flex(out, shape.to_vec()))
        }
        Route::Reference => unreachable!("weft-kernels: the reference route is the caller's"),
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

/// An owned [`cpu::attention::Layout`], kept for the backward pass.
#[derive(Debug, Clone)]
struct AttentionLayout {
    rows: Arc<[usize]>,
    kv_index: Option<Arc<[usize]>>,
}

impl AttentionLayout {
    fn view(&self) -> cpu::attention::Layout<'_> {
        cpu::attention::Layout {
            query_rows: &self.rows,
            kv_index: self.kv_index.as_deref(),
        }
    }
}

#[derive(Debug)]
struct AttentionBackward;

/// What attention's backward pass keeps: sizes and layout, Q, K, V, the probabilities, and
/// the keys of Q, K and V.
type AttentionState = (
    cpu::attention::Dims,
    AttentionLayout,
    [FlexTensor; 3],
    FlexTensor,
    [Key; 3],
);

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = contiguous(grads.consume::<Flex>(&ops.node));
        let (dims, layout, [q, k, v], probs, keys) = ops.state;
        let [kq, kk, kv] = wanted(ops.parents, keys);
        let (dq, dk, dv) = cpu::attention::backward(
            &dims,
            &layout.view(),
            data(&q),
            data(&k),
            data(&v),
            data(&probs),
            data(&dout),
        );
        for (key, grad, like) in [(kq, dq, &q), (kk, dk, &k), (kv, dv, &v)] {
            if let Some(key) = key {
                register(grads, &key, flex(grad, dims_of(like)));
            }
        }
    }
}

fn attention_ad(
    dims: cpu::attention::Dims,
    layout: AttentionLayout,
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
        &layout.view(),
        data(&qs),
        data(&ks),
        data(&vs),
        bias.as_ref().map(|b| bias_view(b, &dims)),
    );
    let out = flex(out, dims_of(&qs));
    match AttentionBackward
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let n = probs.len();
            let probs = flex(probs, vec![n]);
            let keys = [key(&q), key(&k), key(&v)];
            prep.finish((dims, layout, [qs, ks, vs], probs, keys), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

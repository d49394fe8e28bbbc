//! How a fused op joins burn's autodiff graph: [`record`] registers its output with the
//! op's [`Backward`] step, and the backward steps hand each input's gradient to [`register`],
//! which adds a second gradient of the same input in parallel.

use std::sync::Arc;

use burn::tensor::ops::FloatTensor;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, OpsKind};
use burn_flex::{Flex, FlexTensor};

use crate::cpu;
use crate::route::{contiguous, data, dims_of, flex, owned};
use crate::AdFlex;

/// A stand-in for an op's input in its backward state: the input's graph node without its
/// values or its reference count, used only to look up and register the input's gradient.
pub(crate) type Key = FloatTensor<AdFlex>;

/// The [`Key`] of `input`.
pub(crate) fn key(input: &FloatTensor<AdFlex>) -> Key {
    let mut key = input.clone();
    key.primitive = flex(Vec::new(), vec![0]);
    // burn frees graph nodes by this count: the stand-in must not hold the input's.
    key.rc = Arc::new(*input.rc);
    key
}

/// The keys of the inputs that want a gradient (those with a parent node in the graph).
pub(crate) fn wanted<P, const N: usize>(
    parents: [Option<P>; N],
    keys: [Key; N],
) -> [Option<Key>; N] {
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
pub(crate) fn register(grads: &mut Gradients, key: &Key, grad: FlexTensor) {
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

/// `out`, computed by an op from `inputs`, as a tensor of the autodiff graph: when the graph
/// tracks the op, `backward` runs in the backward pass with the state `state()` gives (built
/// only then); otherwise `out` is a plain result.
pub(crate) fn record<T: Backward<Flex, N>, const N: usize>(
    backward: T,
    inputs: [&FloatTensor<AdFlex>; N],
    state: impl FnOnce() -> T::State,
    out: FlexTensor,
) -> FloatTensor<AdFlex> {
    let nodes = inputs.map(|x| x.node.clone());
    match backward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

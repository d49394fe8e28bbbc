//! Exact GELU: dispatch, the fused autodiff step, and burn's own as the reference
//! ([`gelu_reference`]).

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::{Flex, FlexTensor};

use crate::autodiff::{key, record, register, wanted, Key};
use crate::route::{contiguous, data, dims_of, flex, owned, prim, route, wrap, Route};
use crate::{cpu, AdFlex};

/// Exact GELU, `x·Φ(x)` (erf form, as PyTorch's default `nn.GELU()`).
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match route(&x) {
        Route::Autodiff => wrap::<AdFlex, B, D>(gelu_ad(prim::<AdFlex, B, D>(x))),
        Route::Flex => {
            let x = contiguous(prim::<Flex, B, D>(x));
            wrap::<Flex, B, D>(flex(cpu::gelu::forward(data(&x)), dims_of(&x)))
        }
        Route::Reference => gelu_reference(x),
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
    record(GeluBackward, [&x], || (xs, key(&x)), out)
}

/// burn's exact GELU.
pub fn gelu_reference<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::gelu(x)
}

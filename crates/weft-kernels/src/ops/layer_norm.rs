//! LayerNorm over the last dimension: dispatch, the fused autodiff step, and burn's own op as
//! the reference ([`layer_norm_reference`]).

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::{Flex, FlexTensor};

use crate::autodiff::{key, record, register, wanted, Key};
use crate::route::{contiguous, data, dims_of, flex, owned, prim, route, wrap, Route};
use crate::{cpu, AdFlex};

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
        Route::Reference => layer_norm_reference(x, gamma, beta, eps),
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
    let state = || {
        let keys = [key(&x), key(&gamma), key(&beta)];
        (xs, gs, Arc::new(stats), keys)
    };
    record(LayerNormBackward, [&x, &gamma, &beta], state, out)
}

/// burn's own LayerNorm op (what `burn::nn::LayerNorm` calls).
pub fn layer_norm_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        Some(beta.into_primitive().tensor()),
        eps,
    )))
}

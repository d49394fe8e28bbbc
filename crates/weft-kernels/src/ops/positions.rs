//! The first tokens of an encoder, `[prefix; x_b] + positions[..P + N]`: dispatch, the fused
//! autodiff step, and the burn-op reference ([`add_positions_reference`]).

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::Flex;

use crate::autodiff::{key, record, register, wanted, Key};
use crate::route::{contiguous, data, flex, owned, prim, route, wrap, Route};
use crate::{cpu, AdFlex};

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
        Route::Reference => add_positions_reference(x, prefix, positions),
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
    let state = || (d, [key(&x), key(&prefix), key(&pos)]);
    record(PositionsBackward, [&x, &prefix, &pos], state, y)
}

/// `[prefix; x_b] + positions[..P + N]` as an expand, a cat and a broadcast add.
pub fn add_positions_reference<B: Backend>(
    x: Tensor<B, 3>,
    prefix: Tensor<B, 3>,
    positions: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [b, n, w] = x.dims();
    let p = prefix.dims()[1];
    let x = if p == 0 {
        x
    } else {
        Tensor::cat(vec![prefix.expand([b, p, w]), x], 1)
    };
    x + positions.narrow(1, 0, p + n)
}

//! The patch matrix of a batch of images (the input of ViT's patch embedding): the fused cut
//! on flex, and the burn-op reference ([`patches_reference`]). Images are data: no backward of
//! its own.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

use crate::route::{contiguous, data, flex, prim, route, same, wrap, Route};
use crate::{cpu, AdFlex};

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
                return patches_reference(images, p);
            }
            let inner = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(cut(x.primitive)));
            same(Tensor::<AdFlex, 2>::from_inner(inner))
        }
        Route::Flex => wrap::<Flex, B, 2>(cut(prim::<Flex, B, 4>(images))),
        Route::Reference => patches_reference(images, p),
    }
}

/// The patch matrix of `[B, C, H, W]` images as a reshape, a permute and a reshape.
pub fn patches_reference<B: Backend>(images: Tensor<B, 4>, p: usize) -> Tensor<B, 2> {
    let [b, c, h, w] = images.dims();
    let (gh, gw) = (h / p, w / p);
    images
        .reshape([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b * gh * gw, c * p * p])
}

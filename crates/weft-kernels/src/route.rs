//! Which route a call takes (fused autodiff kernels, fused forward kernels, or the burn-op
//! reference), recognised by the backend's `TypeId`; the safe `Any` downcasts between a
//! generic backend's tensors and flex's; and the small helpers over flex tensors that every op
//! uses.

use std::any::{Any, TypeId};

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

use crate::autocast::product_dtype;
use crate::AdFlex;

fn is<B: 'static, T: 'static>() -> bool {
    TypeId::of::<B>() == TypeId::of::<T>()
}

/// Moves a value to the type it is known (by `TypeId`) to be.
pub(crate) fn same<T: 'static, U: 'static>(value: T) -> U {
    match (Box::new(value) as Box<dyn Any>).downcast::<U>() {
        Ok(v) => *v,
        Err(_) => unreachable!("weft-kernels: called only after a TypeId check"),
    }
}

/// The primitive of `t` as backend `A`'s (which `B` is known to be).
pub(crate) fn prim<A: Backend, B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<A> {
    same(t.into_primitive().tensor())
}

/// Backend `A`'s primitive as a tensor of `B` (which `A` is known to be).
pub(crate) fn wrap<A: Backend, B: Backend, const D: usize>(p: FloatTensor<A>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(same::<_, FloatTensor<B>>(p)))
}

/// The route a call takes (see the crate docs).
pub(crate) enum Route {
    /// The fused kernels, registered with burn's autodiff (`Autodiff<Flex>`).
    Autodiff,
    /// The fused forward kernels (`Flex`).
    Flex,
    /// The composition of burn ops (any other backend, a dtype other than f32, autocast).
    Reference,
}

/// The route of an op whose input is `x`.
pub(crate) fn route<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Route {
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
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The values of a contiguous f32 tensor.
pub(crate) fn data(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("weft-kernels: a contiguous f32 tensor")
}

/// The shape of `t`.
pub(crate) fn dims_of(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// The values of `t` as an owned vector: no copy when `t` is contiguous and nothing else holds
/// its buffer (as for most gradients), so a backward kernel can overwrite it in place.
pub(crate) fn owned(t: FlexTensor) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("weft-kernels: an f32 tensor")
}

/// A flex tensor of `values` in `shape`.
pub(crate) fn flex(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

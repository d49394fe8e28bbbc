//! Flat gradients: every parameter's gradient in one `[numel]` buffer in parameter order
//! ([`FlatGrads`], on the training device), and the averaged gradients of a step where the
//! update runs ([`Grads`]: host values or a device tensor).

use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::params::ParamInfo;

/// All gradients of a model in one flat `[numel]` buffer, in parameter visit order, with a mask
/// of the parameters that received a gradient. The order is identical in every process, so
/// the buffer can be all-reduced as it is.
#[derive(Debug, Clone)]
pub struct FlatGrads<B: Backend> {
    /// The gradients, zeros where a parameter had none.
    pub buffer: Tensor<B, 1>,
    /// Per parameter: whether it had a gradient.
    pub has_grad: Vec<bool>,
}

impl<B: Backend> FlatGrads<B> {
    /// Flatten `grads` of the parameters `params` (from [`crate::params::params`]).
    pub fn from_grads(grads: &GradientsParams, params: &[ParamInfo], device: &B::Device) -> Self {
        let mut parts = Vec::with_capacity(params.len());
        let mut has_grad = Vec::with_capacity(params.len());
        for p in params {
            let n = p.numel();
            let g = match p.shape.len() {
                1 => grads.get::<B, 1>(p.id).map(|t| t.reshape([n])),
                2 => grads.get::<B, 2>(p.id).map(|t| t.reshape([n])),
                3 => grads.get::<B, 3>(p.id).map(|t| t.reshape([n])),
                4 => grads.get::<B, 4>(p.id).map(|t| t.reshape([n])),
                d => panic!("parameter {} has unsupported rank {d}", p.path),
            };
            has_grad.push(g.is_some());
            parts.push(g.unwrap_or_else(|| Tensor::zeros([n], device)));
        }
        Self {
            buffer: Tensor::cat(parts, 0),
            has_grad,
        }
    }

    /// The gradients as host values, and the mask.
    pub fn into_vec(self) -> (Vec<f32>, Vec<bool>) {
        (to_host(self.buffer), self.has_grad)
    }

    /// Add another buffer of the same parameters.
    pub fn accumulate(self, other: Self) -> Self {
        Self {
            buffer: self.buffer + other.buffer,
            has_grad: self
                .has_grad
                .iter()
                .zip(&other.has_grad)
                .map(|(a, b)| *a || *b)
                .collect(),
        }
    }
}

/// Flat gradients of a step, where they live.
#[derive(Debug, Clone)]
pub enum Grads<B: Backend> {
    /// Host values (the CPU path).
    Host(Vec<f32>),
    /// A `[numel]` tensor on the training device.
    Device(Tensor<B, 1>),
}

impl<B: Backend> Grads<B> {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            Self::Host(v) => v.len(),
            Self::Device(t) => t.dims()[0],
        }
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values on the host (a copy from the device for [`Grads::Device`]).
    pub fn into_host(self) -> Vec<f32> {
        match self {
            Self::Host(v) => v,
            Self::Device(t) => to_host(t),
        }
    }

    /// The values as a tensor on `device` (a copy from the host for [`Grads::Host`]).
    pub fn into_device(self, device: &B::Device) -> Tensor<B, 1> {
        match self {
            Self::Device(t) => t,
            Self::Host(v) => to_device(v, device),
        }
    }
}

/// The values of a flat tensor on the host.
pub fn to_host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 values")
}

/// Host values as a flat tensor on `device`.
pub fn to_device<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

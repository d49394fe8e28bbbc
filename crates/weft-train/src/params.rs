//! Parameters by module path: stable ids, the weight-decay rule, flat gradient and parameter
//! buffers.
//!
//! burn gives every parameter a random [`ParamId`]; weft replaces it with a hash of the
//! parameter's module path right after init, so that ids (and optimizer state keyed by them)
//! are the same in every process and across runs.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// One float parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// Dotted module path, e.g. `vision.blocks.0.attn.query.weight`.
    pub path: String,
    /// Its id (stable once [`stable_ids`] has run).
    pub id: ParamId,
    /// Its shape.
    pub shape: Vec<usize>,
}

impl ParamInfo {
    /// Elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether decoupled weight decay applies: matrices and convolution kernels only; never
    /// biases, norms, embeddings (word, position, CLS, mask token) or the temperature.
    pub fn decays(&self) -> bool {
        self.shape.len() >= 2
            && self.path.rsplit('.').next() == Some("weight")
            && !self.path.contains("token_embedding")
    }
}

#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn path(&self) -> String {
        self.0.join(".")
    }
}

struct Collector {
    stack: PathStack,
    out: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.stack.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.push(ParamInfo {
            path: self.stack.path(),
            id: param.id,
            shape: param.lazy_shape().dims::<D>().to_vec(),
        });
    }
}

/// Every float parameter of `module` in visit order (the same order in every process).
pub fn params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut c = Collector {
        stack: PathStack::default(),
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// FNV-1a of a path: the stable id of the parameter there.
pub fn path_id(path: &str) -> ParamId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ParamId::from(h)
}

struct StableIds {
    stack: PathStack,
}

impl<B: Backend> ModuleMapper<B> for StableIds {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.stack.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        Param::from_mapped_value(path_id(&self.stack.path()), tensor, mapper)
    }
}

/// Replace every parameter id by the hash of its path.
pub fn stable_ids<B: Backend, M: Module<B>>(module: M) -> M {
    module.map(&mut StableIds {
        stack: PathStack::default(),
    })
}

/// All gradients of a model in one flat `[numel]` buffer, in parameter visit order, with a mask
/// of the parameters that received a gradient. The layout is identical in every process, so
/// the buffer can be all-reduced as it is.
#[derive(Debug, Clone)]
pub struct FlatGrads<B: Backend> {
    /// The gradients, zeros where a parameter had none.
    pub buffer: Tensor<B, 1>,
    /// Per parameter: whether it had a gradient.
    pub has_grad: Vec<bool>,
}

impl<B: Backend> FlatGrads<B> {
    /// Flatten `grads` of the parameters `layout` (from [`params`]).
    pub fn from_grads(grads: &GradientsParams, layout: &[ParamInfo], device: &B::Device) -> Self {
        let mut parts = Vec::with_capacity(layout.len());
        let mut has_grad = Vec::with_capacity(layout.len());
        for p in layout {
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

    /// Add another buffer of the same layout.
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

    /// Multiply every gradient by `factor`.
    pub fn scale(self, factor: f64) -> Self {
        Self {
            buffer: self.buffer.mul_scalar(factor),
            has_grad: self.has_grad,
        }
    }

    /// The global L2 norm.
    pub fn norm(&self) -> f64 {
        let sq: f32 = self.buffer.clone().square().sum().into_scalar().elem();
        f64::from(sq).sqrt()
    }
}

struct Gather {
    out: Vec<f32>,
}

impl<B: Backend> ModuleVisitor<B> for Gather {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let values = param.val().into_data().convert::<f32>();
        self.out
            .extend_from_slice(values.as_slice::<f32>().expect("f32 parameter values"));
    }
}

/// Every float parameter's values, flat in visit order (the order of [`params`]).
pub fn flat_params<B: Backend, M: Module<B>>(module: &M) -> Vec<f32> {
    let mut gather = Gather { out: Vec::new() };
    module.visit(&mut gather);
    gather.out
}

struct Scatter<'a, B: AutodiffBackend> {
    values: &'a [f32],
    offset: usize,
    device: B::Device,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Scatter<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let values = self.values[self.offset..self.offset + n].to_vec();
        self.offset += n;
        let inner = Tensor::<B::InnerBackend, D>::from_data(
            burn::tensor::TensorData::new(values, shape),
            &self.device,
        );
        Param::from_mapped_value(id, Tensor::from_inner(inner).require_grad(), mapper)
    }
}

/// `module` with every float parameter replaced, in visit order, by the next values of
/// `values` (the inverse of [`flat_params`]); ids and everything else stay.
pub fn set_flat_params<B: AutodiffBackend, M: Module<B>>(
    module: M,
    values: &[f32],
    device: &B::Device,
) -> M {
    let mut scatter = Scatter::<B> {
        values,
        offset: 0,
        device: device.clone(),
    };
    let module = module.map(&mut scatter);
    assert_eq!(scatter.offset, values.len(), "flat parameter buffer size");
    module
}

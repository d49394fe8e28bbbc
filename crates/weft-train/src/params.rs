//! Parameters by module path: stable ids, the weight-decay rule, and flat gradient buffers.
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

struct Decay<'a> {
    stack: PathStack,
    decays: &'a [bool],
    index: usize,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Decay<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.stack.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let decays = self.decays.get(self.index).copied().unwrap_or(false);
        self.index += 1;
        if !decays {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let tensor = Tensor::from_inner(tensor.inner().mul_scalar(self.factor)).require_grad();
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Decoupled weight decay: multiply the parameters flagged in `decays` (visit order) by
/// `1 - lr * weight_decay`.
pub fn apply_weight_decay<B: AutodiffBackend, M: Module<B>>(
    module: M,
    decays: &[bool],
    lr: f64,
    weight_decay: f64,
) -> M {
    if weight_decay == 0.0 {
        return module;
    }
    module.map(&mut Decay {
        stack: PathStack::default(),
        decays,
        index: 0,
        factor: 1.0 - lr * weight_decay,
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

    /// Back to per-parameter gradients (only the parameters that had one, so that parameters
    /// unused by every objective are left alone by the optimizer).
    pub fn into_grads(self, layout: &[ParamInfo]) -> GradientsParams {
        let mut out = GradientsParams::new();
        let mut offset = 0;
        for (p, has) in layout.iter().zip(&self.has_grad) {
            let n = p.numel();
            if *has {
                let flat = self.buffer.clone().narrow(0, offset, n);
                let s = &p.shape;
                match s.len() {
                    1 => out.register::<B, 1>(p.id, flat),
                    2 => out.register::<B, 2>(p.id, flat.reshape([s[0], s[1]])),
                    3 => out.register::<B, 3>(p.id, flat.reshape([s[0], s[1], s[2]])),
                    4 => out.register::<B, 4>(p.id, flat.reshape([s[0], s[1], s[2], s[3]])),
                    d => panic!("parameter {} has unsupported rank {d}", p.path),
                }
            }
            offset += n;
        }
        out
    }
}

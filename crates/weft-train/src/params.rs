//! Parameters by module path: stable ids, the weight-decay rule, and the flat parameter
//! buffer: gathered from a model ([`flat_params`]) and scattered back into it
//! ([`set_flat_params`] from host values, [`set_flat_params_device`] from a device tensor).
//!
//! burn gives every parameter a random [`ParamId`]; weft replaces it with a hash of the
//! parameter's module path right after init, so that ids (and optimizer state keyed by them)
//! are the same in every process and across runs.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use rayon::prelude::*;

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

/// 64-bit FNV-1a of `s`: the same in every process and run.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h: u64, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// FNV-1a of a path: the stable id of the parameter there.
pub fn path_id(path: &str) -> ParamId {
    ParamId::from(fnv1a(path))
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

struct Scatter<B: Backend> {
    parts: std::vec::IntoIter<Vec<f32>>,
    device: B::Device,
}

impl<B: Backend> ModuleMapper<B> for Scatter<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let values = self.parts.next().expect("a value slice per parameter");
        assert_eq!(values.len(), shape.num_elements(), "parameter size");
        let t =
            Tensor::<B, D>::from_data(burn::tensor::TensorData::new(values, shape), &self.device);
        // A leaf that autodiff tracks; without autodiff, `require_grad` does nothing.
        Param::from_mapped_value(id, t.require_grad(), mapper)
    }
}

/// `module` with every float parameter replaced, in visit order, by the next values of
/// `values` (the inverse of [`flat_params`]); ids and everything else stay. Any backend: with
/// autodiff the parameters are tracked leaves. The copies out of `values` run in parallel.
pub fn set_flat_params<B: Backend, M: Module<B>>(
    module: M,
    values: &[f32],
    device: &B::Device,
) -> M {
    let mut ranges = Vec::new();
    let mut offset = 0;
    for p in params(&module) {
        ranges.push(offset..offset + p.numel());
        offset += p.numel();
    }
    assert_eq!(offset, values.len(), "flat parameter buffer size");
    let parts: Vec<Vec<f32>> = ranges.into_par_iter().map(|r| values[r].to_vec()).collect();
    module.map(&mut Scatter::<B> {
        parts: parts.into_iter(),
        device: device.clone(),
    })
}

struct ScatterDevice<B: AutodiffBackend> {
    values: Tensor<B::InnerBackend, 1>,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for ScatterDevice<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let inner = self.values.clone().narrow(0, self.offset, n).reshape(shape);
        self.offset += n;
        Param::from_mapped_value(id, Tensor::from_inner(inner).require_grad(), mapper)
    }
}

/// `module` with every float parameter replaced, in visit order, by the next elements of the
/// flat device tensor `values`: slices of it, no copy through the host.
pub fn set_flat_params_device<B: AutodiffBackend, M: Module<B>>(
    module: M,
    values: &Tensor<B::InnerBackend, 1>,
) -> M {
    let total: usize = params(&module).iter().map(ParamInfo::numel).sum();
    assert_eq!(total, values.dims()[0], "flat parameter buffer size");
    module.map(&mut ScatterDevice::<B> {
        values: values.clone(),
        offset: 0,
    })
}

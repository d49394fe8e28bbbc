//! Parameters by module path: stable ids, the weight-decay rule, flat gradient and parameter
//! buffers.
//!
//! burn gives every parameter a random [`ParamId`]; weft replaces it with a hash of the
//! parameter's module path right after init, so that ids (and optimizer state keyed by them)
//! are the same in every process and across runs.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
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

    /// The gradients as host values, and the mask.
    pub fn into_vec(self) -> (Vec<f32>, Vec<bool>) {
        let values = self
            .buffer
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 gradients");
        (values, self.has_grad)
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
}

/// Elements per parallel block of [`global_norm`] and [`scale_in_place`]. Fixed, so that the
/// norm's partial sums add up in the same order for any thread count.
const BLOCK: usize = 64 * 1024;

/// The global L2 norm of flat gradients, summed in f64 over fixed blocks, in parallel.
pub fn global_norm(grads: &[f32]) -> f64 {
    let partials: Vec<f64> = grads
        .par_chunks(BLOCK)
        .map(|block| {
            let square = |g: f32| f64::from(g) * f64::from(g);
            // Eight independent lanes, so that the compiler can vectorise the sum.
            let mut lanes = [0.0f64; 8];
            let chunks = block.chunks_exact(8);
            let rest: f64 = chunks.remainder().iter().map(|&g| square(g)).sum();
            for c in chunks {
                for (l, &g) in lanes.iter_mut().zip(c) {
                    *l += square(g);
                }
            }
            lanes.iter().sum::<f64>() + rest
        })
        .collect();
    partials.iter().sum::<f64>().sqrt()
}

/// Multiply every element by `factor`, in parallel.
pub fn scale_in_place(values: &mut [f32], factor: f32) {
    values
        .par_chunks_mut(BLOCK)
        .for_each(|c| c.iter_mut().for_each(|v| *v *= factor));
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

#[cfg(test)]
mod tests {
    use super::{global_norm, scale_in_place};

    #[test]
    fn global_norm_is_the_l2_norm_and_the_same_for_any_thread_count() {
        // Longer than one block, not a multiple of the 8 lanes.
        let v: Vec<f32> = (0..200_003)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let want = v
            .iter()
            .map(|&g| f64::from(g) * f64::from(g))
            .sum::<f64>()
            .sqrt();
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1).install(|| global_norm(&v));
        let three = pool(3).install(|| global_norm(&v));
        assert!((one - want).abs() <= 1e-9 * want, "{one} vs {want}");
        assert_eq!(one.to_bits(), three.to_bits());
        assert_eq!(global_norm(&[3.0, 4.0]), 5.0);
        assert!(global_norm(&[1.0, f32::NAN]).is_nan());
    }

    #[test]
    fn scale_in_place_multiplies_every_element() {
        let mut v: Vec<f32> = (0..70_000).map(|i| i as f32).collect();
        scale_in_place(&mut v, 0.5);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32 * 0.5));
    }
}

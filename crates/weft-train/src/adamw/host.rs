//! AdamW over flat host buffers of parameters and gradients, in parallel (the CPU path).
//!
//! The update is PyTorch's `torch.optim.AdamW` (and burn's): decoupled weight decay
//! `p ← p·(1 − lr·wd)` on the parameters whose [`ParamInfo::decays`] says so, then
//! `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`,
//! `p ← p − lr·(m/(1 − β₁ᵗ)) / (√(v/(1 − β₂ᵗ)) + ε)`, with a step count `t` per parameter.
//! A parameter without a gradient this step is left alone, moments and decay included.
//!
//! burn's optimizer runs these as a dozen tensor ops per parameter, one at a time on one
//! thread; here it is one pass over fixed blocks of the flat buffers, in parallel. The moments
//! are two flat buffers in the same parameter order as the gradients, which is what a sharded
//! checkpoint saves.

use rayon::prelude::*;

use crate::params::ParamInfo;

/// Elements per parallel block of the update (the update is element-wise, so the block size
/// changes nothing in the results).
const BLOCK: usize = 64 * 1024;

/// AdamW hyper-parameters and state over flat buffers.
#[derive(Debug, Clone)]
pub struct FlatAdamW {
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// First moments, flat in parameter order.
    pub moment1: Vec<f32>,
    /// Second moments, flat in parameter order.
    pub moment2: Vec<f32>,
    /// Updates applied so far, per parameter.
    pub steps: Vec<u64>,
}

/// One parameter's part of an update.
struct Segment {
    range: std::ops::Range<usize>,
    decay: f32,
    bias1: f32,
    bias2: f32,
}

impl FlatAdamW {
    /// Zero moments for the parameters `params`.
    pub fn new(params: &[ParamInfo], betas: [f64; 2], eps: f64) -> Self {
        let n: usize = params.iter().map(ParamInfo::numel).sum();
        Self {
            beta1: betas[0] as f32,
            beta2: betas[1] as f32,
            eps: eps as f32,
            moment1: vec![0.0; n],
            moment2: vec![0.0; n],
            steps: vec![0; params.len()],
        }
    }

    /// Update `values` in place from `grads` (both flat in the order of `params`).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        values: &mut [f32],
        grads: &[f32],
        params: &[ParamInfo],
        has_grad: &[bool],
        decays: &[bool],
        lr: f64,
        weight_decay: f64,
    ) {
        assert_eq!(
            values.len(),
            self.moment1.len(),
            "adamw: parameter buffer size"
        );
        assert_eq!(
            grads.len(),
            self.moment1.len(),
            "adamw: gradient buffer size"
        );
        let mut segments = Vec::with_capacity(params.len());
        let mut offset = 0;
        for (i, p) in params.iter().enumerate() {
            let n = p.numel();
            if has_grad[i] {
                self.steps[i] += 1;
                let t = self.steps[i] as i32;
                let decay = if decays[i] { lr * weight_decay } else { 0.0 };
                segments.push(Segment {
                    range: offset..offset + n,
                    decay: (1.0 - decay) as f32,
                    bias1: 1.0 - self.beta1.powi(t),
                    bias2: 1.0 - self.beta2.powi(t),
                });
            }
            offset += n;
        }
        let (beta1, beta2, eps, lr) = (self.beta1, self.beta2, self.eps, lr as f32);
        // Blocks of at most BLOCK elements, none across two parameters.
        let mut blocks = Vec::new();
        for s in &segments {
            let mut start = s.range.start;
            while start < s.range.end {
                let end = (start + BLOCK).min(s.range.end);
                blocks.push((start..end, s));
                start = end;
            }
        }
        // Cut the three buffers into the blocks' disjoint slices, front to back.
        let mut work = Vec::with_capacity(blocks.len());
        let (mut p, mut m, mut v) = (values, &mut self.moment1[..], &mut self.moment2[..]);
        let mut at = 0;
        for (range, s) in &blocks {
            let skip = range.start - at;
            let len = range.len();
            let (_, p_rest) = std::mem::take(&mut p).split_at_mut(skip);
            let (pb, p_rest) = p_rest.split_at_mut(len);
            let (_, m_rest) = std::mem::take(&mut m).split_at_mut(skip);
            let (mb, m_rest) = m_rest.split_at_mut(len);
            let (_, v_rest) = std::mem::take(&mut v).split_at_mut(skip);
            let (vb, v_rest) = v_rest.split_at_mut(len);
            (p, m, v) = (p_rest, m_rest, v_rest);
            at = range.end;
            work.push((pb, mb, vb, &grads[range.clone()], *s));
        }
        work.into_par_iter().for_each(|(p, m, v, g, s)| {
            for i in 0..g.len() {
                m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
                v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
                let update = (m[i] / s.bias1) / ((v[i] / s.bias2).sqrt() + eps);
                p[i] = p[i] * s.decay - lr * update;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::tensor::{Distribution, Tensor};

    use super::FlatAdamW;
    use crate::grads::flat::FlatGrads;
    use crate::params::{flat_params, params, set_flat_params};
    use crate::CpuBackend;

    type Inner = burn::backend::Flex;

    #[test]
    fn matches_burns_adamw_step_by_step() {
        let dev = Default::default();
        let model: Linear<CpuBackend> = LinearConfig::new(5, 3).init(&dev);
        let infos = params(&model);
        let x = Tensor::<CpuBackend, 2>::random([4, 5], Distribution::Default, &dev);
        let loss = |m: &Linear<CpuBackend>| m.forward(x.clone()).powi_scalar(2).sum();
        let (lr, wd) = (0.05, 0.1);
        let mut burn_opt = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.98)
            .with_epsilon(1e-6)
            .with_weight_decay(wd as f32)
            .init::<CpuBackend, Linear<CpuBackend>>();
        let mut flat_opt = FlatAdamW::new(&infos, [0.9, 0.98], 1e-6);
        // burn initialises parameters lazily: read them once so that both copies share them.
        let start = flat_params(&model);
        let (mut a, mut b) = (model.clone(), model);
        for _ in 0..3 {
            let g = GradientsParams::from_grads(loss(&a).backward(), &a);
            a = burn_opt.step(lr, a, g);
            let g = GradientsParams::from_grads(loss(&b).backward(), &b);
            let flat = FlatGrads::<Inner>::from_grads(&g, &infos, &dev);
            let grads = flat.buffer.into_data().into_vec::<f32>().unwrap();
            let mut values = flat_params(&b);
            let decays = vec![true; infos.len()];
            flat_opt.step(&mut values, &grads, &infos, &flat.has_grad, &decays, lr, wd);
            b = set_flat_params(b, &values, &dev);
        }
        let (pa, pb) = (flat_params(&a), flat_params(&b));
        assert_eq!(pa.len(), pb.len());
        for (x, y) in pa.iter().zip(&pb) {
            assert!((x - y).abs() < 1e-5, "burn {x} vs flat {y}");
        }
        // The parameters moved (the comparison is not between two untouched models).
        assert!(pa.iter().zip(&start).any(|(x, y)| (x - y).abs() > 1e-3));
        assert_eq!(flat_opt.steps, vec![3, 3]);
    }
}

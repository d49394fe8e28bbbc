//! AdamW on the training device over flat `[numel]` tensors (parameters, moments,
//! gradients), so that on a GPU neither the gradients nor the parameters make a trip to the
//! host ([`weft_config::UpdateOn::Device`]).
//!
//! It is [`super::host::FlatAdamW`]'s update written as burn tensor ops, in the same order of
//! operations: on the CPU the two give the same bits (tested). A parameter without a gradient
//! this step keeps its values and moments; the step count of bias correction is per
//! parameter, so the buffers are updated in runs of consecutive parameters that share one
//! (normally a single run: every parameter has a gradient at every step).

use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::grads::flat::to_device;
use crate::params::ParamInfo;

/// AdamW over flat tensors on the device (the math of [`super::host::FlatAdamW`]).
#[derive(Debug, Clone)]
pub struct DeviceAdamW<B: Backend> {
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// The parameters, flat in parameter order: the f32 master copy.
    pub values: Tensor<B, 1>,
    /// First moments.
    pub moment1: Tensor<B, 1>,
    /// Second moments.
    pub moment2: Tensor<B, 1>,
    /// Updates applied so far, per parameter.
    pub steps: Vec<u64>,
    /// 1 at the elements of parameters that decay, 0 elsewhere.
    decay_mask: Tensor<B, 1>,
}

/// One run of consecutive parameters updated alike: their elements, and the step count of
/// their bias correction (None: no gradient this step, left alone).
fn runs(
    params: &[ParamInfo],
    steps: &[u64],
    has_grad: &[bool],
) -> Vec<(Range<usize>, Option<u64>)> {
    let mut out: Vec<(Range<usize>, Option<u64>)> = Vec::new();
    let mut offset = 0;
    for (i, p) in params.iter().enumerate() {
        let n = p.numel();
        let key = has_grad[i].then_some(steps[i]);
        match out.last_mut() {
            Some((range, k)) if *k == key && range.end == offset => range.end = offset + n,
            _ => out.push((offset..offset + n, key)),
        }
        offset += n;
    }
    out
}

impl<B: Backend> DeviceAdamW<B> {
    /// Zero moments for `values` (flat in the order of `params`); `decays` per parameter.
    pub fn new(
        values: Tensor<B, 1>,
        params: &[ParamInfo],
        decays: &[bool],
        betas: [f64; 2],
        eps: f64,
    ) -> Self {
        let device = values.device();
        let n = values.dims()[0];
        let mut mask = Vec::with_capacity(n);
        for (p, &d) in params.iter().zip(decays) {
            mask.extend(std::iter::repeat_n(if d { 1.0f32 } else { 0.0 }, p.numel()));
        }
        assert_eq!(mask.len(), n, "adamw: parameter buffer size");
        Self {
            beta1: betas[0] as f32,
            beta2: betas[1] as f32,
            eps: eps as f32,
            moment1: Tensor::zeros([n], &device),
            moment2: Tensor::zeros([n], &device),
            values,
            steps: vec![0; params.len()],
            decay_mask: to_device(mask, &device),
        }
    }

    /// One AdamW update from the flat `grads` (already averaged and clipped).
    pub fn step(
        &mut self,
        grads: Tensor<B, 1>,
        params: &[ParamInfo],
        has_grad: &[bool],
        lr: f64,
        weight_decay: f64,
    ) {
        assert_eq!(
            grads.dims(),
            self.values.dims(),
            "adamw: gradient buffer size"
        );
        for (s, &h) in self.steps.iter_mut().zip(has_grad) {
            if h {
                *s += 1;
            }
        }
        let runs = runs(params, &self.steps, has_grad);
        // f32(1 − lr·wd) − 1 is exact (Sterbenz), so mask·d + 1 is exactly the host's factor.
        let decay = (1.0 - lr * weight_decay) as f32 - 1.0;
        let whole = runs.len() == 1;
        let (mut ps, mut ms, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (range, t) in runs {
            let cut = |x: &Tensor<B, 1>| {
                if whole {
                    x.clone()
                } else {
                    x.clone().narrow(0, range.start, range.len())
                }
            };
            let (p, m, v) = (cut(&self.values), cut(&self.moment1), cut(&self.moment2));
            let Some(t) = t else {
                ps.push(p);
                ms.push(m);
                vs.push(v);
                continue;
            };
            let g = cut(&grads);
            let t = t as i32;
            let (b1, b2) = (self.beta1, self.beta2);
            let bias1 = 1.0 - b1.powi(t);
            let bias2 = 1.0 - b2.powi(t);
            // The operations of FlatAdamW::step, in its order.
            let m = m.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
            let v = v.mul_scalar(b2) + g.clone().mul_scalar(1.0 - b2).mul(g);
            let update = m
                .clone()
                .div_scalar(bias1)
                .div(v.clone().div_scalar(bias2).sqrt().add_scalar(self.eps));
            let factor = cut(&self.decay_mask).mul_scalar(decay).add_scalar(1.0);
            let p = p.mul(factor) - update.mul_scalar(lr as f32);
            ps.push(p);
            ms.push(m);
            vs.push(v);
        }
        let join = |mut parts: Vec<Tensor<B, 1>>| {
            if parts.len() == 1 {
                parts.pop().expect("one part")
            } else {
                Tensor::cat(parts, 0)
            }
        };
        self.values = join(ps);
        self.moment1 = join(ms);
        self.moment2 = join(vs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adamw::host::FlatAdamW;
    use crate::grads::flat::to_host;
    use burn::module::ParamId;

    type Flex = burn::backend::Flex;

    fn info(path: &str, shape: &[usize]) -> ParamInfo {
        ParamInfo {
            path: path.into(),
            id: ParamId::new(),
            shape: shape.to_vec(),
        }
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn runs_group_parameters_by_gradient_and_step_count() {
        let params = [
            info("a", &[2]),
            info("b", &[3]),
            info("c", &[1]),
            info("d", &[2]),
        ];
        assert_eq!(
            runs(&params, &[1, 1, 1, 1], &[true; 4]),
            vec![(0..8, Some(1))]
        );
        assert_eq!(
            runs(&params, &[2, 2, 1, 1], &[true, true, false, true]),
            vec![(0..5, Some(2)), (5..6, None), (6..8, Some(1))]
        );
    }

    #[test]
    fn the_device_update_gives_the_host_updates_bits() {
        let dev = Default::default();
        let params = [
            info("w.weight", &[3, 4]),
            info("w.bias", &[4]),
            info("x.weight", &[5, 2]),
            info("x.bias", &[2]),
        ];
        let decays = [true, false, true, false];
        let n: usize = params.iter().map(ParamInfo::numel).sum();
        let mut host_values = pseudo(n, 7);
        let mut host = FlatAdamW::new(&params, [0.9, 0.98], 1e-6);
        let mut device = DeviceAdamW::<Flex>::new(
            to_device(host_values.clone(), &dev),
            &params,
            &decays,
            [0.9, 0.98],
            1e-6,
        );
        // Step 3 leaves parameter 2 without a gradient: its values and moments stay, and
        // the runs split.
        for step in 0..5u32 {
            let grads = pseudo(n, 100 + step);
            let has_grad = [true, true, step != 2, true];
            let lr = 1e-2 / f64::from(step + 1);
            host.step(
                &mut host_values,
                &grads,
                &params,
                &has_grad,
                &decays,
                lr,
                0.1,
            );
            device.step(to_device(grads, &dev), &params, &has_grad, lr, 0.1);
        }
        assert_eq!(device.steps, host.steps);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&to_host(device.values.clone())), bits(&host_values));
        assert_eq!(bits(&to_host(device.moment1.clone())), bits(&host.moment1));
        assert_eq!(bits(&to_host(device.moment2.clone())), bits(&host.moment2));
    }
}

//! The master copy on the host: the parameters' values in flat host buffers (gathering them
//! from the model's tensors every step cost a serial copy) with [`FlatAdamW`]'s moments,
//! updated in parallel on the CPU cores. The CPU path: fastest there, and bit-for-bit
//! repeatable for any thread count.

use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use weft_checkpoint::{ParamTable, Snapshot};
use weft_collective::{Collective, CollectiveError};
use weft_config::TrainConfig;
use weft_model::VlModel;

use super::{Master, UpdateRules};
use crate::adamw::FlatAdamW;
use crate::grads::clip::{clip_factor, global_norm, scale_in_place};
use crate::grads::flat::{to_host, Grads};
use crate::params::{flat_params, set_flat_params, ParamInfo};
use crate::snapshot::Restored;

/// Flat host buffers of the parameters and AdamW's state.
pub struct HostMaster {
    values: Vec<f32>,
    optim: FlatAdamW,
    /// Per parameter: whether weight decay applies.
    decays: Vec<bool>,
}

impl HostMaster {
    /// The values of `model`'s parameters `params`, with zero moments.
    pub fn new<B: AutodiffBackend>(
        model: &VlModel<B>,
        params: &[ParamInfo],
        train: &TrainConfig,
    ) -> Self {
        Self {
            values: flat_params(model),
            optim: FlatAdamW::new(params, train.betas, train.eps),
            decays: params.iter().map(ParamInfo::decays).collect(),
        }
    }
}

impl<B: AutodiffBackend> Master<B> for HostMaster {
    fn average(
        &self,
        summed: Option<Tensor<B::InnerBackend, 1>>,
        accum: u64,
    ) -> Grads<B::InnerBackend> {
        let Some(buffer) = summed else {
            return Grads::Host(vec![0.0; self.values.len()]);
        };
        let mut grads = to_host(buffer);
        if accum > 1 {
            scale_in_place(&mut grads, 1.0 / accum as f32);
        }
        Grads::Host(grads)
    }

    fn step(&mut self, grads: Grads<B::InnerBackend>, rules: &UpdateRules<'_>) -> (f64, bool) {
        let mut grads = grads.into_host();
        let norm = global_norm(&grads);
        if !norm.is_finite() {
            return (norm, false);
        }
        if let Some(f) = clip_factor(rules.clip, norm) {
            scale_in_place(&mut grads, f);
        }
        self.optim.step(
            &mut self.values,
            &grads,
            rules.params,
            rules.has_grad,
            &self.decays,
            rules.lr,
            rules.weight_decay,
        );
        (norm, true)
    }

    fn scatter(&self, model: VlModel<B>, device: &B::Device) -> VlModel<B> {
        set_flat_params(model, &self.values, device)
    }

    fn snapshot(&self, table: &Arc<ParamTable>, spare: Option<Snapshot>) -> Snapshot {
        let optim = &self.optim;
        Snapshot::copy_of(
            table,
            &self.values,
            &optim.moment1,
            &optim.moment2,
            &optim.steps,
            spare,
        )
    }

    fn restore(&mut self, r: Restored) {
        self.values = r.values;
        self.optim.moment1 = r.exp_avg;
        self.optim.moment2 = r.exp_avg_sq;
        self.optim.steps = r.steps;
    }

    fn broadcast(&mut self, collective: &mut dyn Collective) -> Result<(), CollectiveError> {
        collective.broadcast(&mut self.values, 0)
    }
}

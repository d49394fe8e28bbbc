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
    fn on_device(&self) -> bool {
        false
    }

    fn average(
        &self,
        summed: Option<Tensor<B::InnerBackend, 1>>,
        accum: u64,
        numel: usize,
        _device: &B::Device,
    ) -> Grads<B::InnerBackend> {
        let Some(buffer) = summed else {
            return Grads::Host(vec![0.0; numel]);
        };
        let mut grads = to_host(buffer);
        if accum > 1 {
            scale_in_place(&mut grads, 1.0 / accum as f32);
        }
        Grads::Host(grads)
    }

    fn update(
        &mut self,
        model: VlModel<B>,
        grads: Grads<B::InnerBackend>,
        rules: &UpdateRules<'_>,
        device: &B::Device,
    ) -> (VlModel<B>, f64, bool) {
        let mut grads = grads.into_host();
        let norm = global_norm(&grads);
        if !norm.is_finite() {
            return (model, norm, false);
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
        (set_flat_params(model, &self.values, device), norm, true)
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

    fn restore(&mut self, r: Restored, model: VlModel<B>, device: &B::Device) -> VlModel<B> {
        self.values = r.values;
        self.optim.moment1 = r.exp_avg;
        self.optim.moment2 = r.exp_avg_sq;
        self.optim.steps = r.steps;
        set_flat_params(model, &self.values, device)
    }

    fn broadcast(
        &mut self,
        collective: &mut dyn Collective,
        model: VlModel<B>,
        device: &B::Device,
    ) -> Result<VlModel<B>, CollectiveError> {
        collective.broadcast(&mut self.values, 0)?;
        Ok(set_flat_params(model, &self.values, device))
    }
}

//! The master copy on the training device: flat `[numel]` tensors of the parameters and
//! AdamW's state ([`DeviceAdamW`]), so that on a GPU neither the gradients nor the parameters
//! make a trip through the host; the model's parameters are slices of the flat tensor.

use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use weft_checkpoint::{ParamTable, Snapshot};
use weft_collective::{Collective, CollectiveError};
use weft_config::TrainConfig;
use weft_model::VlModel;

use super::{Master, UpdateRules};
use crate::adamw::DeviceAdamW;
use crate::grads::clip::{clip_factor, device_norm};
use crate::grads::flat::{to_device, to_host, Grads};
use crate::params::{flat_params, set_flat_params_device, ParamInfo};
use crate::snapshot::Restored;

/// Flat tensors of the parameters and AdamW's state on the training device.
pub struct DeviceMaster<B: AutodiffBackend> {
    adam: DeviceAdamW<B::InnerBackend>,
}

impl<B: AutodiffBackend> DeviceMaster<B> {
    /// The values of `model`'s parameters `params` on `device`, with zero moments.
    pub fn new(
        model: &VlModel<B>,
        params: &[ParamInfo],
        train: &TrainConfig,
        device: &B::Device,
    ) -> Self {
        let decays: Vec<bool> = params.iter().map(ParamInfo::decays).collect();
        Self {
            adam: DeviceAdamW::new(
                to_device(flat_params(model), device),
                params,
                &decays,
                train.betas,
                train.eps,
            ),
        }
    }
}

impl<B: AutodiffBackend> Master<B> for DeviceMaster<B> {
    fn average(
        &self,
        summed: Option<Tensor<B::InnerBackend, 1>>,
        accum: u64,
    ) -> Grads<B::InnerBackend> {
        let Some(buffer) = summed else {
            let values = &self.adam.values;
            return Grads::Device(Tensor::zeros(values.dims(), &values.device()));
        };
        if accum > 1 {
            Grads::Device(buffer.mul_scalar(1.0 / accum as f32))
        } else {
            Grads::Device(buffer)
        }
    }

    fn step(&mut self, grads: Grads<B::InnerBackend>, rules: &UpdateRules<'_>) -> (f64, bool) {
        let mut grads = grads.into_device(&self.adam.values.device());
        let norm = device_norm(&grads);
        if !norm.is_finite() {
            return (norm, false);
        }
        if let Some(f) = clip_factor(rules.clip, norm) {
            grads = grads.mul_scalar(f);
        }
        self.adam.step(
            grads,
            rules.params,
            rules.has_grad,
            rules.lr,
            rules.weight_decay,
        );
        (norm, true)
    }

    fn scatter(&self, model: VlModel<B>, _device: &B::Device) -> VlModel<B> {
        set_flat_params_device(model, &self.adam.values)
    }

    fn snapshot(&self, table: &Arc<ParamTable>, spare: Option<Snapshot>) -> Snapshot {
        let adam = &self.adam;
        Snapshot::copy_of(
            table,
            &to_host(adam.values.clone()),
            &to_host(adam.moment1.clone()),
            &to_host(adam.moment2.clone()),
            &adam.steps,
            spare,
        )
    }

    fn restore(&mut self, r: Restored) {
        let adam = &mut self.adam;
        let device = adam.values.device();
        adam.values = to_device(r.values, &device);
        adam.moment1 = to_device(r.exp_avg, &device);
        adam.moment2 = to_device(r.exp_avg_sq, &device);
        adam.steps = r.steps;
    }

    fn broadcast(&mut self, collective: &mut dyn Collective) -> Result<(), CollectiveError> {
        let mut values = to_host(self.adam.values.clone());
        collective.broadcast(&mut values, 0)?;
        self.adam.values = to_device(values, &self.adam.values.device());
        Ok(())
    }
}

//! One optimizer step's machinery: the model, the master copy of its parameters with AdamW's
//! state, the parameters' order and the rules of the `[train]` section. [`crate::train`] and
//! `weft bench train` run the same code.
//!
//! The master copy lives where `train.update_on` says, behind one interface ([`Master`]):
//! flat host buffers updated in parallel on the CPU cores ([`host`]), or flat tensors on the
//! training device ([`device`]). Each runs the same stages of the update: average the
//! micro-batches' gradients ([`Master::average`]), clip them to the global norm and step AdamW
//! ([`Master::step`]), and scatter the new values into the model ([`Master::scatter`]).

pub mod device;
pub mod host;

use std::sync::Arc;

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, FloatDType, Tensor};
use rand_chacha::ChaCha8Rng;
use weft_checkpoint::{ParamTable, Snapshot};
use weft_collective::{Collective, CollectiveError};
use weft_config::{Config, LossConfig, Precision, TrainConfig};
use weft_model::{FeatureGather, ObjectiveBatch, SpecialTokens, VlModel};

use crate::grads::flat::{FlatGrads, Grads};
use crate::params::{params, ParamInfo};
use crate::snapshot::Restored;

/// The rules of one update: which parameters, which of them have a gradient, the learning
/// rate, the weight decay and the clipping bound.
pub struct UpdateRules<'a> {
    /// The parameters in visit order.
    pub params: &'a [ParamInfo],
    /// Per parameter: a gradient this step (on any rank).
    pub has_grad: &'a [bool],
    /// The learning rate of this step.
    pub lr: f64,
    /// Decoupled weight decay (`train.weight_decay`).
    pub weight_decay: f64,
    /// The global-norm bound (`train.grad_clip`; 0 does not clip).
    pub clip: f64,
}

/// Where the f32 master copy of the parameters and AdamW's moments live, and the stages of the
/// update that run there.
pub trait Master<B: AutodiffBackend>: Send + Sync {
    /// The micro-batches' summed gradients (`None`: there are none, zeros), averaged over
    /// `accum`, where the update runs.
    fn average(
        &self,
        summed: Option<Tensor<B::InnerBackend, 1>>,
        accum: u64,
    ) -> Grads<B::InnerBackend>;

    /// Clip the averaged `grads` to the global norm, decay and step. Returns the norm before
    /// clipping and whether the update was applied (not when the norm is not finite: then the
    /// copy is as it was).
    fn step(&mut self, grads: Grads<B::InnerBackend>, rules: &UpdateRules<'_>) -> (f64, bool);

    /// `model` with the copy's values as its parameters.
    fn scatter(&self, model: VlModel<B>, device: &B::Device) -> VlModel<B>;

    /// Copies of the parameters and the optimizer state, for a checkpoint (into `spare`'s
    /// buffers when given).
    fn snapshot(&self, table: &Arc<ParamTable>, spare: Option<Snapshot>) -> Snapshot;

    /// Take the parameters and optimizer state of a checkpoint.
    fn restore(&mut self, r: Restored);

    /// Take rank 0's parameters.
    fn broadcast(&mut self, collective: &mut dyn Collective) -> Result<(), CollectiveError>;
}

/// One optimizer step's machinery: the model, its master copy with AdamW, the parameters and
/// the rules of the `[train]` section.
pub struct Engine<B: AutodiffBackend> {
    model: VlModel<B>,
    master: Box<dyn Master<B>>,
    params: Vec<ParamInfo>,
    weights: LossConfig,
    special: SpecialTokens,
    train: TrainConfig,
}

/// What one micro-batch gave.
pub struct Micro<B: AutodiffBackend> {
    /// Weighted total loss.
    pub loss: f64,
    /// Unweighted components.
    pub parts: Vec<(&'static str, f64)>,
    /// Flat gradients; None when the loss was not finite.
    pub grads: Option<FlatGrads<B::InnerBackend>>,
}

impl<B: AutodiffBackend> Engine<B> {
    /// Wrap a freshly built model on `device`; the update runs where `train.update_on` says.
    pub fn new(
        model: VlModel<B>,
        config: &Config,
        special: SpecialTokens,
        device: &B::Device,
    ) -> Self {
        let t = &config.train;
        let params = params(&model);
        let master: Box<dyn Master<B>> = if t.update_on_device() {
            Box::new(device::DeviceMaster::new(&model, &params, t, device))
        } else {
            Box::new(host::HostMaster::new(&model, &params, t))
        };
        Self {
            model,
            master,
            params,
            weights: config.loss.clone(),
            special,
            train: t.clone(),
        }
    }

    /// The model being trained.
    pub fn model(&self) -> &VlModel<B> {
        &self.model
    }

    /// The parameters in visit order.
    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// Whether the update runs on the device's tensors (`train.update_on`).
    pub fn updates_on_device(&self) -> bool {
        self.train.update_on_device()
    }

    /// Total elements of the parameters.
    pub fn numel(&self) -> usize {
        self.params.iter().map(ParamInfo::numel).sum()
    }

    /// The dtype of the matrix products (`train.precision`), for [`weft_kernels::autocast`].
    fn product_dtype(&self) -> Option<FloatDType> {
        match self.train.precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// Forward and backward of one micro-batch. `poison` multiplies the loss by NaN (fault
    /// injection).
    pub fn micro(
        &self,
        batch: &ObjectiveBatch<B>,
        rng: &mut ChaCha8Rng,
        poison: bool,
        device: &B::Device,
    ) -> Micro<B> {
        self.micro_with(batch, rng, poison, device, None)
    }

    /// [`Self::micro`] on one rank of a data-parallel job: `gather` gives ITC the features of
    /// every rank.
    pub fn micro_with(
        &self,
        batch: &ObjectiveBatch<B>,
        rng: &mut ChaCha8Rng,
        poison: bool,
        device: &B::Device,
        gather: Option<&mut (dyn FeatureGather + '_)>,
    ) -> Micro<B> {
        let mut gather = gather;
        // Mixed precision for this micro-batch's products (their backward is recorded in the
        // graph and needs no guard).
        let _autocast = weft_kernels::autocast(self.product_dtype());
        let mut out = self.model.losses_with(
            batch,
            &self.weights,
            &self.special,
            rng,
            gather.as_deref_mut(),
        );
        if poison {
            out.total = out.total.mul_scalar(f64::NAN);
        }
        let exchange = out.exchange.take();
        let mut loss: f64 = out.total.clone().into_scalar().elem();
        if let Some(x) = &exchange {
            loss += x.rest.clone().into_scalar().elem::<f64>();
        }
        let parts = out
            .parts
            .iter()
            .map(|(name, part)| (*name, part.clone().into_scalar().elem::<f64>()))
            .collect();
        let flat = |grads: B::Gradients| {
            let grads = GradientsParams::from_grads(grads, &self.model);
            FlatGrads::<B::InnerBackend>::from_grads(&grads, &self.params, device)
        };
        let grads = match exchange {
            None => loss.is_finite().then(|| flat(out.total.backward())),
            Some(x) => {
                // Every rank runs both passes (they all-reduce), whatever its loss.
                let first = out.total.backward();
                let gather = gather.expect("an exchange comes from a gather");
                let second = x.backward_loss(&first, gather);
                let grads = flat(first).accumulate(flat(second.backward()));
                loss.is_finite().then_some(grads)
            }
        };
        Micro { loss, parts, grads }
    }

    /// Average `accum` micro-batches' summed gradients, clip them to the global norm, decay and
    /// step (one process: no all-reduce). Returns the norm before clipping and whether the
    /// update was applied (it is not when the gradients are missing or their norm is not
    /// finite).
    pub fn apply(
        &mut self,
        summed: Option<FlatGrads<B::InnerBackend>>,
        accum: u64,
        lr: f64,
    ) -> (f64, bool) {
        let Some(flat) = summed else {
            return (f64::NAN, false);
        };
        let device = flat.buffer.device();
        let (grads, has_grad) = self.grads(Some(flat), accum);
        self.update(grads, &has_grad, lr, &device)
    }

    /// The summed gradients of `accum` micro-batches, averaged, where the update runs (zeros
    /// and no parameter with a gradient when there are none), and which parameters have one.
    pub fn grads(
        &self,
        summed: Option<FlatGrads<B::InnerBackend>>,
        accum: u64,
    ) -> (Grads<B::InnerBackend>, Vec<bool>) {
        let (buffer, has_grad) = match summed {
            Some(flat) => (Some(flat.buffer), flat.has_grad),
            None => (None, vec![false; self.params.len()]),
        };
        (self.master.average(buffer, accum), has_grad)
    }

    /// Clip the averaged flat `grads` to the global norm, decay and step. Returns the norm
    /// before clipping and whether the update was applied (not when the norm is not finite).
    pub fn update(
        &mut self,
        grads: Grads<B::InnerBackend>,
        has_grad: &[bool],
        lr: f64,
        device: &B::Device,
    ) -> (f64, bool) {
        let rules = UpdateRules {
            params: &self.params,
            has_grad,
            lr,
            weight_decay: self.train.weight_decay,
            clip: self.train.grad_clip,
        };
        let (norm, applied) = self.master.step(grads, &rules);
        if applied {
            self.model = self.master.scatter(self.model.clone(), device);
        }
        (norm, applied)
    }

    /// Copies of the parameters and the optimizer state, for a checkpoint (into `spare`'s
    /// buffers when given).
    pub fn snapshot(&self, table: &Arc<ParamTable>, spare: Option<Snapshot>) -> Snapshot {
        self.master.snapshot(table, spare)
    }

    /// Takes the parameters and optimizer state of a checkpoint.
    pub fn restore(&mut self, r: Restored, device: &B::Device) {
        assert_eq!(r.values.len(), self.numel(), "restore: parameter count");
        self.master.restore(r);
        self.model = self.master.scatter(self.model.clone(), device);
    }

    /// Make every rank start from rank 0's parameters (DDP's initial broadcast), whatever
    /// each process's initialisation drew.
    pub fn broadcast_params(
        &mut self,
        collective: &mut dyn Collective,
        device: &B::Device,
    ) -> Result<(), CollectiveError> {
        if collective.world_size() == 1 {
            return Ok(());
        }
        self.master.broadcast(collective)?;
        self.model = self.master.scatter(self.model.clone(), device);
        Ok(())
    }
}

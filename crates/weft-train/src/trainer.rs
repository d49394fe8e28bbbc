//! The training loop, on one process or on one rank of a data-parallel job.
//!
//! Every rank builds the same model from the same seed, reads its own share of each global
//! batch (handed out by a [`Planner`]: the coordinator's in a job), computes its local losses with ITC over the
//! global batch, averages the gradients with the other ranks ([`crate::dist`]) and applies the
//! identical update. Rank 0 writes the run directory's files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicBool, Ordering};

use weft_checkpoint::{
    check_compatible, Committer, InitReport, LocalCommitter, Pretrained, Resume, RngState,
    SchedulerState, Snapshot, TrainerState, WriteOptions, SHAPE_KEYS,
};
use weft_collective::{Collective, ReduceOp, SingleRank};
use weft_config::{Config, LossConfig, TrainConfig};
use weft_data::plan::derive_seed;
use weft_data::text::SPECIAL_TOKENS;
use weft_data::{
    Batch, BatchStream, DataCursor, DatasetUnits, Loader, LocalPlanner, Planner,
    Progress as DataProgress, Share, Split,
};
use weft_model::{FeatureGather, ObjectiveBatch, SpecialTokens, VlModel, VlModelConfig};

use crate::checkpointing::{checkpoint_layout, read_restored, Restored, Saver};
use crate::dist::{all_reduce_grads, bucket_elems, CollectiveGather, GradReduce};
use crate::error::{io, TrainError};
use crate::eval::{evaluate_retrieval_rerank, training_rows, Retrieval};
use crate::metrics::{truncate_after_step, EvalRecord, JsonLines, RunRecord, StepMetrics};
use crate::optim::FlatAdamW;
use crate::params::{
    flat_params, global_norm, params, scale_in_place, set_flat_params, stable_ids, FlatGrads,
    ParamInfo,
};
use crate::progress::Progress;
use crate::schedule::WarmupCosine;
use crate::update::{device_norm, set_flat_params_device, to_device, to_host, DeviceAdamW, Grads};

/// File name of the final weights in the run directory.
pub const MODEL_FILE: &str = weft_checkpoint::files::MODEL_FILE;
/// File name of the tokenizer copy in the run directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Tag of the objective RNG streams (MLM/ITM/MIM sampling) in [`derive_seed`].
const OBJECTIVE_STREAM: u64 = 0x6f62_6a65_6374;

/// How to run [`train`].
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Where `config.toml`, `metrics.jsonl`, `eval.jsonl` and the weights go.
    pub run_dir: PathBuf,
    /// Draw a progress bar (stderr is a terminal) instead of log lines.
    pub progress: bool,
    /// Fault injection for tests: make the loss NaN at these optimizer steps (from 1).
    pub nonfinite_loss_at: Vec<u64>,
    /// Which checkpoint to resume from.
    pub resume: Resume,
    /// Set (by a signal handler) to save a checkpoint at the next step boundary and stop.
    pub stop: Option<Arc<AtomicBool>>,
    /// Fault injection for tests: stop as if signalled during this optimizer step.
    pub stop_at_step: Option<u64>,
    /// For tests: sleep this long at the end of every optimizer step, so that a signal sent
    /// from outside (a Slurm test) lands mid-run. The numbers do not change.
    pub step_pause: Option<Duration>,
    /// How checkpoint files are written (a failure can be injected for tests).
    pub checkpoint_write: WriteOptions,
}

/// What one rank of a run trains with: its collective, where it gets its data plan, and who
/// commits its checkpoints. [`train`] uses the single-process ones. `I` is the backend the
/// gradients live on (the training backend's inner one).
pub struct Rank<'a, I: burn::tensor::backend::Backend> {
    /// The collective of the job ([`SingleRank`] alone).
    pub collective: &'a mut dyn Collective,
    /// Averages device gradients without the host (NCCL); None: device gradients that must be
    /// averaged go through the host and `collective`.
    pub grad_reduce: Option<&'a mut GradReduce<I>>,
    /// The data plan ([`LocalPlanner`] alone, the coordinator's in a job).
    pub planner: &'a mut dyn Planner,
    /// The checkpoint committer ([`LocalCommitter`] alone, the coordinator in a job).
    pub committer: Arc<dyn Committer + Send>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer steps taken (skipped ones included).
    pub steps: u64,
    /// Steps whose update was skipped.
    pub skipped: u64,
    /// Total loss of every step.
    pub losses: Vec<f64>,
    /// The last evaluation.
    pub eval: Option<Retrieval>,
    /// The saved weights.
    pub model_path: PathBuf,
    /// Parameters per module.
    pub param_counts: Vec<(&'static str, usize)>,
    /// The step the run resumed from (0: a fresh start).
    pub resumed_from: u64,
    /// The run stopped early on a signal, after committing a checkpoint.
    pub interrupted: bool,
    /// The last checkpoint committed.
    pub checkpoint: Option<PathBuf>,
}

/// The special tokens of a tokenizer that the objectives need.
pub fn special_tokens(loader: &Loader, config: &Config) -> Result<SpecialTokens, TrainError> {
    let text = loader.text().ok_or(TrainError::NoTokenizer)?;
    let path = config.data.tokenizer.clone().unwrap_or_default();
    let need = |token: &'static str, objective: &'static str, on: bool| match text.token_id(token) {
        Some(id) => Ok(id),
        None if !on => Ok(0),
        None => Err(TrainError::MissingToken {
            objective,
            token,
            path: path.clone(),
        }),
    };
    Ok(SpecialTokens {
        mask: need("[MASK]", "loss.mlm", config.loss.mlm > 0.0)?,
        bos: need("[BOS]", "loss.lm", config.loss.lm > 0.0)?,
        all: SPECIAL_TOKENS
            .iter()
            .filter_map(|t| text.token_id(t))
            .collect(),
    })
}

/// Build the model of `config` for a tokenizer of `vocab` tokens, seeded, with stable ids.
pub fn build_model<B: burn::tensor::backend::Backend>(
    config: &Config,
    vocab: usize,
    device: &B::Device,
) -> VlModel<B> {
    // The backend draws initial parameters from one process-wide generator: seeding it and
    // drawing a model must not interleave with another build (tests train in parallel).
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    B::seed(device, config.seed);
    stable_ids(VlModelConfig::from_weft(config, vocab).init::<B>(device))
}

/// `model` with the parameters that the weights at `path` hold (`train.init_from`): a
/// safetensors file, a run directory or a checkpoint directory, matched by name
/// ([`weft_checkpoint::pretrained`]). Parameters the weights lack keep their values.
pub fn init_from<B: AutodiffBackend>(
    model: VlModel<B>,
    path: &Path,
    device: &B::Device,
) -> Result<(VlModel<B>, InitReport), TrainError> {
    let fail = |e| TrainError::InitFrom(Box::new(e));
    let weights = weft_checkpoint::read_pretrained(path).map_err(fail)?;
    set_from(model, &weights, device).map_err(fail)
}

/// `model` with the parameters that `weights` hold, matched by name; the others keep their
/// values.
fn set_from<B: burn::tensor::backend::Backend>(
    model: VlModel<B>,
    weights: &Pretrained,
    device: &B::Device,
) -> Result<(VlModel<B>, InitReport), weft_checkpoint::CheckpointError> {
    let layout = checkpoint_layout(&params(&model));
    let mut values = flat_params(&model);
    let report = weights.apply(&layout, &mut values)?;
    Ok((set_flat_params(model, &values, device), report))
}

/// `model` with every parameter taken from `weights` (evaluation of saved weights: a
/// `model.safetensors`, an export or a checkpoint); a parameter the weights lack, or one of
/// another shape, is an error naming it.
pub fn with_weights<B: burn::tensor::backend::Backend>(
    model: VlModel<B>,
    weights: &Pretrained,
    device: &B::Device,
) -> Result<VlModel<B>, TrainError> {
    let (model, report) = set_from(model, weights, device).map_err(|e| TrainError::Weights {
        path: weights.source.clone(),
        message: e.to_string(),
    })?;
    if !report.missing.is_empty() {
        let first: Vec<&str> = report.missing.iter().take(5).map(String::as_str).collect();
        return Err(TrainError::Weights {
            path: weights.source.clone(),
            message: format!(
                "does not match the model: {} of its {} parameters are missing ({}{}); is the \
                 config the one these weights were trained with?",
                report.missing.len(),
                report.loaded.len() + report.missing.len(),
                first.join(", "),
                if report.missing.len() > first.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        });
    }
    Ok(model)
}

/// Log what [`init_from`] set.
fn log_init(report: &InitReport) {
    let some = |names: &[String]| {
        let mut list: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
        if names.len() > 3 {
            list.push("...");
        }
        list.join(", ")
    };
    let total = report.loaded.len() + report.missing.len();
    tracing::info!(
        "train.init_from: {} of {total} parameters from {}",
        report.loaded.len(),
        report.source.display()
    );
    if !report.missing.is_empty() {
        tracing::info!(
            "train.init_from: {} parameters not in the weights keep their initial values ({})",
            report.missing.len(),
            some(&report.missing)
        );
    }
    if !report.unused.is_empty() {
        tracing::info!(
            "train.init_from: {} tensors of the weights are not parameters of this model ({})",
            report.unused.len(),
            some(&report.unused)
        );
    }
}

/// Log the parameter count of each module.
pub fn log_param_counts(counts: &[(&'static str, usize)]) {
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let list: Vec<String> = counts
        .iter()
        .map(|(name, n)| format!("{name} {}", human(*n)))
        .collect();
    tracing::info!("model: {} parameters ({})", human(total), list.join(", "));
}

/// `1.23M`-style count.
pub fn human(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// The stream of training micro-batches across epochs, with the data cursor.
/// A rank's batches, epoch after epoch, from the shares its planner hands out.
struct Batches<'p> {
    loader: Loader,
    planner: &'p mut dyn Planner,
    /// The next epoch's share, when already asked for.
    next_share: Option<Share>,
    stream: Option<BatchStream>,
    batch_size: usize,
    /// Where the rank stands: epoch, steps taken in it, positions consumed.
    epoch: u64,
    epoch_step: u64,
    consumed: u64,
}

impl Batches<'_> {
    fn next(&mut self) -> Result<Batch, TrainError> {
        for _ in 0..2 {
            if self.stream.is_none() {
                let share = match self.next_share.take() {
                    Some(s) => s,
                    None => self.planner.share(self.epoch)?,
                };
                (self.epoch, self.epoch_step, self.consumed) =
                    (share.plan.epoch, share.step, share.consumed);
                self.stream = Some(self.loader.stream_share(&share)?);
            }
            if let Some(batch) = self.stream.as_mut().and_then(Iterator::next) {
                let batch = batch?;
                (self.epoch_step, self.consumed) = (batch.step + 1, batch.consumed);
                return Ok(batch);
            }
            self.stream = None;
            self.epoch += 1;
        }
        Err(TrainError::NoSteps {
            rows: self.loader.catalog().planned_rows(),
            batch: self.batch_size,
            accum: 1,
        })
    }

    /// Tell the planner where this rank stands after optimizer step `step`.
    fn record(
        &mut self,
        rank: usize,
        step: u64,
        samples: u64,
        seconds: f64,
        data_wait_s: f64,
    ) -> Result<(), TrainError> {
        Ok(self.planner.record(&DataProgress {
            rank,
            epoch: self.epoch,
            epoch_step: self.epoch_step,
            consumed: self.consumed,
            step,
            samples,
            seconds,
            data_wait_s,
        })?)
    }
}

/// The master copy of the parameters and the optimizer state (`train.update_on`).
enum Master<I: burn::tensor::backend::Backend> {
    /// Flat host buffers: the model's parameter values in layout order (gathering them from
    /// the model's tensors every step cost a serial copy) and AdamW's moments.
    Host { values: Vec<f32>, optim: FlatAdamW },
    /// Flat tensors on the training device.
    Device(DeviceAdamW<I>),
}

/// One optimizer step's machinery: the model, AdamW, the parameter layout and the rules of the
/// `[train]` section. [`train`] and `weft bench train` run the same code.
pub struct Engine<B: AutodiffBackend> {
    model: VlModel<B>,
    master: Master<B::InnerBackend>,
    layout: Vec<ParamInfo>,
    decays: Vec<bool>,
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
        let layout = params(&model);
        let decays: Vec<bool> = layout.iter().map(ParamInfo::decays).collect();
        let values = flat_params(&model);
        let master = if t.update_on_device() {
            Master::Device(DeviceAdamW::new(
                to_device(values, device),
                &layout,
                &decays,
                t.betas,
                t.eps,
            ))
        } else {
            Master::Host {
                values,
                optim: FlatAdamW::new(&layout, t.betas, t.eps),
            }
        };
        Self {
            model,
            master,
            layout,
            decays,
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
    pub fn layout(&self) -> &[ParamInfo] {
        &self.layout
    }

    /// Whether the update runs on the device's tensors (`train.update_on`).
    pub fn updates_on_device(&self) -> bool {
        matches!(self.master, Master::Device(_))
    }

    /// The dtype of the matrix products (`train.precision`), for [`weft_kernels::autocast`].
    fn product_dtype(&self) -> Option<burn::tensor::FloatDType> {
        match self.train.precision {
            weft_config::Precision::F32 => None,
            weft_config::Precision::Bf16 => Some(burn::tensor::FloatDType::BF16),
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
            FlatGrads::<B::InnerBackend>::from_grads(&grads, &self.layout, device)
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
    /// step. Returns the norm before clipping and whether the update was applied (it is not
    /// when the gradients are missing or their norm is not finite).
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
        let (grads, has_grad) = self.grads(Some(flat), accum, &device);
        self.update(grads, &has_grad, lr, &device)
    }

    /// The summed gradients of `accum` micro-batches, averaged, where the update runs (zeros
    /// and no parameter with a gradient when there are none), and which parameters have one.
    pub fn grads(
        &self,
        summed: Option<FlatGrads<B::InnerBackend>>,
        accum: u64,
        device: &B::Device,
    ) -> (Grads<B::InnerBackend>, Vec<bool>) {
        let scale = 1.0 / accum as f32;
        match (summed, self.updates_on_device()) {
            (Some(flat), true) => {
                let buffer = if accum > 1 {
                    flat.buffer.mul_scalar(scale)
                } else {
                    flat.buffer
                };
                (Grads::Device(buffer), flat.has_grad)
            }
            (Some(flat), false) => {
                let (mut grads, has_grad) = flat.into_vec();
                if accum > 1 {
                    scale_in_place(&mut grads, scale);
                }
                (Grads::Host(grads), has_grad)
            }
            (None, on_device) => {
                let none = vec![false; self.layout.len()];
                if on_device {
                    (
                        Grads::Device(burn::tensor::Tensor::zeros([self.numel()], device)),
                        none,
                    )
                } else {
                    (Grads::Host(vec![0.0; self.numel()]), none)
                }
            }
        }
    }

    /// Copies of the parameters and the optimizer state, for a checkpoint (into `spare`'s
    /// buffers when given).
    pub fn snapshot(
        &self,
        layout: &Arc<weft_checkpoint::ParamTable>,
        spare: Option<Snapshot>,
    ) -> Snapshot {
        match &self.master {
            Master::Host { values, optim } => Snapshot::copy_of(
                layout,
                values,
                &optim.moment1,
                &optim.moment2,
                &optim.steps,
                spare,
            ),
            Master::Device(adam) => Snapshot::copy_of(
                layout,
                &to_host(adam.values.clone()),
                &to_host(adam.moment1.clone()),
                &to_host(adam.moment2.clone()),
                &adam.steps,
                spare,
            ),
        }
    }

    /// Takes the parameters and optimizer state of a checkpoint.
    pub fn restore(&mut self, r: Restored, device: &B::Device) {
        assert_eq!(r.values.len(), self.numel(), "restore: parameter count");
        match &mut self.master {
            Master::Host { values, optim } => {
                *values = r.values;
                optim.moment1 = r.exp_avg;
                optim.moment2 = r.exp_avg_sq;
                optim.steps = r.steps;
                self.model = set_flat_params(self.model.clone(), values, device);
            }
            Master::Device(adam) => {
                adam.values = to_device(r.values, device);
                adam.moment1 = to_device(r.exp_avg, device);
                adam.moment2 = to_device(r.exp_avg_sq, device);
                adam.steps = r.steps;
                self.model = set_flat_params_device(self.model.clone(), &adam.values);
            }
        }
    }

    /// Make every rank start from rank 0's parameters (DDP's initial broadcast), whatever
    /// each process's initialisation drew.
    pub fn broadcast_params(
        &mut self,
        collective: &mut dyn Collective,
        device: &B::Device,
    ) -> Result<(), TrainError> {
        if collective.world_size() == 1 {
            return Ok(());
        }
        match &mut self.master {
            Master::Host { values, .. } => {
                collective.broadcast(values, 0)?;
                self.model = set_flat_params(self.model.clone(), values, device);
            }
            Master::Device(adam) => {
                let mut values = to_host(adam.values.clone());
                collective.broadcast(&mut values, 0)?;
                adam.values = to_device(values, device);
                self.model = set_flat_params_device(self.model.clone(), &adam.values);
            }
        }
        Ok(())
    }

    /// Total elements of the parameters.
    pub fn numel(&self) -> usize {
        self.layout.iter().map(ParamInfo::numel).sum()
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
        let clip = self.train.grad_clip;
        let factor = |norm: f64| (clip > 0.0 && norm > clip).then(|| (clip / (norm + 1e-6)) as f32);
        let wd = self.train.weight_decay;
        match &mut self.master {
            Master::Host { values, optim } => {
                let mut grads = grads.into_host();
                let norm = global_norm(&grads);
                if !norm.is_finite() {
                    return (norm, false);
                }
                if let Some(f) = factor(norm) {
                    scale_in_place(&mut grads, f);
                }
                optim.step(values, &grads, &self.layout, has_grad, &self.decays, lr, wd);
                self.model = set_flat_params(self.model.clone(), values, device);
                (norm, true)
            }
            Master::Device(adam) => {
                let mut grads = match grads {
                    Grads::Device(t) => t,
                    Grads::Host(v) => to_device(v, device),
                };
                let norm = device_norm(&grads);
                if !norm.is_finite() {
                    return (norm, false);
                }
                if let Some(f) = factor(norm) {
                    grads = grads.mul_scalar(f);
                }
                adam.step(grads, &self.layout, has_grad, lr, wd);
                self.model = set_flat_params_device(self.model.clone(), &adam.values);
                (norm, true)
            }
        }
    }
}

/// The RNG of the objectives' sampling for one micro-batch, the same on every rank (each
/// sample's draws are keyed by its row in the global batch, [`weft_model::Sampling`]).
pub fn objective_rng(seed: u64, micro_index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(&[seed, OBJECTIVE_STREAM, micro_index]))
}

/// Train `config` on one process with the backend `B` on `device`.
pub fn train<B: AutodiffBackend>(
    config: &Config,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    train_with::<B>(
        config,
        options,
        device,
        Rank {
            collective: &mut SingleRank,
            grad_reduce: None,
            planner: &mut LocalPlanner::new(0),
            committer: Arc::new(LocalCommitter {
                run_dir: options.run_dir.clone(),
                keep_last: config.checkpoint.keep_last,
            }),
        },
    )
}

/// The objectives in the order of the step statistics.
const OBJECTIVES: [&str; 5] = ["itc", "itm", "mlm", "lm", "mim"];

/// What one rank's micro-batches of a step gave, before the ranks agree on it.
#[derive(Default)]
struct LocalStep {
    bad: bool,
    /// This rank was asked to stop (a signal): every rank stops after this step.
    stop: bool,
    samples: u64,
    loss_sum: f64,
    part_sums: BTreeMap<&'static str, f64>,
    part_counts: BTreeMap<&'static str, u64>,
}

/// The step as every rank sees it after one small all-reduce: any rank's bad micro-batch
/// makes the step bad everywhere, losses are means over ranks and micro-batches, samples the
/// global count.
struct GlobalStep {
    bad: bool,
    stop: bool,
    samples: u64,
    loss: f64,
    parts: BTreeMap<String, f64>,
}

impl LocalStep {
    fn reduce(
        &self,
        collective: &mut dyn Collective,
        accum: u64,
    ) -> Result<GlobalStep, TrainError> {
        let mut v = vec![
            f32::from(u8::from(self.bad)),
            self.samples as f32,
            self.loss_sum as f32,
            f32::from(u8::from(self.stop)),
        ];
        for name in OBJECTIVES {
            v.push(self.part_sums.get(name).copied().unwrap_or(0.0) as f32);
            v.push(self.part_counts.get(name).copied().unwrap_or(0) as f32);
        }
        // f64 sums survive a one-rank job unrounded.
        let world = collective.world_size();
        if world > 1 {
            collective.all_reduce(&mut v, ReduceOp::Sum)?;
        }
        let exact = world == 1;
        let mut parts = BTreeMap::new();
        for (i, name) in OBJECTIVES.iter().enumerate() {
            let count = v[5 + 2 * i];
            if count > 0.0 {
                let sum = if exact {
                    self.part_sums[name]
                } else {
                    f64::from(v[4 + 2 * i])
                };
                parts.insert((*name).to_string(), sum / f64::from(count));
            }
        }
        let loss_sum = if exact {
            self.loss_sum
        } else {
            f64::from(v[2])
        };
        Ok(GlobalStep {
            bad: v[0] > 0.0,
            stop: v[3] > 0.0,
            samples: v[1] as u64,
            loss: loss_sum / (accum * world as u64) as f64,
            parts,
        })
    }
}

/// Train `config` as rank `collective.rank()` of `collective.world_size()` ranks with the
/// backend `B` on `device`. `data.batch_size` is per rank. The rank's share of every epoch
/// comes from `planner` (in a job, the coordinator's: it checks that every rank reads the same
/// dataset with the same options). Rank 0 writes the run directory's config, metrics,
/// evaluations and weights; every rank must be given the same config.
pub fn train_with<B: AutodiffBackend>(
    config: &Config,
    options: &TrainOptions,
    device: &B::Device,
    job: Rank<'_, B::InnerBackend>,
) -> Result<TrainSummary, TrainError> {
    let Rank {
        collective,
        mut grad_reduce,
        planner,
        committer,
    } = job;
    let run_dir = &options.run_dir;
    let (rank, world) = (collective.rank(), collective.world_size());
    let lead = rank == 0;
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let t = &config.train;

    let train_loader = weft_data::loader_from_config(config, Split::Train, &config.data.train)?;
    let text = train_loader.text().ok_or(TrainError::NoTokenizer)?;
    let vocab = text.vocab_size();
    let special = special_tokens(&train_loader, config)?;

    let mut resolved = config.clone();
    resolved.model.text.vocab_size = VlModelConfig::vocab_size(config, vocab);
    let resolved_json = serde_json::to_value(&resolved).expect("configs serialise");

    // Every rank reads the same checkpoint (the run directory is shared).
    let resumed = weft_checkpoint::resolve(run_dir, &options.resume)?;
    let mut model = build_model::<B>(config, vocab, device);
    let counts = model.param_counts();
    if lead {
        log_param_counts(&counts);
    }
    match (&t.init_from, &resumed) {
        (Some(src), Some(ckpt)) if lead => tracing::info!(
            "train.init_from = {src} is not used: the run resumes from {}",
            ckpt.dir.display()
        ),
        (Some(src), None) => {
            // Every rank reads the weights (as it reads a checkpoint), so that each fails
            // alike on a bad file; the broadcast below would give them rank 0's anyway.
            let report;
            (model, report) = init_from(model, Path::new(src), device)?;
            if lead {
                log_init(&report);
            }
        }
        _ => {}
    }
    let mut engine = Engine::new(model, config, special, device);
    if lead && engine.updates_on_device() {
        tracing::info!("optimizer update on the device (train.update_on)");
    }
    engine.broadcast_params(collective, device)?;
    let ckpt_layout = checkpoint_layout(engine.layout());
    if let Some(ckpt) = &resumed {
        check_compatible(&ckpt.state.config, &resolved_json, &SHAPE_KEYS)?;
        engine.restore(read_restored(ckpt, &ckpt_layout)?, device);
        if lead {
            tracing::info!(
                "resuming from {} (step {}, written by {} ranks)",
                ckpt.dir.display(),
                ckpt.state.step,
                ckpt.state.world_size
            );
        }
    }

    // The run directory describes the run on its own: resolved config, tokenizer and a line
    // of runs.jsonl per start. Written once the checkpoint it resumes from (or
    // train.init_from) has been read and found to fit, so that a refused run leaves the files
    // that describe the earlier checkpoints.
    if lead {
        resolved.write_to_run_dir(run_dir)?;
        if let Some(tok) = &config.data.tokenizer {
            let dst = run_dir.join(TOKENIZER_FILE);
            if Path::new(tok) != dst {
                std::fs::copy(tok, &dst).map_err(io(&dst))?;
            }
        }
        let resumed_from = resumed.as_ref().map_or(0, |c| c.state.step);
        let record = RunRecord::now(&resolved_json, B::name(device), world, resumed_from);
        JsonLines::append(&run_dir.join("runs.jsonl"))?.write(&record)?;
    }

    // Every rank embeds its share of the validation rows; the embeddings are gathered over the
    // job's collective and every rank computes the same numbers (rank 0 writes them).
    let val_loader = if !config.data.val.is_empty() && engine.model().has_embeddings() {
        Some(weft_data::loader_from_config(
            config,
            Split::Val,
            &config.data.val,
        )?)
    } else {
        if lead {
            tracing::info!("no retrieval evaluation (no data.val or no ITC head)");
        }
        None
    };

    let catalog = Arc::clone(train_loader.catalog());
    let units = catalog.units();
    let start = match &resumed {
        // The checkpoint's cursor, re-planned when the world or batch size changed: within the
        // epoch no row is lost or seen twice. The data order's options are the checkpoint's.
        Some(ckpt) => ckpt
            .state
            .data_cursor
            .reshard(&*units, world, config.data.batch_size)?,
        None => DataCursor::new(
            &*units,
            weft_data::plan_options(config, Split::Train, world),
            0,
        ),
    };
    planner.open(&units, &start)?;
    let first = planner.share(start.epoch)?;
    // Steps of a whole epoch (a re-planned one may have fewer left).
    let micro_per_epoch = DataCursor::new(
        &*units,
        weft_data::plan_options(config, Split::Train, world),
        0,
    )
    .steps(&*units)?;
    let steps_per_epoch = micro_per_epoch / t.grad_accum;
    let resharded = resumed.as_ref().filter(|c| {
        let o = &c.state.data_cursor.options;
        (o.world_size, o.batch_size) != (world, config.data.batch_size)
    });
    let total = match (t.max_steps, resharded) {
        (0, Some(c)) => {
            // Re-planned for another world: the rest of this epoch, then whole epochs.
            let left = (first.plan.steps - first.step) / t.grad_accum;
            let later = t.epochs.saturating_sub(start.epoch + 1) * steps_per_epoch;
            c.state.step + left + later
        }
        (0, None) => t.epochs * steps_per_epoch,
        (max, _) => max,
    };
    if micro_per_epoch == 0 || total == 0 {
        return Err(TrainError::NoSteps {
            rows: catalog.planned_rows(),
            batch: config.data.batch_size * world,
            accum: t.grad_accum,
        });
    }
    let schedule = WarmupCosine {
        peak: t.lr,
        floor: t.min_lr,
        warmup: t.warmup_steps,
        total,
    };
    if lead {
        tracing::info!(
            "training {total} steps ({steps_per_epoch} per epoch, batch {} x {world} ranks x accum {}), run dir {}",
            config.data.batch_size,
            t.grad_accum,
            run_dir.display()
        );
    }

    let first_step = resumed.as_ref().map_or(0, |c| c.state.step);
    if lead && first_step > 0 {
        // Lines of steps after the checkpoint belong to the run that was interrupted.
        for name in ["metrics.jsonl", "eval.jsonl"] {
            truncate_after_step(&run_dir.join(name), first_step)?;
        }
    }
    let mut metrics = lead
        .then(|| JsonLines::append(&run_dir.join("metrics.jsonl")))
        .transpose()?;
    let mut evals = lead
        .then(|| JsonLines::append(&run_dir.join("eval.jsonl")))
        .transpose()?;
    let mut progress = Progress::new(total, options.progress && lead, t.log_every);
    let mut batches = Batches {
        loader: train_loader,
        planner,
        batch_size: first.batch_size,
        epoch: first.plan.epoch,
        epoch_step: first.step,
        consumed: first.consumed,
        next_share: Some(first),
        stream: None,
    };
    let bucket = bucket_elems(config.dist.bucket_mb);

    let mut summary_losses = Vec::with_capacity(total as usize);
    let mut samples_seen = 0u64;
    let mut skipped = 0u64;
    let mut consecutive_bad = 0u64;
    let mut micro_index = 0u64;
    let mut last_eval = None;
    if let Some(c) = &resumed {
        let st = &c.state;
        samples_seen = st.samples_seen;
        skipped = st.skipped_steps;
        consecutive_bad = st.consecutive_nonfinite;
        micro_index = st.rng.objective_draws;
        last_eval = st
            .last_eval
            .clone()
            .and_then(|v| serde_json::from_value(v).ok());
        if st.scheduler.total != total {
            tracing::warn!(
                "the checkpoint's schedule ran over {} steps, this run's over {total}: the learning rate follows the new length",
                st.scheduler.total
            );
        }
    }
    let ck = &config.checkpoint;
    let mut saver = Saver::new(
        committer,
        run_dir.clone(),
        rank,
        world,
        options.checkpoint_write,
        ck.async_save,
    );
    let mut interrupted = false;

    let mut done = first_step;
    for step in (first_step + 1)..=total {
        done = step;
        let started = Instant::now();
        let mut wait = 0.0f64;
        let mut acc: Option<FlatGrads<B::InnerBackend>> = None;
        let mut local = LocalStep::default();
        let mut epoch = 0;
        for _ in 0..t.grad_accum {
            let waited = Instant::now();
            let batch = batches.next()?;
            wait += waited.elapsed().as_secs_f64();
            epoch = batch.epoch;
            // Every rank of a job must run every micro-batch at one size: its padding rows
            // run too, flagged, and weigh nothing (README: Data-parallel training).
            let Some(ob) = training_rows::<B>(&batch, world > 1, device)? else {
                continue;
            };
            local.samples += batch.is_pad.iter().filter(|p| !**p).count() as u64;
            let mut rng = objective_rng(config.seed, micro_index);
            micro_index += 1;
            let poison = options.nonfinite_loss_at.contains(&step);
            let micro = if world > 1 {
                let mut gather = CollectiveGather::new(&mut *collective);
                let micro = engine.micro_with(&ob, &mut rng, poison, device, Some(&mut gather));
                gather.finish()?;
                micro
            } else {
                engine.micro(&ob, &mut rng, poison, device)
            };
            local.loss_sum += micro.loss;
            for (name, v) in micro.parts {
                *local.part_sums.entry(name).or_default() += v;
                *local.part_counts.entry(name).or_default() += 1;
            }
            match micro.grads {
                Some(flat) if !local.bad => {
                    acc = Some(match acc {
                        Some(a) => a.accumulate(flat),
                        None => flat,
                    })
                }
                _ => local.bad = true,
            }
        }
        if let Some(pause) = options.step_pause {
            std::thread::sleep(pause);
        }
        local.stop = options.stop_at_step == Some(step)
            || options
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::SeqCst));
        let global = local.reduce(collective, t.grad_accum)?;
        samples_seen += global.samples;
        let lr = schedule.lr(step - 1);
        let (grad_norm, applied) = if global.bad {
            (f64::NAN, false)
        } else if global.samples == 0 {
            // Every row of the global batch was padding (every rank ran out of usable rows):
            // there is nothing to learn from, and the parameters and AdamW's moments stay.
            (0.0, true)
        } else {
            let (grads, has_grad) = engine.grads(acc, t.grad_accum, device);
            let grads = all_reduce_grads(collective, grad_reduce.as_deref_mut(), grads, bucket)?;
            let mut flags: Vec<f32> = has_grad.iter().map(|&h| f32::from(u8::from(h))).collect();
            if world > 1 {
                collective.all_reduce(&mut flags, ReduceOp::Max)?;
            }
            let has_grad: Vec<bool> = flags.iter().map(|&f| f > 0.0).collect();
            engine.update(grads, &has_grad, lr, device)
        };
        let bad = !applied;
        let loss = global.loss;
        if bad {
            skipped += 1;
            consecutive_bad += 1;
            if lead {
                tracing::warn!(
                    "step {step}: non-finite loss ({loss}) or gradient norm ({grad_norm}); update skipped ({consecutive_bad} in a row)"
                );
            }
        } else {
            consecutive_bad = 0;
        }
        let step_time = started.elapsed().as_secs_f64();
        batches.record(rank, step, local.samples, step_time, wait)?;
        let record = StepMetrics {
            step,
            epoch,
            samples_seen,
            loss,
            parts: global.parts,
            lr,
            grad_norm,
            skipped: bad,
            samples_per_s: global.samples as f64 / step_time,
            step_time_s: step_time,
            data_wait_fraction: wait / step_time,
        };
        if let Some(m) = metrics.as_mut() {
            m.write(&record)?;
        }
        progress.step(&record);
        summary_losses.push(loss);
        if consecutive_bad >= t.max_nonfinite_steps {
            progress.finish();
            return Err(TrainError::NonFinite {
                step,
                count: consecutive_bad,
            });
        }

        let periodic = t.eval_every > 0 && step.is_multiple_of(t.eval_every) && step != total;
        if let (true, Some(val)) = (periodic || (step == total && !global.stop), &val_loader) {
            let model = engine.model().valid();
            let (r, _) =
                evaluate_retrieval_rerank(&model, config, val, device, None, &mut *collective)?;
            progress.eval(step, &r);
            if let Some(e) = evals.as_mut() {
                e.write(&EvalRecord {
                    step,
                    samples_seen,
                    retrieval: r.clone(),
                })?;
            }
            last_eval = Some(r);
        }

        let due = (ck.every_steps > 0 && step.is_multiple_of(ck.every_steps))
            || step == total
            || global.stop;
        if due {
            // A save still in flight must finish first (at most one at a time).
            let waited = Instant::now();
            saver.wait()?;
            let waited = waited.elapsed();
            let stalled = Instant::now();
            let state = if lead {
                let cursor = batches.planner.cursor(step)?;
                Some(TrainerState {
                    format: weft_checkpoint::state::FORMAT,
                    weft_version: env!("CARGO_PKG_VERSION").to_string(),
                    step,
                    epoch: cursor.epoch,
                    samples_seen,
                    skipped_steps: skipped,
                    consecutive_nonfinite: consecutive_bad,
                    scheduler: SchedulerState {
                        name: "warmup_cosine".into(),
                        peak: schedule.peak,
                        floor: schedule.floor,
                        warmup: schedule.warmup,
                        total: schedule.total,
                        next_step: step,
                    },
                    rng: RngState {
                        seed: config.seed,
                        objective_draws: micro_index,
                    },
                    data_cursor: cursor,
                    world_size: world,
                    config: resolved_json.clone(),
                    last_eval: last_eval
                        .as_ref()
                        .map(|r| serde_json::to_value(r).expect("metrics serialise")),
                    files: Default::default(),
                })
            } else {
                None
            };
            let snap = engine.snapshot(&ckpt_layout, saver.spare.take());
            saver.save(step, snap, state)?;
            let stall = stalled.elapsed();
            if lead {
                tracing::info!(
                    "checkpoint of step {step}: training stalled {:.1} ms ({}){}",
                    stall.as_secs_f64() * 1e3,
                    if ck.async_save {
                        "copy to host; written in the background"
                    } else {
                        "written and committed before training goes on"
                    },
                    if waited.as_millis() > 0 {
                        format!(
                            ", after {:.1} ms waiting for the previous save",
                            waited.as_secs_f64() * 1e3
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
        if global.stop {
            interrupted = true;
            if lead {
                tracing::warn!("stopping after step {step} on a signal; the checkpoint of step {step} holds the run");
            }
            break;
        }
    }
    progress.finish();
    // The last save must be committed before the run reports success.
    saver.wait()?;

    let model_path = run_dir.join(MODEL_FILE);
    if lead && !interrupted {
        save_model(engine.model(), &model_path)?;
        tracing::info!("saved {}", model_path.display());
    }
    // Every rank returns once the weights are written.
    collective.barrier()?;
    Ok(TrainSummary {
        steps: done,
        skipped,
        losses: summary_losses,
        eval: last_eval,
        model_path,
        param_counts: counts,
        resumed_from: first_step,
        interrupted,
        checkpoint: saver.last.clone(),
    })
}

/// Save the weights as one safetensors file (names are module paths).
pub fn save_model<B: burn::tensor::backend::Backend>(
    model: &VlModel<B>,
    path: &Path,
) -> Result<(), TrainError> {
    let tmp = path.with_extension("safetensors.tmp");
    let mut store = SafetensorsStore::from_file(&tmp).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| TrainError::Weights {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Load weights saved by [`save_model`] into a model of the same config; every parameter must
/// be found.
pub fn load_model<B: burn::tensor::backend::Backend>(
    model: &mut VlModel<B>,
    path: &Path,
) -> Result<(), TrainError> {
    let mut store = SafetensorsStore::from_file(path);
    let result = model
        .load_from(&mut store)
        .map_err(|e| TrainError::Weights {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        let missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
        return Err(TrainError::Weights {
            path: path.to_path_buf(),
            message: format!(
                "does not match the model: missing {:?}, errors {:?}",
                missing, result.errors
            ),
        });
    }
    Ok(())
}

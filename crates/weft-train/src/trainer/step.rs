//! One optimizer step ([`Trainer::train_step`]): `train.grad_accum` micro-batches forward and
//! backward, the ranks agreeing on what the step was, the gradients averaged over the
//! micro-batches and the ranks, clipped and applied, and the step's metrics.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use weft_collective::{Collective, ReduceOp};
use weft_config::Config;
use weft_data::plan::derive_seed;

use super::batches::Batches;
use super::TrainOptions;
use crate::batch::training_rows;
use crate::engine::Engine;
use crate::error::TrainError;
use crate::gather::CollectiveGather;
use crate::grads::flat::FlatGrads;
use crate::grads::reduce::{all_reduce_grads, any_rank_has_grad, GradReduce};
use crate::metrics::StepMetrics;
use crate::schedule::WarmupCosine;

/// Tag of the objective RNG streams (MLM/ITM/MIM sampling) in [`derive_seed`].
const OBJECTIVE_STREAM: u64 = 0x6f62_6a65_6374;

/// The objectives in the order of the step statistics.
const OBJECTIVES: [&str; 5] = ["itc", "itm", "mlm", "lm", "mim"];

/// The RNG of the objectives' sampling for one micro-batch, the same on every rank (each
/// sample's draws are keyed by its row in the global batch, [`weft_model::Sampling`]).
pub fn objective_rng(seed: u64, micro_index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(&[seed, OBJECTIVE_STREAM, micro_index]))
}

/// What a run has counted so far (a checkpoint keeps them).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Samples of the global batches so far (padding left out).
    pub samples_seen: u64,
    /// Steps whose update was skipped.
    pub skipped: u64,
    /// Skipped steps in a row, up to the last one.
    pub consecutive_bad: u64,
    /// Micro-batches drawn so far: the objective RNG's position.
    pub micro_index: u64,
}

/// A rank's training state between steps: the engine, its batches, its peers, the schedule
/// and the counters.
pub struct Trainer<'a, B: AutodiffBackend> {
    /// The run's config.
    pub config: &'a Config,
    /// How the run goes (fault injection, stop requests).
    pub options: &'a TrainOptions,
    /// The training device.
    pub device: &'a B::Device,
    /// The job's collective ([`weft_collective::SingleRank`] alone).
    pub collective: &'a mut dyn Collective,
    /// Averages device gradients without the host (NCCL), when there is one.
    pub grad_reduce: Option<&'a mut GradReduce<B::InnerBackend>>,
    /// The model, its master copy and AdamW.
    pub engine: Engine<B>,
    /// This rank's micro-batches.
    pub batches: Batches<'a>,
    /// The learning rate of each step.
    pub schedule: WarmupCosine,
    /// Elements of one all-reduce bucket.
    pub bucket: usize,
    /// What the run has counted.
    pub counters: Counters,
}

/// What one step gave: its metrics, and whether the ranks stop after it.
pub struct StepOutcome {
    /// The line of `metrics.jsonl`.
    pub metrics: StepMetrics,
    /// A rank was asked to stop (a signal): every rank stops after this step.
    pub stop: bool,
}

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

impl<B: AutodiffBackend> Trainer<'_, B> {
    /// One optimizer step: micro-batches → gradients → the ranks agree → all-reduce → clip →
    /// update → metrics.
    pub fn train_step(&mut self, step: u64) -> Result<StepOutcome, TrainError> {
        let started = Instant::now();
        let (mut local, summed, wait, epoch) = self.micro_batches(step)?;
        if let Some(pause) = self.options.step_pause {
            std::thread::sleep(pause);
        }
        local.stop = self.options.stop_at_step == Some(step)
            || self
                .options
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::SeqCst));
        let accum = self.config.train.grad_accum;
        let global = local.reduce(self.collective, accum)?;
        self.counters.samples_seen += global.samples;
        let lr = self.schedule.lr(step - 1);
        let (grad_norm, applied) = if global.bad {
            (f64::NAN, false)
        } else if global.samples == 0 {
            // Every row of the global batch was padding (every rank ran out of usable rows):
            // there is nothing to learn from, and the parameters and AdamW's moments stay.
            (0.0, true)
        } else {
            self.sync_and_update(summed, lr)?
        };
        let bad = !applied;
        let loss = global.loss;
        self.count(step, bad, loss, grad_norm);
        let step_time = started.elapsed().as_secs_f64();
        let rank = self.collective.rank();
        self.batches
            .record(rank, step, local.samples, step_time, wait)?;
        let metrics = StepMetrics {
            step,
            epoch,
            samples_seen: self.counters.samples_seen,
            loss,
            parts: global.parts,
            lr,
            grad_norm,
            skipped: bad,
            samples_per_s: global.samples as f64 / step_time,
            step_time_s: step_time,
            data_wait_fraction: wait / step_time,
        };
        Ok(StepOutcome {
            metrics,
            stop: global.stop,
        })
    }

    /// Forward and backward of the step's `train.grad_accum` micro-batches: what they gave,
    /// their summed gradients, the seconds spent waiting for data, and the epoch.
    #[allow(clippy::type_complexity)]
    fn micro_batches(
        &mut self,
        step: u64,
    ) -> Result<(LocalStep, Option<FlatGrads<B::InnerBackend>>, f64, u64), TrainError> {
        let world = self.collective.world_size();
        let mut wait = 0.0f64;
        let mut acc: Option<FlatGrads<B::InnerBackend>> = None;
        let mut local = LocalStep::default();
        let mut epoch = 0;
        for _ in 0..self.config.train.grad_accum {
            let waited = Instant::now();
            let batch = self.batches.next_batch()?;
            wait += waited.elapsed().as_secs_f64();
            epoch = batch.epoch;
            // Every rank of a job must run every micro-batch at one size: its padding rows
            // run too, flagged, and weigh nothing (docs/distributed.md).
            let Some(ob) = training_rows::<B>(&batch, world > 1, self.device)? else {
                continue;
            };
            local.samples += batch.is_pad.iter().filter(|p| !**p).count() as u64;
            let mut rng = objective_rng(self.config.seed, self.counters.micro_index);
            self.counters.micro_index += 1;
            let poison = self.options.nonfinite_loss_at.contains(&step);
            let micro = if world > 1 {
                let mut gather = CollectiveGather::new(&mut *self.collective);
                let micro =
                    self.engine
                        .micro_with(&ob, &mut rng, poison, self.device, Some(&mut gather));
                gather.finish()?;
                micro
            } else {
                self.engine.micro(&ob, &mut rng, poison, self.device)
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
        Ok((local, acc, wait, epoch))
    }

    /// The summed gradients averaged over the micro-batches and the ranks (bucketed
    /// all-reduce), clipped and applied: the norm before clipping, and whether it was applied.
    fn sync_and_update(
        &mut self,
        summed: Option<FlatGrads<B::InnerBackend>>,
        lr: f64,
    ) -> Result<(f64, bool), TrainError> {
        let accum = self.config.train.grad_accum;
        let (grads, has_grad) = self.engine.grads(summed, accum);
        let grads = all_reduce_grads(
            &mut *self.collective,
            self.grad_reduce.as_deref_mut(),
            grads,
            self.bucket,
        )?;
        let has_grad = any_rank_has_grad(&mut *self.collective, &has_grad)?;
        Ok(self.engine.update(grads, &has_grad, lr, self.device))
    }

    /// Count a skipped step (and warn on rank 0), or reset the run of them.
    fn count(&mut self, step: u64, bad: bool, loss: f64, grad_norm: f64) {
        let c = &mut self.counters;
        if !bad {
            c.consecutive_bad = 0;
            return;
        }
        c.skipped += 1;
        c.consecutive_bad += 1;
        if self.collective.rank() == 0 {
            tracing::warn!(
                "step {step}: non-finite loss ({loss}) or gradient norm ({grad_norm}); update skipped ({} in a row)",
                c.consecutive_bad
            );
        }
    }
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

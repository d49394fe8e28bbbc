//! Retrieval evaluation during training ([`Validator`]): every `train.eval_every` steps and at
//! the last step, on the validation split, sharded across the ranks; rank 0 writes
//! `eval.jsonl`.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use weft_config::Config;
use weft_data::Loader;

use super::step::Trainer;
use crate::error::TrainError;
use crate::eval::{evaluate_retrieval_rerank, Retrieval};
use crate::metrics::{EvalRecord, JsonLines};
use crate::progress::Progress;

/// When the run evaluates, on what, and its last result.
pub struct Validator {
    /// The validation split (None: no `data.val`, or no ITC head).
    loader: Option<Loader>,
    /// `train.eval_every` (0: only at the end).
    every: u64,
    /// The run's last step.
    last_step: u64,
    /// `eval.jsonl` (rank 0).
    log: Option<JsonLines>,
    /// The last evaluation (of this run, or of the checkpoint it resumed from).
    pub last: Option<Retrieval>,
}

impl Validator {
    /// A validator of a run of `last_step` steps.
    pub fn new(
        loader: Option<Loader>,
        config: &Config,
        last_step: u64,
        log: Option<JsonLines>,
        last: Option<Retrieval>,
    ) -> Self {
        Self {
            loader,
            every: config.train.eval_every,
            last_step,
            log,
            last,
        }
    }

    /// Whether step `step` evaluates: every `train.eval_every` steps before the last, and the
    /// last step unless the run stops early.
    pub fn should_validate(&self, step: u64, stop: bool) -> bool {
        let periodic = self.every > 0 && step.is_multiple_of(self.every) && step != self.last_step;
        self.loader.is_some() && (periodic || (step == self.last_step && !stop))
    }

    /// Evaluate after `step` when it is due: every rank embeds its share of the rows, every
    /// rank gets the same numbers, rank 0 writes them.
    pub fn maybe_validate<B: AutodiffBackend>(
        &mut self,
        step: u64,
        stop: bool,
        trainer: &mut Trainer<'_, B>,
        progress: &mut Progress,
    ) -> Result<(), TrainError> {
        if !self.should_validate(step, stop) {
            return Ok(());
        }
        let val = self.loader.as_ref().expect("should_validate checked it");
        let model = trainer.engine.model().valid();
        let (r, _) = evaluate_retrieval_rerank(
            &model,
            trainer.config,
            val,
            trainer.device,
            None,
            &mut *trainer.collective,
        )?;
        progress.eval(step, &r);
        if let Some(e) = self.log.as_mut() {
            e.write(&EvalRecord {
                step,
                samples_seen: trainer.counters.samples_seen,
                retrieval: r.clone(),
            })?;
        }
        self.last = Some(r);
        Ok(())
    }
}

//! `weft bench train`: the time of one optimizer step of the config's model on a synthetic
//! batch (also `weft doctor`'s step).

use anyhow::bail;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use weft_config::Config;

use crate::backend::{with_backend, GpuRank, OnBackend};

/// Arguments of `weft bench train`.
#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: u64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `weft bench train`.
pub fn run(args: BenchTrainArgs, config: &Config) -> anyhow::Result<()> {
    weft_train::init_threads(config.train.threads);
    if config.model.text.vocab_size == 0 {
        bail!("model.text.vocab_size: the train bench reads no tokenizer, set a vocabulary size");
    }
    let r = with_backend(
        config,
        0,
        BenchRun {
            config,
            steps: args.steps,
            warmup: args.warmup,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} params, batch {}: step {:.1} ms median ({:.1} ms mean) over {} steps, {:.1} samples/s (threads: {})",
            r.params,
            r.batch,
            1e3 * r.step_time_median_s,
            1e3 * r.step_time_mean_s,
            r.steps,
            r.samples_per_s,
            weft_train::current_threads()
        );
    }
    Ok(())
}

/// `weft bench train` (and `weft doctor`'s step) on one backend.
pub(crate) struct BenchRun<'a> {
    pub(crate) config: &'a Config,
    pub(crate) steps: u64,
    pub(crate) warmup: u64,
}

impl OnBackend for BenchRun<'_> {
    type Output = weft_train::bench::TrainBench;

    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        _gpu: Option<GpuRank<B::InnerBackend>>,
    ) -> anyhow::Result<weft_train::bench::TrainBench> {
        Ok(weft_train::bench::bench_train::<B>(
            self.config,
            self.steps,
            self.warmup,
            &device,
        ))
    }
}

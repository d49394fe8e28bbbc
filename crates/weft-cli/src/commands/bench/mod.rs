//! `weft bench ...`: speed measurements, each with the command beside its figures in
//! docs/performance.md.

pub mod allreduce;
pub mod ckpt;
pub mod data;
pub mod train;

use clap::Subcommand;
use weft_config::Config;

/// `weft bench ...`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// End-to-end images/s of the data pipeline with 1 and N decode workers.
    Data(data::BenchDataArgs),
    /// Time of one optimizer step of the config's model on a synthetic batch.
    Train(train::BenchTrainArgs),
    /// Bandwidth of the TCP ring's all-reduce between processes on 127.0.0.1.
    Allreduce(allreduce::BenchAllreduceArgs),
    /// Checkpoint save bandwidth next to the raw disk's (dd with fsync), and the stall of an
    /// asynchronous save.
    Ckpt(ckpt::BenchCkptArgs),
}

/// Run `weft bench ...`.
pub fn run(cmd: BenchCommand, config: &Config) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Data(args) => data::run(args, config),
        BenchCommand::Train(args) => train::run(args, config),
        BenchCommand::Allreduce(args) => allreduce::run(args),
        BenchCommand::Ckpt(args) => ckpt::run(args),
    }
}

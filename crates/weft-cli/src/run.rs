//! Which config a command gets (`--config` and `--set`; `weft train`'s default file; the
//! worker command's for `weft launch`), and the dispatch to [`crate::commands`].

use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;
use weft_config::{Config, ConfigLoader};
use weft_coordinator::LaunchEnv;

use crate::cli::{Cli, Command, ConfigArgs};
use crate::commands;

/// Load the config, print it and stop with `--print-config`, else run the command. `env` is the
/// launch environment `weft train` has already read (None: read it here).
pub fn run(cli: Cli, env: Option<LaunchEnv>) -> anyhow::Result<ExitCode> {
    let config = match &cli.command {
        Command::Train(_) => {
            commands::train::train_config(cli.config.config.clone(), &cli.config.sets)?
        }
        Command::Launch(args) => launch_worker_config(args.worker_command())?,
        _ => load_config(&cli.config)?,
    };
    if cli.config.print_config {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cli.command {
        Command::Launch(args) => commands::launch::run(args, &config),
        Command::Coordinator(args) => done(commands::coordinator::run(args, &config)),
        Command::Doctor(mut args) => {
            // `weft --config FILE doctor` times that config alone.
            if let Some(file) = &cli.config.config {
                args.configs = Some(vec![file.clone()]);
            }
            commands::doctor::run(args, &cli.config.sets)
        }
        Command::Train(args) => {
            let env = match env {
                Some(env) => env,
                None => LaunchEnv::from_env()?,
            };
            commands::train::run(args, &config, &env)
        }
        Command::Config { run_dir } => done(commands::config::run(&config, run_dir)),
        Command::Data(cmd) => done(commands::data::run(cmd, &config)),
        Command::Bench(cmd) => done(commands::bench::run(cmd, &config)),
        Command::Params { json } => done(commands::params::run(&config, json)),
        Command::Eval(args) => {
            let file = cli.config.config.clone();
            done(commands::eval::run(args, file, &cli.config.sets))
        }
        Command::Ckpt(cmd) => done(commands::ckpt::run(cmd)),
        Command::Report(args) => done(commands::report::run(args)),
    }
}

/// The config of `--config` and `--set` (the defaults without `--config`).
pub fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    Ok(ConfigLoader::new()
        .maybe_file(args.config.clone())
        .overrides(args.sets.iter().cloned())
        .load()?)
}

/// The config of the command `weft launch` starts (its `[dist]` section times the
/// coordinator); a command that does not parse fails here, before any process starts.
fn launch_worker_config(command: &[String]) -> anyhow::Result<Config> {
    if command.is_empty() {
        return Ok(Config::default());
    }
    let worker =
        Cli::try_parse_from(std::iter::once("weft".to_string()).chain(command.iter().cloned()))
            .map_err(|e| {
                anyhow::anyhow!(
                    "the worker command `{}` does not parse:\n{e}",
                    command.join(" ")
                )
            })?;
    match worker.command {
        Command::Train(_) => Ok(commands::train::train_config(
            worker.config.config.clone(),
            &worker.config.sets,
        )?),
        Command::Launch(_) | Command::Coordinator(_) => {
            bail!("weft launch starts workers: the command after -- cannot be `launch` or `coordinator`")
        }
        _ => load_config(&worker.config),
    }
}

/// Whether the command will use CUDA: `weft doctor` (but `--device cpu`), and `weft train`,
/// `eval` and `bench train` with `train.device = "cuda"` (a config that does not load is left
/// to the command to report).
#[cfg(feature = "cuda")]
pub fn uses_cuda(cli: &Cli) -> bool {
    use commands::bench::BenchCommand;
    let cuda =
        |c: anyhow::Result<Config>| c.is_ok_and(|c| c.train.device == weft_config::Device::Cuda);
    match &cli.command {
        Command::Doctor(args) => args.device != commands::doctor::DeviceArg::Cpu,
        Command::Train(_) => cuda(commands::train::train_config(
            cli.config.config.clone(),
            &cli.config.sets,
        )),
        Command::Eval(args) => cuda(commands::eval::config(
            args,
            cli.config.config.clone(),
            &cli.config.sets,
        )),
        Command::Bench(BenchCommand::Train(_)) => cuda(load_config(&cli.config)),
        _ => false,
    }
}

//! weft-cli: the commands of `weft`, the one binary of the weft vision-language pretraining
//! framework (the binary itself is the workspace's root package, `src/main.rs`).
//!
//! - [`cli`]: the command-line tree; [`run`]: which config a command gets and where it goes;
//! - [`commands`]: one file per command (`weft train`, `launch`, `coordinator`, `eval`,
//!   `report`, `ckpt`, `params`, `config`, `doctor`) or folder per command with subcommands
//!   (`weft data ...`, `weft bench ...`);
//! - [`rank`]: what every rank does first (threads, joining its job);
//! - [`backend`]: the burn backend of `train.device`; `relink` (`cuda` feature): links for
//!   CUDA libraries found under other names, and the restart with them;
//! - [`logging`]: stderr and the rank's log file.

#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod commands;
pub mod logging;
pub mod rank;
#[cfg(feature = "cuda")]
pub mod relink;
pub mod run;

use std::process::ExitCode;

use clap::Parser;
use weft_coordinator::LaunchEnv;

/// `weft`'s `main`: parse the command line, log, run the command, and report an error on one
/// line with a non-zero exit status.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Before anything else: this may start the process again (see relink).
    #[cfg(feature = "cuda")]
    let relinked = relink::before_cuda(run::uses_cuda(&cli));
    // `weft train` logs into RUN_DIR/logs/rank-N.log as well; errors about the environment or
    // the run directory are reported by `train` itself.
    let (env, log) = match &cli.command {
        cli::Command::Train(args) => match LaunchEnv::from_env() {
            Ok(env) => {
                let log = commands::train::run_dir(args, &env)
                    .ok()
                    .map(|d| commands::train::log_file(&d, env.rank));
                (Some(env), log)
            }
            Err(_) => (None, None),
        },
        _ => (None, None),
    };
    let rank = env.as_ref().map_or(0, |e| e.rank);
    let prefix = env.as_ref().filter(|e| e.world_size > 1).map(|e| e.rank);
    let log_error = logging::init_logging(log.as_deref(), prefix);
    if let Some(e) = log_error {
        tracing::warn!("no log file: {e}");
    }
    #[cfg(feature = "cuda")]
    relinked.log();
    match run::run(cli, env) {
        Ok(code) => code,
        Err(e) => {
            let message = error_message(&e);
            if log.is_some() {
                // Into the rank's log file too (stderr gets the plain line below).
                tracing::error!("{message}");
            }
            let prefix = if prefix.is_some() {
                format!("[rank {rank}] ")
            } else {
                String::new()
            };
            eprintln!("{prefix}error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the line
/// already holds (errors that print their source in their own message).
fn error_message(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_message;

    /// An error that prints its source in its own message, and also gives it as its source.
    #[derive(Debug)]
    struct Write {
        path: String,
        source: std::io::Error,
    }

    impl std::fmt::Display for Write {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "writing {}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Write {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let e = anyhow::Error::new(Write {
            path: "a/b.safetensors".into(),
            source: std::io::Error::other("disk full"),
        })
        .context("saving the checkpoint of step 4");
        assert_eq!(
            error_message(&e),
            "saving the checkpoint of step 4: writing a/b.safetensors: disk full"
        );
        let e = anyhow::anyhow!("no such file")
            .context("reading x")
            .context("loading y");
        assert_eq!(error_message(&e), "loading y: reading x: no such file");
    }
}

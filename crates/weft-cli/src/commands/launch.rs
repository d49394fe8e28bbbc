//! `weft launch`: one node's workers, torchrun-style (`weft coordinator` runs the coordinator
//! on its own, for jobs of several nodes).
//!
//! The launcher of node 0 runs the coordinator on a thread; every launcher starts
//! `--nproc-per-node` copies of `weft` with the command after `--` and `WEFT_RANK`,
//! `WEFT_WORLD_SIZE`, `WEFT_LOCAL_RANK`, `WEFT_LOCAL_WORLD_SIZE`, `WEFT_COORDINATOR`,
//! `WEFT_JOB_TOKEN`, `WEFT_DEVICE` and `WEFT_RUN_DIR` set. It forwards SIGINT, SIGTERM and
//! SIGUSR1 to the workers; when one worker fails it stops the others (SIGTERM, then SIGKILL
//! after a grace period) and exits with that worker's code (`128 + signal` for a signal).
//! Workers notice a launcher killed outright through its coordinator going away.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use weft_config::Config;
use weft_coordinator::{coordinator_bind, spawn_coordinator, weft_vars, LaunchEnv};

use super::coordinator::coordinator_config;
use super::train::EXIT_INTERRUPTED;

/// How long workers get between SIGTERM and SIGKILL when the job is stopped.
const GRACE: Duration = Duration::from_secs(5);

/// Arguments of `weft launch`.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Worker processes on this node (one per device).
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Nodes in the job.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's index, `0..nnodes`; node 0 runs the coordinator.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Where the coordinator listens (`host:port`): required with several nodes; alone, a free
    /// port on 127.0.0.1.
    #[arg(long, value_name = "HOST:PORT")]
    coordinator: Option<String>,
    /// Print the launch environment this process detects (weft launch, torchrun, Slurm) and
    /// exit.
    #[arg(long)]
    print_env: bool,
    /// The worker command, after `--`, e.g. `-- train --run-dir runs/a`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

impl LaunchArgs {
    /// The command after `--`.
    pub fn worker_command(&self) -> &[String] {
        &self.command
    }
}

/// `weft launch`. `config` is the worker command's config (its `[dist]` section sets the
/// coordinator's timeouts).
pub fn run(args: LaunchArgs, config: &Config) -> anyhow::Result<ExitCode> {
    if args.print_env {
        let env = LaunchEnv::from_env()?;
        print!("{}", env.describe());
        return Ok(ExitCode::SUCCESS);
    }
    if args.command.is_empty() {
        bail!("give the worker command after --, e.g. `weft launch --nproc-per-node 2 -- train`");
    }
    let n = args.nproc_per_node;
    if n == 0 || args.nnodes == 0 {
        bail!("--nproc-per-node and --nnodes must be at least 1");
    }
    if args.node_rank >= args.nnodes {
        bail!(
            "--node-rank {} is not below --nnodes {}",
            args.node_rank,
            args.nnodes
        );
    }
    let world = n * args.nnodes;
    if args.nnodes > 1 && args.coordinator.is_none() {
        bail!("with several nodes give --coordinator HOST:PORT (node 0's address, the same on every node)");
    }
    let token = match std::env::var("WEFT_JOB_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        Some(t) => t,
        None if args.nnodes > 1 => {
            bail!("with several nodes set WEFT_JOB_TOKEN to one secret shared by every node's launcher")
        }
        None => weft_collective::auth::new_token(),
    };
    let hosted = if args.node_rank == 0 {
        // Every node must reach it at the address they are given (WEFT_COORDINATOR_BIND
        // names another, never every interface by default); alone, loopback is enough.
        let bind = match (coordinator_bind(), &args.coordinator) {
            (Some(bind), _) => bind,
            (None, Some(c)) => c.clone(),
            (None, None) => "127.0.0.1:0".into(),
        };
        Some(spawn_coordinator(
            &bind,
            coordinator_config(config, world, token.clone()),
        )?)
    } else {
        None
    };
    let coordinator = match (&args.coordinator, &hosted) {
        (Some(c), _) if !c.ends_with(":0") => c.clone(),
        (_, Some(h)) => h.addr.to_string(),
        _ => bail!("--coordinator HOST:PORT is required on nodes other than 0"),
    };
    let run_dir = std::env::var("WEFT_RUN_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(crate::rank::default_run_dir);

    let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .context("installing the signal handlers")?;
    let exe = std::env::current_exe().context("finding the weft binary")?;
    let mut workers: Vec<Worker> = Vec::with_capacity(n);
    for local in 0..n {
        let rank = args.node_rank * n + local;
        let spawned = Command::new(&exe)
            .args(&args.command)
            .envs(weft_vars(rank, world, local, n, &coordinator))
            .env("WEFT_DEVICE", local.to_string())
            .env("WEFT_JOB_TOKEN", &token)
            .env("WEFT_RUN_DIR", &run_dir)
            .spawn();
        match spawned {
            Ok(child) => workers.push(Worker {
                rank,
                child,
                status: None,
            }),
            Err(e) => {
                stop_all(&mut workers);
                bail!("starting worker {rank}: {e}");
            }
        }
    }
    // Only `weft train` has a run directory.
    let trains = args.command.iter().any(|a| a == "train");
    let dir_note = if trains {
        format!(
            ", run dir {} unless the command gives --run-dir",
            run_dir.display()
        )
    } else {
        String::new()
    };
    tracing::info!(
        "launched ranks {}..{} of {world} (coordinator {coordinator}{dir_note})",
        args.node_rank * n,
        args.node_rank * n + n,
    );
    let code = supervise(&mut workers, signals);
    if let Some(h) = hosted {
        match h.wait(Duration::from_secs(5)) {
            Some(Err(e)) if code == 0 => {
                tracing::error!("coordinator: {e}");
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
    }
    Ok(ExitCode::from(code))
}

struct Worker {
    rank: usize,
    child: Child,
    status: Option<u8>,
}

/// The shell's convention: the exit code, or 128 + the signal that killed the process.
fn code_of(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => 128u8.saturating_add(u8::try_from(s).unwrap_or(0)),
        (None, None) => 1,
    }
}

fn signal_all(workers: &[Worker], signal: Signal) {
    for w in workers.iter().filter(|w| w.status.is_none()) {
        if let Ok(pid) = i32::try_from(w.child.id()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// SIGTERM to every running worker, SIGKILL to those still running after the grace period,
/// and reap them all.
fn stop_all(workers: &mut [Worker]) {
    signal_all(workers, Signal::SIGTERM);
    let deadline = Instant::now() + GRACE;
    loop {
        let mut running = false;
        for w in workers.iter_mut().filter(|w| w.status.is_none()) {
            match w.child.try_wait() {
                Ok(Some(s)) => w.status = Some(code_of(s)),
                Ok(None) => running = true,
                Err(_) => w.status = Some(1),
            }
        }
        if !running {
            return;
        }
        if Instant::now() >= deadline {
            for w in workers.iter_mut().filter(|w| w.status.is_none()) {
                let _ = w.child.kill();
                let _ = w.child.wait();
                w.status = Some(137);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the workers, forwarding signals; returns the job's exit code: 0 when every
/// worker succeeded, else the code of the first one that failed. A worker that stopped on a
/// signal after its checkpoint was committed ([`EXIT_INTERRUPTED`]) has not failed: the others
/// stop at the same step, and the job exits with that code.
fn supervise(workers: &mut [Worker], mut signals: signal_hook::iterator::Signals) -> u8 {
    let mut interrupted = false;
    loop {
        for sig in signals.pending() {
            if let Ok(s) = Signal::try_from(sig) {
                tracing::info!("forwarding {s} to the workers");
                signal_all(workers, s);
            }
        }
        let mut running = false;
        for i in 0..workers.len() {
            if workers[i].status.is_some() {
                continue;
            }
            match workers[i].child.try_wait() {
                Ok(Some(status)) => {
                    let code = code_of(status);
                    workers[i].status = Some(code);
                    if code == EXIT_INTERRUPTED {
                        interrupted = true;
                    } else if code != 0 {
                        tracing::error!(
                            "rank {} exited with {status}; stopping the other workers",
                            workers[i].rank
                        );
                        stop_all(workers);
                        return code;
                    }
                }
                Ok(None) => running = true,
                Err(e) => {
                    tracing::error!("waiting for rank {}: {e}", workers[i].rank);
                    workers[i].status = Some(1);
                    stop_all(workers);
                    return 1;
                }
            }
        }
        if !running {
            return if interrupted { EXIT_INTERRUPTED } else { 0 };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

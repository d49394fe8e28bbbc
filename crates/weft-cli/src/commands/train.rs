//! `weft train`: one process, or one rank of a job started by `weft launch`, torchrun or
//! srun; the stop request of a signal; the run directory and its log files.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use weft_checkpoint::{CheckpointError, RunLock};
use weft_collective::{Collective, CollectiveError};
use weft_config::{Config, ConfigLoader};
use weft_coordinator::{LaunchEnv, Launcher};
use weft_train::grads::reduce::GradReduce;
use weft_train::{Rank, TrainOptions, TrainSummary};

use crate::backend::{with_backend, GpuRank, OnBackend};
use crate::rank::{default_run_dir, init_rank_threads, join_job};

/// The config `weft train` uses without `--config`.
pub const DEFAULT_TRAIN_CONFIG: &str = "configs/tiny.toml";

/// Arguments of `weft train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run directory for config.toml, metrics.jsonl, eval.jsonl and the weights
    /// (default: runs/<UTC date-time>).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Resume from `auto` (the newest committed checkpoint of the run directory that
    /// verifies, if any), `never` (refused over committed checkpoints), `restart` (start
    /// afresh after moving the previous run's checkpoints, metrics and weights into
    /// RUN_DIR/previous/N), or a checkpoint directory.
    #[arg(long, default_value = "auto", value_name = "auto|never|restart|PATH")]
    resume: weft_checkpoint::Resume,
}

/// The exit status of a run that stopped on SIGTERM or SIGUSR1 after committing a checkpoint
/// (EX_TEMPFAIL: run it again to go on). A finished run exits 0.
pub const EXIT_INTERRUPTED: u8 = 75;

/// How long after the first SIGTERM or SIGINT the same request may arrive again without
/// ending the run at once: a terminal's Ctrl-C reaches the whole process group (`weft launch`
/// and its workers) and `weft launch` forwards it too; Slurm signals every task of a job and
/// srun forwards the signal it gets itself. Each worker then sees one request twice.
const REPEAT_WINDOW: Duration = Duration::from_secs(2);

/// A flag raised by SIGTERM, SIGUSR1 and SIGINT: the run saves at the next step boundary and
/// stops. A SIGTERM or SIGINT [`REPEAT_WINDOW`] or more after the first ends the process at
/// once, with 128 + the signal's number (130 for Ctrl-C) and no checkpoint.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    use std::sync::atomic::Ordering;
    let flag = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1])
        .context("installing the handlers of SIGTERM, SIGINT and SIGUSR1")?;
    let raised = Arc::clone(&flag);
    std::thread::Builder::new()
        .name("weft-signals".into())
        .spawn(move || {
            let mut first: Option<std::time::Instant> = None;
            for sig in signals.forever() {
                let name = signal_name(sig);
                if sig != SIGUSR1 {
                    match first {
                        Some(at) if at.elapsed() >= REPEAT_WINDOW => {
                            tracing::warn!("got {name} again: stopping now, without a checkpoint");
                            signal_hook::low_level::exit(128 + sig);
                        }
                        Some(_) => continue,
                        None => first = Some(std::time::Instant::now()),
                    }
                }
                if !raised.swap(true, Ordering::SeqCst) {
                    tracing::info!(
                        "got {name}: saving a checkpoint at the next step boundary, then stopping \
                         (a SIGINT or SIGTERM {} s or more from now stops at once)",
                        REPEAT_WINDOW.as_secs()
                    );
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(flag)
}

/// `SIGTERM` for 15, and so on.
fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// A fault-injection or timing hook of the tests: the value of the variable `name`, when set
/// and well-formed.
fn test_hook<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The config of `weft train`: `--config`, else configs/tiny.toml.
pub fn train_config(file: Option<PathBuf>, sets: &[String]) -> anyhow::Result<Config> {
    let file = match file {
        Some(f) => f,
        None => {
            let default = PathBuf::from(DEFAULT_TRAIN_CONFIG);
            if !default.exists() {
                bail!(
                    "no --config given and {DEFAULT_TRAIN_CONFIG} is not here: run from the repository root or pass --config"
                );
            }
            tracing::info!("config: {DEFAULT_TRAIN_CONFIG}");
            default
        }
    };
    Ok(ConfigLoader::new()
        .file(file)
        .overrides(sets.iter().cloned())
        .load()?)
}

/// The run directory of `weft train`: `--run-dir`, else `WEFT_RUN_DIR` (set by `weft launch`
/// so that every rank agrees), else `runs/slurm-<job id>` under Slurm, else (one process)
/// `runs/<UTC date-time>`. Ranks started by torchrun must be given one.
pub fn run_dir(args: &TrainArgs, env: &LaunchEnv) -> anyhow::Result<PathBuf> {
    if let Some(d) = &args.run_dir {
        return Ok(d.clone());
    }
    if let Some(d) = std::env::var_os("WEFT_RUN_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    match (&env.job_id, env.world_size) {
        (Some(id), _) if env.launcher == Launcher::Slurm => {
            Ok(PathBuf::from(format!("runs/slurm-{id}")))
        }
        (_, 1) => Ok(default_run_dir()),
        _ => bail!(
            "rank {} of {}: give --run-dir (every rank must write into the same run directory)",
            env.rank,
            env.world_size
        ),
    }
}

/// The log file of this rank in `run_dir`.
pub fn log_file(run_dir: &Path, rank: usize) -> PathBuf {
    run_dir.join("logs").join(format!("rank-{rank}.log"))
}

/// The run directory's lock, taken by rank 0 for the whole run: a second trainer in the same
/// directory is refused, naming the holder. A file system without locks gets a warning.
fn lock_run_dir(run_dir: &Path, env: &LaunchEnv) -> anyhow::Result<Option<RunLock>> {
    if env.rank != 0 {
        return Ok(None);
    }
    let holder = format!(
        "weft train on {} (pid {})",
        weft_coordinator::worker::hostname(),
        std::process::id()
    );
    match RunLock::acquire(run_dir, &holder) {
        Ok(lock) => Ok(Some(lock)),
        Err(e @ CheckpointError::Locked { .. }) => Err(e.into()),
        Err(e) => {
            tracing::warn!("the run directory is not locked against a second trainer: {e}");
            Ok(None)
        }
    }
}

/// `weft train`, on one process or as one rank of the job `env` describes.
pub fn run(args: TrainArgs, config: &Config, env: &LaunchEnv) -> anyhow::Result<ExitCode> {
    init_rank_threads(config, env);
    let run_dir = run_dir(&args, env)?;
    let _lock = lock_run_dir(&run_dir, env)?;
    if env.rank == 0 && args.resume == weft_checkpoint::Resume::Restart {
        // Before joining: no other rank looks for a checkpoint before rank 0 has joined.
        if let Some(to) = weft_checkpoint::set_aside(&run_dir)? {
            tracing::info!("the previous run is set aside in {}", to.display());
        }
    }
    let options = TrainOptions {
        run_dir: run_dir.clone(),
        progress: env.rank == 0 && std::io::stderr().is_terminal(),
        nonfinite_loss_at: Vec::new(),
        resume: args.resume.clone(),
        stop: Some(stop_flag()?),
        stop_at_step: test_hook("WEFT_TEST_STOP_AT_STEP"),
        step_pause: test_hook("WEFT_TEST_STEP_PAUSE_MS").map(Duration::from_millis),
        checkpoint_write: weft_checkpoint::WriteOptions {
            // Fault injection for the tests of a failing checkpoint writer: on every rank, or
            // on the rank WEFT_TEST_CKPT_FAIL_RANK names.
            fail_after_bytes: test_hook("WEFT_TEST_CKPT_FAIL_AFTER_BYTES").filter(|_| {
                test_hook::<usize>("WEFT_TEST_CKPT_FAIL_RANK").is_none_or(|r| r == env.rank)
            }),
            pause_after_write: test_hook("WEFT_TEST_CKPT_PAUSE_MS").map(Duration::from_millis),
        },
    };
    let summary = with_backend(
        config,
        env.local_rank,
        TrainRun {
            config,
            options: &options,
            env,
            run_dir: &run_dir,
        },
    )?;
    let code = if summary.interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    };
    if env.rank != 0 {
        return Ok(code);
    }
    if summary.interrupted {
        println!(
            "interrupted after step {}; checkpoint {} (run the same command to resume)",
            summary.steps,
            summary
                .checkpoint
                .as_deref()
                .map_or("?".into(), |p| p.display().to_string())
        );
        return Ok(code);
    }
    if let Some(r) = &summary.eval {
        println!(
            "final eval: text->image R@1 {:.2} (chance {:.2}), image->text R@1 {:.2}; R@5 {:.2}/{:.2}; R@10 {:.2}/{:.2}",
            r.t2i_r1, r.chance_r1, r.i2t_r1, r.t2i_r5, r.i2t_r5, r.t2i_r10, r.i2t_r10
        );
    }
    println!(
        "{} steps ({} skipped); weights {}",
        summary.steps,
        summary.skipped,
        summary.model_path.display()
    );
    Ok(code)
}

/// `weft train` on one backend.
struct TrainRun<'a> {
    config: &'a Config,
    options: &'a TrainOptions,
    env: &'a LaunchEnv,
    run_dir: &'a Path,
}

impl OnBackend for TrainRun<'_> {
    type Output = TrainSummary;

    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        gpu: Option<GpuRank<B::InnerBackend>>,
    ) -> anyhow::Result<TrainSummary> {
        let (config, env, options) = (self.config, self.env, self.options);
        if env.world_size == 1 {
            return Ok(weft_train::train::<B>(config, options, &device)?);
        }
        let d = &config.dist;
        let rank = env.rank;
        // A GPU job reduces over NCCL (dist.backend); rank 0 makes the communicator's id and
        // the coordinator hands it to the others.
        let nccl = gpu.filter(|_| d.uses_nccl(config.train.device));
        let nccl_id = match (&nccl, rank) {
            (Some(g), 0) => Some((g.nccl_id)()?),
            _ => None,
        };
        let (mut job, job_options) = join_job(env, config, self.run_dir, nccl_id)?;
        tracing::info!(
            "rank {rank} of {} joined (coordinator {}, threads {})",
            env.world_size,
            env.coordinator.as_deref().unwrap_or("?"),
            weft_train::current_threads()
        );
        let mut nccl_parts = match &nccl {
            Some(g) => {
                let id = job
                    .nccl_id()
                    .context(
                        "rank 0 handed out no NCCL id: do all ranks have train.device = \"cuda\"?",
                    )?
                    .to_string();
                let parts = (g.join_nccl)(rank, env.world_size, &id, d)?;
                tracing::info!(
                    "rank {rank}: NCCL on GPU {} ({}), gradients {}",
                    g.index,
                    g.name,
                    if d.nccl_host_staging {
                        "staged through the host"
                    } else {
                        "in device memory"
                    }
                );
                Some(parts)
            }
            None => None,
        };
        let (ring, mut planner, committer) =
            job.training_parts(self.run_dir, config.checkpoint.keep_last);
        let (collective, grad_reduce) = match &mut nccl_parts {
            Some((c, g)) => (
                c.as_mut() as &mut dyn Collective,
                Some(g.as_mut() as &mut GradReduce<B::InnerBackend>),
            ),
            None => (ring as &mut dyn Collective, None),
        };
        let rank_parts = Rank {
            collective,
            grad_reduce,
            planner: &mut planner,
            committer: Arc::new(committer),
        };
        let summary = match weft_train::train_with::<B>(config, options, &device, rank_parts) {
            Ok(summary) => summary,
            Err(e) => {
                if let weft_train::TrainError::Collective(c) = &e {
                    await_verdict(&job, c, &job_options, rank);
                }
                // Dropping the job closes the session: the coordinator aborts the others.
                return Err(anyhow::Error::new(e).context(format!("rank {rank}")));
            }
        };
        drop(nccl_parts);
        job.finish(job_options.heartbeat_timeout)?;
        Ok(summary)
    }
}

/// After a failed collective: a peer's socket closing is often another rank's failure passed
/// on, and a timeout another rank's lateness. Tells the coordinator whom this rank waited for
/// (it names the late rank), then waits, bounded, for its verdict: the abort handler ends
/// this process.
fn await_verdict(
    job: &weft_coordinator::Job,
    failed: &CollectiveError,
    options: &weft_coordinator::JobOptions,
    rank: usize,
) {
    let waited = match failed {
        CollectiveError::Timeout {
            peer, op, timeout, ..
        } => Some((Some(*peer), op, *timeout)),
        CollectiveError::Stalled { op, .. } => Some((None, op, options.collective_timeout)),
        _ => None,
    };
    let mut wait = options.heartbeat_timeout;
    if let Some((peer, op, timeout)) = waited {
        job.report_wait(peer, op, timeout);
        wait += weft_coordinator::rendezvous::late::MAX_GRACE;
    }
    tracing::warn!("rank {rank}: {failed}; waiting up to {wait:?} for the coordinator's verdict");
    std::thread::sleep(wait);
}

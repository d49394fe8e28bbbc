//! `weft train`, `weft eval` and `weft bench train`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use weft_collective::Collective;
use weft_config::{Config, ConfigLoader};
use weft_coordinator::{job_token, Job, JobOptions, LaunchEnv, Launcher};
use weft_data::TextEncoder;
use weft_train::grads::reduce::GradReduce;
use weft_train::weights::build_model;
use weft_train::{Rank, TrainOptions, TrainSummary};

use crate::backend::{with_backend, GpuRank, OnBackend};

/// The config `weft train` uses without `--config`.
pub const DEFAULT_TRAIN_CONFIG: &str = "configs/tiny.toml";

type Cpu = burn::backend::Flex;

/// Arguments of `weft train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run directory for config.toml, metrics.jsonl, eval.jsonl and the weights
    /// (default: runs/<UTC date-time>).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Resume from `auto` (the newest committed checkpoint of the run directory that
    /// verifies, if any), `never`, or a checkpoint directory.
    #[arg(long, default_value = "auto", value_name = "auto|never|PATH")]
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

/// Size the tensor backend's thread pool of this rank ([`rank_threads`]), with a warning when the
/// ranks of this node ask for more threads than it has cores.
pub(crate) fn init_rank_threads(config: &Config, env: &LaunchEnv) {
    let from_env = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&t| t > 0);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let local_ranks = env.local_world_size.unwrap_or(1).max(1);
    let (threads, warning) = rank_threads(config.train.threads, from_env, local_ranks, cores);
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    weft_train::init_threads(threads);
}

/// The threads of one rank's tensor backend: `train.threads` (`configured`) when it is not 0,
/// else `RAYON_NUM_THREADS` (`from_env`), else this node's `cores` shared out among its
/// `local_ranks` (at least one each). The second value is a warning when an explicit count makes
/// the node's ranks together ask for more threads than it has cores: they then contend for the
/// cores and every step is slower (1000 threads on 2 cores made one step of the tiny config
/// take a minute instead of a fraction of a second).
pub(crate) fn rank_threads(
    configured: usize,
    from_env: Option<usize>,
    local_ranks: usize,
    cores: usize,
) -> (usize, Option<String>) {
    let (threads, source) = match (configured, from_env) {
        (0, None) => return ((cores / local_ranks).max(1), None),
        (0, Some(t)) => (t, format!("RAYON_NUM_THREADS={t}")),
        (t, _) => (t, format!("train.threads = {t}")),
    };
    let asked = threads.saturating_mul(local_ranks);
    let warning = (asked > cores).then(|| {
        let ranks = if local_ranks == 1 { "rank" } else { "ranks" };
        format!(
            "{source} with {local_ranks} {ranks} on this node asks for {asked} threads on {cores} \
             cores: they contend and every step is slower; train.threads = 0 (and no \
             RAYON_NUM_THREADS) shares the cores out among the ranks"
        )
    });
    (threads, warning)
}

/// `weft train`, on one process or as one rank of the job `env` describes.
pub fn train(args: TrainArgs, config: &Config, env: &LaunchEnv) -> anyhow::Result<ExitCode> {
    init_rank_threads(config, env);
    let run_dir = run_dir(&args, env)?;
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
        let (mut job, job_options) = join_job(env, config, nccl_id)?;
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
                let parts = (g.join_nccl)(rank, env.world_size, &id, d.nccl_host_staging)?;
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
                if matches!(e, weft_train::TrainError::Collective(_)) {
                    // A peer's socket closing is often another rank's failure passed on:
                    // the coordinator names the rank that failed first. Its verdict (the
                    // abort handler) ends this process; wait for it, bounded.
                    tracing::warn!(
                        "rank {rank}: {e}; waiting up to {:?} for the coordinator's verdict",
                        job_options.heartbeat_timeout
                    );
                    std::thread::sleep(job_options.heartbeat_timeout);
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

/// Join the job of `env` (rendezvous with the coordinator): the ring, planner and committer
/// of this rank. A job aborted by the coordinator (a peer died) ends this process.
pub(crate) fn join_job(
    env: &LaunchEnv,
    config: &Config,
    nccl_id: Option<String>,
) -> anyhow::Result<(Job, JobOptions)> {
    let d = &config.dist;
    let rank = env.rank;
    let job_options = JobOptions {
        token: job_token(env),
        heartbeat_timeout: Duration::from_secs_f64(d.heartbeat_timeout_s),
        heartbeat_interval: Duration::from_secs_f64(d.heartbeat_interval_s),
        rendezvous_timeout: Duration::from_secs_f64(d.rendezvous_timeout_s),
        collective_timeout: Duration::from_secs_f64(d.collective_timeout_s),
        nccl_id,
    };
    let job = Job::join(
        env.clone(),
        &job_options,
        Box::new(move |why| {
            tracing::error!("rank {rank}: the job was aborted: {why}");
            eprintln!("error: rank {rank}: the job was aborted: {why}");
            std::process::exit(1);
        }),
    )?;
    Ok((job, job_options))
}

/// `weft params`: build the model on the CPU and count. The vocabulary is
/// `model.text.vocab_size`, else the tokenizer's.
pub fn params(config: &Config, json: bool) -> anyhow::Result<()> {
    let vocab = if config.model.text.vocab_size > 0 {
        config.model.text.vocab_size
    } else {
        let path = config
            .data
            .tokenizer
            .as_ref()
            .context("set model.text.vocab_size or data.tokenizer")?;
        TextEncoder::from_file(path, config.model.text.context_length)?.vocab_size()
    };
    let model = build_model::<Cpu>(config, vocab, &Default::default());
    let counts = model.param_counts();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    if json {
        let mut map = serde_json::Map::new();
        for (name, n) in &counts {
            map.insert((*name).to_string(), (*n).into());
        }
        map.insert("total".into(), total.into());
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        for (name, n) in &counts {
            println!("{name:<8} {n:>12}  {}", weft_train::weights::human(*n));
        }
        println!(
            "{:<8} {total:>12}  {}",
            "total",
            weft_train::weights::human(total)
        );
    }
    Ok(())
}

/// `weft bench train`.
pub fn bench_train(args: BenchTrainArgs, config: &Config) -> anyhow::Result<()> {
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

/// `runs/YYYYMMDD-HHMMSS` in UTC.
pub(crate) fn default_run_dir() -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from(format!(
        "runs/{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::rank_threads;

    #[test]
    fn threads_default_to_the_cores_shared_out_among_the_ranks() {
        assert_eq!(rank_threads(0, None, 1, 16), (16, None));
        assert_eq!(rank_threads(0, None, 4, 16), (4, None));
        assert_eq!(rank_threads(0, None, 3, 16), (5, None));
        // More ranks than cores: one thread each, and no warning (the count is not asked for).
        assert_eq!(rank_threads(0, None, 4, 2), (1, None));
    }

    #[test]
    fn an_explicit_count_wins_and_is_warned_of_when_it_oversubscribes() {
        assert_eq!(rank_threads(2, Some(8), 2, 4), (2, None));
        assert_eq!(rank_threads(0, Some(2), 2, 4), (2, None));
        let (threads, warning) = rank_threads(1000, None, 1, 2);
        assert_eq!(threads, 1000);
        let warning = warning.unwrap();
        assert!(
            warning.starts_with(
                "train.threads = 1000 with 1 rank on this node asks for 1000 threads on 2 cores"
            ),
            "{warning}"
        );
        let (threads, warning) = rank_threads(0, Some(3), 2, 4);
        assert_eq!(threads, 3);
        assert!(warning.unwrap().starts_with(
            "RAYON_NUM_THREADS=3 with 2 ranks on this node asks for 6 threads on 4 cores"
        ));
    }
}

//! What every rank of a job does before its command runs: size its thread pool, join the
//! job; and the default run directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_config::Config;
use weft_coordinator::{job_token, Job, JobOptions, LaunchEnv};

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

/// Join the job of `env` (rendezvous with the coordinator): the ring, planner and committer
/// of this rank. The job token is `WEFT_JOB_TOKEN`, or the one rank 0 leaves in `run_dir`,
/// which every rank shares. A job aborted by the coordinator (a peer died) ends this process.
pub(crate) fn join_job(
    env: &LaunchEnv,
    config: &Config,
    run_dir: &Path,
    nccl_id: Option<String>,
) -> anyhow::Result<(Job, JobOptions)> {
    let d = &config.dist;
    let rank = env.rank;
    let wait = Duration::from_secs_f64(d.rendezvous_timeout_s);
    let job_options = JobOptions {
        token: job_token(env, Some(run_dir), wait)?,
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

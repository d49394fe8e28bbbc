//! The job token: the secret every rank of a job holds and proves it holds (it never travels;
//! see `weft_collective::auth`). Never derived from what others can know (a job id, a host, a
//! port): `WEFT_JOB_TOKEN` when the launcher sets it (`weft launch`, `launch/slurm.sbatch`),
//! else a random one that rank 0 writes into the run directory every rank shares, readable by
//! its owner only ([`TOKEN_FILE`]).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_collective::auth::new_token;

use crate::env::LaunchEnv;
use crate::worker::JobError;

/// The token's file in a run directory, mode 0600.
pub const TOKEN_FILE: &str = ".weft-job-token";

/// The job token of this rank: `WEFT_JOB_TOKEN`, else the one in `share_dir`'s
/// [`TOKEN_FILE`], which rank 0 writes when it is not there and the other ranks wait for (at
/// most `wait`). Without either, an error that says how to give one.
pub fn job_token(
    env: &LaunchEnv,
    share_dir: Option<&Path>,
    wait: Duration,
) -> Result<String, JobError> {
    if let Some(t) = std::env::var("WEFT_JOB_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Ok(t);
    }
    let rank = env.rank;
    let Some(dir) = share_dir else {
        return Err(JobError::Token {
            rank,
            reason: "no job token: set WEFT_JOB_TOKEN to one secret for every rank (weft \
                     launch and launch/slurm.sbatch do), or give the ranks a run directory they \
                     share"
                .into(),
        });
    };
    let path = dir.join(TOKEN_FILE);
    let token = if rank == 0 {
        create(&path)
    } else {
        wait_for(&path, wait)
    };
    token.map_err(|why| JobError::Token {
        rank,
        reason: format!("{}: {why}", path.display()),
    })
}

/// Reads the token file, `None` when there is none; a file others may read is refused.
fn read(path: &Path) -> Result<Option<String>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "others may read it (mode {mode:o}): `chmod 600` it, or delete it for a new token"
        ));
    }
    let token = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let token = token.trim();
    if token.is_empty() {
        return Err("it is empty: delete it for a new token".into());
    }
    Ok(Some(token.to_string()))
}

/// Rank 0: the token in `path`, written first (a fresh random one, mode 0600, renamed into
/// place whole) when there is none.
fn create(path: &Path) -> Result<String, String> {
    if let Some(t) = read(path)? {
        return Ok(t);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(new_token().as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write it: {e}"));
    }
    read(path)?.ok_or_else(|| "it vanished after it was written".into())
}

/// The other ranks: the token rank 0 writes into `path`, waiting at most `wait`.
fn wait_for(path: &Path, wait: Duration) -> Result<String, String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(t) = read(path)? {
            return Ok(t);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "rank 0 did not write it within {wait:?}: do the ranks share this run \
                 directory? If not, set WEFT_JOB_TOKEN to one secret for every rank"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(rank: usize) -> LaunchEnv {
        LaunchEnv::from_vars(|k| match k {
            "WEFT_RANK" => Some(rank.to_string()),
            "WEFT_WORLD_SIZE" | "WEFT_LOCAL_WORLD_SIZE" => Some("2".into()),
            "WEFT_LOCAL_RANK" => Some(rank.to_string()),
            "WEFT_COORDINATOR" => Some("127.0.0.1:1".into()),
            _ => None,
        })
        .unwrap()
    }

    // WEFT_JOB_TOKEN is not set in `cargo test`'s environment (the tests that set it run the
    // binary as a child).
    #[test]
    fn rank_0_writes_a_private_random_token_that_the_others_read() {
        if std::env::var_os("WEFT_JOB_TOKEN").is_some() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let waiter = {
            let run = run.clone();
            std::thread::spawn(move || job_token(&env(1), Some(&run), Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(100));
        let t0 = job_token(&env(0), Some(&run), Duration::from_secs(1)).unwrap();
        let t1 = waiter.join().unwrap().unwrap();
        assert_eq!(t0, t1);
        assert_eq!(t0.len(), 64);
        let mode = std::fs::metadata(run.join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The next job in the same directory reuses it; a copy others may read is refused.
        assert_eq!(job_token(&env(0), Some(&run), Duration::ZERO).unwrap(), t0);
        std::fs::set_permissions(run.join(TOKEN_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let err = job_token(&env(1), Some(&run), Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("others may read it"), "{err}");
    }

    #[test]
    fn without_a_token_or_a_shared_directory_the_error_says_what_to_do() {
        if std::env::var_os("WEFT_JOB_TOKEN").is_some() {
            return;
        }
        let err = job_token(&env(1), None, Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("set WEFT_JOB_TOKEN"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = job_token(&env(1), Some(dir.path()), Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("did not write it"), "{err}");
    }
}

//! Running the real `weft` binary from a test, with a time limit.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run `weft args...` in `cwd` (logs at `info`), killed and failed after `limit`.
pub fn weft_within(cwd: &Path, args: &[&str], limit: Duration) -> Output {
    weft_env_within(cwd, args, &[], limit)
}

/// [`weft_within`] with extra environment variables.
pub fn weft_env_within(
    cwd: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(cwd)
        .env("WEFT_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "weft {args:?} timed out: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The stdout of a run that must have succeeded (else fail with its stderr).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

//! Multi-process jobs of the real binary on 127.0.0.1: a child process killed when dropped,
//! `weft coordinator` and `weft train` ranks of a small model, for the fault and security
//! tests.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::train::sample_dir;

/// Heartbeat timeout of these jobs.
pub const HEARTBEAT_S: f64 = 2.0;

/// A child process that is killed (and reaped) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub done: Option<ExitStatus>,
}

impl Proc {
    /// `command` started with its stdout discarded and its stderr kept.
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Proc {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Proc {
            name: name.into(),
            child,
            done: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Its exit status, waiting at most `limit`.
    pub fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while self.done.is_none() && Instant::now() < deadline {
            self.done = self.child.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        self.done
    }

    pub fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.done.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `--set` flags of a small model that trains for long enough to be killed mid-run.
pub fn train_sets() -> Vec<String> {
    let s = sample_dir();
    let sets = [
        format!("data.train=[\"{}\"]", s.join("train").display()),
        "data.val=[]".into(),
        format!("data.tokenizer={}", s.join("tokenizer.json").display()),
        "data.image_size=32".into(),
        "data.batch_size=8".into(),
        "data.workers=1".into(),
        "model.embed_dim=16".into(),
        "model.vision.width=16".into(),
        "model.vision.depth=1".into(),
        "model.vision.heads=2".into(),
        "model.text.heads=2".into(),
        "model.fusion.heads=2".into(),
        "model.decoder.heads=2".into(),
        "model.text.width=16".into(),
        "model.text.depth=1".into(),
        "model.text.context_length=12".into(),
        "model.fusion.depth=1".into(),
        "model.decoder.depth=1".into(),
        "train.max_steps=100000".into(),
        "train.threads=1".into(),
        format!("dist.heartbeat_timeout_s={HEARTBEAT_S}"),
        "dist.heartbeat_interval_s=0.2".into(),
        "dist.rendezvous_timeout_s=60".into(),
    ];
    sets.iter()
        .flat_map(|kv| ["--set".to_string(), kv.clone()])
        .collect()
}

/// The weft binary, in the repository root, with no launcher's variables.
pub fn weft() -> Command {
    in_test_env(Command::new(env!("CARGO_BIN_EXE_weft")))
}

/// The weft binary run by `sh` under a limit of `max_fds` open files; arguments follow.
pub fn weft_with_max_fds(max_fds: u32) -> Command {
    weft_after(&format!("ulimit -n {max_fds}"))
}

/// The weft binary run by `sh` under a limit of `blocks` 512-byte blocks a file (RLIMIT_FSIZE,
/// with SIGXFSZ ignored): a write past it fails with EFBIG, as one on a full disk fails with
/// ENOSPC. Arguments follow.
pub fn weft_with_max_file_size(blocks: u32) -> Command {
    weft_after(&format!("trap '' XFSZ; ulimit -f {blocks}"))
}

/// The weft binary, exec'd by `sh` after `setup`.
fn weft_after(setup: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("{setup} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_weft"));
    in_test_env(c)
}

fn in_test_env(mut c: Command) -> Command {
    // The repository root: `weft train` reads configs/tiny.toml, overridden by the sets.
    c.current_dir(sample_dir().join("../.."))
        .env("WEFT_LOG", "info")
        .env_remove("WEFT_RANK")
        .env_remove("RANK")
        .env_remove("SLURM_PROCID")
        .env_remove("WEFT_RUN_DIR")
        .stdin(Stdio::null());
    c
}

/// `weft coordinator` on a free port of 127.0.0.1, and its address.
pub fn coordinator(world: usize, token: &str) -> (Proc, String) {
    coordinator_in(weft(), world, token)
}

/// `weft coordinator` started by `command` (the weft binary, or a wrapper of it) on a free
/// port of 127.0.0.1, and its address.
pub fn coordinator_in(command: Command, world: usize, token: &str) -> (Proc, String) {
    coordinator_with(command, world, token, &[])
}

/// [`coordinator_in`] with `extra` arguments after the common ones.
pub fn coordinator_with(
    mut command: Command,
    world: usize,
    token: &str,
    extra: &[&str],
) -> (Proc, String) {
    let mut child = command
        .args(["coordinator", "--world-size", &world.to_string()])
        .args(["--bind", "127.0.0.1:0"])
        .args(train_sets())
        .args(extra)
        .env("WEFT_JOB_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut proc = Proc {
        name: "coordinator".into(),
        child,
        done: None,
    };
    if !line.trim().starts_with("127.0.0.1:") {
        panic!("coordinator address line {line:?}: {}", proc.stderr());
    }
    (proc, line.trim().to_string())
}

/// `weft train` as rank `rank` of `world`.
pub fn worker(rank: usize, world: usize, addr: &str, token: &str, run: &Path) -> Proc {
    worker_with(rank, world, addr, token, run, &[])
}

/// `weft train` as rank `rank` of `world`, with `extra` arguments after the common ones.
pub fn worker_with(
    rank: usize,
    world: usize,
    addr: &str,
    token: &str,
    run: &Path,
    extra: &[&str],
) -> Proc {
    worker_env(rank, world, addr, token, run, extra, &[])
}

/// [`worker_with`] with extra environment variables.
pub fn worker_env(
    rank: usize,
    world: usize,
    addr: &str,
    token: &str,
    run: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Proc {
    Proc::spawn(
        format!("rank {rank}"),
        weft()
            .envs(envs.iter().copied())
            .arg("train")
            .args(["--run-dir", &run.display().to_string()])
            .args(train_sets())
            .args(extra)
            .env("WEFT_RANK", rank.to_string())
            .env("WEFT_WORLD_SIZE", world.to_string())
            .env("WEFT_LOCAL_RANK", rank.to_string())
            .env("WEFT_LOCAL_WORLD_SIZE", world.to_string())
            .env("WEFT_COORDINATOR", addr)
            .env("WEFT_JOB_TOKEN", token),
    )
}

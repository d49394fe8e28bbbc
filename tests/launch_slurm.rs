//! `launch/slurm.sbatch` on a real one-node Slurm cluster (munged, slurmctld and slurmd started
//! by tests/slurm/start-slurm.sh, on 127.0.0.1): `sbatch --wait` of 2 CPU tasks trains to a
//! committed final checkpoint; a job signalled mid-run (USR1 to the batch shell, as
//! `--signal=B:USR1@120` sends it) checkpoints, requeues itself, resumes and ends bit for bit
//! where an uninterrupted job ends, and so does a job that Slurm requeues (as preemption does);
//! a task that dies fails the job and leaves no process behind.
//!
//! The cluster needs root and Slurm (`apt-get install slurm-wlm munge`). Without them each test
//! says on stderr that it is SKIPPED and why, and passes; with `WEFT_SLURM_TESTS=require` (set by
//! `.ci/run`, which installs Slurm) a skip is a failure instead. The tests take turns: each starts
//! the cluster and stops it at its end (also when it fails), cancelling its jobs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::ckpt::{assert_same_end, latest, metrics, steps_logged};
use common::train::sample_dir;
use weft_checkpoint::open_verified;

/// The longest a job may take (a requeue costs 10-15 s on this cluster).
const JOB_LIMIT: Duration = Duration::from_secs(240);
/// Steps of every run here, and how often it checkpoints.
const STEPS: usize = 12;

static TURN: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    sample_dir().join("../..").canonicalize().unwrap()
}

fn scripts() -> PathBuf {
    repo().join("tests/slurm")
}

/// Where the cluster keeps its state, logs and pid files.
fn cluster_dir() -> PathBuf {
    std::env::temp_dir().join("weft-slurm-tests")
}

/// Why the cluster cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok();
    if uid.is_none_or(|o| String::from_utf8_lossy(&o.stdout).trim() != "0") {
        return Some("not root (the test cluster's daemons run as root)".into());
    }
    for bin in [
        "sbatch",
        "scontrol",
        "scancel",
        "squeue",
        "slurmctld",
        "slurmd",
        "munged",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{bin} is not installed (apt-get install slurm-wlm munge)"
            ));
        }
    }
    match std::fs::read_to_string("/etc/slurm/slurm.conf") {
        Ok(conf) if !conf.contains("# written by weft tests/slurm/start-slurm.sh") => {
            Some("/etc/slurm/slurm.conf belongs to another cluster: not replacing it".into())
        }
        _ => None,
    }
}

/// The running test cluster; stopped (its jobs cancelled) when dropped.
struct Cluster {
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    /// The cluster, or `None` (after saying why) when this machine cannot run it.
    fn start(test: &str) -> Option<Self> {
        let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = unavailable() {
            assert!(
                std::env::var("WEFT_SLURM_TESTS").as_deref() != Ok("require"),
                "{test}: WEFT_SLURM_TESTS=require, but {why}"
            );
            // Straight to stderr: the test harness captures eprintln! of a passing test.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
            return None;
        }
        let out = Command::new("bash")
            .arg(scripts().join("start-slurm.sh"))
            .env("SLURM_CI_DIR", cluster_dir())
            // 2 tasks of 1 CPU each, with room to spare on a 2-core machine.
            .env("SLURM_CI_CPUS", "4")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "start-slurm.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self { _turn: turn })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(scripts().join("stop-slurm.sh"))
            .env("SLURM_CI_DIR", cluster_dir())
            .stdout(Stdio::null())
            .status();
    }
}

/// `weft train` options of a short run of 2 tasks on the sample data.
fn train_options() -> Vec<String> {
    let s = sample_dir();
    [
        format!("data.train=[\"{}\"]", s.join("train").display()),
        "data.val=[]".into(),
        format!("data.tokenizer={}", s.join("tokenizer.json").display()),
        "data.batch_size=8".into(),
        "data.workers=1".into(),
        format!("train.max_steps={STEPS}"),
        "checkpoint.every_steps=5".into(),
    ]
    .into_iter()
    .flat_map(|kv| ["--set".to_string(), kv])
    .collect()
}

/// A submitted `sbatch --wait` of launch/slurm.sbatch; cancelled and killed when dropped.
struct Job {
    id: u64,
    dir: PathBuf,
    sbatch: Child,
    status: Option<ExitStatus>,
}

impl Job {
    /// `sbatch --wait` of the template with 2 CPU tasks in `dir`, with `envs` for the job.
    fn submit(dir: &Path, envs: &[(&str, &str)]) -> Self {
        let mut sbatch = Command::new("sbatch");
        sbatch
            .current_dir(dir)
            .args([
                "--parsable",
                "--wait",
                "--nodes=1",
                "--ntasks-per-node=2",
                "--cpus-per-task=1",
                "--gpus-per-task=0",
                "--time=10",
            ])
            .arg(repo().join("launch/slurm.sbatch"))
            .arg(repo().join("configs/tiny.toml"))
            .args(train_options())
            // The job inherits this environment (sbatch --export=ALL).
            .env("WEFT", env!("CARGO_BIN_EXE_weft"))
            .env("WEFT_LOG", "info")
            .env_remove("WEFT_RUN_DIR")
            .env_remove("WEFT_RANK")
            .env_remove("RANK")
            .env_remove("MASTER_ADDR")
            .env_remove("MASTER_PORT")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = sbatch.spawn().unwrap();
        // --parsable prints the job id as soon as it is submitted, then waits for the job.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("sbatch printed no job id within 30 s");
            }
        };
        let id = match line.trim().split(';').next().and_then(|i| i.parse().ok()) {
            Some(id) => id,
            None => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "sbatch: no job id in {line:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        Self {
            id,
            dir: dir.to_path_buf(),
            sbatch: child,
            status: None,
        }
    }

    /// Where the template trains: runs/slurm-<job id>.
    fn run_dir(&self) -> PathBuf {
        self.dir.join(format!("runs/slurm-{}", self.id))
    }

    /// The job's output file (every attempt appends to it).
    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("weft-{}.out", self.id))).unwrap_or_default()
    }

    /// Waits until rank 0 has logged `n` steps, failing if the job ends first.
    fn wait_for_steps(&mut self, n: usize) {
        let deadline = Instant::now() + JOB_LIMIT;
        loop {
            if steps_logged(&self.run_dir()) >= n {
                return;
            }
            if let Some(status) = self.sbatch.try_wait().unwrap() {
                self.status = Some(status);
                panic!(
                    "job {} ended ({status}) before step {n}: {}",
                    self.id,
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "job {}: no step {n} within {JOB_LIMIT:?}: {}",
                self.id,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status of `sbatch --wait` (the job's, after any requeues).
    fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + JOB_LIMIT;
        loop {
            if let Some(s) = self.sbatch.try_wait().unwrap() {
                self.status = Some(s);
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "job {} still running after {JOB_LIMIT:?}: {}",
                self.id,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Exit status 0, else fail with the job's output.
    fn must_succeed(&mut self) {
        let status = self.wait();
        assert!(
            status.success(),
            "job {}: sbatch --wait {status}: {}",
            self.id,
            self.output()
        );
    }

    fn scancel(&self, args: &[&str]) {
        let ok = Command::new("scancel")
            .args(args)
            .arg(self.id.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "scancel {args:?} {}", self.id);
    }

    /// The live processes of this job: those whose command line names its run directory.
    fn processes(&self) -> Vec<(i32, String)> {
        let needle = format!("runs/slurm-{}", self.id);
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            });
            if cmdline.contains(&needle) && !zombie {
                found.push((pid, cmdline));
            }
        }
        found
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = Command::new("scancel").arg(self.id.to_string()).status();
            let _ = self.sbatch.kill();
            let _ = self.sbatch.wait();
        }
    }
}

/// The value of `name` in the environment of process `pid`.
fn env_of(pid: i32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{name}=")).map(str::to_string)
    })
}

#[test]
fn sbatch_wait_of_two_cpu_tasks_ends_with_a_committed_final_checkpoint() {
    let Some(_cluster) = Cluster::start("sbatch_wait_of_two_cpu_tasks") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Launch variables of the submitting shell (sbatch exports them to the job) are not read.
    let stale = [
        ("RANK", "7"),
        ("WORLD_SIZE", "9"),
        ("LOCAL_RANK", "0"),
        ("WEFT_RANK", "3"),
        ("WEFT_WORLD_SIZE", "4"),
        ("MASTER_ADDR", "nowhere.invalid"),
        ("MASTER_PORT", "1"),
    ];
    let mut job = Job::submit(dir.path(), &stale);
    job.must_succeed();
    let run = job.run_dir();
    let out = job.output();
    let newest = latest(&run);
    assert!(newest.ends_with("step-00000012"), "{newest:?}: {out}");
    let state = open_verified(&newest).unwrap().state;
    assert_eq!(state.step, STEPS as u64);
    assert_eq!(state.world_size, 2, "{out}");
    assert!(run.join("model.safetensors").exists());
    assert_eq!(metrics(&run).len(), STEPS);
    assert!(out.contains("the run finished"), "{out}");
    assert!(!out.contains("requeueing"), "{out}");
    assert!(job.processes().is_empty(), "{:?}", job.processes());
}

#[test]
fn a_job_signalled_mid_run_requeues_resumes_and_ends_bit_for_bit_as_an_uninterrupted_one() {
    let Some(_cluster) = Cluster::start("a_job_signalled_mid_run_requeues") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut whole = Job::submit(dir.path(), &[]);
    whole.must_succeed();
    // Slow steps (the numbers do not change) so that the signal lands mid-run.
    let mut cut = Job::submit(dir.path(), &[("WEFT_TEST_STEP_PAUSE_MS", "300")]);
    cut.wait_for_steps(3);
    // What `#SBATCH --signal=B:USR1@120` does before the time limit: USR1 to the batch shell.
    cut.scancel(&["--batch", "--signal=USR1"]);
    cut.must_succeed();
    let out = cut.output();
    assert!(out.contains("got SIGUSR1"), "{out}");
    assert!(out.contains("requeueing"), "{out}");
    assert!(out.contains("attempt 2"), "{out}");
    assert!(out.contains("resuming from"), "{out}");
    assert!(out.contains("the run finished"), "{out}");
    // The first attempt stopped with a checkpoint before the end.
    let stopped: u64 = out
        .lines()
        .find_map(|l| l.split("interrupted after step ").nth(1))
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no interruption in the output: {out}"));
    assert!((3..STEPS as u64).contains(&stopped), "{stopped}: {out}");
    // (keep_last 3 has removed it since.)
    let committed = format!("checkpoints/step-{stopped:08} committed");
    assert!(out.contains(&committed), "{out}");
    assert_same_end(&whole.run_dir(), &cut.run_dir(), STEPS, "requeued job");

    // Preemption with PreemptMode=REQUEUE: Slurm itself requeues the job, sending SIGTERM to
    // every process of it and SIGKILL after KillWait (5 s here). The ranks save and exit 75
    // within that, and the requeued job resumes from their checkpoint.
    let mut preempted = Job::submit(dir.path(), &[("WEFT_TEST_STEP_PAUSE_MS", "300")]);
    preempted.wait_for_steps(3);
    let ok = Command::new("scontrol")
        .args(["requeue", &preempted.id.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "scontrol requeue {}", preempted.id);
    preempted.must_succeed();
    let out = preempted.output();
    assert!(out.contains("DUE TO JOB REQUEUE"), "{out}");
    assert!(out.contains("interrupted after step"), "{out}");
    assert!(out.contains("attempt 2"), "{out}");
    assert!(out.contains("resuming from"), "{out}");
    assert_same_end(
        &whole.run_dir(),
        &preempted.run_dir(),
        STEPS,
        "job requeued by Slurm",
    );
}

#[test]
fn a_task_that_dies_fails_the_job_and_leaves_no_process_behind() {
    let Some(_cluster) = Cluster::start("a_task_that_dies_fails_the_job") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut job = Job::submit(dir.path(), &[("WEFT_TEST_STEP_PAUSE_MS", "500")]);
    job.wait_for_steps(2);
    let rank1 = job
        .processes()
        .into_iter()
        .find(|(pid, _)| env_of(*pid, "SLURM_PROCID").as_deref() == Some("1"))
        .unwrap_or_else(|| panic!("no task 1 among {:?}", job.processes()));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rank1.0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = job.wait();
    let out = job.output();
    assert!(!status.success(), "sbatch --wait: {status}: {out}");
    assert!(out.contains("the step failed"), "{out}");
    assert!(!out.contains("requeueing"), "{out}");
    // Slurm reaps the steps' processes as the job ends; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !job.processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        job.processes().is_empty(),
        "left behind: {:?}",
        job.processes()
    );
    // Not running, pending or requeued (a job that ended stays listed for a while).
    let queued = Command::new("squeue")
        .args(["-h", "-t", "all", "-o", "%T", "-j", &job.id.to_string()])
        .output()
        .unwrap();
    let state = String::from_utf8_lossy(&queued.stdout).trim().to_string();
    assert!(
        ["", "FAILED", "CANCELLED", "COMPLETED"].contains(&state.as_str()),
        "job {} is {state}",
        job.id
    );
}

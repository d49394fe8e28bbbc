//! Faults of a multi-process job with the real binary on 127.0.0.1: a worker or the
//! coordinator killed with SIGKILL, a rank or the coordinator that stops (SIGSTOP) and so stops
//! heartbeating, a worker with the wrong job token. Every surviving process must exit non-zero,
//! naming the dead rank (or the coordinator) where there is one, within the heartbeat timeout +
//! 5 s; no process outlives its test. Also the stop signals: SIGTERM to the launcher, Ctrl-C to
//! its whole process group (one request, though each worker gets it twice) and a second Ctrl-C
//! seconds later.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::dist::{
    coordinator, train_sets, weft, worker, worker_env, worker_with, Proc, HEARTBEAT_S,
};

/// The bound every survivor must meet.
const BOUND: Duration = Duration::from_millis((HEARTBEAT_S * 1000.0) as u64 + 5000);

/// Wait until rank 0 has written `n` steps (the job is training), at most 120 s.
fn wait_for_steps(run: &Path, n: usize, procs: &mut [Proc]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if common::ckpt::steps_logged(run) >= n {
            return;
        }
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait().unwrap() {
                p.done = Some(status);
                let err = p.stderr();
                panic!("{} exited early with {status}: {err}", p.name);
            }
        }
        assert!(Instant::now() < deadline, "the job did not start training");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every process in `procs` exits non-zero within [`BOUND`]; returns their stderr.
fn all_fail_within_bound(procs: &mut [Proc]) -> Vec<String> {
    let start = Instant::now();
    let mut errs = Vec::new();
    for p in procs.iter_mut() {
        let left = BOUND.saturating_sub(start.elapsed());
        let status = p.wait_within(left);
        let err = p.stderr();
        match status {
            Some(s) => assert!(!s.success(), "{} exited with success: {err}", p.name),
            None => panic!(
                "{} still running {:?} after the fault: {err}",
                p.name,
                start.elapsed()
            ),
        }
        errs.push(err);
    }
    errs
}

fn setup(world: usize, token: &str) -> (tempfile::TempDir, PathBuf, Proc, Vec<Proc>) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (coord, addr) = coordinator(world, token);
    let workers = (0..world)
        .map(|r| worker(r, world, &addr, token, &run))
        .collect();
    (dir, run, coord, workers)
}

#[test]
fn a_killed_worker_stops_the_job() {
    let (_dir, run, coord, mut workers) = setup(3, "tok-kill-worker");
    wait_for_steps(&run, 2, &mut workers);
    let mut victim = workers.remove(2);
    victim.signal(nix::sys::signal::Signal::SIGKILL);
    victim.wait_within(Duration::from_secs(5)).unwrap();
    let mut survivors = workers;
    survivors.push(coord);
    let errs = all_fail_within_bound(&mut survivors);
    // The coordinator and every worker it aborts name the dead rank; a worker may also notice
    // first that its ring neighbour closed.
    assert!(errs[2].contains("rank 2"), "coordinator: {}", errs[2]);
    for e in &errs[..2] {
        assert!(e.contains("rank 2"), "worker: {e}");
    }
}

#[test]
fn a_killed_coordinator_stops_the_job() {
    let (_dir, run, mut coord, mut workers) = setup(2, "tok-kill-coordinator");
    wait_for_steps(&run, 2, &mut workers);
    coord.signal(nix::sys::signal::Signal::SIGKILL);
    coord.wait_within(Duration::from_secs(5)).unwrap();
    let errs = all_fail_within_bound(&mut workers);
    for e in &errs {
        assert!(e.contains("coordinator"), "worker: {e}");
    }
}

#[test]
fn a_stopped_coordinator_is_named_by_every_rank() {
    // Once unnoticed: ranks waited on a coordinator stopped for 20 s, which then declared a
    // healthy rank dead. It now heartbeats to the ranks too.
    let (_dir, run, coord, mut workers) = setup(2, "tok-stopped-coordinator");
    wait_for_steps(&run, 2, &mut workers);
    coord.signal(nix::sys::signal::Signal::SIGSTOP);
    let errs = all_fail_within_bound(&mut workers);
    for e in &errs {
        assert!(
            e.contains("the coordinator sent nothing for"),
            "worker: {e}"
        );
    }
    coord.signal(nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn a_silent_rank_is_declared_dead_after_the_heartbeat_timeout() {
    let (_dir, run, coord, mut workers) = setup(2, "tok-silent");
    wait_for_steps(&run, 2, &mut workers);
    // Stopped, not dead: its sockets stay open, only its heartbeats stop.
    let mut stopped = workers.remove(1);
    stopped.signal(nix::sys::signal::Signal::SIGSTOP);
    let mut survivors = workers;
    survivors.push(coord);
    let errs = all_fail_within_bound(&mut survivors);
    assert!(
        errs[1].contains("rank 1") && errs[1].contains("heartbeat"),
        "coordinator: {}",
        errs[1]
    );
    assert!(errs[0].contains("rank 1"), "rank 0: {}", errs[0]);
    stopped.signal(nix::sys::signal::Signal::SIGKILL);
    stopped.wait_within(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_late_rank_is_named_not_the_rank_that_waited_for_it() {
    // Once: with a collective timeout shorter than a rank's pause, the coordinator blamed the
    // rank that waited (its exit was the first thing it saw), and the late rank exited
    // saying the waiting one was dead.
    let token = "tok-late";
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let patient = ["--set", "dist.heartbeat_timeout_s=30"];
    let (coord, addr) = common::dist::coordinator_with(weft(), 2, token, &patient);
    let sets = [&patient[..], &["--set", "dist.collective_timeout_s=2"]].concat();
    let mut workers: Vec<Proc> = (0..2)
        .map(|r| worker_with(r, 2, &addr, token, &run, &sets))
        .collect();
    wait_for_steps(&run, 2, &mut workers);
    workers[1].signal(nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    workers[1].signal(nix::sys::signal::Signal::SIGCONT);
    let mut all = workers;
    all.push(coord);
    let errs = all_fail_within_bound(&mut all);
    for (who, e) in ["rank 0", "rank 1", "coordinator"].iter().zip(&errs) {
        assert!(
            e.contains("rank 1 was late: rank 0 waited 2s for it"),
            "{who}: {e}"
        );
        assert!(!e.contains("rank 0 is dead"), "{who}: {e}");
    }
}

#[test]
fn a_worker_with_the_wrong_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (mut coord, addr) = coordinator(2, "the-right-token");
    let mut intruder = worker(1, 2, &addr, "a-wrong-token", &run);
    let status = intruder
        .wait_within(Duration::from_secs(30))
        .expect("refused promptly");
    assert!(!status.success());
    let err = intruder.stderr();
    assert!(
        err.contains("refused") && err.contains("wrong job token"),
        "{err}"
    );
    // The coordinator logged it and is still waiting for the real ranks.
    assert!(coord.child.try_wait().unwrap().is_none());
    coord.signal(nix::sys::signal::Signal::SIGTERM);
    coord.wait_within(Duration::from_secs(5)).unwrap();
    let log = coord.stderr();
    assert!(log.contains("wrong job token"), "coordinator log: {log}");
}

#[test]
fn a_rank_with_other_data_options_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let token = "tok-other-data";
    let (coord, addr) = coordinator(2, token);
    let mut procs = vec![
        worker(0, 2, &addr, token, &run),
        worker_with(
            1,
            2,
            &addr,
            token,
            &run,
            &["--set", "data.shuffle_buffer=7"],
        ),
        coord,
    ];
    let errs = all_fail_within_bound(&mut procs);
    for e in &errs {
        assert!(
            e.contains("rank 1 failed: rank 1's data options"),
            "every process names rank 1: {e}"
        );
    }
}

#[test]
fn a_rank_killed_during_a_save_leaves_the_previous_checkpoint_latest() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let token = "tok-kill-saving";
    let (coord, addr) = coordinator(2, token);
    let extra = ["--set", "checkpoint.every_steps=3"];
    // Each rank pauses 1.5 s between writing its shards and reporting them.
    let pause = [("WEFT_TEST_CKPT_PAUSE_MS", "1500")];
    let mut workers: Vec<Proc> = (0..2)
        .map(|r| worker_env(r, 2, &addr, token, &run, &extra, &pause))
        .collect();
    let ckpts = run.join("checkpoints");
    let deadline = Instant::now() + Duration::from_secs(120);
    // Wait for the commit of step 3, then for the shards of step 6 (written, not reported).
    let shard = |step: &str, r: usize| {
        ckpts
            .join(format!("step-{step}.tmp"))
            .join(format!("optimizer-0000{r}-of-00002.safetensors"))
    };
    while !(ckpts.join("step-00000003/COMMITTED").exists()
        && shard("00000006", 1).exists()
        && shard("00000006", 2).exists())
    {
        assert!(
            Instant::now() < deadline,
            "no save in progress to interrupt"
        );
        for p in workers.iter_mut() {
            if let Some(status) = p.child.try_wait().unwrap() {
                p.done = Some(status);
                let err = p.stderr();
                panic!("{} exited early with {status}: {err}", p.name);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut victim = workers.remove(1);
    victim.signal(nix::sys::signal::Signal::SIGKILL);
    victim.wait_within(Duration::from_secs(5)).unwrap();
    let mut rest = workers;
    rest.push(coord);
    all_fail_within_bound(&mut rest);
    // Step 6 never committed: step 3 is latest and loads.
    let latest = std::fs::read_to_string(ckpts.join("latest")).unwrap();
    assert_eq!(latest.trim(), "step-00000003");
    assert!(!ckpts.join("step-00000006").exists());
    let state = weft_checkpoint::open_verified(&ckpts.join("step-00000003"))
        .unwrap()
        .state;
    assert_eq!((state.step, state.world_size), (3, 2));
}

/// The children of `pid` (Linux: every thread's `children` list).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn alive(pid: i32) -> bool {
    // A zombie is reaped by its parent; only a running or sleeping process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// The command `weft launch --nproc-per-node 2 -- train` into `run`.
fn launch_command(run: &Path) -> Command {
    let mut c = weft();
    c.args(["launch", "--nproc-per-node", "2", "--", "train"])
        .args(["--run-dir", &run.display().to_string()])
        .args(train_sets());
    c
}

/// `weft launch --nproc-per-node 2 -- train` into `run`.
fn launch(run: &Path) -> Proc {
    Proc::spawn("launcher", &mut launch_command(run))
}

/// The launcher exits 75 within [`BOUND`], none of its `workers` outlives it, and the run's
/// latest checkpoint verifies, written by both ranks after a step at least.
fn assert_stopped_after_a_checkpoint(launcher: &mut Proc, workers: Vec<i32>, run: &Path) {
    let status = launcher.wait_within(BOUND).expect("the launcher exits");
    let err = launcher.stderr();
    assert_eq!(status.code(), Some(75), "{err}");
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the launcher");
    }
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let ckpt = run.join("checkpoints").join(latest.trim());
    let state = weft_checkpoint::open_verified(&ckpt).unwrap().state;
    assert_eq!(state.world_size, 2);
    assert!(state.step >= 1, "{state:?}");
}

#[test]
fn launch_stops_every_worker_when_one_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut launcher = launch(&run);
    wait_for_steps(&run, 2, std::slice::from_mut(&mut launcher));
    let workers = children_of(launcher.pid());
    assert_eq!(workers.len(), 2, "launcher children {workers:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(workers[1]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = launcher.wait_within(BOUND).expect("the launcher exits");
    let err = launcher.stderr();
    assert!(!status.success(), "{err}");
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the launcher");
    }
}

#[test]
fn launch_forwards_sigterm_and_the_workers_stop_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut launcher = launch(&run);
    wait_for_steps(&run, 1, std::slice::from_mut(&mut launcher));
    let workers = children_of(launcher.pid());
    launcher.signal(nix::sys::signal::Signal::SIGTERM);
    // The workers save at the next step boundary and exit 75 (interrupted, resumable).
    assert_stopped_after_a_checkpoint(&mut launcher, workers, &run);
}

#[test]
fn ctrl_c_to_the_process_group_of_launch_checkpoints_once_and_exits_75() {
    // A terminal's Ctrl-C goes to the whole foreground process group: the launcher and its
    // workers. Each worker gets SIGINT twice, from the terminal and forwarded by the launcher;
    // that is one request to stop, not a second one that ends the worker at once.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut launcher = {
        use std::os::unix::process::CommandExt;
        Proc::spawn("launcher", launch_command(&run).process_group(0))
    };
    wait_for_steps(&run, 1, std::slice::from_mut(&mut launcher));
    let workers = children_of(launcher.pid());
    assert_eq!(workers.len(), 2, "launcher children {workers:?}");
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(launcher.pid()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_stopped_after_a_checkpoint(&mut launcher, workers, &run);
}

#[test]
fn a_second_ctrl_c_seconds_after_the_first_ends_the_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Steps of 8 s: the first SIGINT waits for the step boundary, the second does not.
    let mut train = Proc::spawn(
        "weft train",
        weft()
            .args(["train", "--run-dir", &run.display().to_string()])
            .args(train_sets())
            .env("WEFT_TEST_STEP_PAUSE_MS", "8000"),
    );
    wait_for_steps(&run, 1, std::slice::from_mut(&mut train));
    train.signal(nix::sys::signal::Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        train.child.try_wait().unwrap().is_none(),
        "the first SIGINT waits for the step boundary"
    );
    train.signal(nix::sys::signal::Signal::SIGINT);
    let status = train
        .wait_within(Duration::from_secs(2))
        .expect("a second SIGINT ends it at once");
    let err = train.stderr();
    assert_eq!(status.code(), Some(130), "{err}");
    // The step under way was not finished.
    assert_eq!(common::ckpt::steps_logged(&run), 1, "{err}");
}

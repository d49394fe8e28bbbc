//! Strangers against a job of the real binary on 127.0.0.1 (issue 30's security cases): a job
//! launched without `WEFT_JOB_TOKEN` (torchrun's variables) shares a random token through its
//! run directory, and a stranger who knows the job's address and what the old derived tokens
//! were made of is refused; a coordinator under a small file limit survives a flood of idle
//! connections (accept failing with EMFILE) and its job then trains to the end.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::dist::{coordinator_in, train_sets, weft, weft_with_max_fds, worker_with, Proc};
use weft_coordinator::rendezvous::{Peer, RendezvousError, Session, Waits};
use weft_coordinator::TOKEN_FILE;

/// Every process exits with success within `limit`.
fn all_succeed(procs: &mut [Proc], limit: Duration) {
    for p in procs.iter_mut() {
        let status = p.wait_within(limit);
        if status.is_none_or(|s| !s.success()) {
            let err = p.stderr();
            panic!("{} ended with {status:?}: {err}", p.name);
        }
    }
}

/// A port of 127.0.0.1 that is free, and so is the next one.
fn two_free_ports() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// `weft train` as rank `rank` of 2 with torchrun's variables and no job token.
fn torchrun_rank(rank: usize, master_port: u16, run: &Path) -> Command {
    let mut c = weft();
    c.arg("train")
        .args(["--run-dir", &run.display().to_string()])
        .args(train_sets())
        .args(["--set", "train.max_steps=3"])
        .env_remove("WEFT_JOB_TOKEN")
        .env_remove("WEFT_COORDINATOR")
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", master_port.to_string());
    c
}

#[test]
fn without_a_token_the_ranks_share_a_private_one_and_a_stranger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let port = two_free_ports();
    let mut rank0 = Proc::spawn("rank 0", &mut torchrun_rank(0, port, &run));
    let token_file = run.join(TOKEN_FILE);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !token_file.exists() {
        assert!(Instant::now() < deadline, "rank 0 wrote no token file");
        if rank0.child.try_wait().unwrap().is_some() {
            panic!("rank 0 exited: {}", rank0.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // torchrun's coordinator is at MASTER_PORT + 1. The tokens weft used to derive:
    let coordinator = format!("127.0.0.1:{}", port + 1);
    for guess in [format!("job-at-{coordinator}"), "single".to_string()] {
        let stranger = Peer {
            rank: 1,
            host: "stranger".into(),
            local_rank: 1,
            ring_addr: "127.0.0.1:9".into(),
            nccl_id: None,
        };
        let joined = Session::join(
            &coordinator,
            &guess,
            2,
            stranger,
            Waits {
                join: Duration::from_secs(30),
                heartbeat: Duration::from_millis(100),
                silence: Duration::from_secs(5),
            },
            Box::new(|_| {}),
        );
        match joined {
            Err(RendezvousError::Refused { reason, .. }) => {
                assert!(reason.contains("wrong job token"), "{reason}")
            }
            Err(e) => panic!("expected a refusal, got {e}"),
            Ok(_) => panic!("a stranger with {guess:?} joined"),
        }
    }
    let rank1 = Proc::spawn("rank 1", &mut torchrun_rank(1, port, &run));
    all_succeed(&mut [rank0, rank1], Duration::from_secs(120));
}

#[test]
fn a_flood_of_connections_under_a_small_file_limit_does_not_end_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let token = "tok-flood";
    let (mut coord, addr) = coordinator_in(weft_with_max_fds(32), 2, token);
    let target: SocketAddr = addr.parse().unwrap();
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&target, Duration::from_secs(1)).ok())
        .collect();
    assert!(flood.len() > 100, "{} connections", flood.len());
    std::thread::sleep(Duration::from_secs(1));
    if coord.child.try_wait().unwrap().is_some() {
        panic!("the coordinator died: {}", coord.stderr());
    }
    drop(flood);
    // The job's ranks then join and train to the end.
    let extra = ["--set", "train.max_steps=3"];
    let mut procs: Vec<Proc> = (0..2)
        .map(|r| worker_with(r, 2, &addr, token, &run, &extra))
        .collect();
    all_succeed(&mut procs, Duration::from_secs(120));
    let status = coord.wait_within(Duration::from_secs(10));
    let log = coord.stderr();
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {log}");
    // The limit was reached: accept failed, and the coordinator went on.
    assert!(log.contains("accept failed"), "{log}");
}

//! weft-coordinator's rendezvous on 127.0.0.1: every rank gets the rank table; a wrong token,
//! a duplicate rank and a malformed message are refused without disturbing the job; a rank
//! that drops or goes silent is named in the abort every other rank gets; a worker whose
//! coordinator disappears is told so.

use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use weft_coordinator::rendezvous::{
    read_message, write_message, CoordinatorConfig, Message, Peer, RendezvousError, Session,
};
use weft_coordinator::{spawn_coordinator, HostedCoordinator};

/// Starts a coordinator for `world` ranks on a thread; returns its address and its handle.
fn coordinator(world: usize, heartbeat_timeout: Duration) -> (String, HostedCoordinator) {
    let hosted = spawn_coordinator(
        "127.0.0.1:0",
        CoordinatorConfig {
            world_size: world,
            token: "job-token".into(),
            heartbeat_timeout,
            join_timeout: Duration::from_secs(10),
        },
    )
    .unwrap();
    (hosted.addr.to_string(), hosted)
}

fn peer(rank: usize) -> Peer {
    Peer {
        rank,
        host: "127.0.0.1".into(),
        local_rank: rank,
        ring_addr: format!("127.0.0.1:{}", 40000 + rank),
        nccl_id: None,
    }
}

/// Joins as `rank`; aborts land in the returned channel.
fn join(
    addr: &str,
    token: &str,
    world: usize,
    rank: usize,
) -> (Result<Session, RendezvousError>, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let s = Session::join(
        addr,
        token,
        world,
        peer(rank),
        Duration::from_secs(10),
        Duration::from_millis(100),
        Box::new(move |why| {
            let _ = tx.lock().unwrap().send(why.to_string());
        }),
    );
    (s, rx)
}

#[test]
fn every_rank_gets_the_rank_table_and_the_job_ends_when_all_leave() {
    let (addr, done) = coordinator(3, Duration::from_secs(5));
    let workers: Vec<_> = (0..3)
        .rev()
        .map(|rank| {
            let addr = addr.clone();
            thread::spawn(move || {
                let (s, _aborts) = join(&addr, "job-token", 3, rank);
                let s = s.unwrap();
                let peers = s.peers.clone();
                thread::sleep(Duration::from_millis(300));
                s.leave();
                peers
            })
        })
        .collect();
    for w in workers {
        let peers = w.join().unwrap();
        assert_eq!(peers, (0..3).map(peer).collect::<Vec<_>>());
    }
    done.wait(Duration::from_secs(5))
        .expect("the coordinator finished")
        .unwrap();
}

#[test]
fn a_wrong_token_a_duplicate_and_garbage_are_refused_alone() {
    let (addr, done) = coordinator(2, Duration::from_secs(5));
    let (wrong, _) = join(&addr, "not-the-token", 2, 0);
    match wrong {
        Err(RendezvousError::Refused {
            rank: 0, reason, ..
        }) => {
            assert!(reason.contains("wrong job token"), "{reason}")
        }
        other => panic!(
            "expected a refusal, got {:?}",
            other.map(|s| s.peers.clone())
        ),
    }
    // An oversized and a malformed message close their connections only.
    let mut raw = TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut raw, &(1u32 << 30).to_le_bytes()).unwrap();
    let mut raw2 = TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut raw2, &[5, 0, 0, 0, b'{', b'x', b'y', b'z', b'}']).unwrap();

    let a = thread::spawn({
        let addr = addr.clone();
        move || join(&addr, "job-token", 2, 0).0.unwrap()
    });
    // Rank 0 twice: the second is refused; then rank 1 completes the job.
    thread::sleep(Duration::from_millis(300));
    let (dup, _) = join(&addr, "job-token", 2, 0);
    assert!(
        matches!(&dup, Err(RendezvousError::Refused { reason, .. }) if reason.contains("already joined")),
        "{:?}",
        dup.map(|s| s.peers.clone())
    );
    let (b, _) = join(&addr, "job-token", 2, 1);
    let (a, b) = (a.join().unwrap(), b.unwrap());
    assert_eq!(a.peers.len(), 2);
    a.leave();
    b.leave();
    done.wait(Duration::from_secs(5))
        .expect("the coordinator finished")
        .unwrap();
}

#[test]
fn a_rank_that_drops_or_goes_silent_is_named_to_the_others() {
    for silent in [false, true] {
        let timeout = Duration::from_millis(1500);
        let (addr, done) = coordinator(3, timeout);
        // Rank 2 joins by hand and then either closes its socket or never heartbeats.
        let addr2 = addr.clone();
        let rogue = thread::spawn(move || {
            let mut s = TcpStream::connect(&addr2).unwrap();
            write_message(
                &mut s,
                &Message::Join {
                    token: "job-token".into(),
                    world_size: 3,
                    peer: peer(2),
                },
            )
            .unwrap();
            assert!(matches!(read_message(&mut s), Ok(Message::Welcome { .. })));
            if silent {
                thread::sleep(Duration::from_secs(4));
            }
            drop(s);
        });
        let workers: Vec<_> = (0..2)
            .map(|rank| {
                let addr = addr.clone();
                thread::spawn(move || {
                    let (s, aborts) = join(&addr, "job-token", 3, rank);
                    let s = s.unwrap();
                    let start = Instant::now();
                    let why = aborts
                        .recv_timeout(timeout + Duration::from_secs(5))
                        .unwrap();
                    drop(s);
                    (why, start.elapsed())
                })
            })
            .collect();
        for w in workers {
            let (why, took) = w.join().unwrap();
            assert!(why.contains("rank 2 is dead"), "silent {silent}: {why}");
            assert!(took < timeout + Duration::from_secs(5), "{took:?}");
        }
        match done
            .wait(Duration::from_secs(5))
            .expect("the coordinator finished")
        {
            Err(RendezvousError::RankDead { rank: 2, reason }) => {
                let want = if silent { "no heartbeat" } else { "dropped" };
                assert!(reason.contains(want), "{reason}");
            }
            other => panic!("expected rank 2 dead, got {other:?}"),
        }
        rogue.join().unwrap();
    }
}

#[test]
fn a_worker_whose_coordinator_disappears_is_told() {
    // A one-rank "coordinator" by hand that welcomes and then closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        assert!(matches!(read_message(&mut s), Ok(Message::Join { .. })));
        write_message(
            &mut s,
            &Message::Welcome {
                peers: vec![peer(0)],
            },
        )
        .unwrap();
        thread::sleep(Duration::from_millis(200));
    });
    let (s, aborts) = join(&addr, "job-token", 1, 0);
    let s = s.unwrap();
    let why = aborts.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(why.contains("went away"), "{why}");
    drop(s);
    fake.join().unwrap();
}

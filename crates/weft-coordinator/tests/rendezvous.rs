//! weft-coordinator's rendezvous on 127.0.0.1: every rank gets the rank table; a wrong token,
//! a duplicate rank and a malformed message are refused without disturbing the job; the token
//! never travels, a recorded join cannot be replayed and a coordinator without the token is not
//! believed; a flood of idle connections neither ends the coordinator nor keeps the ranks out;
//! a rank that drops or goes silent is named in the abort every other rank gets; a joined rank
//! other than 0 that announces a frame over 16 MiB is cut off and named; a worker whose
//! coordinator disappears is told so.

use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use weft_coordinator::rendezvous::protocol::{coordinator_proof, join_proof};
use weft_coordinator::rendezvous::{
    read_message, write_message, CoordinatorConfig, Message, Peer, RendezvousError, Session, Waits,
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
        Waits {
            join: Duration::from_secs(10),
            heartbeat: Duration::from_millis(100),
            silence: Duration::from_secs(5),
        },
        Box::new(move |why| {
            let _ = tx.lock().unwrap().send(why.to_string());
        }),
    );
    (s, rx)
}

/// Joins as `rank` by hand, proving `token`: the stream after the coordinator's acceptance.
fn join_by_hand(addr: &str, token: &str, world: usize, rank: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let Ok(Message::Challenge { nonce: challenge }) = read_message(&mut s) else {
        panic!("no challenge");
    };
    let nonce = "00".repeat(32);
    let proof = join_proof(token, &challenge, &nonce, world, &peer(rank));
    let join = Message::Join {
        world_size: world,
        peer: peer(rank),
        nonce,
        proof,
    };
    write_message(&mut s, &join).unwrap();
    assert!(matches!(read_message(&mut s), Ok(Message::Accepted { .. })));
    s
}

/// A one-rank "coordinator" by hand that knows `token` (or not), on a free port: it
/// challenges one worker, records the bytes of its join, answers with its proof and a welcome,
/// then closes after a moment. Returns its address and the join's bytes.
fn fake_coordinator(token: &'static str) -> (String, thread::JoinHandle<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let challenge = "11".repeat(32);
        let hello = Message::Challenge {
            nonce: challenge.clone(),
        };
        write_message(&mut s, &hello).unwrap();
        let mut len = [0u8; 4];
        std::io::Read::read_exact(&mut s, &mut len).unwrap();
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        std::io::Read::read_exact(&mut s, &mut body).unwrap();
        let Ok(Message::Join { nonce, .. }) = serde_json::from_slice(&body) else {
            panic!("not a join");
        };
        let proof = coordinator_proof(token, &challenge, &nonce);
        // Errors: the worker may have left already (it did not believe us).
        let _ = write_message(&mut s, &Message::Accepted { proof });
        let peers = vec![peer(0)];
        let _ = write_message(&mut s, &Message::Welcome { peers });
        thread::sleep(Duration::from_millis(200));
        [len.to_vec(), body].concat()
    });
    (addr, fake)
}

#[test]
fn the_token_never_travels_and_a_recorded_join_cannot_be_replayed() {
    // What a worker sends holds a proof, not the token.
    let (fake, recorded) = fake_coordinator("job-token");
    let (s, _) = join(&fake, "job-token", 1, 0);
    drop(s.unwrap());
    let recorded = recorded.join().unwrap();
    let text = String::from_utf8_lossy(&recorded);
    assert!(!text.contains("job-token"), "{text}");
    // Replayed to a real coordinator, which challenges with a fresh nonce, it is refused.
    let (addr, done) = coordinator(1, Duration::from_secs(5));
    let mut replay = TcpStream::connect(&addr).unwrap();
    assert!(matches!(
        read_message(&mut replay),
        Ok(Message::Challenge { .. })
    ));
    std::io::Write::write_all(&mut replay, &recorded).unwrap();
    match read_message(&mut replay) {
        Ok(Message::Refused { reason }) => assert!(reason.contains("wrong job token"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The real rank still joins.
    let (s, _) = join(&addr, "job-token", 1, 0);
    s.unwrap().leave();
    done.wait(Duration::from_secs(5)).unwrap().unwrap();
}

#[test]
fn a_coordinator_without_the_token_is_not_believed() {
    let (fake, recorded) = fake_coordinator("a-guess");
    let (s, _) = join(&fake, "job-token", 1, 0);
    match s {
        Err(RendezvousError::Coordinator { reason, .. }) => {
            assert!(reason.contains("not this job's coordinator"), "{reason}")
        }
        other => panic!(
            "expected a failure, got {:?}",
            other.map(|s| s.peers.clone())
        ),
    }
    recorded.join().unwrap();
}

#[test]
fn a_flood_of_idle_connections_neither_ends_the_coordinator_nor_keeps_ranks_out() {
    let (addr, done) = coordinator(2, Duration::from_secs(5));
    // More idle connections than the coordinator keeps waiting: the extra ones are closed at
    // once, and a rank that finds its connection closed connects again.
    let flood: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(flood.len() > 64, "{} connections", flood.len());
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let addr = addr.clone();
            thread::spawn(move || join(&addr, "job-token", 2, rank).0)
        })
        .collect();
    // Held until the ranks' first connections have been closed for them.
    thread::sleep(Duration::from_millis(500));
    drop(flood);
    let sessions: Vec<Session> = ranks
        .into_iter()
        .map(|r| r.join().unwrap().unwrap())
        .collect();
    // After the welcome, new connections are closed at once.
    let mut late = TcpStream::connect(&addr).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let asked = Instant::now();
    assert!(read_message(&mut late).is_err());
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "not closed at once"
    );
    for s in sessions {
        s.leave();
    }
    done.wait(Duration::from_secs(5)).unwrap().unwrap();
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
            let mut s = join_by_hand(&addr2, "job-token", 3, 2);
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
fn a_joined_rank_that_sends_a_huge_frame_is_cut_off_and_named() {
    // Once: after its join any rank could make the coordinator take 256 MiB.
    let (addr, done) = coordinator(2, Duration::from_secs(30));
    let addr1 = addr.clone();
    let rogue = thread::spawn(move || {
        let mut s = join_by_hand(&addr1, "job-token", 2, 1);
        assert!(matches!(read_message(&mut s), Ok(Message::Welcome { .. })));
        let huge = (16u32 << 20) + 1;
        std::io::Write::write_all(&mut s, &huge.to_le_bytes()).unwrap();
        // The coordinator reads no body: it closes the connection.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    });
    let (s, aborts) = join(&addr, "job-token", 2, 0);
    let s = s.unwrap();
    let why = aborts.recv_timeout(Duration::from_secs(10)).unwrap();
    drop(s);
    assert!(
        why.contains("rank 1 is dead")
            && why.contains("a message of 16777217 bytes exceeds 16777216"),
        "{why}"
    );
    assert!(matches!(
        done.wait(Duration::from_secs(5)),
        Some(Err(RendezvousError::RankDead { rank: 1, .. }))
    ));
    rogue.join().unwrap();
}

#[test]
fn a_worker_whose_coordinator_disappears_is_told() {
    // A one-rank "coordinator" by hand that welcomes and then closes.
    let (addr, fake) = fake_coordinator("job-token");
    let (s, aborts) = join(&addr, "job-token", 1, 0);
    let s = s.unwrap();
    let why = aborts.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(why.contains("went away"), "{why}");
    drop(s);
    fake.join().unwrap();
}

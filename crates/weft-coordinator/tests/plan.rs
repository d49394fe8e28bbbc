//! The coordinator hosts the job's data plan: rank 0 opens it with its dataset's units, every
//! rank gets its share of each epoch from it (also when it asks before rank 0 has opened it),
//! the ranks' progress moves the job's data cursor and its global samples/s, and a rank that
//! reads other data fails the job with its rank named.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use weft_coordinator::rendezvous::{
    CoordinatorConfig, Message, Peer, RendezvousError, Session, Waits,
};
use weft_coordinator::{spawn_coordinator, HostedCoordinator};
use weft_data::{DataCursor, LastBatch, PlanOptions, Progress, Units};

fn units(fingerprint: &str) -> Units {
    Units {
        fingerprint: fingerprint.into(),
        rows: vec![40, 25, 33, 17],
    }
}

fn options() -> PlanOptions {
    PlanOptions {
        seed: 11,
        world_size: 2,
        batch_size: 8,
        shuffle: true,
        shuffle_buffer: 16,
        last_batch: LastBatch::Drop,
    }
}

/// A coordinator of 2 ranks on a thread.
fn coordinator() -> HostedCoordinator {
    spawn_coordinator(
        "127.0.0.1:0",
        CoordinatorConfig {
            world_size: 2,
            token: "job-token".into(),
            heartbeat_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(10),
        },
    )
    .unwrap()
}

fn join(addr: &str, rank: usize) -> (Session, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let s = Session::join(
        addr,
        "job-token",
        2,
        Peer {
            rank,
            host: "127.0.0.1".into(),
            local_rank: rank,
            ring_addr: format!("127.0.0.1:{}", 41000 + rank),
            nccl_id: None,
        },
        Waits {
            join: Duration::from_secs(10),
            heartbeat: Duration::from_millis(100),
            silence: Duration::from_secs(5),
        },
        Box::new(move |why| {
            let _ = tx.lock().unwrap().send(why.to_string());
        }),
    )
    .unwrap();
    (s, rx)
}

fn ask_share(s: &Session, epoch: u64, dataset: &str) -> Message {
    s.request(
        &Message::PlanRequest {
            rank: s.rank(),
            epoch,
            dataset: dataset.into(),
            options: options(),
        },
        Duration::from_secs(10),
    )
    .unwrap()
}

fn progress(rank: usize, epoch: u64, epoch_step: u64, consumed: u64, step: u64) -> Message {
    Message::Progress {
        progress: Progress {
            rank,
            epoch,
            epoch_step,
            consumed,
            step,
            samples: 8,
            seconds: 0.5,
            data_wait_s: 0.1,
        },
    }
}

#[test]
fn ranks_get_their_shares_and_progress_moves_the_job_cursor() {
    let hosted = coordinator();
    let addr = hosted.addr.to_string();
    let start = DataCursor::new(&units("abc"), options(), 0);

    // Rank 1 asks before rank 0 has opened the plan: its answer waits for rank 0's dataset.
    let addr1 = addr.clone();
    let rank1 = thread::spawn(move || {
        let (s, _aborts) = join(&addr1, 1);
        let first = ask_share(&s, 0, "abc");
        (s, first)
    });
    let (s0, _aborts) = join(&addr, 0);
    thread::sleep(Duration::from_millis(200));
    s0.send(&Message::Dataset {
        units: units("abc"),
        start: start.clone(),
    })
    .unwrap();
    let (s1, first1) = rank1.join().unwrap();
    let first0 = ask_share(&s0, 0, "abc");
    for (rank, got) in [(0, first0), (1, first1)] {
        let Message::Share { share } = got else {
            panic!("rank {rank} got {got:?}")
        };
        assert_eq!(
            share,
            start.share(&units("abc"), rank).unwrap(),
            "rank {rank}"
        );
        assert_ne!(share.plan.pieces, Vec::new());
    }

    // Two steps on each rank: the job's cursor is where every rank stands.
    for step in 1..=2 {
        s0.send(&progress(0, 0, step, 8 * step, step)).unwrap();
        s1.send(&progress(1, 0, step, 8 * step, step)).unwrap();
    }
    let cursor_at = |s: &Session, step: u64| match s
        .request(
            &Message::CursorRequest {
                rank: s.rank(),
                step,
            },
            Duration::from_secs(10),
        )
        .unwrap()
    {
        Message::Cursor { cursor: Some(c) } => c,
        other => panic!("{other:?}"),
    };
    let mut expected = start.clone();
    expected.record(0, 16, 1);
    expected.record(1, 16, 1);
    assert_eq!(cursor_at(&s1, 2), expected);
    // A request for a step not reported by every rank yet waits for it.
    let s1 = std::sync::Arc::new(s1);
    let waiting = thread::spawn({
        let s1 = s1.clone();
        move || cursor_at(&s1, 3)
    });
    s1.send(&progress(1, 0, 3, 24, 3)).unwrap();
    thread::sleep(Duration::from_millis(200));
    assert!(
        !waiting.is_finished(),
        "answered before rank 0 reported step 3"
    );
    s0.send(&progress(0, 0, 3, 24, 3)).unwrap();
    expected.record(0, 24, 2);
    expected.record(1, 24, 2);
    assert_eq!(waiting.join().unwrap(), expected);
    let s1 = std::sync::Arc::into_inner(s1).unwrap();

    // The next epoch: a fresh plan for it.
    let Message::Share { share } = ask_share(&s0, 1, "abc") else {
        panic!("no share")
    };
    assert_eq!(share, start.next_epoch().share(&units("abc"), 0).unwrap());

    s0.leave();
    s1.leave();
    let finished = hosted
        .wait(Duration::from_secs(5))
        .expect("the coordinator finished")
        .unwrap();
    assert_eq!(finished.report.steps, 3);
    assert_eq!(finished.report.samples, 48);
    assert_eq!(finished.report.seconds, 1.5);
    assert_eq!(finished.cursor.unwrap().epoch, 1);
}

#[test]
fn a_rank_reading_other_data_fails_the_job_named() {
    let hosted = coordinator();
    let addr = hosted.addr.to_string();
    let addr1 = addr.clone();
    let rank1 = thread::spawn(move || join(&addr1, 1));
    let (s0, aborts0) = join(&addr, 0);
    let (s1, aborts1) = rank1.join().unwrap();
    s0.send(&Message::Dataset {
        units: units("abc"),
        start: DataCursor::new(&units("abc"), options(), 0),
    })
    .unwrap();
    s1.send(&Message::PlanRequest {
        rank: 1,
        epoch: 0,
        dataset: "other".into(),
        options: options(),
    })
    .unwrap();
    let why = aborts0
        .recv_timeout(Duration::from_secs(10))
        .expect("rank 0 is told");
    assert!(
        why.contains("rank 1 failed: rank 1 reads dataset other but rank 0 reads dataset abc"),
        "{why}"
    );
    // The failing rank is told too (it may be waiting for its share).
    let why1 = aborts1
        .recv_timeout(Duration::from_secs(10))
        .expect("rank 1 is told");
    assert!(why1.contains("rank 1 failed"), "{why1}");
    match hosted.wait(Duration::from_secs(5)).expect("finished") {
        Err(RendezvousError::RankFailed { rank: 1, reason }) => {
            assert!(reason.contains("reads dataset other"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    drop((s0, s1));
}

//! weft-collective's TCP ring on 127.0.0.1, one thread per rank: every operation against its
//! definition on awkward sizes (fewer elements than ranks, segments much smaller than chunks),
//! identical results on every rank, a refused job token, strangers (silent, guessing or from
//! another address) that neither join nor delay the ring, and a dead or silent peer.

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_collective::{Collective, CollectiveError, ReduceOp, RingConfig, SingleRank, TcpRing};

/// Runs `f(rank, ring)` on `world` ranks joined into a ring (tokens from `token`), one thread
/// each, and returns what each returned, in rank order.
fn on_ring<T: Send + 'static>(
    world: usize,
    segment_bytes: usize,
    token: impl Fn(usize) -> String,
    f: impl Fn(usize, Result<TcpRing, CollectiveError>) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let configure = |rank, config: RingConfig| RingConfig {
        token: token(rank),
        ..config.with_segment_bytes(segment_bytes)
    };
    on_ring_with(world, configure, f)
}

/// [`on_ring`] with `configure` applied to each rank's config (token "job-1", 3 s timeout).
fn on_ring_with<T: Send + 'static>(
    world: usize,
    configure: impl Fn(usize, RingConfig) -> RingConfig,
    f: impl Fn(usize, Result<TcpRing, CollectiveError>) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let listeners: Vec<TcpListener> = (0..world)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let config = RingConfig::new(rank, world, addrs[(rank + 1) % world], "job-1")
                .with_timeout(Duration::from_secs(3));
            let config = configure(rank, config);
            let f = f.clone();
            thread::spawn(move || f(rank, TcpRing::connect(config, &listener)))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn same_token(_: usize) -> String {
    "job-1".into()
}

/// Small integers, so that sums are exact in any order.
fn ints(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.random_range(-1000..1000) as f32)
        .collect()
}

#[test]
fn all_reduce_gives_every_rank_the_reduction() {
    for world in [2, 3, 4] {
        for len in [0, 1, 3, 5, 1000, 4099] {
            for segment in [8, 4096] {
                let results = on_ring(world, segment, same_token, move |rank, ring| {
                    let mut ring = ring.unwrap();
                    let mut out = Vec::new();
                    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
                        let mut buf = ints(rank as u64, len);
                        ring.all_reduce(&mut buf, op).unwrap();
                        out.push(buf);
                    }
                    out
                });
                let inputs: Vec<Vec<f32>> = (0..world).map(|r| ints(r as u64, len)).collect();
                let fold = |f: fn(f32, f32) -> f32| -> Vec<f32> {
                    (0..len)
                        .map(|i| inputs.iter().map(|v| v[i]).reduce(f).unwrap())
                        .collect()
                };
                let sum = fold(|a, b| a + b);
                let mean: Vec<f32> = sum.iter().map(|s| s / world as f32).collect();
                let want = [sum, mean, fold(f32::max), fold(f32::min)];
                for (rank, got) in results.iter().enumerate() {
                    for (op, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g, w,
                            "world {world}, len {len}, segment {segment}, rank {rank}, op {op}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_rank_gets_the_same_bits() {
    let results = on_ring(3, 256, same_token, |rank, ring| {
        let mut ring = ring.unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(10 + rank as u64);
        let mut buf: Vec<f32> = (0..10_007).map(|_| rng.random::<f32>() * 1e-3).collect();
        ring.all_reduce(&mut buf, ReduceOp::Mean).unwrap();
        buf
    });
    assert!(results.iter().all(|r| r == &results[0]));
    assert!(results[0].iter().any(|v| *v != 0.0));
}

#[test]
fn nan_on_one_rank_reaches_every_rank_through_max() {
    let results = on_ring(3, 64, same_token, |rank, ring| {
        let mut ring = ring.unwrap();
        let mut buf = vec![rank as f32; 7];
        if rank == 2 {
            buf[4] = f32::NAN;
        }
        ring.all_reduce(&mut buf, ReduceOp::Max).unwrap();
        buf
    });
    for r in results {
        assert!(r[4].is_nan());
        assert_eq!(r[0], 2.0);
    }
}

#[test]
fn all_gather_broadcast_and_barrier() {
    for world in [2, 3, 5] {
        let results = on_ring(world, 12, same_token, move |rank, ring| {
            let mut ring = ring.unwrap();
            let send = ints(100 + rank as u64, 9);
            let mut gathered = vec![0.0; 9 * world];
            ring.all_gather(&send, &mut gathered).unwrap();
            let mut roots = Vec::new();
            for root in 0..world {
                let mut buf = if rank == root {
                    ints(200 + root as u64, 33)
                } else {
                    vec![0.0; 33]
                };
                ring.broadcast(&mut buf, root).unwrap();
                roots.push(buf);
            }
            ring.barrier().unwrap();
            (gathered, roots)
        });
        let want_gather: Vec<f32> = (0..world).flat_map(|r| ints(100 + r as u64, 9)).collect();
        for (rank, (gathered, roots)) in results.iter().enumerate() {
            assert_eq!(gathered, &want_gather, "world {world}, rank {rank}");
            for (root, buf) in roots.iter().enumerate() {
                assert_eq!(buf, &ints(200 + root as u64, 33), "broadcast from {root}");
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors_that_name_the_operation() {
    let results = on_ring(2, 64, same_token, |_, ring| {
        let mut ring = ring.unwrap();
        let gather = ring.all_gather(&[1.0; 3], &mut [0.0; 5]).unwrap_err();
        let root = ring.broadcast(&mut [0.0; 3], 2).unwrap_err();
        (gather.to_string(), root.to_string())
    });
    for (gather, root) in results {
        assert!(gather.contains("all-gather"), "{gather}");
        assert!(root.contains("root 2"), "{root}");
    }
    let mut one = SingleRank;
    let mut buf = [1.0, 2.0];
    one.all_reduce(&mut buf, ReduceOp::Mean).unwrap();
    assert_eq!(buf, [1.0, 2.0]);
    let mut out = [0.0; 2];
    one.all_gather(&buf, &mut out).unwrap();
    assert_eq!(out, buf);
    assert!(one.broadcast(&mut buf, 1).is_err());
}

#[test]
fn a_rank_with_another_token_is_refused() {
    let results = on_ring(
        2,
        64,
        |rank| {
            if rank == 1 {
                "other-job".into()
            } else {
                "job-1".into()
            }
        },
        |_, ring| ring.map(|_| ()).unwrap_err().to_string(),
    );
    // Rank 0 is refused by rank 1 (or gives up waiting for a rank 1 with its token); rank 1
    // likewise.
    assert!(results[0].contains("rank 1"), "{}", results[0]);
    assert!(results[1].contains("rank 0"), "{}", results[1]);
    assert!(
        results
            .iter()
            .any(|r| r.contains("refused") || r.contains("token")),
        "{results:?}"
    );
}

#[test]
fn a_silent_connection_and_a_stranger_neither_delay_nor_join_the_ring() {
    use std::io::{Read, Write};
    let listeners: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    // Before the ranks start: one connection that says nothing, and one that greets as rank 0
    // with a nonce and then cannot prove the token.
    let _silent = std::net::TcpStream::connect(addrs[1]).unwrap();
    let mut stranger = std::net::TcpStream::connect(addrs[1]).unwrap();
    let mut hello = b"WEFTRNG2".to_vec();
    hello.extend_from_slice(&2u32.to_le_bytes());
    hello.extend_from_slice(&0u32.to_le_bytes());
    hello.extend_from_slice(&[7u8; 32]);
    stranger.write_all(&hello).unwrap();
    let start = Instant::now();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let config = RingConfig::new(rank, 2, addrs[(rank + 1) % 2], "job-1")
                .with_timeout(Duration::from_secs(30));
            thread::spawn(move || {
                let mut ring = TcpRing::connect(config, &listener).unwrap();
                let mut v = vec![rank as f32 + 1.0; 3];
                ring.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                v
            })
        })
        .collect();
    // The stranger's answer: go on, a nonce and the acceptor's proof; its own proof is wrong.
    let mut answer = [0u8; 65];
    stranger.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], 1);
    stranger.write_all(&[0u8; 32]).unwrap();
    let mut verdict = [9u8; 1];
    stranger.read_exact(&mut verdict).unwrap();
    assert_eq!(verdict[0], 0, "the stranger was refused");
    for h in handles {
        assert_eq!(h.join().unwrap(), vec![3.0; 3]);
    }
    // Formed long before the silent connection's bound (5 s), let alone the timeout.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_connection_from_another_address_than_the_rank_tables_is_refused() {
    // Rank 0 connects from 127.0.0.1; rank 1's rank table says rank 0 is at 127.0.0.2.
    let configure = |rank, config: RingConfig| {
        let here = "127.0.0.1".parse().unwrap();
        if rank == 1 {
            config.with_addresses(here, "127.0.0.2".parse().unwrap())
        } else {
            config.with_addresses(here, here)
        }
    };
    let results = on_ring_with(2, configure, |_, ring| {
        ring.map(|_| ()).map_err(|e| e.to_string())
    });
    let rank1 = results[1].as_ref().unwrap_err();
    assert!(rank1.contains("whose address is 127.0.0.2"), "{rank1}");
}

#[test]
fn a_dead_peer_is_named_and_a_silent_one_times_out() {
    // Rank 1 leaves right after the ring forms: rank 0's all-reduce fails naming rank 1.
    let results = on_ring(2, 64, same_token, |rank, ring| {
        let mut ring = ring.unwrap();
        if rank == 1 {
            drop(ring);
            return None;
        }
        let start = Instant::now();
        let err = ring
            .all_reduce(&mut vec![1.0; 100_000], ReduceOp::Sum)
            .unwrap_err();
        let second = ring.barrier().unwrap_err();
        Some((err, second, start.elapsed()))
    });
    let (err, second, took) = results[0].as_ref().unwrap();
    assert!(
        matches!(
            err,
            CollectiveError::PeerClosed {
                rank: 0,
                peer: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(took < &Duration::from_secs(3), "{took:?}");
    assert!(second.to_string().contains("broke"), "{second}");

    // Rank 2 of 3 stays connected but never calls: the others time out naming a neighbour.
    let results = on_ring(3, 64, same_token, |rank, ring| {
        let mut ring = ring.unwrap();
        if rank == 2 {
            thread::sleep(Duration::from_secs(4));
            return None;
        }
        Some(ring.all_reduce(&mut [1.0; 30], ReduceOp::Sum).unwrap_err())
    });
    let e0 = results[0].as_ref().unwrap();
    assert!(
        matches!(
            e0,
            CollectiveError::Timeout {
                rank: 0,
                peer: 2,
                ..
            }
        ),
        "{e0}"
    );
    assert!(e0.to_string().contains("timed out"), "{e0}");
}

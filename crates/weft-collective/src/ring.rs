//! [`TcpRing`]: every rank connected to the next one over TCP, and the ring algorithms.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::handshake::{form, Ring};
use crate::{check_gather, check_root, Collective, CollectiveError, ReduceOp};

/// Segments of the first chunk queued ahead of the receives.
const AHEAD: usize = 4;

/// How one rank joins a [`TcpRing`].
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// This rank, `0..world_size`.
    pub rank: usize,
    /// Ranks in the ring.
    pub world_size: usize,
    /// Where the next rank (`(rank + 1) % world_size`) listens.
    pub next: SocketAddr,
    /// The job token: a peer that cannot prove it holds it is refused (it never travels).
    pub token: String,
    /// The address this rank's connection to the next one leaves from (the rank table's);
    /// `None`: the one the system picks.
    pub local_ip: Option<IpAddr>,
    /// The address the previous rank's connection must come from (the rank table's); `None`:
    /// any.
    pub prev_ip: Option<IpAddr>,
    /// The bound of every wait: forming the ring, and each read or write of an operation.
    pub timeout: Duration,
    /// Bytes per pipelined segment of a transfer.
    pub segment_bytes: usize,
}

impl RingConfig {
    /// A config with a 60 s timeout and 512 KiB segments.
    pub fn new(rank: usize, world_size: usize, next: SocketAddr, token: impl Into<String>) -> Self {
        Self {
            rank,
            world_size,
            next,
            token: token.into(),
            local_ip: None,
            prev_ip: None,
            timeout: Duration::from_secs(60),
            segment_bytes: 512 << 10,
        }
    }

    /// Sets [`Self::timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`Self::local_ip`] and [`Self::prev_ip`], the rank table's addresses of this rank
    /// and of the previous one.
    pub fn with_addresses(mut self, local: IpAddr, prev: IpAddr) -> Self {
        self.local_ip = Some(local);
        self.prev_ip = Some(prev);
        self
    }

    /// Sets [`Self::segment_bytes`] (at least 4).
    pub fn with_segment_bytes(mut self, bytes: usize) -> Self {
        self.segment_bytes = bytes.max(4);
        self
    }
}

/// The ranks of a job in a ring over TCP: each sends to the next rank and receives from the
/// previous one, on two connections formed by [`TcpRing::connect`].
///
/// All-reduce is a reduce-scatter followed by an all-gather, `N − 1` steps each: the buffer is
/// cut into `N` chunks; at every step a rank sends one chunk to the next rank while it receives
/// another from the previous one and folds it into its own. Each chunk travels in segments
/// ([`RingConfig::segment_bytes`]) through a sender thread, so a rank forwards a segment as soon
/// as it has folded it, while the next one is still arriving. The result is the same on every
/// rank and, for a given number of ranks, the same from run to run (every element is folded in
/// a fixed order).
///
/// After a failed operation the ring is broken: later calls fail at once.
#[derive(Debug)]
pub struct TcpRing {
    rank: usize,
    world: usize,
    next: TcpStream,
    prev: TcpStream,
    timeout: Duration,
    segment: usize,
    broken: Option<String>,
    /// Segment buffers kept from one transfer to the next (a fresh one is a fresh mapping,
    /// page-faulted in again).
    spare: Vec<Vec<u8>>,
}

/// One receive of a transfer plan.
struct Recv {
    /// Elements of the buffer that arrive.
    range: Range<usize>,
    /// Fold into the buffer with this op (`None`: overwrite).
    fold: Option<ReduceOp>,
    /// Divide the folded values by this afterwards (a mean).
    divide_by: Option<f32>,
    /// Send the result on to the next rank.
    forward: bool,
}

impl TcpRing {
    /// Joins the ring: connects to the next rank at `config.next` and accepts the previous
    /// rank on `listener` (where the previous rank's `next` points), at the same time. Each
    /// side proves to the other that it holds the job token, over fresh nonces of both
    /// (`handshake`); the accepting side also checks the world size, the rank and the address
    /// of the rank table. A connection that fails the checks is refused and the wait goes on; a
    /// silent one never delays it. Every rank calls this at about the same time; it fails after
    /// `config.timeout`.
    pub fn connect(config: RingConfig, listener: &TcpListener) -> Result<Self, CollectiveError> {
        let RingConfig {
            rank,
            world_size: world,
            next,
            token,
            local_ip,
            prev_ip,
            timeout,
            segment_bytes,
        } = config;
        let setup = |reason: String| CollectiveError::Setup { rank, reason };
        if world < 2 || rank >= world {
            return Err(setup(format!(
                "a ring needs at least 2 ranks and a rank below them (rank {rank} of {world})"
            )));
        }
        let ring = Ring {
            rank,
            world,
            token,
            local_ip,
            prev_ip,
        };
        let (out, inc) = form(&ring, next, listener, Instant::now() + timeout).map_err(setup)?;
        for s in [&out, &inc] {
            s.set_nodelay(true)
                .and_then(|()| s.set_read_timeout(Some(timeout)))
                .and_then(|()| s.set_write_timeout(Some(timeout)))
                .map_err(|e| setup(format!("socket options: {e}")))?;
        }
        Ok(Self {
            rank,
            world,
            next: out,
            prev: inc,
            timeout,
            segment: (segment_bytes / 4).max(1),
            broken: None,
            spare: Vec::new(),
        })
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Chunk `c` of `len` elements cut into `world` nearly equal chunks.
    fn chunk(&self, c: usize, len: usize) -> Range<usize> {
        let n = self.world;
        (c * len / n)..((c + 1) * len / n)
    }

    /// `i mod world` for a possibly negative `i`.
    fn wrap(&self, i: isize) -> usize {
        i.rem_euclid(self.world as isize) as usize
    }

    /// Runs one transfer: sends `first` (if any) to the next rank, then takes each receive
    /// from the previous rank in turn, folding or copying it into `buf` and forwarding it when
    /// asked, segment by segment. The sends of a receive are the same ranges as the next rank's
    /// receives, so both sides cut them into the same segments.
    fn transfer(
        &mut self,
        op: &'static str,
        buf: &mut [f32],
        first: Option<Range<usize>>,
        recvs: &[Recv],
    ) -> Result<(), CollectiveError> {
        if let Some(why) = &self.broken {
            return Err(CollectiveError::Invalid {
                rank: self.rank,
                op,
                reason: format!("the ring broke earlier ({why})"),
            });
        }
        let (rank, timeout, seg) = (self.rank, self.timeout, self.segment);
        let (next_rank, prev_rank) = (self.next_rank(), self.prev_rank());
        let (next, prev) = (&mut self.next, &mut self.prev);
        let spare = std::cell::RefCell::new(std::mem::take(&mut self.spare));
        let result = std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<Vec<u8>>();
            let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
            let sender = scope.spawn(move || -> std::io::Result<()> {
                for bytes in rx {
                    next.write_all(&bytes)?;
                    // The receiver may be gone after an error: nothing to recycle then.
                    let _ = back_tx.send(bytes);
                }
                Ok(())
            });
            // Buffers handed to the sender and not yet taken back.
            let in_flight = std::cell::Cell::new(0usize);
            let send = |values: &[f32]| {
                let mut bytes = match back_rx.try_recv() {
                    Ok(b) => {
                        in_flight.set(in_flight.get() - 1);
                        b
                    }
                    Err(_) => spare.borrow_mut().pop().unwrap_or_default(),
                };
                in_flight.set(in_flight.get() + 1);
                bytes.clear();
                bytes.extend_from_slice(bytemuck::cast_slice(values));
                // A closed channel means the sender failed; its error is reported below.
                let _ = tx.send(bytes);
            };
            // The first chunk goes out a few segments ahead of the receives (not all at once:
            // that would copy it whole into the queue), and before any forward: the next rank
            // takes it in order. Forwards that come due before it is all queued wait here.
            let mut initial = first.into_iter().flat_map(|r| segments(r, seg));
            for s in initial.by_ref().take(AHEAD) {
                send(&buf[s]);
            }
            let mut initial = initial.peekable();
            let mut deferred: Vec<Range<usize>> = Vec::new();
            let received = receive(recvs, seg, buf, prev, &mut initial, &mut deferred, &send);
            // Only sends are left (a broadcast's root): no receive can be starved now, so wait
            // for the sender to free a buffer before copying the next segment.
            if received.is_ok() {
                'sends: for i in initial {
                    while in_flight.get() >= 2 * AHEAD {
                        // Err: the sender stopped (its error is reported below).
                        if back_rx.recv().is_err() {
                            break 'sends;
                        }
                        in_flight.set(in_flight.get() - 1);
                    }
                    send(&buf[i]);
                }
                for d in deferred {
                    send(&buf[d]);
                }
            }
            drop(tx);
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the sender thread panicked")));
            spare.borrow_mut().extend(back_rx.try_iter());
            match (sent, received) {
                (Err(e), _) => Err(CollectiveError::from_io(rank, next_rank, op, timeout, e)),
                (Ok(()), Err(e)) => Err(CollectiveError::from_io(rank, prev_rank, op, timeout, e)),
                (Ok(()), Ok(())) => Ok(()),
            }
        });
        self.spare = spare.into_inner();
        if let Err(e) = &result {
            self.broken = Some(e.to_string());
        }
        result
    }
}

/// `r` cut into segments of `seg` elements (the last one shorter).
fn segments(r: Range<usize>, seg: usize) -> impl Iterator<Item = Range<usize>> {
    (r.start..r.end)
        .step_by(seg)
        .map(move |s| s..(s + seg).min(r.end))
}

/// The receives of one transfer, in order: each segment read from the previous rank into
/// `buf` (or folded into it), then sent on when its receive says so. The segments of the first
/// chunk still waiting in `initial` go first, one per receive (the next rank takes them in
/// order): a forward that comes due before they are all queued waits in `deferred`.
fn receive<I: Iterator<Item = Range<usize>>>(
    recvs: &[Recv],
    seg: usize,
    buf: &mut [f32],
    prev: &mut TcpStream,
    initial: &mut std::iter::Peekable<I>,
    deferred: &mut Vec<Range<usize>>,
    send: &dyn Fn(&[f32]),
) -> std::io::Result<()> {
    let mut scratch: Vec<f32> = Vec::new();
    for recv in recvs {
        for s in segments(recv.range.clone(), seg) {
            if let Some(i) = initial.next() {
                send(&buf[i]);
            }
            match recv.fold {
                None => prev.read_exact(bytemuck::cast_slice_mut(&mut buf[s.clone()]))?,
                Some(fold) => {
                    scratch.resize(s.len(), 0.0);
                    prev.read_exact(bytemuck::cast_slice_mut(&mut scratch[..]))?;
                    fold.fold(&mut buf[s.clone()], &scratch);
                    if let Some(n) = recv.divide_by {
                        buf[s.clone()].iter_mut().for_each(|v| *v /= n);
                    }
                }
            }
            if recv.forward {
                if initial.peek().is_some() {
                    deferred.push(s);
                } else {
                    for d in deferred.drain(..) {
                        send(&buf[d]);
                    }
                    send(&buf[s]);
                }
            }
        }
    }
    Ok(())
}

impl Collective for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CollectiveError> {
        let (n, r, len) = (self.world, self.rank as isize, buf.len());
        let mut recvs = Vec::with_capacity(2 * (n - 1));
        // Reduce-scatter: step t sends chunk r − t and folds chunk r − t − 1; after N − 1
        // steps this rank holds the whole reduction of chunk r + 1.
        for t in 0..n - 1 {
            let last = t == n - 2;
            recvs.push(Recv {
                range: self.chunk(self.wrap(r - t as isize - 1), len),
                fold: Some(op),
                divide_by: (last && op == ReduceOp::Mean).then_some(n as f32),
                forward: true,
            });
        }
        // All-gather: step s sends chunk r + 1 − s and receives chunk r − s.
        for s in 0..n - 1 {
            recvs.push(Recv {
                range: self.chunk(self.wrap(r - s as isize), len),
                fold: None,
                divide_by: None,
                forward: s + 1 < n - 1,
            });
        }
        let first = self.chunk(self.rank, len);
        self.transfer("all-reduce", buf, Some(first), &recvs)
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CollectiveError> {
        let (n, r) = (self.world, self.rank as isize);
        check_gather(self.rank, n, send, recv)?;
        let m = send.len();
        let block = |c: usize| (c * m)..((c + 1) * m);
        recv[block(self.rank)].copy_from_slice(send);
        // Step s sends block r − s and receives block r − s − 1.
        let recvs: Vec<Recv> = (0..n - 1)
            .map(|s| Recv {
                range: block(self.wrap(r - s as isize - 1)),
                fold: None,
                divide_by: None,
                forward: s + 1 < n - 1,
            })
            .collect();
        self.transfer("all-gather", recv, Some(block(self.rank)), &recvs)
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        let n = self.world;
        check_root(self.rank, n, root)?;
        // A chain from the root along the ring, forwarded segment by segment.
        let position = (self.rank + n - root) % n;
        let all = 0..buf.len();
        if position == 0 {
            self.transfer("broadcast", buf, Some(all), &[])
        } else {
            let recv = Recv {
                range: all,
                fold: None,
                divide_by: None,
                forward: position + 1 < n,
            };
            self.transfer("broadcast", buf, None, &[recv])
        }
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        // One element per rank, so that every step of the ring carries data and every rank
        // waits for every other.
        let mut token = vec![0.0f32; self.world];
        self.all_reduce(&mut token, ReduceOp::Sum)
    }
}

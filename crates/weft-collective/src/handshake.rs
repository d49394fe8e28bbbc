//! How two neighbours of a [`crate::TcpRing`] know each other before a float crosses: the
//! connecting rank (the previous one) and the accepting rank (the next one) each prove that they
//! hold the job token over both sides' fresh nonces ([`crate::auth`]), and the accepting rank
//! checks that the connection comes from the address the rank table gives its previous rank.
//!
//! The exchange, after the connection:
//! 1. connector → acceptor: magic, world size, rank, nonce C (48 bytes);
//! 2. acceptor → connector: 1 (go on) or 0 (refused: wrong ring, rank or address), then nonce A
//!    and the acceptor's proof over (world, rank, C, A);
//! 3. connector → acceptor: the connector's proof over the same parts;
//! 4. acceptor → connector: 1 (accepted) or 0.
//!
//! The acceptor handles every connection on its own thread with a short bound
//! ([`HELLO_TIMEOUT`]), so that a silent or slow stranger never delays the ring, and at most
//! [`MAX_PENDING`] at a time.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::auth::{nonce, prove, verify, PROOF_LEN};

/// First bytes of a ring connection (the version is the last byte).
const MAGIC: &[u8; 8] = b"WEFTRNG2";
/// Magic, world size, rank, nonce.
const HELLO_LEN: usize = 8 + 4 + 4 + PROOF_LEN;
const GO_ON: u8 = 1;
const REFUSED: u8 = 0;
const ACCEPTOR: &str = "weft ring acceptor";
const CONNECTOR: &str = "weft ring connector";
/// The longest an accepted connection may take to complete its side of the exchange.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections whose exchange is under way at once; more are closed at once.
pub(crate) const MAX_PENDING: usize = 16;

/// One side's view of the ring it forms.
#[derive(Clone)]
pub(crate) struct Ring {
    pub rank: usize,
    pub world: usize,
    pub token: String,
    /// The address this rank connects from (the rank table's), when known.
    pub local_ip: Option<IpAddr>,
    /// The address the previous rank must connect from, when known.
    pub prev_ip: Option<IpAddr>,
}

impl Ring {
    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// The proof parts of a connection from `rank` with the nonces `c` and `a`.
    fn proof(&self, label: &str, rank: usize, c: &[u8], a: &[u8]) -> [u8; PROOF_LEN] {
        let (w, r) = (
            (self.world as u32).to_le_bytes(),
            (rank as u32).to_le_bytes(),
        );
        prove(&self.token, label, &[&w, &r, c, a])
    }

    fn verifies(&self, label: &str, rank: usize, c: &[u8], a: &[u8], proof: &[u8]) -> bool {
        let (w, r) = (
            (self.world as u32).to_le_bytes(),
            (rank as u32).to_le_bytes(),
        );
        verify(&self.token, label, &[&w, &r, c, a], proof)
    }
}

/// Forms this rank's two connections: to the next rank at `next` (its outgoing one) and from
/// the previous rank on `listener` (its incoming one), both authenticated, by `deadline`.
pub(crate) fn form(
    ring: &Ring,
    next: SocketAddr,
    listener: &TcpListener,
    deadline: Instant,
) -> Result<(TcpStream, TcpStream), String> {
    // Both at once: the next rank answers our proof only while it also waits for its own
    // previous rank, all around the ring.
    std::thread::scope(|scope| {
        let out = scope.spawn(|| connect(ring, next, deadline));
        let inc = accept(ring, listener, deadline);
        let out = out
            .join()
            .unwrap_or_else(|_| Err("the connecting thread panicked".into()));
        Ok((out?, inc?))
    })
}

/// The connector's side: connects to the next rank and proves the token.
fn connect(ring: &Ring, next: SocketAddr, deadline: Instant) -> Result<TcpStream, String> {
    let next_rank = ring.next_rank();
    let at = |what: String| format!("rank {next_rank} at {next} {what}");
    let mut s = connect_until(next, ring.local_ip, deadline)
        .map_err(|e| at(format!("is unreachable: {e}")))?;
    let left = deadline.saturating_duration_since(Instant::now());
    s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| at(e.to_string()))?;
    let c = nonce();
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(ring.world as u32).to_le_bytes());
    hello.extend_from_slice(&(ring.rank as u32).to_le_bytes());
    hello.extend_from_slice(&c);
    s.write_all(&hello)
        .map_err(|e| at(format!("cannot be greeted: {e}")))?;
    let mut answer = [0u8; 1 + 2 * PROOF_LEN];
    s.read_exact(&mut answer[..1])
        .map_err(|e| at(format!("did not answer: {e}")))?;
    if answer[0] != GO_ON {
        return Err(at(
            "refused the connection (another ring, or this host is not the rank table's)".into(),
        ));
    }
    s.read_exact(&mut answer[1..])
        .map_err(|e| at(format!("did not answer: {e}")))?;
    let (a, theirs) = answer[1..].split_at(PROOF_LEN);
    if !ring.verifies(ACCEPTOR, ring.rank, &c, a, theirs) {
        return Err(at(
            "cannot prove the job token: another job listens there".into()
        ));
    }
    s.write_all(&ring.proof(CONNECTOR, ring.rank, &c, a))
        .map_err(|e| at(format!("cannot be answered: {e}")))?;
    let mut done = [0u8; 1];
    s.read_exact(&mut done)
        .map_err(|e| at(format!("did not answer: {e}")))?;
    if done[0] != GO_ON {
        return Err(at("refused the connection (another job token)".into()));
    }
    Ok(s)
}

/// The acceptor's side: takes connections on `listener` until one proves to be the previous
/// rank, each checked on its own thread.
fn accept(ring: &Ring, listener: &TcpListener, deadline: Instant) -> Result<TcpStream, String> {
    let prev = ring.prev_rank();
    let (tx, rx) = mpsc::channel();
    let (mut pending, mut refused) = (0usize, Vec::<String>::new());
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        while let Ok(result) = rx.try_recv() {
            pending -= 1;
            match result {
                Ok(s) => return Ok(s),
                Err(why) => refused.push(why),
            }
        }
        if Instant::now() >= deadline {
            let refused = if refused.is_empty() {
                String::new()
            } else {
                format!("; refused: {}", refused.join("; "))
            };
            return Err(format!("rank {prev} did not connect in time{refused}"));
        }
        match listener.accept() {
            Ok((s, addr)) if pending < MAX_PENDING => {
                pending += 1;
                let (ring, tx) = (ring.clone(), tx.clone());
                std::thread::spawn(move || {
                    let _ = tx.send(check(&ring, s, addr));
                });
            }
            Ok((_, addr)) => refused.push(format!("{addr}: too many connections at once")),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Out of file descriptors, or a connection reset before it was taken: wait, go on.
            Err(e) => {
                refused.push(format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One connection to the acceptor, within [`HELLO_TIMEOUT`]: the previous rank, proven.
fn check(ring: &Ring, mut s: TcpStream, addr: SocketAddr) -> Result<TcpStream, String> {
    let prev = ring.prev_rank();
    s.set_nonblocking(false)
        .and_then(|()| s.set_read_timeout(Some(HELLO_TIMEOUT)))
        .and_then(|()| s.set_write_timeout(Some(HELLO_TIMEOUT)))
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut hello = [0u8; HELLO_LEN];
    s.read_exact(&mut hello)
        .map_err(|e| format!("{addr}: no greeting within {HELLO_TIMEOUT:?} ({e})"))?;
    if let Err(why) = check_hello(&hello, ring, addr) {
        let _ = s.write_all(&[REFUSED]);
        return Err(why);
    }
    let c = &hello[16..];
    let a = nonce();
    let mut answer = vec![GO_ON];
    answer.extend_from_slice(&a);
    answer.extend_from_slice(&ring.proof(ACCEPTOR, prev, c, &a));
    s.write_all(&answer).map_err(|e| format!("{addr}: {e}"))?;
    let mut theirs = [0u8; PROOF_LEN];
    s.read_exact(&mut theirs)
        .map_err(|e| format!("{addr}: no proof within {HELLO_TIMEOUT:?} ({e})"))?;
    if !ring.verifies(CONNECTOR, prev, c, &a, &theirs) {
        let _ = s.write_all(&[REFUSED]);
        return Err(format!("{addr}: cannot prove the job token"));
    }
    s.write_all(&[GO_ON]).map_err(|e| format!("{addr}: {e}"))?;
    Ok(s)
}

/// Checks a greeting from `addr`, which should be the previous rank of the ring, from the
/// address of the rank table.
fn check_hello(hello: &[u8; HELLO_LEN], ring: &Ring, addr: SocketAddr) -> Result<(), String> {
    if &hello[..8] != MAGIC {
        return Err(format!("{addr}: not a weft ring connection"));
    }
    let word =
        |at: usize| u32::from_le_bytes([hello[at], hello[at + 1], hello[at + 2], hello[at + 3]]);
    let (their_world, their_rank) = (word(8) as usize, word(12) as usize);
    let prev = ring.prev_rank();
    if their_world != ring.world || their_rank != prev {
        return Err(format!(
            "{addr}: rank {their_rank} of {their_world}, expected rank {prev} of {}",
            ring.world
        ));
    }
    if let Some(ip) = ring.prev_ip.filter(|ip| *ip != addr.ip()) {
        return Err(format!(
            "{addr}: claims to be rank {prev}, whose address is {ip}"
        ));
    }
    Ok(())
}

/// Connects to `addr` (from `local`, when given), retrying while nobody listens there yet,
/// until `deadline`.
pub(crate) fn connect_until(
    addr: SocketAddr,
    local: Option<IpAddr>,
    deadline: Instant,
) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if let Some(ip) = local {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match socket.connect_timeout(&addr.into(), left.max(Duration::from_millis(1))) {
            Ok(()) => return Ok(socket.into()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_millis(20).min(left));
            }
            Err(e) => return Err(e),
        }
    }
}

//! A worker's side of the rendezvous: its [`Session`] with the coordinator (the join, the
//! heartbeat and watcher threads, requests and checkpoint commits).

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::RendezvousError;
use weft_collective::auth::{hex, nonce as new_nonce};

use super::protocol::{
    coordinator_verifies, encode, join_proof, kind, read_sync, Message, Peer, MAX_JOB_MESSAGE,
    MAX_MESSAGE,
};

/// A worker's session with the coordinator: the rank table, a heartbeat thread, a thread
/// that watches for aborts and takes the answers to [`Session::request`].
pub struct Session {
    /// Every rank of the job, by rank.
    pub peers: Vec<Peer>,
    rank: usize,
    addr: String,
    stream: TcpStream,
    writer: Arc<Mutex<TcpStream>>,
    /// Answers to requests; held through a request, so requests take turns.
    answers: Mutex<std::sync::mpsc::Receiver<Message>>,
    /// Outcomes of checkpoint commits (they come while other requests go on).
    commits: Mutex<std::sync::mpsc::Receiver<Message>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// The bounds of a session's waits.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// For the coordinator and every other rank to join.
    pub join: Duration,
    /// Between two heartbeats of this rank.
    pub heartbeat: Duration,
    /// The longest the coordinator may stay silent (it heartbeats at a quarter of its
    /// heartbeat timeout, at least every second).
    pub silence: Duration,
}

/// What a worker does when the job ends under it: the coordinator's abort (naming the dead rank
/// when there is one), or the coordinator gone. `weft` logs it and exits non-zero.
pub type OnAbort = Box<dyn Fn(&str) + Send + Sync>;

impl Session {
    /// Joins the job at `addr` as `peer`, waiting up to `waits.join` for the coordinator and
    /// for every other rank, then heartbeats every `waits.heartbeat` until [`Session::leave`].
    /// `on_abort` runs (once) when the coordinator aborts the job, disappears, or sends nothing
    /// for `waits.silence` (it heartbeats too).
    pub fn join(
        addr: &str,
        token: &str,
        world_size: usize,
        peer: Peer,
        waits: Waits,
        on_abort: OnAbort,
    ) -> Result<Self, RendezvousError> {
        let Waits {
            join: timeout,
            heartbeat: interval,
            silence,
        } = waits;
        let rank = peer.rank;
        let err = |reason: String| RendezvousError::Coordinator {
            addr: addr.to_string(),
            reason,
        };
        let deadline = Instant::now() + timeout;
        // A coordinator that closes a connection before its challenge is busy (too many
        // connections at once): connect again until the deadline.
        let (stream, peers) = loop {
            let mut stream = connect_until(addr, deadline)
                .map_err(|e| err(format!("unreachable for {timeout:?}: {e}")))?;
            let left = deadline.saturating_duration_since(Instant::now());
            stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| err(e.to_string()))?;
            match handshake(&mut stream, token, world_size, peer.clone()) {
                Ok(peers) => break (stream, peers),
                Err(Handshake::Closed(why)) if Instant::now() < deadline => {
                    tracing::debug!("coordinator at {addr} closed before its challenge: {why}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(Handshake::Closed(why)) => {
                    return Err(err(format!("no challenge within {timeout:?}: {why}")))
                }
                Err(Handshake::Refused(reason)) => {
                    return Err(RendezvousError::Refused {
                        addr: addr.to_string(),
                        rank,
                        reason,
                    })
                }
                Err(Handshake::Failed(reason)) => return Err(err(reason)),
            }
        };
        stream
            .set_read_timeout(Some(silence.max(Duration::from_millis(1))))
            .map_err(|e| err(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let on_abort = Arc::new(on_abort);
        let mut reader = stream.try_clone().map_err(|e| err(e.to_string()))?;
        let writer = Arc::new(Mutex::new(
            stream.try_clone().map_err(|e| err(e.to_string()))?,
        ));
        let (answer_tx, answers) = std::sync::mpsc::channel();
        let (commit_tx, commits) = std::sync::mpsc::channel();
        let (stop_r, stop_w, beat_writer) = (stop.clone(), stop.clone(), writer.clone());
        let watch = std::thread::spawn(move || {
            let why = loop {
                let asked = Instant::now();
                match read_sync(&mut reader, MAX_JOB_MESSAGE) {
                    Ok(Message::Alive) => {}
                    Ok(Message::Abort { reason, .. }) => break reason,
                    Ok(m @ (Message::Share { .. } | Message::Cursor { .. })) => {
                        let _ = answer_tx.send(m);
                    }
                    Ok(m @ Message::Committed { .. }) => {
                        let _ = commit_tx.send(m);
                    }
                    Ok(other) => {
                        break format!("the coordinator sent an unexpected {}", kind(&other))
                    }
                    Err(_) if asked.elapsed() >= silence => {
                        break format!(
                            "the coordinator sent nothing for {silence:?} (stopped, or unreachable)"
                        )
                    }
                    Err(e) => break format!("the coordinator went away ({e})"),
                }
            };
            if !stop_r.load(Ordering::SeqCst) {
                on_abort(&why);
            }
        });
        let beat = std::thread::spawn(move || {
            while !stop_w.load(Ordering::SeqCst) {
                let sent = beat_writer
                    .lock()
                    .map(|mut w| w.write_all(&encode(&Message::Heartbeat { rank })));
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
                let until = Instant::now() + interval;
                while Instant::now() < until && !stop_w.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10).min(interval));
                }
            }
        });
        Ok(Self {
            peers,
            rank,
            addr: addr.to_string(),
            stream,
            writer,
            answers: Mutex::new(answers),
            commits: Mutex::new(commits),
            stop,
            threads: Mutex::new(vec![watch, beat]),
        })
    }

    /// This session's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Sends `m` to the coordinator.
    pub fn send(&self, m: &Message) -> Result<(), RendezvousError> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| RendezvousError::Coordinator {
                addr: self.addr.clone(),
                reason: "the connection's writer was poisoned".into(),
            })?;
        w.write_all(&encode(m))
            .map_err(|e| RendezvousError::Coordinator {
                addr: self.addr.clone(),
                reason: format!("cannot send a {}: {e}", kind(m)),
            })
    }

    /// Sends `m` and waits at most `timeout` for the coordinator's answer ([`Message::Share`]
    /// or [`Message::Cursor`]). Requests from several threads take turns.
    pub fn request(&self, m: &Message, timeout: Duration) -> Result<Message, RendezvousError> {
        let answers = self
            .answers
            .lock()
            .map_err(|_| RendezvousError::Coordinator {
                addr: self.addr.clone(),
                reason: "a request panicked".into(),
            })?;
        self.send(m)?;
        answers
            .recv_timeout(timeout)
            .map_err(|e| RendezvousError::Coordinator {
                addr: self.addr.clone(),
                reason: format!("no answer to a {} within {timeout:?} ({e})", kind(m)),
            })
    }

    /// Sends this rank's checkpoint report and waits at most `timeout` for the outcome of the
    /// commit of `step` (it comes once every rank has reported).
    pub fn commit(
        &self,
        m: &Message,
        step: u64,
        timeout: Duration,
    ) -> Result<Result<String, String>, RendezvousError> {
        let commits = self
            .commits
            .lock()
            .map_err(|_| RendezvousError::Coordinator {
                addr: self.addr.clone(),
                reason: "a commit panicked".into(),
            })?;
        self.send(m)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match commits.recv_timeout(left) {
                Ok(Message::Committed { step: s, result }) if s == step => return Ok(result),
                Ok(_) => continue,
                Err(e) => {
                    return Err(RendezvousError::Coordinator {
                        addr: self.addr.clone(),
                        reason: format!("no outcome of checkpoint {step} within {timeout:?} ({e})"),
                    })
                }
            }
        }
    }

    /// Says goodbye: the coordinator stops watching this rank.
    pub fn leave(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.send(&Message::Leave { rank: self.rank });
        self.close();
    }

    fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Shutting the socket down also ends the watcher's blocking read.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Ok(mut threads) = self.threads.lock() {
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

/// Why a join failed: the connection closed before the challenge, the coordinator refused,
/// or anything else.
enum Handshake {
    Closed(String),
    Refused(String),
    Failed(String),
}

/// Connects to `addr`, retrying while nobody listens there yet, until `deadline`.
fn connect_until(addr: &str, deadline: Instant) -> std::io::Result<TcpStream> {
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("coordinator at {addr} not up yet: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The worker's side of the join on `stream` (read timeout set): answers the coordinator's
/// challenge with its proof of `token`, checks the coordinator's proof, and waits for the
/// rank table.
fn handshake(
    stream: &mut TcpStream,
    token: &str,
    world_size: usize,
    peer: Peer,
) -> Result<Vec<Peer>, Handshake> {
    use Handshake::{Closed, Failed, Refused};
    let challenge = match read_sync(stream, MAX_MESSAGE) {
        Ok(Message::Challenge { nonce }) => nonce,
        Ok(other) => return Err(Failed(format!("sent a {} for a challenge", kind(&other)))),
        Err(e) => return Err(Closed(e)),
    };
    let nonce = hex(&new_nonce());
    let proof = join_proof(token, &challenge, &nonce, world_size, &peer);
    stream
        .write_all(&encode(&Message::Join {
            world_size,
            peer,
            nonce: nonce.clone(),
            proof,
        }))
        .map_err(|e| Failed(format!("cannot send the join: {e}")))?;
    // Then the coordinator's proof, and the rank table once every rank has joined.
    let mut proven = false;
    loop {
        match read_sync(stream, MAX_JOB_MESSAGE) {
            Ok(Message::Accepted { proof }) if !proven => {
                if !coordinator_verifies(token, &challenge, &nonce, &proof) {
                    return Err(Failed(
                        "cannot prove the job token: it is not this job's coordinator".into(),
                    ));
                }
                proven = true;
            }
            Ok(Message::Welcome { peers }) if proven => return Ok(peers),
            Ok(Message::Refused { reason }) => return Err(Refused(reason)),
            Ok(Message::Abort { reason, .. }) => return Err(Failed(format!("aborted: {reason}"))),
            Ok(other) => return Err(Failed(format!("unexpected answer: a {}", kind(&other)))),
            Err(e) => return Err(Failed(format!("no welcome in time: {e}"))),
        }
    }
}

/// A session dropped without [`Session::leave`] stops heartbeating and closes its connection:
/// the coordinator takes the rank for dead.
impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

//! Rendezvous and heartbeats: the coordinator (a tokio server) and the worker's side of it.
//!
//! Every message is a JSON [`Message`] after its length (4 bytes, little-endian), at most
//! [`MAX_MESSAGE`] bytes. A worker sends [`Message::Join`] with the job token; once every rank
//! of the world has joined, the coordinator answers each with [`Message::Welcome`] and the rank
//! table. Workers then send [`Message::Heartbeat`]s; a rank silent for longer than the
//! heartbeat timeout, or whose connection drops before it says [`Message::Leave`], is dead: the
//! coordinator sends [`Message::Abort`] naming it to every other rank and returns an error. A
//! wrong token, a duplicate or out-of-range rank, or a malformed or oversized message closes
//! that connection only (with [`Message::Refused`] where it can) and is logged.
//!
//! After the welcome the coordinator also hosts the job's data plan ([`crate::plan`]): rank 0
//! sends [`Message::Dataset`], every rank asks for its share of each epoch with
//! [`Message::PlanRequest`] (answered with [`Message::Share`]) and reports each step with
//! [`Message::Progress`], from which the coordinator keeps the job's data cursor
//! ([`Message::CursorRequest`]) and its global samples/s ([`crate::meter`]). A rank whose
//! dataset or data options differ from rank 0's fails the job, named.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use weft_checkpoint::{ShardReport, TrainerState};
use weft_data::{DataCursor, PlanOptions, Progress, Share, Units};

use crate::meter::{JobReport, Meter};
use crate::plan::JobData;

/// The largest message accepted before a worker has joined, in bytes.
pub const MAX_MESSAGE: usize = 64 << 10;

/// The largest message accepted from a joined worker (a dataset's units, a share), in bytes.
pub const MAX_JOB_MESSAGE: usize = 256 << 20;

/// A rank as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Global rank.
    pub rank: usize,
    /// Host name.
    pub host: String,
    /// Rank on its node.
    pub local_rank: usize,
    /// Where its collective ring listens (`host:port`).
    pub ring_addr: String,
    /// Rank 0 of a GPU job: the NCCL unique id (hex) every rank joins the communicator with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nccl_id: Option<String>,
}

/// What coordinator and workers say to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// A worker asks to join.
    Join {
        /// The job token.
        token: String,
        /// The world size the worker expects.
        world_size: usize,
        /// Its description.
        peer: Peer,
    },
    /// Everyone has joined: the rank table, by rank.
    Welcome {
        /// Every rank.
        peers: Vec<Peer>,
    },
    /// The join is refused.
    Refused {
        /// Why.
        reason: String,
    },
    /// A worker is alive.
    Heartbeat {
        /// Its rank.
        rank: usize,
    },
    /// A worker is done and leaves cleanly.
    Leave {
        /// Its rank.
        rank: usize,
    },
    /// Rank 0 opens the job's data plan: its dataset and where the run starts.
    Dataset {
        /// The dataset's units.
        units: Units,
        /// The run's starting cursor.
        start: DataCursor,
    },
    /// A rank asks for its share of an epoch.
    PlanRequest {
        /// Its rank.
        rank: usize,
        /// The epoch: the current one or the next.
        epoch: u64,
        /// The fingerprint of the dataset it reads.
        dataset: String,
        /// Its data options.
        options: PlanOptions,
    },
    /// The answer to a plan request.
    Share {
        /// The rank's share.
        share: Share,
    },
    /// A rank finished a step.
    Progress {
        /// Where it stands.
        progress: Progress,
    },
    /// A rank asks for the job's data cursor as of the end of an optimizer step; the answer
    /// waits until every rank has reported that step.
    CursorRequest {
        /// Its rank.
        rank: usize,
        /// The optimizer step.
        step: u64,
    },
    /// The answer to a cursor request: `None` when the data plan is not open or the step is
    /// too old to be known.
    Cursor {
        /// The job's data cursor.
        cursor: Option<DataCursor>,
    },
    /// A rank's shards of a checkpoint are durable, or could not be written.
    Commit {
        /// The checkpoint's step.
        step: u64,
        /// The run directory (absolute).
        run_dir: String,
        /// `checkpoint.keep_last`.
        keep_last: usize,
        /// What the rank wrote, or why it could not.
        report: Result<ShardReport, String>,
        /// Rank 0's trainer state.
        state: Option<Box<TrainerState>>,
    },
    /// The outcome of a checkpoint's commit, sent to every rank.
    Committed {
        /// The checkpoint's step.
        step: u64,
        /// The committed directory, or why the commit failed.
        result: Result<String, String>,
    },
    /// The job is over: stop.
    Abort {
        /// The rank that died, when one did.
        dead_rank: Option<usize>,
        /// Why.
        reason: String,
    },
}

/// What went wrong at the coordinator or in a worker's session with it.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// A rank died or went silent.
    #[error("rank {rank} is dead: {reason}")]
    RankDead {
        /// The rank.
        rank: usize,
        /// How it was noticed.
        reason: String,
    },
    /// A rank did something that makes the job wrong (it reads other data, say).
    #[error("rank {rank} failed: {reason}")]
    RankFailed {
        /// The rank.
        rank: usize,
        /// What it did.
        reason: String,
    },
    /// Not every rank joined in time.
    #[error("only {joined} of {world_size} ranks joined within {timeout:?}")]
    JoinTimeout {
        /// Ranks that did.
        joined: usize,
        /// Ranks expected.
        world_size: usize,
        /// The bound.
        timeout: Duration,
    },
    /// The coordinator refused this worker.
    #[error("the coordinator at {addr} refused rank {rank}: {reason}")]
    Refused {
        /// The coordinator.
        addr: String,
        /// This rank.
        rank: usize,
        /// Its reason.
        reason: String,
    },
    /// The coordinator could not be reached or went away.
    #[error("coordinator at {addr}: {reason}")]
    Coordinator {
        /// Its address.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// A socket error of the coordinator itself.
    #[error("coordinator: {0}")]
    Io(#[from] std::io::Error),
}

/// The coordinator's settings.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Ranks in the job.
    pub world_size: usize,
    /// The job token every worker must present.
    pub token: String,
    /// A rank silent for longer is dead.
    pub heartbeat_timeout: Duration,
    /// Every rank must have joined within this.
    pub join_timeout: Duration,
}

fn encode(m: &Message) -> Vec<u8> {
    let body = serde_json::to_vec(m).expect("messages serialise");
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend(body);
    out
}

fn decode(body: &[u8]) -> Result<Message, String> {
    serde_json::from_slice(body).map_err(|e| format!("malformed message: {e}"))
}

/// Writes one framed message (blocking).
pub fn write_message(s: &mut TcpStream, m: &Message) -> std::io::Result<()> {
    s.write_all(&encode(m))
}

/// Reads one framed message (blocking), of at most [`MAX_MESSAGE`] bytes; the error says what
/// was wrong with it.
pub fn read_message(s: &mut TcpStream) -> Result<Message, String> {
    read_sync(s, MAX_MESSAGE)
}

fn check_len(len: usize, limit: usize) -> Result<(), String> {
    if len > limit {
        return Err(format!("a message of {len} bytes exceeds {limit}"));
    }
    Ok(())
}

async fn read_async(
    s: &mut tokio::net::tcp::OwnedReadHalf,
    limit: usize,
) -> Result<Message, String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes(len) as usize;
    check_len(len, limit)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    decode(&body)
}

fn read_sync(s: &mut TcpStream, limit: usize) -> Result<Message, String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes(len) as usize;
    check_len(len, limit)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    decode(&body)
}

/// What the coordinator knows of the ranks.
struct State {
    /// Joined ranks: description, outbox, last heard from, left cleanly.
    ranks: BTreeMap<usize, Rank>,
    welcomed: bool,
    /// The data plan, once rank 0 has opened it.
    data: Option<JobData>,
    /// Plan requests that came before the data plan: (rank, epoch, dataset, options).
    waiting: Vec<(usize, u64, String, PlanOptions)>,
    /// Cursor requests waiting for every rank's report of their step: (rank, step).
    waiting_cursor: Vec<(usize, u64)>,
    /// Checkpoints waiting for every rank's report, by step.
    commits: BTreeMap<u64, PendingCommit>,
    meter: Meter,
}

/// A checkpoint some ranks have reported.
#[derive(Default)]
struct PendingCommit {
    run_dir: String,
    keep_last: usize,
    reports: Vec<ShardReport>,
    state: Option<TrainerState>,
    heard: usize,
}

struct Rank {
    peer: Peer,
    outbox: mpsc::UnboundedSender<Message>,
    last_seen: Instant,
    left: bool,
    /// Why and when its connection ended without a leave.
    gone: Option<(String, Instant)>,
    /// Why and when it made the job wrong.
    fault: Option<(String, Instant)>,
}

/// What the coordinator hands back when every rank has left.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// The job's throughput.
    pub report: JobReport,
    /// The job's data cursor at the end (`None` when rank 0 opened no data plan).
    pub cursor: Option<DataCursor>,
}

/// Runs the coordinator on `listener` until every rank has left (Ok) or one died or the join
/// timed out (Err, after telling every other rank to abort).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: CoordinatorConfig,
) -> Result<Finished, RendezvousError> {
    let state = Arc::new(Mutex::new(State {
        ranks: BTreeMap::new(),
        welcomed: false,
        data: None,
        waiting: Vec::new(),
        waiting_cursor: Vec::new(),
        commits: BTreeMap::new(),
        meter: Meter::new(config.world_size),
    }));
    let started = Instant::now();
    let tick = (config.heartbeat_timeout / 4).max(Duration::from_millis(10));
    // A connection that ends, or a rank at fault, wakes the check at once.
    let wake = Arc::new(tokio::sync::Notify::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = accepted?;
                let (state, config, wake) = (state.clone(), config.clone(), wake.clone());
                tokio::spawn(async move {
                    let result = connection(stream, &state, &config).await;
                    wake.notify_one();
                    if let Err(reason) = result {
                        tracing::warn!("coordinator: connection from {addr}: {reason}");
                    }
                });
                continue;
            }
            () = tokio::time::sleep(tick) => {}
            () = wake.notified() => {}
        }
        if let Some(result) = check(&state, &config, started) {
            if result.is_err() {
                // Give the writers a moment to deliver the aborts.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return result;
        }
    }
}

/// The job's state at a tick: `Some(Ok)` when every rank has left, `Some(Err)` (after telling
/// the other ranks to abort) when the join timed out or a rank is dead, `None` to go on.
fn check(
    state: &Mutex<State>,
    config: &CoordinatorConfig,
    started: Instant,
) -> Option<Result<Finished, RendezvousError>> {
    let mut st = state.lock().expect("coordinator state");
    let n = config.world_size;
    if let Some((rank, reason)) = st
        .ranks
        .iter()
        .filter_map(|(&rank, r)| r.fault.as_ref().map(|(why, at)| (*at, rank, why.clone())))
        .min_by_key(|(at, rank, _)| (*at, *rank))
        .map(|(_, rank, why)| (rank, why))
    {
        tracing::error!("coordinator: rank {rank} failed ({reason}); aborting the job");
        // The failed rank is told too: it may be waiting for an answer.
        abort_all(
            &mut st,
            None,
            Some(rank),
            &format!("rank {rank} failed: {reason}"),
        );
        return Some(Err(RendezvousError::RankFailed { rank, reason }));
    }
    if st.ranks.len() == n && st.ranks.values().all(|r| r.left) {
        let report = st.meter.report();
        if report.steps > 0 {
            tracing::info!(
                "job finished: {} steps, {} samples, {:.1} samples/s over {n} ranks",
                report.steps,
                report.samples,
                report.samples_per_s()
            );
        }
        return Some(Ok(Finished {
            report,
            cursor: st.data.as_ref().map(|d| d.cursor().clone()),
        }));
    }
    if !st.welcomed && started.elapsed() > config.join_timeout {
        let joined = st.ranks.len();
        abort_all(
            &mut st,
            None,
            None,
            &format!("only {joined} of {n} ranks joined in time"),
        );
        return Some(Err(RendezvousError::JoinTimeout {
            joined,
            world_size: n,
            timeout: config.join_timeout,
        }));
    }
    // The first rank to go is the one to blame: the others often fail because of it.
    let dead = st
        .ranks
        .iter()
        .filter(|(_, r)| !r.left)
        .filter_map(|(&rank, r)| {
            if let Some((why, at)) = &r.gone {
                Some((*at, rank, why.clone()))
            } else if r.last_seen.elapsed() > config.heartbeat_timeout {
                Some((
                    r.last_seen + config.heartbeat_timeout,
                    rank,
                    format!("no heartbeat for {:?}", config.heartbeat_timeout),
                ))
            } else {
                None
            }
        })
        .min_by_key(|(at, rank, _)| (*at, *rank));
    let (_, rank, reason) = dead?;
    tracing::error!("coordinator: rank {rank} is dead ({reason}); aborting the job");
    abort_all(
        &mut st,
        Some(rank),
        Some(rank),
        &format!("rank {rank} is dead: {reason}"),
    );
    Some(Err(RendezvousError::RankDead { rank, reason }))
}

/// Tells every rank but `skip` (and those that left) to abort because of `dead`.
fn abort_all(st: &mut State, skip: Option<usize>, dead: Option<usize>, reason: &str) {
    for (&rank, r) in &st.ranks {
        if Some(rank) != skip && !r.left {
            let _ = r.outbox.send(Message::Abort {
                dead_rank: dead,
                reason: reason.to_string(),
            });
        }
    }
}

/// Answers a join with a refusal; the connection then closes.
async fn refuse(wr: &mut tokio::net::tcp::OwnedWriteHalf, reason: String) -> Result<(), String> {
    let _ = wr
        .write_all(&encode(&Message::Refused {
            reason: reason.clone(),
        }))
        .await;
    Err(format!("refused: {reason}"))
}

/// One worker's connection: its join, then its heartbeats.
async fn connection(
    stream: tokio::net::TcpStream,
    state: &Mutex<State>,
    config: &CoordinatorConfig,
) -> Result<(), String> {
    let (mut rd, mut wr) = stream.into_split();
    let first = tokio::time::timeout(config.join_timeout, read_async(&mut rd, MAX_MESSAGE))
        .await
        .map_err(|_| "no join message in time".to_string())??;
    let Message::Join {
        token,
        world_size,
        peer,
    } = first
    else {
        return refuse(&mut wr, "the first message must be a join".into()).await;
    };
    if token != config.token {
        return refuse(&mut wr, format!("rank {}: wrong job token", peer.rank)).await;
    }
    if world_size != config.world_size || peer.rank >= config.world_size {
        return refuse(
            &mut wr,
            format!(
                "rank {} of {world_size} does not fit this job of {} ranks",
                peer.rank, config.world_size
            ),
        )
        .await;
    }
    let rank = peer.rank;
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let joined = {
        let mut st = state.lock().expect("coordinator state");
        if st.ranks.contains_key(&rank) || st.welcomed {
            false
        } else {
            st.ranks.insert(
                rank,
                Rank {
                    peer,
                    outbox: tx,
                    last_seen: Instant::now(),
                    left: false,
                    gone: None,
                    fault: None,
                },
            );
            if st.ranks.len() == config.world_size {
                st.welcomed = true;
                let peers: Vec<Peer> = st.ranks.values().map(|r| r.peer.clone()).collect();
                for r in st.ranks.values() {
                    let _ = r.outbox.send(Message::Welcome {
                        peers: peers.clone(),
                    });
                }
            }
            true
        }
    };
    if !joined {
        return refuse(&mut wr, format!("rank {rank} has already joined")).await;
    }
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if wr.write_all(&encode(&m)).await.is_err() {
                break;
            }
        }
    });
    loop {
        let m = read_async(&mut rd, MAX_JOB_MESSAGE).await;
        let mut st = state.lock().expect("coordinator state");
        let Some(r) = st.ranks.get_mut(&rank) else {
            return Ok(());
        };
        r.last_seen = Instant::now();
        let m = match m {
            Ok(Message::Heartbeat { .. }) => continue,
            Ok(Message::Leave { .. }) => {
                r.left = true;
                return Ok(());
            }
            Ok(m) => m,
            Err(e) => {
                r.gone = Some((format!("its connection dropped ({e})"), Instant::now()));
                return Ok(());
            }
        };
        if let Err(reason) = job_message(&mut st, rank, m) {
            if let Some(r) = st.ranks.get_mut(&rank) {
                r.fault = Some((reason.clone(), Instant::now()));
            }
            return Err(format!("rank {rank}: {reason}"));
        }
    }
}

/// A joined rank's message about the job's data; an error is the rank's fault.
fn job_message(st: &mut State, rank: usize, m: Message) -> Result<(), String> {
    match m {
        Message::Dataset { units, start } if rank == 0 && st.data.is_none() => {
            st.data = Some(JobData::open(units, start)?);
            for (rank, epoch, dataset, options) in std::mem::take(&mut st.waiting) {
                answer_plan(st, rank, epoch, &dataset, &options)?;
            }
            Ok(())
        }
        Message::PlanRequest {
            epoch,
            dataset,
            options,
            ..
        } => {
            if st.data.is_none() {
                st.waiting.push((rank, epoch, dataset, options));
                Ok(())
            } else {
                answer_plan(st, rank, epoch, &dataset, &options)
            }
        }
        Message::Progress { progress } if progress.rank == rank => {
            if let Some(line) = st.meter.record(&progress) {
                tracing::info!("{line}");
            }
            match st.data.as_mut() {
                Some(d) => d.progress(&progress)?,
                None => return Err("reported progress before rank 0 opened the data plan".into()),
            }
            for (rank, step) in std::mem::take(&mut st.waiting_cursor) {
                answer_cursor(st, rank, step);
            }
            Ok(())
        }
        Message::CursorRequest { step, .. } => {
            answer_cursor(st, rank, step);
            Ok(())
        }
        Message::Commit {
            step,
            run_dir,
            keep_last,
            report,
            state,
        } => {
            // A rank that could not write its share fails the job now, named with its
            // reason: the others would otherwise wait for its commit, or see only its
            // connection drop. The checkpoint is never committed.
            let report = report
                .map_err(|why| format!("could not write its share of checkpoint {step}: {why}"))?;
            let world = st.ranks.len();
            let p = st.commits.entry(step).or_default();
            p.heard += 1;
            p.run_dir = run_dir;
            p.keep_last = keep_last;
            p.reports.push(report);
            if let Some(state) = state {
                p.state = Some(*state);
            }
            if p.heard == world {
                let p = st.commits.remove(&step).expect("present");
                let result = commit_now(step, p);
                for r in st.ranks.keys().copied().collect::<Vec<_>>() {
                    send(
                        st,
                        r,
                        Message::Committed {
                            step,
                            result: result.clone(),
                        },
                    );
                }
            }
            Ok(())
        }
        other => Err(format!("sent an unexpected {}", kind(&other))),
    }
}

fn answer_plan(
    st: &mut State,
    rank: usize,
    epoch: u64,
    dataset: &str,
    options: &PlanOptions,
) -> Result<(), String> {
    let data = st.data.as_mut().expect("the data plan is open");
    // A mismatch is the asking rank's fault, even when its request waited for rank 0's data.
    match data.share(rank, epoch, dataset, options) {
        Ok(share) => {
            send(st, rank, Message::Share { share });
            Ok(())
        }
        Err(reason) if rank != 0 => {
            if let Some(r) = st.ranks.get_mut(&rank) {
                r.fault = Some((reason, Instant::now()));
            }
            Ok(())
        }
        Err(reason) => Err(reason),
    }
}

/// Commits a checkpoint every rank has reported (writing the indexes, the trainer state and
/// the marker takes milliseconds; the shards are already written).
fn commit_now(step: u64, p: PendingCommit) -> Result<String, String> {
    let state = p
        .state
        .ok_or_else(|| "rank 0 sent no trainer state".to_string())?;
    weft_checkpoint::commit(
        std::path::Path::new(&p.run_dir),
        state,
        &p.reports,
        p.keep_last,
    )
    .map(|dir| dir.display().to_string())
    .map_err(|e| {
        tracing::error!("coordinator: checkpoint {step} not committed: {e}");
        e.to_string()
    })
}

/// Answers a cursor request, or keeps it until every rank has reported `step`.
fn answer_cursor(st: &mut State, rank: usize, step: u64) {
    let cursor = match st.data.as_ref().map(|d| d.cursor_at(step)) {
        None => None,
        Some(None) => {
            st.waiting_cursor.push((rank, step));
            return;
        }
        Some(Some(Ok(cursor))) => Some(cursor),
        Some(Some(Err(why))) => {
            tracing::warn!(
                "coordinator: rank {rank} asked for the data cursor at step {step}: {why}"
            );
            None
        }
    };
    send(st, rank, Message::Cursor { cursor });
}

fn send(st: &State, rank: usize, m: Message) {
    if let Some(r) = st.ranks.get(&rank) {
        let _ = r.outbox.send(m);
    }
}

/// A message's type, without its (possibly large) contents.
fn kind(m: &Message) -> &'static str {
    match m {
        Message::Join { .. } => "join",
        Message::Welcome { .. } => "welcome",
        Message::Refused { .. } => "refusal",
        Message::Heartbeat { .. } => "heartbeat",
        Message::Leave { .. } => "leave",
        Message::Dataset { .. } => "dataset (only rank 0 sends it, once)",
        Message::PlanRequest { .. } => "plan request",
        Message::Share { .. } => "share",
        Message::Progress { .. } => "progress of another rank",
        Message::CursorRequest { .. } => "cursor request",
        Message::Cursor { .. } => "cursor",
        Message::Commit { .. } => "checkpoint report",
        Message::Committed { .. } => "checkpoint outcome",
        Message::Abort { .. } => "abort",
    }
}

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

/// What a worker does when the job ends under it: the coordinator's abort (naming the dead rank
/// when there is one), or the coordinator gone. `weft` logs it and exits non-zero.
pub type OnAbort = Box<dyn Fn(&str) + Send + Sync>;

impl Session {
    /// Joins the job at `addr` as `peer`, waiting up to `timeout` for the coordinator and for
    /// every other rank, then heartbeats every `interval` until [`Session::leave`]. `on_abort`
    /// runs (once) when the coordinator aborts the job or disappears.
    pub fn join(
        addr: &str,
        token: &str,
        world_size: usize,
        peer: Peer,
        timeout: Duration,
        interval: Duration,
        on_abort: OnAbort,
    ) -> Result<Self, RendezvousError> {
        let rank = peer.rank;
        let err = |reason: String| RendezvousError::Coordinator {
            addr: addr.to_string(),
            reason,
        };
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("coordinator at {addr} not up yet: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(err(format!("unreachable for {timeout:?}: {e}"))),
            }
        };
        stream
            .write_all(&encode(&Message::Join {
                token: token.to_string(),
                world_size,
                peer,
            }))
            .map_err(|e| err(format!("cannot send the join: {e}")))?;
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| err(e.to_string()))?;
        let peers = match read_sync(&mut stream, MAX_JOB_MESSAGE) {
            Ok(Message::Welcome { peers }) => peers,
            Ok(Message::Refused { reason }) => {
                return Err(RendezvousError::Refused {
                    addr: addr.to_string(),
                    rank,
                    reason,
                })
            }
            Ok(Message::Abort { reason, .. }) => return Err(err(format!("aborted: {reason}"))),
            Ok(other) => return Err(err(format!("unexpected answer {other:?}"))),
            Err(e) => return Err(err(format!("no welcome within {timeout:?}: {e}"))),
        };
        stream
            .set_read_timeout(None)
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
                match read_sync(&mut reader, MAX_JOB_MESSAGE) {
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

/// A session dropped without [`Session::leave`] stops heartbeating and closes its connection:
/// the coordinator takes the rank for dead.
impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

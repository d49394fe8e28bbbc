//! The coordinator: a tokio server that gathers the ranks, hands out the rank table, watches
//! heartbeats, answers the data plan's requests and commits checkpoints once every rank has
//! reported its shards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use weft_checkpoint::{ShardReport, TrainerState};
use weft_data::{DataCursor, PlanOptions};

use super::error::RendezvousError;
use super::late::{self, Verdict, Waited};
use weft_collective::auth::{hex, nonce as new_nonce};

use super::protocol::{
    coordinator_proof, encode, join_verifies, kind, read_async, Message, Peer, MAX_JOB_MESSAGE,
    MAX_MESSAGE, MAX_RANK_MESSAGE,
};
use crate::meter::{JobReport, Meter};
use crate::plan::JobData;

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

/// The bound of a connection's first message (its join).
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections that have not joined (yet) at once; more are closed at once.
const MAX_UNJOINED: usize = 64;
/// The wait after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A connection counted among those that have not joined, until it is dropped.
struct Unjoined(Arc<AtomicUsize>);

impl Unjoined {
    /// Counts a new connection in, unless every rank has joined already or
    /// [`MAX_UNJOINED`] connections are waiting.
    fn enter(count: &Arc<AtomicUsize>, state: &Mutex<State>) -> Option<Self> {
        if state.lock().expect("coordinator state").welcomed {
            return None;
        }
        let before = count.fetch_add(1, Ordering::SeqCst);
        let guard = Self(Arc::clone(count));
        (before < MAX_UNJOINED).then_some(guard)
    }
}

impl Drop for Unjoined {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
    /// When the job was last judged: a longer gap means the coordinator itself was stalled.
    last_check: Option<Instant>,
    /// Held by the commit under way (commits run off the event loop, one at a time).
    commit_turn: Arc<Mutex<()>>,
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
    /// Its report that a collective timed out waiting for another rank.
    waited: Option<Waited>,
    /// The last optimizer step it reported.
    last_step: Option<u64>,
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
        last_check: None,
        commit_turn: Arc::default(),
    }));
    let started = Instant::now();
    // At least every second: each tick also tells the ranks the coordinator is alive, and a
    // rank may have been given a shorter heartbeat timeout than this coordinator.
    let tick =
        (config.heartbeat_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    // A connection that ends, or a rank at fault, wakes the check at once.
    let wake = Arc::new(tokio::sync::Notify::new());
    let unjoined = Arc::new(AtomicUsize::new(0));
    let mut accept_failing = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(c) => {
                        accept_failing = false;
                        c
                    }
                    Err(e) => {
                        // Out of file descriptors, or a connection reset before it was taken:
                        // the job's ranks are already connected, so wait and go on (said once
                        // a burst: a flood must not fill the log).
                        if !accept_failing {
                            tracing::warn!("coordinator: accept failed ({e}); retrying");
                        }
                        accept_failing = true;
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let Some(guard) = Unjoined::enter(&unjoined, &state) else {
                    tracing::debug!("coordinator: closed a connection from {addr} at once");
                    continue;
                };
                let (state, config, wake) = (state.clone(), config.clone(), wake.clone());
                tokio::spawn(async move {
                    let result = connection(stream, &state, &config, guard).await;
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
    if st.welcomed {
        for r in st.ranks.values().filter(|r| !r.left) {
            let _ = r.outbox.send(Message::Alive);
        }
    }
    if stalled(&mut st, config) {
        return None;
    }
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
    if let Some(verdict) = late_verdict(&mut st, n) {
        return Some(Err(verdict));
    }
    // The first rank to go is the one to blame: the others often fail because of it. A rank
    // that said it waited for another in a collective is waiting for the verdict on that.
    let dead = st
        .ranks
        .iter()
        .filter(|(_, r)| !r.left && r.waited.is_none())
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

/// The verdict on ranks' reports that their collectives timed out, once it is in: the late
/// rank (or, for a cycle of waits, none) is named to every rank.
fn late_verdict(st: &mut State, world: usize) -> Option<RendezvousError> {
    let waits: BTreeMap<usize, Waited> = st
        .ranks
        .iter()
        .filter_map(|(&rank, r)| Some((rank, r.waited.clone()?)))
        .collect();
    let last_step = |rank: usize| st.ranks.get(&rank).and_then(|r| r.last_step);
    let (dead, error) = match late::judge(&waits, world, Instant::now(), last_step)? {
        Verdict::Collecting => return None,
        Verdict::Late { rank, reason } => (Some(rank), RendezvousError::RankLate { rank, reason }),
        Verdict::NoneLate { first, reason } => (
            None,
            RendezvousError::RankFailed {
                rank: first,
                reason,
            },
        ),
    };
    tracing::error!("coordinator: {error}; aborting the job");
    abort_all(st, None, dead, &error.to_string());
    Some(error)
}

/// Whether the coordinator itself stalled since the last check (it was stopped, or a slow
/// disk held it) for over half the heartbeat timeout. Its ranks' heartbeats of that time may
/// still be queued, unread: each gets a fresh heartbeat timeout instead of a verdict.
fn stalled(st: &mut State, config: &CoordinatorConfig) -> bool {
    let now = Instant::now();
    let gap = st.last_check.map(|t| now - t);
    st.last_check = Some(now);
    match gap {
        Some(gap) if gap > config.heartbeat_timeout / 2 => {
            tracing::warn!(
                "coordinator: stalled for {gap:?} (stopped, or a slow disk); judging no rank \
                 before their heartbeats are read"
            );
            for r in st.ranks.values_mut() {
                r.last_seen = now;
            }
            true
        }
        _ => false,
    }
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
async fn refuse<T>(wr: &mut tokio::net::tcp::OwnedWriteHalf, reason: String) -> Result<T, String> {
    let _ = wr
        .write_all(&encode(&Message::Refused {
            reason: reason.clone(),
        }))
        .await;
    Err(format!("refused: {reason}"))
}

/// The coordinator's side of a join: challenges the connection, checks the worker's proof and
/// what it asks, and proves the token back. `Ok(None)`: the connection ended or stayed silent
/// before its join (no rank's); `Err`: refused.
async fn handshake(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    config: &CoordinatorConfig,
) -> Result<Option<Peer>, String> {
    let challenge = hex(&new_nonce());
    let hello = encode(&Message::Challenge {
        nonce: challenge.clone(),
    });
    let bound = config.join_timeout.min(FIRST_MESSAGE_TIMEOUT);
    let first = tokio::time::timeout(bound, async {
        wr.write_all(&hello).await.map_err(|e| e.to_string())?;
        read_async(rd, MAX_MESSAGE).await
    })
    .await
    .map_err(|_| format!("no join within {bound:?}"))
    .and_then(|read| read);
    let first = match first {
        Ok(m) => m,
        // A connection that closes or stays silent before its join is no rank's: not worth a
        // warning each (a flood of them must not fill the log).
        Err(why) => {
            tracing::debug!("coordinator: a connection ended before its join: {why}");
            return Ok(None);
        }
    };
    let Message::Join {
        world_size,
        peer,
        nonce,
        proof,
    } = first
    else {
        return refuse(wr, "the first message must be a join".into()).await;
    };
    if !join_verifies(&config.token, &challenge, &nonce, world_size, &peer, &proof) {
        return refuse(
            wr,
            format!(
                "rank {}: wrong job token (its proof does not verify)",
                peer.rank
            ),
        )
        .await;
    }
    if world_size != config.world_size || peer.rank >= config.world_size {
        return refuse(
            wr,
            format!(
                "rank {} of {world_size} does not fit this job of {} ranks",
                peer.rank, config.world_size
            ),
        )
        .await;
    }
    let accepted = encode(&Message::Accepted {
        proof: coordinator_proof(&config.token, &challenge, &nonce),
    });
    wr.write_all(&accepted).await.map_err(|e| e.to_string())?;
    Ok(Some(peer))
}

/// One worker's connection: its join, then its heartbeats.
async fn connection(
    stream: tokio::net::TcpStream,
    state: &Mutex<State>,
    config: &CoordinatorConfig,
    unjoined: Unjoined,
) -> Result<(), String> {
    let (mut rd, mut wr) = stream.into_split();
    let Some(peer) = handshake(&mut rd, &mut wr, config).await? else {
        return Ok(());
    };
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
                    waited: None,
                    last_step: None,
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
    drop(unjoined);
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if wr.write_all(&encode(&m)).await.is_err() {
                break;
            }
        }
    });
    // Only rank 0 sends a dataset's units; the others' messages are small.
    let limit = if rank == 0 {
        MAX_JOB_MESSAGE
    } else {
        MAX_RANK_MESSAGE
    };
    loop {
        let m = read_async(&mut rd, limit).await;
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
        match job_message(&mut st, rank, m) {
            Ok(None) => {}
            Ok(Some((step, pending))) => {
                let outboxes: Vec<_> = st.ranks.values().map(|r| r.outbox.clone()).collect();
                let turn = Arc::clone(&st.commit_turn);
                drop(st);
                commit_off_the_loop(step, pending, outboxes, turn);
            }
            Err(reason) => {
                if let Some(r) = st.ranks.get_mut(&rank) {
                    r.fault = Some((reason.clone(), Instant::now()));
                }
                return Err(format!("rank {rank}: {reason}"));
            }
        }
    }
}

/// Commits a checkpoint every rank has reported on tokio's blocking pool (its fsyncs and
/// pruning must not hold the event loop, which reads heartbeats and sends the coordinator's),
/// one commit at a time, then tells every rank the outcome.
fn commit_off_the_loop(
    step: u64,
    pending: PendingCommit,
    outboxes: Vec<mpsc::UnboundedSender<Message>>,
    turn: Arc<Mutex<()>>,
) {
    tokio::task::spawn_blocking(move || {
        let _turn = turn.lock();
        let result = commit_now(step, pending);
        for outbox in outboxes {
            let _ = outbox.send(Message::Committed {
                step,
                result: result.clone(),
            });
        }
    });
}

/// A joined rank's message about the job's data; an error is the rank's fault. A checkpoint
/// that every rank has now reported comes back, to be committed.
fn job_message(
    st: &mut State,
    rank: usize,
    m: Message,
) -> Result<Option<(u64, PendingCommit)>, String> {
    match m {
        Message::Dataset { units, start } if rank == 0 && st.data.is_none() => {
            st.data = Some(JobData::open(units, start)?);
            for (rank, epoch, dataset, options) in std::mem::take(&mut st.waiting) {
                answer_plan(st, rank, epoch, &dataset, &options)?;
            }
            Ok(None)
        }
        Message::PlanRequest {
            epoch,
            dataset,
            options,
            ..
        } => {
            if st.data.is_none() {
                st.waiting.push((rank, epoch, dataset, options));
                Ok(None)
            } else {
                answer_plan(st, rank, epoch, &dataset, &options).map(|()| None)
            }
        }
        Message::Progress { progress } if progress.rank == rank => {
            if let Some(r) = st.ranks.get_mut(&rank) {
                r.last_step = Some(progress.step);
            }
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
            Ok(None)
        }
        Message::CursorRequest { step, .. } => {
            answer_cursor(st, rank, step);
            Ok(None)
        }
        Message::Waited {
            rank: r,
            peer,
            op,
            timeout_s,
        } if r == rank => {
            let world = st.ranks.len();
            let timeout = Duration::try_from_secs_f64(timeout_s)
                .ok()
                .filter(|_| peer.is_none_or(|p| p < world && p != rank))
                .ok_or_else(|| format!("reported waiting {timeout_s} s for rank {peer:?}"))?;
            let whom = peer
                .map(|p| format!(" waiting for rank {p}"))
                .unwrap_or_default();
            tracing::warn!("coordinator: rank {rank}'s {op} timed out after {timeout:?}{whom}");
            if let Some(r) = st.ranks.get_mut(&rank) {
                r.waited.get_or_insert(Waited {
                    peer,
                    op,
                    timeout,
                    at: Instant::now(),
                });
            }
            Ok(None)
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
                return Ok(Some((step, p)));
            }
            Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_coordinator_judges_no_rank_before_reading_their_heartbeats() {
        let config = CoordinatorConfig {
            world_size: 1,
            token: "t".into(),
            heartbeat_timeout: Duration::from_millis(200),
            join_timeout: Duration::from_secs(10),
        };
        let (outbox, _inbox) = mpsc::unbounded_channel();
        let rank = Rank {
            peer: Peer {
                rank: 0,
                host: "h".into(),
                local_rank: 0,
                ring_addr: "127.0.0.1:1".into(),
                nccl_id: None,
            },
            outbox,
            last_seen: Instant::now(),
            left: false,
            gone: None,
            fault: None,
            waited: None,
            last_step: None,
        };
        let state = Mutex::new(State {
            ranks: BTreeMap::from([(0, rank)]),
            welcomed: true,
            data: None,
            waiting: Vec::new(),
            waiting_cursor: Vec::new(),
            commits: BTreeMap::new(),
            meter: Meter::new(1),
            last_check: Some(Instant::now()),
            commit_turn: Arc::default(),
        });
        let started = Instant::now();
        // Stalled for two heartbeat timeouts: the rank's last heartbeat looks 400 ms old,
        // but the ones it sent meanwhile are unread.
        std::thread::sleep(Duration::from_millis(400));
        assert!(check(&state, &config, started).is_none());
        // Checked at its pace again, a rank silent for a heartbeat timeout is dead.
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(25));
            if let Some(verdict) = check(&state, &config, started) {
                assert!(
                    matches!(verdict, Err(RendezvousError::RankDead { rank: 0, .. })),
                    "{verdict:?}"
                );
                return;
            }
        }
        panic!("no verdict on a silent rank");
    }
}

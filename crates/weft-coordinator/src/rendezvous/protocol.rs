//! The wire protocol between the coordinator and its workers: every message is a JSON
//! [`Message`] after its length (4 bytes, little-endian), at most [`MAX_MESSAGE`] bytes before
//! a worker has joined, [`MAX_RANK_MESSAGE`] from a joined rank and [`MAX_JOB_MESSAGE`] from
//! rank 0 (its dataset) and from the coordinator.
//!
//! A join is a challenge–response over the job token, which never travels: the coordinator
//! sends a [`Message::Challenge`] with its nonce, the worker a [`Message::Join`] with its own
//! nonce and its proof over both nonces and its join (world size, rank table entry), and the
//! coordinator answers [`Message::Accepted`] with its own proof over both nonces, then
//! [`Message::Welcome`] once every rank has joined.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use weft_checkpoint::{ShardReport, TrainerState};
use weft_collective::auth::{hex, prove, unhex, verify};
use weft_data::{DataCursor, PlanOptions, Progress, Share, Units};

/// The largest message accepted before a worker has joined, in bytes.
pub const MAX_MESSAGE: usize = 64 << 10;

/// The largest message accepted from a joined rank other than 0 (progress, requests, its
/// checkpoint report), in bytes.
pub const MAX_RANK_MESSAGE: usize = 16 << 20;

/// The largest message accepted from rank 0 (a dataset's units) and from the coordinator (a
/// share), in bytes.
pub const MAX_JOB_MESSAGE: usize = 256 << 20;

const JOIN: &str = "weft join";
const COORDINATOR: &str = "weft coordinator";

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
    /// The coordinator's first message on a connection: prove you hold the job token.
    Challenge {
        /// The coordinator's fresh nonce (hex).
        nonce: String,
    },
    /// A worker asks to join.
    Join {
        /// The world size the worker expects.
        world_size: usize,
        /// Its description.
        peer: Peer,
        /// The worker's fresh nonce (hex).
        nonce: String,
        /// Its proof of the token over both nonces and this join ([`join_proof`]).
        proof: String,
    },
    /// The join's proof verified; the coordinator proves the token in turn
    /// ([`coordinator_proof`]). [`Message::Welcome`] follows once every rank has joined.
    Accepted {
        /// The coordinator's proof (hex).
        proof: String,
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
    /// The coordinator is alive: sent to every joined rank at each of its ticks, so that a
    /// rank notices a coordinator that stops.
    Alive,
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
    /// A rank's collective timed out waiting for `peer`: the coordinator judges which rank
    /// was late ([`super::late`]).
    Waited {
        /// Its rank.
        rank: usize,
        /// The rank it waited for, when its collective knows.
        #[serde(default)]
        peer: Option<usize>,
        /// The operation.
        op: String,
        /// Its collective timeout, in seconds.
        timeout_s: f64,
    },
    /// The job is over: stop.
    Abort {
        /// The rank that died, when one did.
        dead_rank: Option<usize>,
        /// Why.
        reason: String,
    },
}

/// The parts a join's proof covers: the coordinator's nonce, the worker's, and what it asks.
fn join_parts(challenge: &str, nonce: &str, world_size: usize, peer: &Peer) -> Vec<Vec<u8>> {
    let asked = serde_json::to_vec(&(world_size, peer)).expect("a peer serialises");
    vec![
        challenge.as_bytes().to_vec(),
        nonce.as_bytes().to_vec(),
        asked,
    ]
}

/// A worker's proof of `token` for its join of `world_size` as `peer`, answering the
/// coordinator's `challenge` with its own `nonce` (both hex).
pub fn join_proof(
    token: &str,
    challenge: &str,
    nonce: &str,
    world_size: usize,
    peer: &Peer,
) -> String {
    let parts = join_parts(challenge, nonce, world_size, peer);
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    hex(&prove(token, JOIN, &parts))
}

/// Whether `proof` is [`join_proof`] of `token` (compared in constant time).
pub fn join_verifies(
    token: &str,
    challenge: &str,
    nonce: &str,
    world_size: usize,
    peer: &Peer,
    proof: &str,
) -> bool {
    let parts = join_parts(challenge, nonce, world_size, peer);
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    unhex(proof).is_some_and(|p| verify(token, JOIN, &parts, &p))
}

/// The coordinator's proof of `token` to a worker whose join answered `challenge` with
/// `nonce`.
pub fn coordinator_proof(token: &str, challenge: &str, nonce: &str) -> String {
    hex(&prove(
        token,
        COORDINATOR,
        &[nonce.as_bytes(), challenge.as_bytes()],
    ))
}

/// Whether `proof` is [`coordinator_proof`] of `token` (compared in constant time).
pub fn coordinator_verifies(token: &str, challenge: &str, nonce: &str, proof: &str) -> bool {
    unhex(proof).is_some_and(|p| {
        verify(
            token,
            COORDINATOR,
            &[nonce.as_bytes(), challenge.as_bytes()],
            &p,
        )
    })
}

/// `m` framed: its length, then its JSON.
pub(crate) fn encode(m: &Message) -> Vec<u8> {
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

/// Reads one framed message of at most `limit` bytes from a tokio stream.
pub(crate) async fn read_async(
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

/// Reads one framed message of at most `limit` bytes (blocking).
pub(crate) fn read_sync(s: &mut TcpStream, limit: usize) -> Result<Message, String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes(len) as usize;
    check_len(len, limit)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    decode(&body)
}

/// A message's type, without its (possibly large) contents.
pub(crate) fn kind(m: &Message) -> &'static str {
    match m {
        Message::Challenge { .. } => "challenge",
        Message::Join { .. } => "join",
        Message::Accepted { .. } => "acceptance",
        Message::Welcome { .. } => "welcome",
        Message::Refused { .. } => "refusal",
        Message::Alive => "coordinator heartbeat",
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
        Message::Waited { .. } => "report of a collective timeout",
        Message::Abort { .. } => "abort",
    }
}

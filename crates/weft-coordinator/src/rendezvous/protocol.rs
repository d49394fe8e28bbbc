//! The wire protocol between the coordinator and its workers: every message is a JSON
//! [`Message`] after its length (4 bytes, little-endian), at most [`MAX_MESSAGE`] bytes before
//! a worker has joined and [`MAX_JOB_MESSAGE`] after.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use weft_checkpoint::{ShardReport, TrainerState};
use weft_data::{DataCursor, PlanOptions, Progress, Share, Units};

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

//! Rendezvous and heartbeats: the coordinator (a tokio server) and the worker's side of it.
//!
//! Every message is a JSON [`Message`] after its length (4 bytes, little-endian), at most
//! [`MAX_MESSAGE`] bytes before the join. The coordinator opens every connection with a
//! [`Message::Challenge`]; a worker answers with [`Message::Join`], which proves that it holds
//! the job token without sending it, and the coordinator proves the same in
//! [`Message::Accepted`] ([`protocol`]). Once every rank of the world has joined, the
//! coordinator answers each with [`Message::Welcome`] and the rank table. Workers then send
//! [`Message::Heartbeat`]s; a rank silent for longer than the heartbeat timeout, or whose
//! connection drops before it says [`Message::Leave`], is dead: the coordinator sends
//! [`Message::Abort`] naming it to every other rank and returns an error. A wrong token, a
//! duplicate or out-of-range rank, or a malformed or oversized message closes that connection
//! only (with [`Message::Refused`] where it can) and is logged. A connection that sends no join
//! within 10 s is closed; at most 64 wait at once, and none is taken once every rank has
//! joined; a failed accept (out of file descriptors) is logged and retried.
//!
//! After the welcome the coordinator also hosts the job's data plan ([`crate::plan`]): rank 0
//! sends [`Message::Dataset`], every rank asks for its share of each epoch with
//! [`Message::PlanRequest`] (answered with [`Message::Share`]) and reports each step with
//! [`Message::Progress`], from which the coordinator keeps the job's data cursor
//! ([`Message::CursorRequest`]) and its global samples/s ([`crate::meter`]). A rank whose
//! dataset or data options differ from rank 0's fails the job, named. A rank whose collective
//! timed out says whom it waited for ([`Message::Waited`]); the coordinator follows the waits to
//! the rank that was late and names it ([`late`]).
//!
//! - [`protocol`]: the messages and their framing;
//! - [`server`]: the coordinator ([`serve`]): joins, heartbeats, data-plan answers, commits;
//! - [`client`]: a worker's [`Session`];
//! - [`late`]: who was late when a collective timed out;
//! - [`error`]: what can go wrong, [`RendezvousError`].

pub mod client;
pub mod error;
pub mod late;
pub mod protocol;
pub mod server;

pub use client::{OnAbort, Session, Waits};
pub use error::RendezvousError;
pub use protocol::{read_message, write_message, Message, Peer, MAX_JOB_MESSAGE, MAX_MESSAGE};
pub use server::{serve, CoordinatorConfig, Finished};

//! What goes wrong at the coordinator or in a worker's session with it.

use std::time::Duration;

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
    /// A rank was so late to a collective that the others' collective timeout ran out.
    #[error("rank {rank} was late: {reason}")]
    RankLate {
        /// The rank.
        rank: usize,
        /// Who waited for it.
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

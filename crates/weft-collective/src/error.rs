//! The one error type of the crate.

use std::time::Duration;

/// What went wrong in a collective operation or while forming the ring. Every variant names
/// this rank and, where one is involved, the peer.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// A peer did not send or take data within the timeout.
    #[error("rank {rank}: {op} timed out after {timeout:?} waiting for rank {peer}")]
    Timeout {
        /// This rank.
        rank: usize,
        /// The peer waited for.
        peer: usize,
        /// The operation.
        op: &'static str,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// A peer closed its connection (it exited or was killed).
    #[error("rank {rank}: rank {peer} closed its connection during {op}")]
    PeerClosed {
        /// This rank.
        rank: usize,
        /// The peer that went away.
        peer: usize,
        /// The operation.
        op: &'static str,
    },
    /// Any other socket error.
    #[error("rank {rank}: {op} with rank {peer} failed: {source}")]
    Io {
        /// This rank.
        rank: usize,
        /// The peer of the failed socket.
        peer: usize,
        /// The operation.
        op: &'static str,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The ring could not be formed: a neighbour unreachable, refused, or not who it should be.
    #[error("rank {rank}: cannot form the ring: {reason}")]
    Setup {
        /// This rank.
        rank: usize,
        /// What failed, naming the peer or address.
        reason: String,
    },
    /// The watchdog aborted the communicator during `op` (it ran past the collective timeout,
    /// or NCCL reported an asynchronous error); the peer is not known.
    #[error("rank {rank}: {op} on the GPU was stopped: {reason}")]
    Stalled {
        /// This rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The watchdog's reason.
        reason: String,
    },
    /// A GPU operation (NCCL or a copy) failed.
    #[error("rank {rank}: {op} on the GPU failed: {reason}")]
    Device {
        /// This rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The CUDA or NCCL error.
        reason: String,
    },
    /// The caller's buffers or arguments do not fit the operation.
    #[error("rank {rank}: {op}: {reason}")]
    Invalid {
        /// This rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// What does not fit.
        reason: String,
    },
}

impl CollectiveError {
    /// The error of a failed read from or write to `peer`.
    pub(crate) fn from_io(
        rank: usize,
        peer: usize,
        op: &'static str,
        timeout: Duration,
        e: std::io::Error,
    ) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Self::Timeout {
                rank,
                peer,
                op,
                timeout,
            },
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => Self::PeerClosed { rank, peer, op },
            _ => Self::Io {
                rank,
                peer,
                op,
                source: e,
            },
        }
    }
}

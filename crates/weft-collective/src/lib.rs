//! Collective operations across the ranks of a data-parallel job: all-reduce (sum, mean, max,
//! min), all-gather, broadcast and barrier over `f32` buffers, each bounded by a timeout and
//! naming the peer when it fails.
//!
//! - [`SingleRank`]: a job of one process; every operation is the identity.
//! - [`TcpRing`]: the ranks in a ring over TCP, for CPU training and every multi-process test.
//!   All-reduce is a ring reduce-scatter followed by a ring all-gather with chunked, pipelined
//!   transfers, the algorithm of Gloo's and NCCL's rings: each rank sends and receives
//!   `2(N−1)/N` of the buffer whatever the number of ranks `N`, and the reduction of one
//!   segment overlaps the transfer of the next.
//! - `nccl::Nccl` (the `cuda` feature): NCCL through cudarc, on device buffers; rank 0 makes the
//!   unique id, the coordinator hands it to the others. NCCL has no timeout of its own: a
//!   [`watchdog::Watchdog`] aborts the communicator after the collective timeout.
//!
//! - [`auth`]: the job token as a key of challenge–response proofs, for the ring and the
//!   coordinator's join: the token never travels, and a recorded exchange cannot be replayed.
//!
//! The crate knows nothing of burn: the trainer flattens its gradients into `f32` buffers.

#![warn(missing_docs)]

pub mod auth;
mod error;
mod handshake;
#[cfg(feature = "cuda")]
pub mod nccl;
mod ring;
mod single;
pub mod watchdog;

pub use error::CollectiveError;
#[cfg(feature = "cuda")]
pub use nccl::{Nccl, NcclId};
pub use ring::{RingConfig, TcpRing};
pub use single::SingleRank;

/// How an all-reduce combines the ranks' buffers, element by element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// The sum.
    Sum,
    /// The sum divided by the number of ranks.
    Mean,
    /// The largest value (NaN wins, so that a non-finite gradient on one rank is seen by all).
    Max,
    /// The smallest value (NaN wins).
    Min,
}

impl ReduceOp {
    /// `acc[i] = op(acc[i], x[i])` (a mean sums here and divides at the end).
    pub(crate) fn fold(self, acc: &mut [f32], x: &[f32]) {
        match self {
            Self::Sum | Self::Mean => acc.iter_mut().zip(x).for_each(|(a, b)| *a += b),
            Self::Max => acc
                .iter_mut()
                .zip(x)
                .for_each(|(a, &b)| *a = nan_max(*a, b)),
            Self::Min => acc
                .iter_mut()
                .zip(x)
                .for_each(|(a, &b)| *a = nan_min(*a, b)),
        }
    }
}

fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.min(b)
    }
}

/// Averages a flat buffer that the host does not hold (a tensor in a GPU's memory) over the
/// ranks without taking it through the host: NCCL on the device's memory
/// (`weft_gpu::cuda::NcclGrads`). `T` is the buffer's type, which this crate knows nothing of;
/// the trainer's is a flat burn tensor.
pub trait DeviceReduce<T> {
    /// The mean over the ranks of every rank's `buffer`, in buckets of `bucket` elements.
    fn mean(&mut self, buffer: T, bucket: usize) -> Result<T, CollectiveError>;
}

/// The operations a data-parallel trainer needs from its peers. Every rank calls the same
/// operations in the same order with buffers of the same length; each call returns when this
/// rank's part is done, or an error naming the peer that failed or timed out.
pub trait Collective {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// Ranks in the job.
    fn world_size(&self) -> usize;

    /// Combine `buf` of every rank element-wise with `op`; every rank ends with the result.
    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CollectiveError>;

    /// Every rank's `send` (all of one length), concatenated in rank order into `recv`
    /// (`world_size() · send.len()`).
    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CollectiveError>;

    /// Rank `root`'s `buf` into every rank's `buf`.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError>;

    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError>;
}

pub(crate) fn check_gather(
    rank: usize,
    world: usize,
    send: &[f32],
    recv: &[f32],
) -> Result<(), CollectiveError> {
    if recv.len() != world * send.len() {
        return Err(CollectiveError::Invalid {
            rank,
            op: "all-gather",
            reason: format!(
                "the receive buffer holds {} values, not {world} ranks x {}",
                recv.len(),
                send.len()
            ),
        });
    }
    Ok(())
}

pub(crate) fn check_root(rank: usize, world: usize, root: usize) -> Result<(), CollectiveError> {
    if root >= world {
        return Err(CollectiveError::Invalid {
            rank,
            op: "broadcast",
            reason: format!("root {root} is not a rank of {world}"),
        });
    }
    Ok(())
}

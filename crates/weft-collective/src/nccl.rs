//! NCCL through cudarc's bindings (the `cuda` feature): one rank per GPU.
//!
//! Rank 0 makes the communicator's unique id ([`NcclId::new`]); the coordinator hands it to the
//! other ranks in its rank table (`Peer::nccl_id`, hex); every rank then joins with
//! [`Nccl::new`] (`ncclCommInitRank`). [`Nccl::all_reduce_device`] and
//! [`Nccl::all_gather_device`] work on device buffers on the communicator's stream, which is
//! what the trainer's gradients are; the [`Collective`] impl (on `Rc<Nccl>`) stages host
//! buffers through the device for the small host-side exchanges.
//!
//! NCCL calls have no timeout of their own: a dead peer is noticed by the coordinator's
//! heartbeats, whose abort ends the process.
//!
//! The communicator is used through `&self`, so that one rank's gradient reducer (device
//! buffers, `weft-gpu`) and its host-side collective can share it in an `Rc`.

use std::rc::Rc;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nccl::safe::{Comm, Id, ReduceOp as NcclOp};

use crate::{check_gather, check_root, Collective, CollectiveError, ReduceOp};

/// The unique id of an NCCL communicator, made by rank 0 and shared by every rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NcclId(pub [u8; 128]);

impl NcclId {
    /// A new id (`ncclGetUniqueId`); rank 0 calls it.
    pub fn new() -> Result<Self, CollectiveError> {
        let id = Id::new().map_err(|e| CollectiveError::Setup {
            rank: 0,
            reason: format!("ncclGetUniqueId: {e:?}"),
        })?;
        let mut bytes = [0u8; 128];
        for (b, c) in bytes.iter_mut().zip(id.internal()) {
            *b = *c as u8;
        }
        Ok(Self(bytes))
    }

    /// As 256 hex digits, for the coordinator's rank table.
    pub fn to_hex(&self) -> String {
        crate::auth::hex(&self.0)
    }

    /// From [`NcclId::to_hex`].
    pub fn from_hex(hex: &str) -> Option<Self> {
        crate::auth::unhex(hex)?.try_into().ok().map(Self)
    }
}

/// This rank's NCCL communicator, on its own stream of GPU `device`.
#[derive(Debug)]
pub struct Nccl {
    comm: Comm,
    stream: Arc<CudaStream>,
    rank: usize,
    world_size: usize,
}

fn op_of(op: ReduceOp) -> NcclOp {
    match op {
        ReduceOp::Sum => NcclOp::Sum,
        ReduceOp::Mean => NcclOp::Avg,
        ReduceOp::Max => NcclOp::Max,
        ReduceOp::Min => NcclOp::Min,
    }
}

impl Nccl {
    /// Joins the communicator `id` as `rank` of `world_size` on GPU `device`.
    pub fn new(
        device: usize,
        rank: usize,
        world_size: usize,
        id: &NcclId,
    ) -> Result<Self, CollectiveError> {
        let setup = |what: &str, e: String| CollectiveError::Setup {
            rank,
            reason: format!("{what}: {e}"),
        };
        let ctx =
            CudaContext::new(device).map_err(|e| setup(&format!("GPU {device}"), e.to_string()))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| setup("creating a stream", e.to_string()))?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, b) in internal.iter_mut().zip(id.0) {
            *c = b as std::ffi::c_char;
        }
        let comm = Comm::from_rank(stream.clone(), rank, world_size, Id::uninit(internal))
            .map_err(|e| setup("ncclCommInitRank", format!("{e:?}")))?;
        Ok(Self {
            comm,
            stream,
            rank,
            world_size,
        })
    }

    /// The stream every operation is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The communicator, for operations on device memory that cudarc's slices do not own
    /// (burn's buffers, `weft-gpu`).
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// This rank's error for a failed `op`.
    pub fn error(&self, op: &'static str, e: impl std::fmt::Debug) -> CollectiveError {
        self.failed(op, e)
    }

    fn failed(&self, op: &'static str, e: impl std::fmt::Debug) -> CollectiveError {
        CollectiveError::Device {
            rank: self.rank,
            op,
            reason: format!("{e:?}"),
        }
    }

    /// All-reduce a device buffer in place, queued on [`Nccl::stream`].
    pub fn all_reduce_device(
        &self,
        buf: &mut CudaSlice<f32>,
        op: ReduceOp,
    ) -> Result<(), CollectiveError> {
        self.comm
            .all_reduce_in_place(buf, &op_of(op))
            .map(|_| ())
            .map_err(|e| self.failed("all-reduce", e))
    }

    /// All-gather device buffers (`recv` holds `world_size · send.len()`), queued on
    /// [`Nccl::stream`].
    pub fn all_gather_device(
        &self,
        send: &CudaSlice<f32>,
        recv: &mut CudaSlice<f32>,
    ) -> Result<(), CollectiveError> {
        self.comm
            .all_gather(send, recv)
            .map(|_| ())
            .map_err(|e| self.failed("all-gather", e))
    }

    fn to_device(&self, op: &'static str, host: &[f32]) -> Result<CudaSlice<f32>, CollectiveError> {
        self.stream.clone_htod(host).map_err(|e| self.failed(op, e))
    }

    fn to_host(
        &self,
        op: &'static str,
        dev: &CudaSlice<f32>,
        host: &mut [f32],
    ) -> Result<(), CollectiveError> {
        self.stream
            .memcpy_dtoh(dev, host)
            .and_then(|()| self.stream.synchronize())
            .map_err(|e| self.failed(op, e))
    }
}

/// Host buffers, staged through the device: the small exchanges of a step (its statistics,
/// the ITC features) and the initial parameter broadcast. Implemented for `Rc<Nccl>` so that
/// the gradient reducer of the same rank can hold the communicator too.
impl Collective for Rc<Nccl> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CollectiveError> {
        let mut dev = self.to_device("all-reduce", buf)?;
        self.all_reduce_device(&mut dev, op)?;
        self.to_host("all-reduce", &dev, buf)
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CollectiveError> {
        check_gather(self.rank, self.world_size, send, recv)?;
        let src = self.to_device("all-gather", send)?;
        let mut dst = self.to_device("all-gather", recv)?;
        self.all_gather_device(&src, &mut dst)?;
        self.to_host("all-gather", &dst, recv)
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        check_root(self.rank, self.world_size, root)?;
        let mut dev = self.to_device("broadcast", buf)?;
        self.comm
            .broadcast_in_place(&mut dev, root as i32)
            .map_err(|e| self.failed("broadcast", e))?;
        self.to_host("broadcast", &dev, buf)
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        let mut one = [0.0f32];
        self.all_reduce(&mut one, ReduceOp::Sum)
    }
}

#[cfg(test)]
mod tests {
    use super::NcclId;

    #[test]
    fn ids_round_trip_through_hex() {
        let mut bytes = [0u8; 128];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let id = NcclId(bytes);
        assert_eq!(NcclId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(NcclId::from_hex("zz"), None);
    }
}

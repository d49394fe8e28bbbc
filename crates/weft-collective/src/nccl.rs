//! NCCL through cudarc's bindings (the `cuda` feature): one rank per GPU.
//!
//! Rank 0 makes the communicator's unique id ([`NcclId::new`]); the coordinator hands it to the
//! other ranks in its rank table (`Peer::nccl_id`, hex); every rank then joins with
//! [`Nccl::new`] (`ncclCommInitRank`). [`Nccl::all_reduce_device`] and
//! [`Nccl::all_gather_device`] work on device buffers on the communicator's stream, which is
//! what the trainer's gradients are; the [`Collective`] impl (on `Rc<Nccl>`) stages host
//! buffers through the device for the small host-side exchanges.
//!
//! NCCL calls have no timeout of their own: a [`Watchdog`] watches every operation, from its
//! first call to the synchronisation that ends it, and aborts the communicator
//! (`ncclCommAbort`) when it runs past `dist.collective_timeout_s` or NCCL reports an
//! asynchronous error; the operation then fails with [`CollectiveError::Stalled`], and so does
//! every later one. The communicator handle is this crate's ([`RawComm`]), not cudarc's `Comm`,
//! which keeps its handle private and aborts it when dropped: an abort from the watchdog would
//! be followed by a second one.
//!
//! The communicator is used through `&self`, so that one rank's gradient reducer (device
//! buffers, `weft-gpu`) and its host-side collective can share it in an `Rc`.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::safe::Id;
use cudarc::nccl::{result, sys};

use crate::watchdog::{Abortable, Armed, Watchdog};
use crate::{check_gather, check_root, Collective, CollectiveError, ReduceOp};

/// How often the watchdog looks at the communicator.
const WATCH_POLL: Duration = Duration::from_millis(100);

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

/// An NCCL communicator handle, aborted once: by the watchdog, or when dropped.
struct RawComm {
    comm: sys::ncclComm_t,
    aborted: AtomicBool,
}

// SAFETY: NCCL allows `ncclCommGetAsyncError` and `ncclCommAbort` from any thread, also while
// another thread is inside an operation on the communicator (that is what the abort is for);
// the operations themselves come from the rank's one thread (`Nccl` is shared in an `Rc`).
#[allow(unsafe_code)]
unsafe impl Send for RawComm {}
// SAFETY: as for `Send`.
#[allow(unsafe_code)]
unsafe impl Sync for RawComm {}

impl RawComm {
    /// The handle, unless it was aborted.
    fn live(&self) -> Option<sys::ncclComm_t> {
        (!self.aborted.load(Ordering::SeqCst)).then_some(self.comm)
    }
}

impl Abortable for RawComm {
    fn async_error(&self) -> Option<String> {
        use sys::ncclResult_t::{ncclInProgress, ncclSuccess};
        let comm = self.live()?;
        let mut error = ncclSuccess;
        #[allow(unsafe_code)]
        // SAFETY: the handle is live (only an abort, from this same watchdog thread, ends it)
        // and `error` is a valid place for the result.
        let called = unsafe { sys::ncclCommGetAsyncError(comm, &mut error) };
        match (called, error) {
            (ncclSuccess, ncclSuccess | ncclInProgress) => None,
            (ncclSuccess, e) => Some(format!("{e:?}")),
            (c, _) => Some(format!("ncclCommGetAsyncError failed with {c:?}")),
        }
    }

    fn abort(&self) {
        if !self.aborted.swap(true, Ordering::SeqCst) {
            #[allow(unsafe_code)]
            // SAFETY: the handle is live, and this is its only abort (the swap above).
            let _ = unsafe { result::comm_abort(self.comm) };
        }
    }
}

impl Drop for RawComm {
    fn drop(&mut self) {
        self.abort();
    }
}

/// This rank's NCCL communicator, on its own stream of GPU `device`, under a watchdog.
pub struct Nccl {
    // Dropped first: the watchdog's thread ends before the communicator does.
    watchdog: Watchdog,
    comm: Arc<RawComm>,
    stream: Arc<CudaStream>,
    rank: usize,
    world_size: usize,
}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nccl")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("stopped", &self.watchdog.fired())
            .finish()
    }
}

fn op_of(op: ReduceOp) -> sys::ncclRedOp_t {
    match op {
        ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
        ReduceOp::Mean => sys::ncclRedOp_t::ncclAvg,
        ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
        ReduceOp::Min => sys::ncclRedOp_t::ncclMin,
    }
}

const F32: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;

impl Nccl {
    /// Joins the communicator `id` as `rank` of `world_size` on GPU `device`, with a watchdog
    /// that aborts an operation running longer than `timeout`.
    pub fn new(
        device: usize,
        rank: usize,
        world_size: usize,
        id: &NcclId,
        timeout: Duration,
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
        let too_many = |what: &str| setup("ncclCommInitRank", format!("{what} over i32"));
        let nranks = i32::try_from(world_size).map_err(|_| too_many("the world size"))?;
        let my_rank = i32::try_from(rank).map_err(|_| too_many("the rank"))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        #[allow(unsafe_code)]
        // SAFETY: `comm` is a valid place for the handle, which NCCL writes on success only;
        // it is read after that.
        let comm = unsafe {
            result::comm_init_rank(
                comm.as_mut_ptr(),
                nranks,
                sys::ncclUniqueId { internal },
                my_rank,
            )
            .map_err(|e| setup("ncclCommInitRank", format!("{e:?}")))?;
            comm.assume_init()
        };
        let comm = Arc::new(RawComm {
            comm,
            aborted: AtomicBool::new(false),
        });
        let watched: Arc<dyn Abortable> = comm.clone();
        Ok(Self {
            watchdog: Watchdog::spawn(watched, timeout, WATCH_POLL),
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

    /// Watches `op` until the guard drops: take it before the first call of an operation and
    /// hold it through the synchronisation that ends it. Fails once the watchdog has stopped
    /// the communicator.
    pub fn watch(&self, op: &'static str) -> Result<Armed<'_>, CollectiveError> {
        self.watchdog
            .arm(op)
            .map_err(|reason| self.stalled(op, reason))
    }

    /// This rank's error for a failed `op`: the watchdog's reason when it stopped the
    /// communicator (which is why the call failed), else `e`.
    pub fn error(&self, op: &'static str, e: impl std::fmt::Debug) -> CollectiveError {
        match self.watchdog.fired() {
            Some(reason) => self.stalled(op, reason),
            None => CollectiveError::Device {
                rank: self.rank,
                op,
                reason: format!("{e:?}"),
            },
        }
    }

    fn stalled(&self, op: &'static str, reason: String) -> CollectiveError {
        CollectiveError::Stalled {
            rank: self.rank,
            op,
            reason,
        }
    }

    /// The live handle and the stream, for a call of `op`.
    fn handle(
        &self,
        op: &'static str,
    ) -> Result<(sys::ncclComm_t, sys::cudaStream_t), CollectiveError> {
        let comm = self.comm.live().ok_or_else(|| {
            let why = self.watchdog.fired();
            self.stalled(
                op,
                why.unwrap_or_else(|| "the communicator was aborted".into()),
            )
        })?;
        Ok((comm, self.stream.cu_stream() as sys::cudaStream_t))
    }

    /// Queues an all-reduce of `count` f32 from device address `src` into `dst` (which may
    /// be `src`) on [`Nccl::stream`]. Watch it ([`Nccl::watch`]) through its synchronisation.
    ///
    /// # Safety
    /// `src` and `dst` must each address `count` f32 of device memory that stays allocated
    /// and untouched by other streams until [`Nccl::stream`] has been synchronised.
    #[allow(unsafe_code)]
    pub unsafe fn all_reduce_raw(
        &self,
        src: u64,
        dst: u64,
        count: usize,
        op: ReduceOp,
    ) -> Result<(), CollectiveError> {
        let (comm, stream) = self.handle("all-reduce")?;
        // SAFETY: the caller vouches for the buffers; the handle is live.
        let called = unsafe {
            result::all_reduce(
                src as *const std::ffi::c_void,
                dst as *mut std::ffi::c_void,
                count,
                F32,
                op_of(op),
                comm,
                stream,
            )
        };
        called.map(drop).map_err(|e| self.error("all-reduce", e))
    }

    /// All-reduce a device buffer in place, queued on [`Nccl::stream`].
    pub fn all_reduce_device(
        &self,
        buf: &mut CudaSlice<f32>,
        op: ReduceOp,
    ) -> Result<(), CollectiveError> {
        let count = buf.len();
        let (ptr, _record) = buf.device_ptr_mut(&self.stream);
        #[allow(unsafe_code)]
        // SAFETY: `buf` holds `count` f32 and is recorded as used by the stream (`_record`),
        // as cudarc's own collectives do.
        unsafe {
            self.all_reduce_raw(ptr, ptr, count, op)
        }
    }

    /// All-gather device buffers (`recv` holds `world_size · send.len()`), queued on
    /// [`Nccl::stream`].
    pub fn all_gather_device(
        &self,
        send: &CudaSlice<f32>,
        recv: &mut CudaSlice<f32>,
    ) -> Result<(), CollectiveError> {
        if recv.len() != send.len() * self.world_size {
            return Err(CollectiveError::Invalid {
                rank: self.rank,
                op: "all-gather",
                reason: format!(
                    "the receive buffer holds {} values, not {} ranks × {}",
                    recv.len(),
                    self.world_size,
                    send.len()
                ),
            });
        }
        let (comm, stream) = self.handle("all-gather")?;
        let count = send.len();
        let (src, _record_src) = send.device_ptr(&self.stream);
        let (dst, _record_dst) = recv.device_ptr_mut(&self.stream);
        #[allow(unsafe_code)]
        // SAFETY: `send` holds `count` f32 and `recv` world × `count` (checked above), both
        // recorded as used by the stream; the handle is live.
        let called = unsafe {
            result::all_gather(
                src as *const std::ffi::c_void,
                dst as *mut std::ffi::c_void,
                count,
                F32,
                comm,
                stream,
            )
        };
        called.map(drop).map_err(|e| self.error("all-gather", e))
    }

    fn broadcast_device(
        &self,
        buf: &mut CudaSlice<f32>,
        root: usize,
    ) -> Result<(), CollectiveError> {
        let (comm, stream) = self.handle("broadcast")?;
        let count = buf.len();
        let (ptr, _record) = buf.device_ptr_mut(&self.stream);
        #[allow(unsafe_code)]
        // SAFETY: `buf` holds `count` f32, recorded as used by the stream; the handle is
        // live; `root` was checked to be a rank.
        let called = unsafe {
            result::broadcast(
                ptr as *const std::ffi::c_void,
                ptr as *mut std::ffi::c_void,
                count,
                F32,
                root as i32,
                comm,
                stream,
            )
        };
        called.map(drop).map_err(|e| self.error("broadcast", e))
    }

    fn to_device(&self, op: &'static str, host: &[f32]) -> Result<CudaSlice<f32>, CollectiveError> {
        self.stream.clone_htod(host).map_err(|e| self.error(op, e))
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
            .map_err(|e| self.error(op, e))
    }
}

/// Host buffers, staged through the device: the small exchanges of a step (its statistics,
/// the ITC features) and the initial parameter broadcast. Implemented for `Rc<Nccl>` so that
/// the gradient reducer of the same rank can hold the communicator too. Each is watched from
/// its first copy to its last.
impl Collective for Rc<Nccl> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CollectiveError> {
        let _watch = self.watch("all-reduce")?;
        let mut dev = self.to_device("all-reduce", buf)?;
        self.all_reduce_device(&mut dev, op)?;
        self.to_host("all-reduce", &dev, buf)
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CollectiveError> {
        check_gather(self.rank, self.world_size, send, recv)?;
        let _watch = self.watch("all-gather")?;
        let src = self.to_device("all-gather", send)?;
        let mut dst = self.to_device("all-gather", recv)?;
        self.all_gather_device(&src, &mut dst)?;
        self.to_host("all-gather", &dst, recv)
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        check_root(self.rank, self.world_size, root)?;
        let _watch = self.watch("broadcast")?;
        let mut dev = self.to_device("broadcast", buf)?;
        self.broadcast_device(&mut dev, root)?;
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

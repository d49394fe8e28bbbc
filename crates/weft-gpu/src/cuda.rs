//! burn's CUDA backend for weft (the `cuda` feature): the checks before the first tensor,
//! the device of a rank, NCCL on burn's device buffers, device memory readings.

use std::rc::Rc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use cudarc::driver::{result as driver, sys as driver_sys};
use weft_collective::{Collective, CollectiveError, DeviceReduce, Nccl, NcclId, ReduceOp};

use crate::error::{visible_devices, GpuError};
use crate::libs::{links_for, loaded_paths, locate, search_dirs, Fix, LibraryCheck, Link};
use crate::select::select_device;

/// burn's CUDA backend (f32 by default; a tensor can hold bf16).
pub type Cuda = burn::backend::Cuda;
/// The training backend on a GPU.
pub type CudaTrain = burn::backend::Autodiff<Cuda>;
/// A burn CUDA device (a GPU index among the visible ones).
pub use burn::backend::cuda::CudaDevice;

fn check(what: &'static str, lib: &'static str) -> LibraryCheck {
    let tried = cudarc::get_lib_name_candidates(lib);
    let paths = open_as_cudarc(&tried, lib);
    let loaded = paths.is_some();
    let fix = if loaded {
        Fix::None
    } else {
        links_for(lib, &tried, &locate(lib, &search_dirs()), &mut opens)
    };
    LibraryCheck {
        what,
        lib,
        loaded,
        paths: paths.unwrap_or_default(),
        tried,
        fix,
    }
}

/// Open `lib` as cudarc does (the first of `tried` that opens) and give the files of it that
/// the loader mapped meanwhile (`/proc/self/maps`); None when no name opens.
fn open_as_cudarc(tried: &[String], lib: &str) -> Option<Vec<std::path::PathBuf>> {
    tried.iter().find_map(|name| {
        #[allow(unsafe_code)]
        // SAFETY: as cudarc's own probe (`is_culib_present`) does: opening runs the library's
        // initialisers, nothing of it is called, and it is closed on drop.
        let opened = unsafe { libloading::Library::new(name) }.ok()?;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let paths = loaded_paths(&maps, lib);
        drop(opened);
        Some(paths)
    })
}

/// Whether the shared library at `path` opens (then it is closed again).
fn opens(path: &std::path::Path) -> Result<(), String> {
    #[allow(unsafe_code)]
    // SAFETY: opening runs the library's initialisers, as cudarc's own probes and the CUDA
    // path do with the same libraries; nothing of it is called, and it is closed on drop.
    let lib = unsafe { libloading::Library::new(path) };
    lib.map(drop).map_err(|e| e.to_string())
}

/// The links that would make the libraries that do not open (driver, NVRTC, NCCL) open,
/// for each library whose file was found and opens by its path ([`links_for`]).
pub fn library_links() -> Vec<Link> {
    libraries()
        .into_iter()
        .flat_map(|c| match c.fix {
            Fix::Links(links) => links,
            _ => Vec::new(),
        })
        .collect()
}

/// The three libraries: the driver, NVRTC (cubecl compiles its kernels with it) and NCCL.
///
/// Checked once a process: the restart before a CUDA command ([`library_links`]), the
/// runtime check of a rank's device and the NCCL checks all read the same checks (a library
/// cannot become loadable within a process: the loader read `LD_LIBRARY_PATH` when it
/// started, and weft's links take effect by starting again).
pub fn libraries() -> [LibraryCheck; 3] {
    static CHECKS: std::sync::OnceLock<[LibraryCheck; 3]> = std::sync::OnceLock::new();
    CHECKS
        .get_or_init(|| {
            [
                check("the CUDA driver library (libcuda)", "cuda"),
                check(
                    "NVRTC, the CUDA runtime compiler that burn's kernels are built with (libnvrtc)",
                    "nvrtc",
                ),
                check("the NCCL library (libnccl)", "nccl"),
            ]
        })
        .clone()
}

/// One GPU as the driver describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// Index among the visible GPUs.
    pub index: usize,
    /// The driver's name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
}

/// The driver as found.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    /// The CUDA version the driver supports (major, minor).
    pub driver_cuda: (i32, i32),
    /// The CUDA version of the bindings this weft was built with.
    pub built_cuda: (u32, u32),
    /// GPUs visible.
    pub count: usize,
}

fn driver_error(op: impl Into<String>) -> impl FnOnce(driver::DriverError) -> GpuError {
    let op = op.into();
    move |e| GpuError::Driver {
        op,
        reason: e.to_string(),
    }
}

/// The driver and NVRTC load and the driver sees at least one GPU; no GPU context is made.
pub fn check_runtime() -> Result<Runtime, GpuError> {
    let [cuda, nvrtc, _] = libraries();
    cuda.ok()?;
    nvrtc.ok()?;
    driver::init().map_err(driver_error("cuInit"))?;
    let count = driver::device::get_count().map_err(driver_error("cuDeviceGetCount"))?;
    if count <= 0 {
        return Err(GpuError::NoDevice {
            visible: visible_devices(),
        });
    }
    let mut version = 0;
    #[allow(unsafe_code)]
    // SAFETY: cuDriverGetVersion writes one int through the pointer it is given.
    let status = unsafe { driver_sys::cuDriverGetVersion(&mut version) };
    if status != driver_sys::CUresult::CUDA_SUCCESS {
        return Err(GpuError::Driver {
            op: "cuDriverGetVersion".into(),
            reason: format!("{status:?}"),
        });
    }
    let built = driver_sys::CUDA_VERSION;
    Ok(Runtime {
        driver_cuda: (version / 1000, version % 1000 / 10),
        built_cuda: (built / 1000, built % 1000 / 10),
        count: count as usize,
    })
}

/// What the driver says of GPU `index` (no context is made).
pub fn gpu_info(index: usize) -> Result<GpuInfo, GpuError> {
    let op = |what: &str| format!("{what} of GPU {index}");
    let dev = driver::device::get(index as i32).map_err(driver_error(op("cuDeviceGet")))?;
    let name = driver::device::get_name(dev).map_err(driver_error(op("cuDeviceGetName")))?;
    #[allow(unsafe_code)]
    // SAFETY: `dev` is a device handle the driver just returned.
    let memory = unsafe { driver::device::total_mem(dev) };
    let memory = memory.map_err(driver_error(op("cuDeviceTotalMem")))?;
    let attr = |a| {
        #[allow(unsafe_code)]
        // SAFETY: as above; the attribute is a valid CUdevice_attribute.
        let value = unsafe { driver::device::get_attribute(dev, a) };
        value.map_err(driver_error(op("cuDeviceGetAttribute")))
    };
    use driver_sys::CUdevice_attribute as A;
    let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    Ok(GpuInfo {
        index,
        name,
        memory_bytes: memory as u64,
        compute_capability: (major, minor),
    })
}

/// The GPU of a rank of local rank `local_rank` ([`select_device`], `WEFT_DEVICE` first),
/// after [`check_runtime`].
pub fn rank_device(local_rank: usize) -> Result<(GpuInfo, CudaDevice), GpuError> {
    let rt = check_runtime()?;
    let wanted = std::env::var("WEFT_DEVICE").ok();
    let index = select_device(wanted.as_deref(), local_rank, rt.count)?;
    let info = gpu_info(index)?;
    Ok((info, CudaDevice::new(index)))
}

/// Bytes of GPU `index` in use (by every process: cuMemGetInfo's total − free) and its total.
pub fn memory_in_use(index: usize) -> Result<(u64, u64), GpuError> {
    let ctx = cudarc::driver::CudaContext::new(index)
        .map_err(driver_error(format!("the context of GPU {index}")))?;
    ctx.bind_to_thread()
        .map_err(driver_error(format!("binding GPU {index}")))?;
    let (free, total) = driver::mem_get_info().map_err(driver_error("cuMemGetInfo"))?;
    Ok(((total - free) as u64, total as u64))
}

/// A new NCCL unique id (rank 0), after checking that NCCL loads.
pub fn nccl_id() -> Result<NcclId, GpuError> {
    libraries()[2].ok()?;
    Ok(NcclId::new()?)
}

/// Join the NCCL communicator `id` as `rank` of `world` on GPU `index`; its watchdog aborts
/// an operation that runs longer than `timeout` (`dist.collective_timeout_s`).
pub fn nccl(
    index: usize,
    rank: usize,
    world: usize,
    id: &NcclId,
    timeout: std::time::Duration,
) -> Result<Rc<Nccl>, GpuError> {
    libraries()[2].ok()?;
    Ok(Rc::new(Nccl::new(index, rank, world, id, timeout)?))
}

/// Gradient averaging over NCCL for the trainer (a [`DeviceReduce`] of flat CUDA tensors).
pub struct NcclGrads {
    nccl: Rc<Nccl>,
    host_staging: bool,
}

impl NcclGrads {
    /// Over `nccl`; `host_staging` copies the gradients to the host and back around the
    /// all-reduce (`dist.nccl_host_staging`) instead of handing NCCL burn's buffer.
    pub fn new(nccl: Rc<Nccl>, host_staging: bool) -> Self {
        Self { nccl, host_staging }
    }
}

impl DeviceReduce<Tensor<Cuda, 1>> for NcclGrads {
    fn mean(
        &mut self,
        grads: Tensor<Cuda, 1>,
        bucket: usize,
    ) -> Result<Tensor<Cuda, 1>, CollectiveError> {
        if self.host_staging {
            let device = grads.device();
            let mut values = grads
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32 gradients");
            for chunk in values.chunks_mut(bucket.max(1)) {
                self.nccl.all_reduce(chunk, ReduceOp::Mean)?;
            }
            let n = values.len();
            return Ok(Tensor::from_data(TensorData::new(values, [n]), &device));
        }
        all_reduce_tensor(&self.nccl, grads, ReduceOp::Mean, bucket)
    }
}

/// All-reduce of a flat f32 CUDA tensor by NCCL on the tensor's own device memory, in buckets
/// of `bucket` elements, into a new tensor: no copy through the host.
///
/// cubecl does not expose its CUDA stream, so the hand-over is host-synchronous: wait for the
/// calling thread's cubecl stream (which computed the gradients), run NCCL on the
/// communicator's stream, wait for that. The resources of both buffers are held meanwhile,
/// which keeps cubecl from reusing their memory.
pub fn all_reduce_tensor(
    nccl: &Nccl,
    t: Tensor<Cuda, 1>,
    op: ReduceOp,
    bucket: usize,
) -> Result<Tensor<Cuda, 1>, CollectiveError> {
    let n = t.dims()[0];
    let device = t.device();
    let out = Tensor::<Cuda, 1>::empty([n], &device);
    let src = t.into_primitive().tensor();
    let dst = out.clone().into_primitive().tensor();
    if !src.is_contiguous() || !dst.is_contiguous() {
        return Err(nccl.error("all-reduce", "a flat gradient buffer is not contiguous"));
    }
    let src_res = src
        .client
        .get_resource(src.handle.clone())
        .map_err(|e| nccl.error("all-reduce (the gradients' buffer)", e))?;
    let dst_res = dst
        .client
        .get_resource(dst.handle.clone())
        .map_err(|e| nccl.error("all-reduce (the result's buffer)", e))?;
    let (src_ptr, dst_ptr) = (src_res.resource().ptr, dst_res.resource().ptr);
    let bytes = (n * std::mem::size_of::<f32>()) as u64;
    if src_res.resource().size < bytes || dst_res.resource().size < bytes {
        return Err(nccl.error("all-reduce", "a device buffer is smaller than its tensor"));
    }
    <Cuda as Backend>::sync(&device)
        .map_err(|e| nccl.error("all-reduce (waiting for the gradients)", e))?;
    // Watched from the first call to the synchronisation: NCCL has no timeout of its own.
    let _watch = nccl.watch("all-reduce")?;
    let bucket = bucket.max(1);
    let mut start = 0;
    while start < n {
        let len = bucket.min(n - start);
        let offset = (start * std::mem::size_of::<f32>()) as u64;
        #[allow(unsafe_code)]
        // SAFETY: both pointers point into live device allocations of at least `n` f32
        // (checked above), kept alive by `src_res`/`dst_res` until after the stream is
        // synchronised below, and cubecl's stream is idle (synchronised above); [start,
        // start + len) lies within them.
        unsafe {
            nccl.all_reduce_raw(src_ptr + offset, dst_ptr + offset, len, op)?
        };
        start += len;
    }
    nccl.stream()
        .synchronize()
        .map_err(|e| nccl.error("all-reduce (synchronising)", e))?;
    drop((src_res, dst_res));
    Ok(out)
}

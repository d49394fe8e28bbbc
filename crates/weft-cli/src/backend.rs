//! The backend of a command: burn's flex on the CPU, CUDA on the GPU of the rank, or wgpu on
//! the default adapter (`train.device`; CUDA and wgpu need a weft built with `--features cuda`
//! or `--features wgpu`).

use burn::tensor::backend::{AutodiffBackend, Backend};
use weft_collective::Collective;
use weft_config::{Config, Device, DistConfig};
use weft_train::grads::reduce::GradReduce;
use weft_train::CpuBackend;

/// The host collective and the device gradient reducer of a rank that joined NCCL.
pub type NcclParts<I> = (Box<dyn Collective>, Box<GradReduce<I>>);

/// The GPU of a rank and how it joins NCCL (`I`: the backend its gradients live on).
pub struct GpuRank<I: Backend> {
    /// Index among the visible GPUs.
    pub index: usize,
    /// The driver's name of it.
    pub name: String,
    /// A new NCCL unique id, hex (rank 0 of a job).
    pub nccl_id: fn() -> anyhow::Result<String>,
    /// Joins the communicator of id (hex) as `rank` of `world`, with the `[dist]` settings
    /// (`nccl_host_staging`, `collective_timeout_s` for its watchdog).
    #[allow(clippy::type_complexity)]
    pub join_nccl: Box<dyn Fn(usize, usize, &str, &DistConfig) -> anyhow::Result<NcclParts<I>>>,
}

/// Something to run on the backend of a config.
pub trait OnBackend {
    /// What it gives.
    type Output;
    /// Run on training backend `B` (its inner backend for inference) on `device`; `gpu` on
    /// CUDA.
    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        gpu: Option<GpuRank<B::InnerBackend>>,
    ) -> anyhow::Result<Self::Output>;
}

/// Run `job` on the backend `config.train.device` names, on the GPU of `local_rank`.
pub fn with_backend<J: OnBackend>(
    config: &Config,
    local_rank: usize,
    job: J,
) -> anyhow::Result<J::Output> {
    match config.train.device {
        Device::Cpu => job.run::<CpuBackend>(Default::default(), None),
        Device::Cuda => on_cuda(local_rank, job),
        Device::Wgpu => on_wgpu(job),
    }
}

#[cfg(not(feature = "wgpu"))]
fn on_wgpu<J: OnBackend>(_job: J) -> anyhow::Result<J::Output> {
    weft_gpu::require_wgpu()?;
    unreachable!("require_wgpu fails without the wgpu feature")
}

/// On the default wgpu adapter; a job's gradients go through the host and the TCP ring.
#[cfg(feature = "wgpu")]
fn on_wgpu<J: OnBackend>(job: J) -> anyhow::Result<J::Output> {
    use weft_gpu::wgpu;
    job.run::<wgpu::WgpuTrain>(wgpu::device(), None)
}

#[cfg(not(feature = "cuda"))]
fn on_cuda<J: OnBackend>(_local_rank: usize, _job: J) -> anyhow::Result<J::Output> {
    weft_gpu::require_cuda()?;
    unreachable!("require_cuda fails without the cuda feature")
}

#[cfg(feature = "cuda")]
fn on_cuda<J: OnBackend>(local_rank: usize, job: J) -> anyhow::Result<J::Output> {
    use anyhow::Context;
    use weft_gpu::cuda;
    let (info, device) = cuda::rank_device(local_rank)?;
    tracing::info!(
        "GPU {}: {} ({:.0} GiB, compute capability {}.{})",
        info.index,
        info.name,
        info.memory_bytes as f64 / (1u64 << 30) as f64,
        info.compute_capability.0,
        info.compute_capability.1
    );
    let index = info.index;
    let gpu = GpuRank::<cuda::Cuda> {
        index,
        name: info.name,
        nccl_id: || Ok(cuda::nccl_id()?.to_hex()),
        join_nccl: Box::new(move |rank, world, hex, dist| {
            let id = weft_collective::NcclId::from_hex(hex).with_context(|| {
                format!("rank {rank}: the NCCL id from the coordinator is not 256 hex digits")
            })?;
            let timeout = std::time::Duration::from_secs_f64(dist.collective_timeout_s);
            let nccl = cuda::nccl(index, rank, world, &id, timeout)?;
            let grads = cuda::NcclGrads::new(std::rc::Rc::clone(&nccl), dist.nccl_host_staging);
            Ok((
                Box::new(nccl) as Box<dyn Collective>,
                Box::new(grads) as Box<GradReduce<cuda::Cuda>>,
            ))
        }),
    };
    job.run::<cuda::CudaTrain>(device, Some(gpu))
}

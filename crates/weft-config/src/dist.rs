//! `[dist]`: how the processes of a data-parallel job meet and reduce their gradients.

use serde::{Deserialize, Serialize};

use crate::train::Device;

/// How the ranks of a job reduce gradients and gather ITC features (`dist.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistBackend {
    /// `nccl` when `train.device = "cuda"`, else `tcp`.
    Auto,
    /// weft's TCP ring (host buffers).
    Tcp,
    /// NCCL on the GPUs (needs `train.device = "cuda"`).
    Nccl,
}

/// `[dist]`: how the processes of a data-parallel job meet, watch each other and reduce
/// their gradients. `data.batch_size` is per rank: the global batch is `world_size` times it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistConfig {
    /// Gradients are all-reduced in buckets of this many MiB.
    pub bucket_mb: f64,
    /// A rank silent for this long is declared dead and the job aborts.
    pub heartbeat_timeout_s: f64,
    /// Seconds between two heartbeats of a worker.
    pub heartbeat_interval_s: f64,
    /// How long the coordinator waits for every rank to join, and a worker for the coordinator.
    pub rendezvous_timeout_s: f64,
    /// Bound of every collective operation (a step's all-reduce, a gather).
    pub collective_timeout_s: f64,
    /// `auto`, `tcp` or `nccl`: what carries the gradients and the ITC features.
    pub backend: DistBackend,
    /// NCCL only: copy the gradients to the host and back around the all-reduce instead of
    /// handing NCCL burn's device buffers (a fallback, and the baseline of its cost).
    pub nccl_host_staging: bool,
}

impl DistConfig {
    /// Whether a job of `device` reduces over NCCL (`backend`, with `auto` resolved).
    pub fn uses_nccl(&self, device: Device) -> bool {
        match self.backend {
            DistBackend::Auto => device == Device::Cuda,
            DistBackend::Tcp => false,
            DistBackend::Nccl => true,
        }
    }
}

impl Default for DistConfig {
    fn default() -> Self {
        Self {
            bucket_mb: 25.0,
            heartbeat_timeout_s: 30.0,
            heartbeat_interval_s: 1.0,
            rendezvous_timeout_s: 300.0,
            collective_timeout_s: 600.0,
            backend: DistBackend::Auto,
            nccl_host_staging: false,
        }
    }
}

//! `[train]`: optimiser, schedule, length, device and precision of a run.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a rank's tensors live (`train.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// burn's `flex` backend on the CPU cores (`train.threads`).
    Cpu,
    /// burn's CUDA backend: each rank takes the GPU of its local rank (`WEFT_DEVICE`, set by
    /// `weft launch`, overrides it). Needs a weft built with `--features cuda`.
    Cuda,
    /// burn's wgpu backend on the default adapter (Vulkan, Metal, DX12; Mesa's lavapipe
    /// without a GPU). Needs a weft built with `--features wgpu`.
    Wgpu,
}

/// The precision of the model's matrix products (`train.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// Mixed precision: the products of linear layers and attention take bf16 operands (f32
    /// accumulation where the backend does it); parameters, gradients, optimizer state,
    /// normalisation, softmax and losses stay f32 (PyTorch's `autocast(dtype=bfloat16)`).
    Bf16,
}

/// Where gradient averaging, clipping and AdamW run (`train.update_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOn {
    /// `host` on the CPU, `device` on a GPU.
    Auto,
    /// Flat host buffers, updated in parallel on the CPU cores (the CPU path: fastest there,
    /// bit-for-bit repeatable for any thread count).
    Host,
    /// Flat tensors on the training device: no copy of gradients or parameters to the host
    /// (the GPU path).
    Device,
}

/// `[train]`: optimiser, schedule, length and logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training split (ignored when `max_steps` is set).
    pub epochs: u64,
    /// Optimizer steps in all; 0 runs `epochs` epochs.
    pub max_steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Optimizer steps of linear warmup from 0 to `lr`.
    pub warmup_steps: u64,
    /// Decoupled weight decay of matrices (never biases, norms, embeddings or the temperature).
    pub weight_decay: f64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// AdamW epsilon.
    pub eps: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub grad_clip: f64,
    /// Micro-batches per optimizer step; their gradients are averaged.
    pub grad_accum: u64,
    /// Consecutive steps with a non-finite loss or gradient norm after which the run stops.
    pub max_nonfinite_steps: u64,
    /// Evaluate on the validation split every this many optimizer steps (0: only at the end).
    pub eval_every: u64,
    /// Log a line every this many steps when stderr is not a terminal.
    pub log_every: u64,
    /// CPU threads for the tensor backend (0: all cores).
    pub threads: usize,
    /// Where the model runs: `cpu` or `cuda`.
    pub device: Device,
    /// Precision of the matrix products: `f32` or `bf16` (mixed precision, f32 master weights).
    pub precision: Precision,
    /// Where gradient averaging, clipping and AdamW run: `auto`, `host` or `device`.
    pub update_on: UpdateOn,
    /// Start a new run from these weights instead of the random initialisation: a
    /// `model.safetensors`, a run directory or a checkpoint directory. Parameters are matched
    /// by name; the optimizer, schedule and data order start afresh. Ignored when the run
    /// resumes from one of its own checkpoints.
    pub init_from: Option<String>,
}

impl TrainConfig {
    /// Whether the update runs on the device's tensors (`update_on`, with `auto` resolved).
    pub fn update_on_device(&self) -> bool {
        match self.update_on {
            UpdateOn::Auto => self.device == Device::Cuda,
            UpdateOn::Host => false,
            UpdateOn::Device => true,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            max_steps: 0,
            lr: 5e-4,
            min_lr: 1e-5,
            warmup_steps: 100,
            weight_decay: 0.1,
            betas: [0.9, 0.98],
            eps: 1e-6,
            grad_clip: 1.0,
            grad_accum: 1,
            max_nonfinite_steps: 5,
            eval_every: 0,
            log_every: 10,
            threads: 0,
            device: Device::Cpu,
            precision: Precision::F32,
            update_on: UpdateOn::Auto,
            init_from: None,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Wgpu => "wgpu",
        })
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

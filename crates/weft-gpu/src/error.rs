//! The errors of weft-gpu: each names the library, variable, device or rank involved.

use weft_collective::CollectiveError;

/// What can go wrong between weft and a GPU.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// `train.device = "cuda"` in a weft built without the `cuda` feature.
    #[error(
        "train.device = \"cuda\": this weft was built without the cuda feature; build it with `cargo build --release --features cuda`"
    )]
    NotBuilt,
    /// `train.device = "wgpu"` in a weft built without the `wgpu` feature.
    #[error(
        "train.device = \"wgpu\": this weft was built without the wgpu feature; build it with `cargo build --release --features wgpu`"
    )]
    NotBuiltWgpu,
    /// A shared library that the CUDA path loads at run time is not found.
    #[error("{what} cannot be loaded: none of {tried} opens. {hint}")]
    Library {
        /// What it is, e.g. "the NCCL library (libnccl)".
        what: String,
        /// The file names tried, comma-separated.
        tried: String,
        /// What to do: the variable to set, the files found elsewhere.
        hint: String,
    },
    /// The driver loads but sees no GPU.
    #[error(
        "no CUDA GPU found: the driver loads but sees no device (CUDA_VISIBLE_DEVICES={visible})"
    )]
    NoDevice {
        /// `CUDA_VISIBLE_DEVICES` as set, or `unset`.
        visible: String,
    },
    /// A device variable that cannot be used.
    #[error("{variable}={value}: {reason}")]
    BadDevice {
        /// The variable, e.g. `WEFT_DEVICE`.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// More ranks on this node than visible GPUs.
    #[error(
        "local rank {local_rank} has no GPU of its own: {count} visible (CUDA_VISIBLE_DEVICES={visible}); start at most {count} ranks on this node, or give each one WEFT_DEVICE"
    )]
    TooFewDevices {
        /// This process's rank on its node.
        local_rank: usize,
        /// GPUs visible.
        count: usize,
        /// `CUDA_VISIBLE_DEVICES` as set, or `unset`.
        visible: String,
    },
    /// A call into the CUDA driver failed.
    #[error("CUDA driver, {op}: {reason}")]
    Driver {
        /// The call and its device.
        op: String,
        /// The driver's error.
        reason: String,
    },
    /// A collective failed.
    #[error(transparent)]
    Collective(#[from] CollectiveError),
}

/// `CUDA_VISIBLE_DEVICES` for messages.
pub fn visible_devices() -> String {
    std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
}

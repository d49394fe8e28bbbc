//! Which GPU a rank takes.

use crate::error::{visible_devices, GpuError};

/// The GPU index (among the visible ones) of a rank: `WEFT_DEVICE` when set (`weft launch`
/// sets it to the local rank); else GPU 0 when one GPU is visible (Slurm's `--gpus-per-task`
/// and per-rank `CUDA_VISIBLE_DEVICES` leave each rank one); else the rank's local rank.
pub fn select_device(
    weft_device: Option<&str>,
    local_rank: usize,
    visible: usize,
) -> Result<usize, GpuError> {
    if visible == 0 {
        return Err(GpuError::NoDevice {
            visible: visible_devices(),
        });
    }
    if let Some(raw) = weft_device.filter(|v| !v.trim().is_empty()) {
        let bad = |reason: String| GpuError::BadDevice {
            variable: "WEFT_DEVICE",
            value: raw.to_string(),
            reason,
        };
        let index: usize = raw
            .trim()
            .parse()
            .map_err(|_| bad("expected a GPU index (0, 1, ...)".into()))?;
        if index >= visible {
            return Err(bad(format!(
                "only {visible} GPU(s) are visible (CUDA_VISIBLE_DEVICES={})",
                visible_devices()
            )));
        }
        return Ok(index);
    }
    match (visible, local_rank) {
        (1, _) => Ok(0),
        (n, r) if r < n => Ok(r),
        (n, r) => Err(GpuError::TooFewDevices {
            local_rank: r,
            count: n,
            visible: visible_devices(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weft_device_wins_then_one_visible_gpu_then_the_local_rank() {
        assert_eq!(select_device(Some("3"), 0, 8).unwrap(), 3);
        assert_eq!(select_device(Some(" 1 "), 5, 2).unwrap(), 1);
        assert_eq!(select_device(None, 5, 1).unwrap(), 0);
        assert_eq!(select_device(Some(""), 2, 4).unwrap(), 2);
        assert_eq!(select_device(None, 3, 8).unwrap(), 3);
    }

    #[test]
    fn errors_name_the_variable_and_the_counts() {
        let e = select_device(Some("x"), 0, 2).unwrap_err().to_string();
        assert!(e.starts_with("WEFT_DEVICE=x: expected a GPU index"), "{e}");
        let e = select_device(Some("2"), 0, 2).unwrap_err().to_string();
        assert!(
            e.contains("WEFT_DEVICE=2: only 2 GPU(s) are visible"),
            "{e}"
        );
        let e = select_device(None, 4, 2).unwrap_err().to_string();
        assert!(
            e.starts_with("local rank 4 has no GPU of its own: 2 visible"),
            "{e}"
        );
        let e = select_device(None, 0, 0).unwrap_err().to_string();
        assert!(e.starts_with("no CUDA GPU found"), "{e}");
    }
}

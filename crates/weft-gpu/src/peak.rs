//! Peak dense FLOP rates of NVIDIA data-centre GPUs, for the MFU estimate of `weft doctor`.
//!
//! From NVIDIA's data sheets, dense (without 2:4 sparsity), boost clocks. A GPU that is not
//! listed gets no MFU unless `--peak-tflops` gives its peak.

/// Peak TFLOP/s of one GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// The model the table matched.
    pub model: &'static str,
    /// bf16 tensor cores, dense.
    pub bf16: Option<f64>,
    /// f32 without tensor cores (TF32 is not counted: burn's f32 products are not promised to
    /// use it).
    pub f32: f64,
}

/// `(substring of the device name, excluded substring, peak)`, most specific first.
const TABLE: &[(&str, &str, Peak)] = &[
    ("H200 NVL", "", peak("H200 NVL", Some(835.5), 60.0)),
    ("H200", "", peak("H200 SXM", Some(989.4), 66.9)),
    ("H100 NVL", "", peak("H100 NVL", Some(835.5), 60.0)),
    ("H100 PCIE", "", peak("H100 PCIe", Some(756.5), 51.2)),
    ("H100", "", peak("H100 SXM", Some(989.4), 66.9)),
    ("A100", "", peak("A100", Some(312.0), 19.5)),
    ("L40S", "", peak("L40S", Some(362.1), 91.6)),
    ("L4", "L40", peak("L4", Some(121.0), 30.3)),
    ("A10", "A100", peak("A10", Some(125.0), 31.2)),
    ("V100", "", peak("V100", None, 15.7)),
];

const fn peak(model: &'static str, bf16: Option<f64>, f32: f64) -> Peak {
    Peak { model, bf16, f32 }
}

/// The peak of the GPU the driver calls `name` (e.g. "NVIDIA H100 80GB HBM3").
pub fn peak_of(name: &str) -> Option<Peak> {
    let upper = name.to_uppercase();
    TABLE
        .iter()
        .find(|(key, not, _)| upper.contains(key) && (not.is_empty() || !upper.contains(not)))
        .map(|(_, _, p)| *p)
}

/// Model FLOPs utilisation: `flops` per step in `step_s` seconds over `peak_tflops`.
pub fn mfu(flops: f64, step_s: f64, peak_tflops: f64) -> f64 {
    flops / step_s / (peak_tflops * 1e12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_the_driver_gives_them() {
        assert_eq!(peak_of("NVIDIA H100 80GB HBM3").unwrap().model, "H100 SXM");
        assert_eq!(peak_of("NVIDIA H100 PCIe").unwrap().model, "H100 PCIe");
        assert_eq!(peak_of("NVIDIA H100 NVL").unwrap().model, "H100 NVL");
        assert_eq!(peak_of("NVIDIA H200").unwrap().bf16, Some(989.4));
        assert_eq!(peak_of("NVIDIA A100-SXM4-80GB").unwrap().model, "A100");
        assert_eq!(peak_of("NVIDIA A10").unwrap().model, "A10");
        assert_eq!(peak_of("NVIDIA L4").unwrap().model, "L4");
        assert_eq!(peak_of("NVIDIA L40S").unwrap().model, "L40S");
        assert_eq!(peak_of("Tesla V100-SXM2-16GB").unwrap().bf16, None);
        assert_eq!(peak_of("NVIDIA GeForce RTX 4090"), None);
    }

    #[test]
    fn mfu_is_achieved_over_peak() {
        // 1e15 FLOPs in 2 s on a 1000 TFLOP/s GPU: half of it.
        assert!((mfu(1e15, 2.0, 1000.0) - 0.5).abs() < 1e-12);
    }
}

//! Learning-rate schedule: linear warmup, then cosine decay to a floor.

use std::f64::consts::PI;

/// The schedule of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub peak: f64,
    /// Floor at the end of the decay.
    pub floor: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Optimizer steps in all.
    pub total: u64,
}

impl WarmupCosine {
    /// Learning rate of optimizer step `step` (from 0): `peak · (step + 1) / warmup` during
    /// warmup, then `floor + (peak - floor) · (1 + cos(π · t)) / 2` with `t` going from 0 to 1
    /// over the remaining steps.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let t = ((step - self.warmup) as f64 / span as f64).min(1.0);
        self.floor + (self.peak - self.floor) * 0.5 * (1.0 + (PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_floor() {
        let s = WarmupCosine {
            peak: 1.0,
            floor: 0.1,
            warmup: 4,
            total: 14,
        };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert_eq!(s.lr(4), 1.0);
        assert!((s.lr(9) - 0.55).abs() < 1e-12);
        assert!((s.lr(14) - 0.1).abs() < 1e-12);
        assert!((s.lr(100) - 0.1).abs() < 1e-12);
        let mut prev = f64::INFINITY;
        for step in 4..15 {
            assert!(s.lr(step) <= prev);
            prev = s.lr(step);
        }
    }
}

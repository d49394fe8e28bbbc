//! The checks serde cannot make: ranges, divisibility, and values that depend on each other.
//! Each returns the first wrong key and what is wrong with it, in a fixed order.

use crate::dist::DistBackend;
use crate::train::Device;
use crate::Config;

/// The largest count of steps, epochs or steps between events (2^40, about 10^12): beyond it,
/// step counters and buffers sized by the run's steps overflow or allocate absurdly.
pub const MAX_STEPS: u64 = 1 << 40;

/// The longest timeout or interval, in seconds (about 11.6 days); `Duration` itself panics
/// near 1.8e19 s.
pub const MAX_SECONDS: f64 = 1e6;

impl Config {
    /// Check values that serde cannot: returns the key and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let d = &self.data;
        let err = |k: &str, m: String| Err((k.to_string(), m));
        if d.image_size == 0 {
            return err("data.image_size", "must be at least 1".into());
        }
        if d.batch_size == 0 {
            return err("data.batch_size", "must be at least 1".into());
        }
        if d.workers == 0 {
            return err("data.workers", "must be at least 1".into());
        }
        if d.prefetch_batches == 0 {
            return err("data.prefetch_batches", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&d.max_bad_fraction) {
            return err(
                "data.max_bad_fraction",
                format!("must be between 0 and 1, found {}", d.max_bad_fraction),
            );
        }
        if d.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return err(
                "data.std",
                format!("every entry must be positive, found {:?}", d.std),
            );
        }
        let [s0, s1] = d.crop_scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return err(
                "data.crop_scale",
                format!("expected 0 < min <= max <= 1, found [{s0}, {s1}]"),
            );
        }
        let [r0, r1] = d.crop_ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return err(
                "data.crop_ratio",
                format!("expected 0 < min <= max, found [{r0}, {r1}]"),
            );
        }
        if d.max_image_bytes == 0 {
            return err("data.max_image_bytes", "must be at least 1".into());
        }
        if d.image_root.as_deref() == Some("") {
            return err(
                "data.image_root",
                "must not be empty (leave it out for the dataset's folder)".into(),
            );
        }
        for (key, col) in [
            ("data.image_column", &d.image_column),
            ("data.text_column", &d.text_column),
            ("data.key_column", &d.key_column),
        ] {
            if col.as_deref() == Some("") {
                return err(key, "must not be empty (leave it out instead)".into());
            }
        }
        self.validate_model()?;
        self.validate_train()?;
        self.validate_dist()?;
        self.validate_bounds()?;
        if self.model.text.context_length < 2 {
            return err(
                "model.text.context_length",
                "must be at least 2 (room for the special tokens)".into(),
            );
        }
        Ok(())
    }

    fn validate_model(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        let m = &self.model;
        if m.embed_dim == 0 {
            return err("model.embed_dim", "must be at least 1".into());
        }
        if !(m.logit_scale_init.is_finite() && m.logit_scale_init <= m.logit_scale_max) {
            return err(
                "model.logit_scale_init",
                format!(
                    "must be finite and at most model.logit_scale_max ({}), found {}",
                    m.logit_scale_max, m.logit_scale_init
                ),
            );
        }
        let v = &m.vision;
        if v.patch_size == 0 || !self.data.image_size.is_multiple_of(v.patch_size) {
            return err(
                "model.vision.patch_size",
                format!(
                    "must divide data.image_size ({}), found {}",
                    self.data.image_size, v.patch_size
                ),
            );
        }
        let l = &self.loss;
        let text_on = l.itc > 0.0 || l.itm > 0.0 || l.mlm > 0.0;
        let fusion_on = l.itm > 0.0 || l.mlm > 0.0;
        // Only the towers that the enabled objectives build are checked.
        let mut blocks = vec![("model.vision", v.width, v.depth, v.heads, v.mlp_ratio)];
        let t = &m.text;
        if text_on || l.lm > 0.0 {
            blocks.push(("model.text", t.width, t.depth, t.heads, t.mlp_ratio));
        }
        if fusion_on {
            let f = &m.fusion;
            blocks.push(("model.fusion", t.width, f.depth, f.heads, f.mlp_ratio));
        }
        if l.lm > 0.0 {
            let d = &m.decoder;
            blocks.push(("model.decoder", t.width, d.depth, d.heads, d.mlp_ratio));
        }
        for (section, width, depth, heads, mlp) in blocks {
            if width == 0 {
                return err(&format!("{section}.width"), "must be at least 1".into());
            }
            if depth == 0 {
                return err(&format!("{section}.depth"), "must be at least 1".into());
            }
            if heads == 0 || !width.is_multiple_of(heads) {
                return err(
                    &format!("{section}.heads"),
                    format!("must divide the width ({width}), found {heads}"),
                );
            }
            if mlp == 0 {
                return err(&format!("{section}.mlp_ratio"), "must be at least 1".into());
            }
        }
        for (key, w) in [
            ("loss.itc", l.itc),
            ("loss.itm", l.itm),
            ("loss.mlm", l.mlm),
            ("loss.lm", l.lm),
            ("loss.mim", l.mim),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return err(key, format!("must be a finite weight >= 0, found {w}"));
            }
        }
        if [l.itc, l.itm, l.mlm, l.lm, l.mim].iter().all(|w| *w == 0.0) {
            return err(
                "loss",
                "every objective weight is 0: enable at least one".into(),
            );
        }
        for (key, p, open) in [
            ("loss.itc_label_smoothing", l.itc_label_smoothing, false),
            ("loss.mlm_probability", l.mlm_probability, true),
            ("loss.mim_mask_ratio", l.mim_mask_ratio, true),
        ] {
            let ok = if open {
                p > 0.0 && p < 1.0
            } else {
                (0.0..1.0).contains(&p)
            };
            if !ok {
                let range = if open { "0 < x < 1" } else { "0 <= x < 1" };
                return err(key, format!("expected {range}, found {p}"));
            }
        }
        Ok(())
    }

    fn validate_dist(&self) -> Result<(), (String, String)> {
        let d = &self.dist;
        // Positive, and bounded: (key, value, largest, unit of the largest).
        let positive = [
            ("dist.bucket_mb", d.bucket_mb, 65536.0, ""),
            (
                "dist.heartbeat_timeout_s",
                d.heartbeat_timeout_s,
                MAX_SECONDS,
                " s",
            ),
            (
                "dist.heartbeat_interval_s",
                d.heartbeat_interval_s,
                MAX_SECONDS,
                " s",
            ),
            (
                "dist.rendezvous_timeout_s",
                d.rendezvous_timeout_s,
                MAX_SECONDS,
                " s",
            ),
            (
                "dist.collective_timeout_s",
                d.collective_timeout_s,
                MAX_SECONDS,
                " s",
            ),
        ];
        for (key, v, max, unit) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err((key.into(), format!("must be positive, found {v}")));
            }
            if v > max {
                return Err((
                    key.into(),
                    format!("must be at most {max}{unit}, found {v}"),
                ));
            }
        }
        if d.backend == DistBackend::Nccl && self.train.device != Device::Cuda {
            return Err((
                "dist.backend".into(),
                format!(
                    "nccl needs train.device = \"cuda\", found \"{}\"",
                    self.train.device
                ),
            ));
        }
        if d.heartbeat_interval_s >= d.heartbeat_timeout_s {
            return Err((
                "dist.heartbeat_interval_s".into(),
                format!(
                    "must be shorter than dist.heartbeat_timeout_s ({}), found {}",
                    d.heartbeat_timeout_s, d.heartbeat_interval_s
                ),
            ));
        }
        Ok(())
    }

    /// Upper bounds of counts, so that none overflows or allocates absurdly (durations are
    /// bounded with the rest of `[dist]`).
    fn validate_bounds(&self) -> Result<(), (String, String)> {
        let (d, t, c) = (&self.data, &self.train, &self.checkpoint);
        let counts = [
            ("data.image_size", d.image_size as u64, 1 << 15),
            ("data.batch_size", d.batch_size as u64, 1 << 24),
            ("data.workers", d.workers as u64, 1 << 12),
            ("data.prefetch_batches", d.prefetch_batches as u64, 1 << 12),
            ("data.shuffle_buffer", d.shuffle_buffer as u64, 1 << 30),
            (
                "model.text.context_length",
                self.model.text.context_length as u64,
                1 << 16,
            ),
            ("train.epochs", t.epochs, MAX_STEPS),
            ("train.max_steps", t.max_steps, MAX_STEPS),
            ("train.warmup_steps", t.warmup_steps, MAX_STEPS),
            ("train.grad_accum", t.grad_accum, 1 << 20),
            (
                "train.max_nonfinite_steps",
                t.max_nonfinite_steps,
                MAX_STEPS,
            ),
            ("train.eval_every", t.eval_every, MAX_STEPS),
            ("train.log_every", t.log_every, MAX_STEPS),
            ("train.threads", t.threads as u64, 1 << 16),
            ("checkpoint.every_steps", c.every_steps, MAX_STEPS),
            ("checkpoint.keep_last", c.keep_last as u64, 1 << 20),
        ];
        for (key, v, max) in counts {
            if v > max {
                return Err((key.into(), format!("must be at most {max}, found {v}")));
            }
        }
        Ok(())
    }

    fn validate_train(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        let t = &self.train;
        if t.epochs == 0 && t.max_steps == 0 {
            return err(
                "train.epochs",
                "must be at least 1 when train.max_steps is 0".into(),
            );
        }
        if t.init_from.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return err(
                "train.init_from",
                "is empty; leave it out to start from the random initialisation".into(),
            );
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return err("train.lr", format!("must be positive, found {}", t.lr));
        }
        if !(t.min_lr.is_finite() && t.min_lr >= 0.0 && t.min_lr <= t.lr) {
            return err(
                "train.min_lr",
                format!("expected 0 <= min_lr <= lr ({}), found {}", t.lr, t.min_lr),
            );
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return err(
                "train.weight_decay",
                format!("must be >= 0, found {}", t.weight_decay),
            );
        }
        if t.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return err(
                "train.betas",
                format!("expected 0 <= beta < 1, found {:?}", t.betas),
            );
        }
        if !(t.eps.is_finite() && t.eps > 0.0) {
            return err("train.eps", format!("must be positive, found {}", t.eps));
        }
        if !(t.grad_clip.is_finite() && t.grad_clip >= 0.0) {
            return err(
                "train.grad_clip",
                format!("must be >= 0, found {}", t.grad_clip),
            );
        }
        if t.grad_accum == 0 {
            return err("train.grad_accum", "must be at least 1".into());
        }
        if t.max_nonfinite_steps == 0 {
            return err("train.max_nonfinite_steps", "must be at least 1".into());
        }
        if t.log_every == 0 {
            return err("train.log_every", "must be at least 1".into());
        }
        Ok(())
    }
}

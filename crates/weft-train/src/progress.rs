//! Progress output: an indicatif bar with ETA and running loss on a terminal, plain tracing
//! lines otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::eval::Retrieval;
use crate::metrics::StepMetrics;

/// Progress of a run.
pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: u64,
    total: u64,
    running: Option<f64>,
}

impl Progress {
    /// A bar when `bar` is true, else a log line every `log_every` steps.
    pub fn new(total: u64, bar: bool, log_every: u64) -> Self {
        let bar = bar.then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} steps  ETA {eta}  {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b
        });
        Self {
            bar,
            log_every: log_every.max(1),
            total,
            running: None,
        }
    }

    /// Record a finished step.
    pub fn step(&mut self, m: &StepMetrics) {
        if m.loss.is_finite() {
            self.running = Some(match self.running {
                Some(r) => 0.9 * r + 0.1 * m.loss,
                None => m.loss,
            });
        }
        let running = self.running.unwrap_or(f64::NAN);
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.step);
                bar.set_message(format!(
                    "loss {running:.4}  lr {:.2e}  {:.0} samples/s",
                    m.lr, m.samples_per_s
                ));
            }
            None => {
                if m.step.is_multiple_of(self.log_every) || m.step == 1 || m.step == self.total {
                    let parts: Vec<String> =
                        m.parts.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                    tracing::info!(
                        "step {}/{} loss {:.4} ({}) lr {:.2e} grad_norm {:.3} {:.1} samples/s data_wait {:.0}%",
                        m.step,
                        self.total,
                        m.loss,
                        parts.join(", "),
                        m.lr,
                        m.grad_norm,
                        m.samples_per_s,
                        100.0 * m.data_wait_fraction
                    );
                }
            }
        }
    }

    /// Report an evaluation.
    pub fn eval(&self, step: u64, r: &Retrieval) {
        let line = format!(
            "eval step {step}: {} pairs, image->text R@1/5/10 {:.1}/{:.1}/{:.1}, text->image R@1/5/10 {:.1}/{:.1}/{:.1} (chance R@1 {:.2})",
            r.n, r.i2t_r1, r.i2t_r5, r.i2t_r10, r.t2i_r1, r.t2i_r5, r.t2i_r10, r.chance_r1
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => tracing::info!("{line}"),
        }
    }

    /// Stop drawing.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

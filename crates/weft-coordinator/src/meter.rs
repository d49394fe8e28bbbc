//! Global metrics of a job, aggregated by the coordinator from every rank's [`Progress`]:
//! samples/s over all ranks, and which rank waits longest for its data.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weft_data::Progress;

/// How often the coordinator logs the job's throughput.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a job did, over the steps every rank reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// Optimizer steps every rank reported.
    pub steps: u64,
    /// Real samples trained on, over all ranks.
    pub samples: u64,
    /// Sum over those steps of the slowest rank's step time, in seconds.
    pub seconds: f64,
}

impl JobReport {
    /// Samples per second over all ranks.
    pub fn samples_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.samples as f64 / self.seconds
        } else {
            0.0
        }
    }
}

#[derive(Debug, Default)]
struct StepSum {
    ranks: usize,
    samples: u64,
    seconds: f64,
    /// The largest fraction of its step a rank waited for data, and that rank.
    wait: (f64, usize),
}

/// Sums the ranks' reports step by step.
#[derive(Debug)]
pub struct Meter {
    world_size: usize,
    open: BTreeMap<u64, StepSum>,
    total: JobReport,
    window: JobReport,
    window_wait: (f64, usize),
    last_log: Instant,
}

impl Meter {
    /// A meter for `world_size` ranks.
    pub fn new(world_size: usize) -> Self {
        Self {
            world_size,
            open: BTreeMap::new(),
            total: JobReport::default(),
            window: JobReport::default(),
            window_wait: (0.0, 0),
            last_log: Instant::now(),
        }
    }

    /// Adds one rank's report; once every rank has reported a step, it counts, and a log line
    /// comes back when [`LOG_EVERY`] has passed since the last.
    pub fn record(&mut self, p: &Progress) -> Option<String> {
        let sum = self.open.entry(p.step).or_default();
        sum.ranks += 1;
        sum.samples += p.samples;
        sum.seconds = sum.seconds.max(p.seconds);
        let wait = if p.seconds > 0.0 {
            p.data_wait_s / p.seconds
        } else {
            0.0
        };
        if wait >= sum.wait.0 {
            sum.wait = (wait, p.rank);
        }
        if sum.ranks < self.world_size {
            return None;
        }
        let sum = self.open.remove(&p.step).expect("present");
        for r in [&mut self.total, &mut self.window] {
            r.steps += 1;
            r.samples += sum.samples;
            r.seconds += sum.seconds;
        }
        if sum.wait.0 >= self.window_wait.0 {
            self.window_wait = sum.wait;
        }
        if self.last_log.elapsed() < LOG_EVERY {
            return None;
        }
        let line = format!(
            "job: step {}, {:.1} samples/s over {} ranks; most data wait {:.0}% (rank {})",
            p.step,
            self.window.samples_per_s(),
            self.world_size,
            100.0 * self.window_wait.0,
            self.window_wait.1
        );
        self.window = JobReport::default();
        self.window_wait = (0.0, 0);
        self.last_log = Instant::now();
        Some(line)
    }

    /// Every step all ranks reported so far.
    pub fn report(&self) -> JobReport {
        self.total.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(rank: usize, step: u64, samples: u64, seconds: f64, wait: f64) -> Progress {
        Progress {
            rank,
            epoch: 0,
            epoch_step: step,
            consumed: 0,
            step,
            samples,
            seconds,
            data_wait_s: wait,
        }
    }

    #[test]
    fn a_step_counts_once_every_rank_reported_it() {
        let mut m = Meter::new(2);
        m.record(&p(0, 1, 8, 0.5, 0.0));
        assert_eq!(m.report().steps, 0);
        m.record(&p(0, 2, 8, 0.5, 0.0));
        m.record(&p(1, 1, 6, 1.0, 0.5));
        let r = m.report();
        assert_eq!((r.steps, r.samples), (1, 14));
        assert_eq!(r.seconds, 1.0);
        assert_eq!(r.samples_per_s(), 14.0);
        m.record(&p(1, 2, 8, 0.25, 0.0));
        assert_eq!(m.report().samples, 30);
        assert_eq!(m.report().seconds, 1.5);
    }
}

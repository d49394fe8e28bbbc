//! Who was late when a collective timed out.
//!
//! A rank whose collective times out ([`crate::Message::Waited`]) was waiting for a peer (the
//! ring's previous rank for what it receives, the next for what it sends); that peer may
//! itself be waiting for its own. In a ring every rank that is not late ends up waiting, each
//! for its neighbour, so the ranks that report form chains that end at the late one: the rank
//! waited for that reports no wait of its own. The coordinator collects reports for a short
//! grace after the first (every rank but one reporting ends it at once), then follows the
//! chain from the first report. Without this the rank that waited was blamed: its exit was
//! the first thing the coordinator saw.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The longest the coordinator collects reports after the first.
pub const MAX_GRACE: Duration = Duration::from_secs(5);

/// One rank's report that its collective timed out.
#[derive(Debug, Clone)]
pub struct Waited {
    /// The rank it waited for.
    pub peer: usize,
    /// The operation (`all-reduce`, ...).
    pub op: String,
    /// Its collective timeout.
    pub timeout: Duration,
    /// When the coordinator heard it.
    pub at: Instant,
}

/// What the reports say.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still collecting reports.
    Collecting,
    /// `rank` was late: the chain of waits ends there.
    Late {
        /// The late rank.
        rank: usize,
        /// Who waited for it, how long, in what.
        reason: String,
    },
    /// Every rank of a chain waited for another (a cycle: the network, not a rank).
    NoneLate {
        /// The rank that reported first.
        first: usize,
        /// What was seen.
        reason: String,
    },
}

/// The verdict on `waits` (by rank) in a job of `world` ranks at `now`; `None` without any
/// report. `last_step` gives a rank's last reported optimizer step, for the message.
pub fn judge(
    waits: &BTreeMap<usize, Waited>,
    world: usize,
    now: Instant,
    last_step: impl Fn(usize) -> Option<u64>,
) -> Option<Verdict> {
    let (&first, w) = waits.iter().min_by_key(|(&rank, w)| (w.at, rank))?;
    let grace = w.timeout.min(MAX_GRACE);
    if now < w.at + grace && waits.len() + 1 < world {
        return Some(Verdict::Collecting);
    }
    let mut waiter = first;
    let mut seen = vec![first];
    loop {
        let w = &waits[&waiter];
        match waits.get(&w.peer) {
            Some(_) if seen.contains(&w.peer) => {
                return Some(Verdict::NoneLate {
                    first,
                    reason: format!(
                        "ranks {seen:?} each timed out waiting for another of them in a \
                         collective (a network fault, not a late rank?)"
                    ),
                })
            }
            Some(_) => {
                seen.push(w.peer);
                waiter = w.peer;
            }
            None => {
                let step = last_step(w.peer)
                    .map(|s| format!(" (its last reported step: {s})"))
                    .unwrap_or_default();
                return Some(Verdict::Late {
                    rank: w.peer,
                    reason: format!(
                        "rank {waiter} waited {:?} for it in {} (dist.collective_timeout_s){step}",
                        w.timeout, w.op
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waited(peer: usize, at: Instant) -> Waited {
        Waited {
            peer,
            op: "all-reduce".into(),
            timeout: Duration::from_secs(2),
            at,
        }
    }

    #[test]
    fn the_chain_of_waits_ends_at_the_late_rank() {
        let t = Instant::now();
        let steps = |r: usize| Some(10 + r as u64);
        // Ring of 4, rank 1 late: 2 waits for 1, 3 for 2, 0 for 3; 3 reports first.
        let mut waits = BTreeMap::new();
        waits.insert(3, waited(2, t));
        // Within the grace, with two of four reporting: still collecting.
        assert_eq!(judge(&waits, 4, t, steps), Some(Verdict::Collecting));
        waits.insert(2, waited(1, t + Duration::from_millis(300)));
        waits.insert(0, waited(3, t + Duration::from_millis(600)));
        // Every rank but one has reported: judged at once, the waiter of the waiter blamed
        // not, the rank at the chain's end is.
        let v = judge(&waits, 4, t + Duration::from_millis(700), steps).unwrap();
        assert_eq!(
            v,
            Verdict::Late {
                rank: 1,
                reason: "rank 2 waited 2s for it in all-reduce (dist.collective_timeout_s) \
                         (its last reported step: 11)"
                    .into()
            }
        );
    }

    #[test]
    fn after_the_grace_the_reports_so_far_decide() {
        let t = Instant::now();
        let mut waits = BTreeMap::new();
        waits.insert(0, waited(1, t));
        let none = |_| None;
        assert_eq!(judge(&waits, 3, t, none), Some(Verdict::Collecting));
        let later = t + Duration::from_secs(2);
        match judge(&waits, 3, later, none) {
            Some(Verdict::Late { rank: 1, reason }) => assert!(reason.starts_with("rank 0 waited")),
            other => panic!("{other:?}"),
        }
        assert_eq!(judge(&BTreeMap::new(), 3, later, none), None);
    }

    #[test]
    fn a_cycle_of_waits_blames_no_rank() {
        let t = Instant::now();
        let mut waits = BTreeMap::new();
        waits.insert(0, waited(1, t));
        waits.insert(1, waited(0, t + Duration::from_millis(5)));
        match judge(&waits, 2, t + Duration::from_millis(10), |_| None) {
            Some(Verdict::NoneLate { first: 0, reason }) => {
                assert!(reason.contains("[0, 1]"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}

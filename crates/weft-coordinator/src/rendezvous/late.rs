//! Who was late when a collective timed out.
//!
//! A rank whose collective times out ([`crate::Message::Waited`]) was waiting for a peer (the
//! ring's previous rank for what it receives, the next for what it sends); that peer may
//! itself be waiting for its own. In a ring every rank that is not late ends up waiting, each
//! for its neighbour, so the ranks that report form chains that end at the late one: the rank
//! waited for that reports no wait of its own. A report that names no peer (NCCL's watchdog
//! knows only that the operation ran too long) ends the chain at the one rank that reported
//! nothing, if there is exactly one. The coordinator collects reports for a short
//! grace after the first (all ranks reporting ends it at once: a cycle; a rank that has not
//! reported yet may still, when the network rather than a rank is at fault), then follows the
//! chain from the first report. Without this the rank that waited was blamed: its exit was
//! the first thing the coordinator saw.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The longest the coordinator collects reports after the first.
pub const MAX_GRACE: Duration = Duration::from_secs(5);

/// One rank's report that its collective timed out.
#[derive(Debug, Clone)]
pub struct Waited {
    /// The rank it waited for; `None` when its collective does not say (NCCL's watchdog).
    pub peer: Option<usize>,
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
    if now < w.at + grace && waits.len() < world {
        return Some(Verdict::Collecting);
    }
    let mut waiter = first;
    let mut seen = vec![first];
    loop {
        let w = &waits[&waiter];
        let Some(peer) = w.peer else {
            return Some(unnamed_peer(waits, world, first, waiter, &last_step));
        };
        if waits.contains_key(&peer) {
            if seen.contains(&peer) {
                return Some(Verdict::NoneLate {
                    first,
                    reason: format!(
                        "ranks {seen:?} each timed out waiting for another of them in a \
                         collective (a network fault, not a late rank?)"
                    ),
                });
            }
            seen.push(peer);
            waiter = peer;
            continue;
        }
        return Some(Verdict::Late {
            rank: peer,
            reason: format!(
                "rank {waiter} waited {:?} for it in {} (dist.collective_timeout_s){}",
                w.timeout,
                w.op,
                step_note(&last_step, peer)
            ),
        });
    }
}

/// The verdict when `waiter` does not know whom it waited for: the one rank that reported no
/// wait, if there is exactly one.
fn unnamed_peer(
    waits: &BTreeMap<usize, Waited>,
    world: usize,
    first: usize,
    waiter: usize,
    last_step: &impl Fn(usize) -> Option<u64>,
) -> Verdict {
    let w = &waits[&waiter];
    let silent: Vec<usize> = (0..world).filter(|r| !waits.contains_key(r)).collect();
    let waited = format!(
        "rank {waiter}'s {} ran past {:?} (dist.collective_timeout_s)",
        w.op, w.timeout
    );
    match silent[..] {
        [rank] => Verdict::Late {
            rank,
            reason: format!(
                "{waited}, and it is the only rank not waiting{}",
                step_note(last_step, rank)
            ),
        },
        _ => Verdict::NoneLate {
            first,
            reason: format!("{waited}; ranks {silent:?} did not say they waited"),
        },
    }
}

fn step_note(last_step: &impl Fn(usize) -> Option<u64>, rank: usize) -> String {
    last_step(rank)
        .map(|s| format!(" (its last reported step: {s})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waited(peer: usize, at: Instant) -> Waited {
        Waited {
            peer: Some(peer),
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
        // Within the grace: still collecting, even once every rank but one has reported (a
        // partitioned network has them all report).
        assert_eq!(judge(&waits, 4, t, steps), Some(Verdict::Collecting));
        waits.insert(2, waited(1, t + Duration::from_millis(300)));
        waits.insert(0, waited(3, t + Duration::from_millis(600)));
        let within = t + Duration::from_millis(700);
        assert_eq!(judge(&waits, 4, within, steps), Some(Verdict::Collecting));
        // After it, the waiter of the waiter is blamed not, the rank at the chain's end is.
        let v = judge(&waits, 4, t + Duration::from_secs(2), steps).unwrap();
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
    fn without_a_named_peer_the_one_rank_not_waiting_is_late() {
        let t = Instant::now();
        let mut waits = BTreeMap::new();
        let unnamed = |at| Waited {
            peer: None,
            ..waited(0, at)
        };
        waits.insert(0, unnamed(t));
        waits.insert(2, unnamed(t));
        let later = t + Duration::from_secs(3);
        match judge(&waits, 3, later, |_| Some(7)) {
            Some(Verdict::Late { rank: 1, reason }) => assert_eq!(
                reason,
                "rank 0's all-reduce ran past 2s (dist.collective_timeout_s), and it is the \
                 only rank not waiting (its last reported step: 7)"
            ),
            other => panic!("{other:?}"),
        }
        waits.remove(&2);
        match judge(&waits, 3, later, |_| None) {
            Some(Verdict::NoneLate { first: 0, reason }) => {
                assert!(
                    reason.ends_with("ranks [1, 2] did not say they waited"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
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

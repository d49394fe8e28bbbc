//! Every rank of a job must resume from the same checkpoint: the run directory is shared, but
//! a stale copy on one node (or a `--resume PATH` that differs) would have that rank train on
//! with other parameters. Each rank shares the step and a digest of the trainer state it read
//! (a few floats, once), and all of them fail, naming both ranks, when any differs.
//!
//! The checkpoint's files are verified once, not once a rank: each rank hashes a share of
//! them ([`resolve_together`]), and a damaged file found by any rank makes every rank pass
//! over that checkpoint together.

use std::path::Path;

use sha2::{Digest, Sha256};
use weft_checkpoint::load::{open_state, resolve_by, PassedOver};
use weft_checkpoint::{Checkpoint, CheckpointError, Resume};
use weft_collective::{Collective, ReduceOp};

use crate::error::TrainError;

/// Floats a rank shares: a presence flag, the step in four 16-bit words, a 48-bit digest in
/// three (every value below 2^24 is exact in an f32).
const WORDS: usize = 8;

/// What one rank resumes from: `None` for a fresh start, else (step, digest).
type Resumed = Option<(u64, u64)>;

/// The checkpoint every rank of the job resumes from ([`weft_checkpoint::resolve`]'s rules),
/// with its files verified once: each rank hashes its share ([`Checkpoint::verify_files`]).
/// A damaged file found by any rank makes every rank pass over that checkpoint for the one
/// before (`--resume auto`) or fail (`--resume PATH`), in step: whether another round comes
/// depends only on what the collective returns.
pub fn resolve_together(
    run_dir: &Path,
    resume: &Resume,
    collective: &mut dyn Collective,
) -> Result<Option<Checkpoint>, TrainError> {
    let (rank, world) = (collective.rank(), collective.world_size());
    let mut passed = PassedOver::default();
    loop {
        // Marker and trainer state only: the files are hashed between the ranks below.
        let pick = resolve_by(run_dir, resume, open_state, &mut passed)?;
        check_same_resume(collective, &pick)?;
        let Some(ckpt) = pick else {
            return Ok(None);
        };
        let mine = ckpt.verify_files(rank, world);
        let mut first_bad = [if mine.is_err() { rank } else { world } as f32];
        collective.all_reduce(&mut first_bad, ReduceOp::Min)?;
        let bad = first_bad[0] as usize;
        if bad >= world {
            return Ok(Some(ckpt));
        }
        let why = mine.err().unwrap_or(CheckpointError::DamagedElsewhere {
            dir: ckpt.dir.clone(),
            rank: bad,
        });
        if *resume != Resume::Auto {
            return Err(why.into());
        }
        passed.pass(&ckpt.dir, &why);
    }
}

/// Checks that every rank resumes from what rank 0 resumes from.
fn check_same_resume(
    collective: &mut dyn Collective,
    resumed: &Option<Checkpoint>,
) -> Result<(), TrainError> {
    let (rank, world) = (collective.rank(), collective.world_size());
    if world == 1 {
        return Ok(());
    }
    let mine = resumed.as_ref().map(|c| {
        let state = serde_json::to_vec(&c.state).expect("a trainer state serialises");
        let digest: [u8; 32] = Sha256::digest(state).into();
        let mut d = [0u8; 8];
        d[2..].copy_from_slice(&digest[..6]);
        (c.state.step, u64::from_be_bytes(d))
    });
    let mut all = vec![0f32; WORDS * world];
    collective.all_gather(&encode(mine), &mut all)?;
    let ranks: Vec<Resumed> = all.chunks(WORDS).map(decode).collect();
    let Some(other) = (0..world).find(|&r| ranks[r] != ranks[0]) else {
        return Ok(());
    };
    let (first, second) = if rank == other { (rank, 0) } else { (0, other) };
    let path = resumed
        .as_ref()
        .map_or("no checkpoint".into(), |c| c.dir.display().to_string());
    Err(TrainError::ResumeMismatch {
        rank: first,
        from: describe(ranks[first]),
        other: second,
        other_from: describe(ranks[second]),
        here: format!("rank {rank}: {path}"),
    })
}

fn describe(r: Resumed) -> String {
    match r {
        None => "a fresh start".into(),
        Some((step, digest)) => format!("step {step} (state digest {digest:012x})"),
    }
}

fn encode(r: Resumed) -> [f32; WORDS] {
    let mut out = [0f32; WORDS];
    if let Some((step, digest)) = r {
        out[0] = 1.0;
        for i in 0..4 {
            out[1 + i] = ((step >> (48 - 16 * i)) & 0xffff) as f32;
        }
        for i in 0..3 {
            out[5 + i] = ((digest >> (32 - 16 * i)) & 0xffff) as f32;
        }
    }
    out
}

fn decode(words: &[f32]) -> Resumed {
    if words[0] == 0.0 {
        return None;
    }
    let word = |i: usize| words[i] as u64;
    let step = (1..5).fold(0u64, |acc, i| (acc << 16) | word(i));
    let digest = (5..8).fold(0u64, |acc, i| (acc << 16) | word(i));
    Some((step, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_rank_resumes_from_round_trips_through_floats() {
        for r in [
            None,
            Some((0, 0)),
            Some((u64::MAX, (1 << 48) - 1)),
            Some((8, 0xabc)),
        ] {
            assert_eq!(decode(&encode(r)), r);
        }
    }
}

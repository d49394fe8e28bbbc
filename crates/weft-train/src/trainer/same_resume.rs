//! Every rank of a job must resume from the same checkpoint: the run directory is shared, but
//! a stale copy on one node (or a `--resume PATH` that differs) would have that rank train on
//! with other parameters. Each rank shares the step and a digest of the trainer state it read
//! (a few floats, once), and all of them fail, naming both ranks, when any differs.
//!
//! The checkpoint's files are verified once, not once a rank: each rank hashes a share of
//! them ([`resolve_together`]), and a damaged file found by any rank makes every rank pass
//! over that checkpoint together.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use weft_checkpoint::load::{committed, open_state};
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
    if world == 1 {
        return Ok(weft_checkpoint::resolve(run_dir, resume)?);
    }
    let mut passed: Vec<PathBuf> = Vec::new();
    let mut tried: Vec<String> = Vec::new();
    loop {
        let pick = pick(run_dir, resume, &mut passed, &mut tried)?;
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
        tracing::warn!("checkpoint {} is unusable: {why}", ckpt.dir.display());
        tried.push(why.to_string());
        passed.push(ckpt.dir);
    }
}

/// What this rank would resume from, its files not hashed: with `--resume auto` the newest
/// committed checkpoint not `passed` whose marker and trainer state check out (one that does
/// not is passed over too).
fn pick(
    run_dir: &Path,
    resume: &Resume,
    passed: &mut Vec<PathBuf>,
    tried: &mut Vec<String>,
) -> Result<Option<Checkpoint>, CheckpointError> {
    match resume {
        Resume::Path(p) => open_state(p).map(Some),
        Resume::Auto => {
            let found = committed(run_dir)?;
            for (_, dir) in &found {
                if passed.contains(dir) {
                    continue;
                }
                match open_state(dir) {
                    Ok(c) => {
                        if !tried.is_empty() {
                            tracing::warn!("resuming from the older checkpoint {}", dir.display());
                        }
                        return Ok(Some(c));
                    }
                    Err(e) => {
                        tracing::warn!("checkpoint {} is unusable: {e}", dir.display());
                        tried.push(e.to_string());
                        passed.push(dir.clone());
                    }
                }
            }
            if found.is_empty() {
                Ok(None)
            } else {
                Err(CheckpointError::NoCheckpoint {
                    dir: weft_checkpoint::files::checkpoints_dir(run_dir),
                    tried: tried.clone(),
                })
            }
        }
        // A fresh start: no files to hash.
        other => weft_checkpoint::resolve(run_dir, other),
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

//! A world of one rank: every collective is the identity.

use crate::{check_gather, check_root, Collective, CollectiveError, ReduceOp};

/// The only rank of a one-process job. All-reduce leaves the buffer as it is (the sum, mean,
/// maximum and minimum over one rank), all-gather copies, broadcast and barrier do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleRank;

impl Collective for SingleRank {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce(&mut self, _buf: &mut [f32], _op: ReduceOp) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CollectiveError> {
        check_gather(0, 1, send, recv)?;
        recv.copy_from_slice(send);
        Ok(())
    }

    fn broadcast(&mut self, _buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        check_root(0, 1, root)
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        Ok(())
    }
}

//! ITC's feature all-gather over the job's collective ([`CollectiveGather`], a
//! [`FeatureGather`]): the global batch's embeddings and ITM's tokens.

use weft_collective::{Collective, CollectiveError, ReduceOp};
use weft_model::FeatureGather;

/// [`FeatureGather`] over a collective. The gather cannot fail inside the model's loss code,
/// so a failure is kept, the gather returns zeros, and the trainer reads the failure with
/// [`CollectiveGather::finish`] right after the forward pass.
pub struct CollectiveGather<'a> {
    collective: &'a mut dyn Collective,
    error: Option<CollectiveError>,
}

impl<'a> CollectiveGather<'a> {
    /// Gather over `collective`.
    pub fn new(collective: &'a mut dyn Collective) -> Self {
        Self {
            collective,
            error: None,
        }
    }

    /// The first failure of a gather, if any.
    pub fn finish(self) -> Result<(), CollectiveError> {
        self.error.map_or(Ok(()), Err)
    }
}

impl FeatureGather for CollectiveGather<'_> {
    fn rank(&self) -> usize {
        self.collective.rank()
    }

    fn world_size(&self) -> usize {
        self.collective.world_size()
    }

    fn all_gather(&mut self, local: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; local.len() * self.collective.world_size()];
        if self.error.is_none() {
            if let Err(e) = self.collective.all_gather(local, &mut out) {
                self.error = Some(e);
            }
        }
        out
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) {
        if self.error.is_none() {
            if let Err(e) = self.collective.all_reduce(buf, ReduceOp::Sum) {
                self.error = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_collective::SingleRank;

    #[test]
    fn single_rank_gathers_its_own() {
        let mut one = SingleRank;
        let mut gather = CollectiveGather::new(&mut one);
        assert_eq!(gather.all_gather(&[4.0, 5.0]), [4.0, 5.0]);
        gather.finish().unwrap();
    }
}

//! The data-parallel parts of a training step: the gradient all-reduce in buckets, the
//! feature all-gather of ITC over the global batch. (That every rank reads the same dataset is
//! checked by the coordinator, which hands out the data plan.)
//!
//! Every rank runs the same code in the same order; a one-process run goes through it with
//! [`weft_collective::SingleRank`], where every operation is the identity.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use weft_collective::{Collective, CollectiveError, DeviceReduce, ReduceOp};
use weft_model::FeatureGather;

use crate::update::{to_device, to_host, Grads};

/// Averages flat gradients that live on the training device over the ranks, without taking
/// them through the host (NCCL on the GPUs' memory: `weft_gpu::cuda::NcclGrads`).
pub type GradReduce<B> = dyn DeviceReduce<Tensor<B, 1>>;

/// Average flat gradients over the ranks where they are: host buffers over `collective`;
/// device tensors through `device` when given, else through the host and `collective` (the
/// staging a GPU job without NCCL, or with `dist.nccl_host_staging`, pays).
pub fn all_reduce_grads<B: Backend>(
    collective: &mut dyn Collective,
    device: Option<&mut GradReduce<B>>,
    grads: Grads<B>,
    bucket: usize,
) -> Result<Grads<B>, CollectiveError> {
    if collective.world_size() == 1 {
        return Ok(grads);
    }
    match grads {
        Grads::Host(mut v) => {
            all_reduce_mean(collective, &mut v, bucket)?;
            Ok(Grads::Host(v))
        }
        Grads::Device(t) => match device {
            Some(reduce) => reduce.mean(t, bucket).map(Grads::Device),
            None => {
                let at = t.device();
                let mut v = to_host(t);
                all_reduce_mean(collective, &mut v, bucket)?;
                Ok(Grads::Device(to_device(v, &at)))
            }
        },
    }
}

/// Elements of one all-reduce bucket of `bucket_mb` MiB of `f32`.
pub fn bucket_elems(bucket_mb: f64) -> usize {
    ((bucket_mb * (1u64 << 20) as f64) / 4.0).max(1.0) as usize
}

/// Average `grads` over the ranks, in buckets of `bucket` elements (one all-reduce each, in
/// parameter order). burn gives the gradients only after the whole backward pass, so the
/// buckets bound the size of one transfer rather than overlap it with the backward pass.
pub fn all_reduce_mean(
    collective: &mut dyn Collective,
    grads: &mut [f32],
    bucket: usize,
) -> Result<(), CollectiveError> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    for chunk in grads.chunks_mut(bucket.max(1)) {
        collective.all_reduce(chunk, ReduceOp::Mean)?;
    }
    Ok(())
}

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
    fn buckets_of_megabytes() {
        assert_eq!(bucket_elems(25.0), 25 * (1 << 20) / 4);
        assert_eq!(bucket_elems(0.0), 1);
    }

    #[test]
    fn single_rank_is_the_identity() {
        let mut one = SingleRank;
        let mut g = vec![1.0, 2.0, 3.0];
        all_reduce_mean(&mut one, &mut g, 2).unwrap();
        assert_eq!(g, [1.0, 2.0, 3.0]);
        let mut gather = CollectiveGather::new(&mut one);
        assert_eq!(gather.all_gather(&[4.0, 5.0]), [4.0, 5.0]);
        gather.finish().unwrap();
    }
}

//! The gradient all-reduce of a data-parallel step, in buckets: host buffers over the job's
//! collective; device tensors through a [`GradReduce`] (NCCL on the GPUs' memory) or, without
//! one, through the host.
//!
//! Every rank runs the same code in the same order; a one-process run goes through it with
//! [`weft_collective::SingleRank`], where every operation is the identity.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use weft_collective::{Collective, CollectiveError, DeviceReduce, ReduceOp};

use crate::grads::flat::{to_device, to_host, Grads};

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

/// Which parameters had a gradient on any rank (one all-reduce of flags).
pub fn any_rank_has_grad(
    collective: &mut dyn Collective,
    has_grad: &[bool],
) -> Result<Vec<bool>, CollectiveError> {
    let mut flags: Vec<f32> = has_grad.iter().map(|&h| f32::from(u8::from(h))).collect();
    if collective.world_size() > 1 {
        collective.all_reduce(&mut flags, ReduceOp::Max)?;
    }
    Ok(flags.iter().map(|&f| f > 0.0).collect())
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
        assert_eq!(
            any_rank_has_grad(&mut one, &[true, false]).unwrap(),
            [true, false]
        );
    }
}

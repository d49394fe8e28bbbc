//! Clipping to the global norm: the norm of the flat gradients (host: f64 over fixed blocks,
//! in parallel, the same bits for any thread count; device: an f32 sum on the device), and the
//! factor that brings it down to `train.grad_clip`.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use rayon::prelude::*;

/// Elements per parallel block of [`global_norm`] and [`scale_in_place`]. Fixed, so that the
/// norm's partial sums add up in the same order for any thread count.
const BLOCK: usize = 64 * 1024;

/// The factor that scales gradients of global norm `norm` down to `clip` (None: no clipping,
/// `clip` is 0 or the norm is within it).
pub fn clip_factor(clip: f64, norm: f64) -> Option<f32> {
    (clip > 0.0 && norm > clip).then(|| (clip / (norm + 1e-6)) as f32)
}

/// The global L2 norm of flat gradients, summed in f64 over fixed blocks, in parallel.
pub fn global_norm(grads: &[f32]) -> f64 {
    let partials: Vec<f64> = grads
        .par_chunks(BLOCK)
        .map(|block| {
            let square = |g: f32| f64::from(g) * f64::from(g);
            // Eight independent lanes, so that the compiler can vectorise the sum.
            let mut lanes = [0.0f64; 8];
            let chunks = block.chunks_exact(8);
            let rest: f64 = chunks.remainder().iter().map(|&g| square(g)).sum();
            for c in chunks {
                for (l, &g) in lanes.iter_mut().zip(c) {
                    *l += square(g);
                }
            }
            lanes.iter().sum::<f64>() + rest
        })
        .collect();
    partials.iter().sum::<f64>().sqrt()
}

/// Multiply every element by `factor`, in parallel.
pub fn scale_in_place(values: &mut [f32], factor: f32) {
    values
        .par_chunks_mut(BLOCK)
        .for_each(|c| c.iter_mut().for_each(|v| *v *= factor));
}

/// The global L2 norm of flat device gradients (an f32 sum on the device; one scalar comes
/// back to the host).
pub fn device_norm<B: Backend>(grads: &Tensor<B, 1>) -> f64 {
    let sum: f32 = grads.clone().mul(grads.clone()).sum().into_scalar().elem();
    f64::from(sum).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grads::flat::to_device;

    #[test]
    fn global_norm_is_the_l2_norm_and_the_same_for_any_thread_count() {
        // Longer than one block, not a multiple of the 8 lanes.
        let v: Vec<f32> = (0..200_003)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let want = v
            .iter()
            .map(|&g| f64::from(g) * f64::from(g))
            .sum::<f64>()
            .sqrt();
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1).install(|| global_norm(&v));
        let three = pool(3).install(|| global_norm(&v));
        assert!((one - want).abs() <= 1e-9 * want, "{one} vs {want}");
        assert_eq!(one.to_bits(), three.to_bits());
        assert_eq!(global_norm(&[3.0, 4.0]), 5.0);
        assert!(global_norm(&[1.0, f32::NAN]).is_nan());
    }

    #[test]
    fn scale_in_place_multiplies_every_element() {
        let mut v: Vec<f32> = (0..70_000).map(|i| i as f32).collect();
        scale_in_place(&mut v, 0.5);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32 * 0.5));
    }

    #[test]
    fn device_norm_is_the_l2_norm() {
        type Flex = burn::backend::Flex;
        let t = to_device::<Flex>(vec![3.0, 4.0], &Default::default());
        assert_eq!(device_norm(&t), 5.0);
        let t = to_device::<Flex>(vec![1.0, f32::NAN], &Default::default());
        assert!(device_norm(&t).is_nan());
    }
}

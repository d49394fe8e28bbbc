//! The random draws of the objectives, one generator per sample and purpose.
//!
//! A sample's MLM mask, MIM mask and ITM negatives come from generators seeded by
//! `(batch seed, purpose, the sample's row in the global batch)`. A data-parallel rank holding
//! rows `first_row..first_row + b` of the global batch therefore draws for each of its samples
//! exactly what one process holding the whole global batch draws for it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a generator is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The sample's MLM mask.
    Mlm,
    /// The sample's MIM patch mask.
    Mim,
    /// The negative image of the sample's text.
    ItmImageForText,
    /// The negative text of the sample's image.
    ItmTextForImage,
}

/// The seed of one batch's draws and the place of this process's rows in the global batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampling {
    seed: u64,
    first_row: usize,
}

impl Sampling {
    /// Draws of the batch `seed`, for rows from 0.
    pub fn new(seed: u64) -> Self {
        Self { seed, first_row: 0 }
    }

    /// A batch seed taken from `rng`.
    pub fn from_rng<R: Rng>(rng: &mut R) -> Self {
        Self::new(rng.random())
    }

    /// The same draws for a process whose local row 0 is row `first_row` of the global batch.
    pub fn at_row(self, first_row: usize) -> Self {
        Self { first_row, ..self }
    }

    /// Global row of local row `row`.
    pub fn global_row(&self, row: usize) -> usize {
        self.first_row + row
    }

    /// The generator of local row `row` for `purpose`.
    pub fn rng(&self, purpose: Purpose, row: usize) -> ChaCha8Rng {
        let tag = match purpose {
            Purpose::Mlm => 1u64,
            Purpose::Mim => 2,
            Purpose::ItmImageForText => 3,
            Purpose::ItmTextForImage => 4,
        };
        let global = self.global_row(row) as u64;
        ChaCha8Rng::seed_from_u64(mix(mix(self.seed ^ mix(tag)) ^ mix(global)))
    }
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_draws_the_same_wherever_it_is_held() {
        let whole = Sampling::new(9);
        let second_half = Sampling::new(9).at_row(4);
        let a: u64 = whole.rng(Purpose::Mlm, 5).random();
        let b: u64 = second_half.rng(Purpose::Mlm, 1).random();
        assert_eq!(a, b);
        let c: u64 = whole.rng(Purpose::Mim, 5).random();
        let d: u64 = whole.rng(Purpose::Mlm, 6).random();
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}

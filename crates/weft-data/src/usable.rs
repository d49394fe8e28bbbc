//! The usable rows of a row group: the rows whose img2dataset `status` says `success`.
//!
//! An epoch is planned over usable rows only, so that the rows of failed downloads take no
//! place in any rank's share: a rank never runs short of rows because its part of the data had
//! more failures than another's, and the steps of an epoch (and the learning-rate schedule) count
//! only rows that train. The plan numbers the usable rows of a unit `0..count`; [`UsableRows`]
//! maps those numbers back to rows of the row group when they are read.

/// Which rows of one row group are usable, as a bitmap with the count of usable rows before
/// each 64-row word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsableRows {
    words: Vec<u64>,
    before: Vec<u64>,
    count: u64,
}

impl UsableRows {
    /// The usable rows of a row group, given one flag per row in row order.
    pub fn from_flags(flags: impl IntoIterator<Item = bool>) -> Self {
        let mut words = Vec::new();
        for (i, ok) in flags.into_iter().enumerate() {
            if i % 64 == 0 {
                words.push(0u64);
            }
            if ok {
                *words.last_mut().expect("pushed above") |= 1 << (i % 64);
            }
        }
        let mut before = Vec::with_capacity(words.len());
        let mut count = 0u64;
        for w in &words {
            before.push(count);
            count += u64::from(w.count_ones());
        }
        Self {
            words,
            before,
            count,
        }
    }

    /// Usable rows.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The rows of the row group that the usable-row numbers `ranges` stand for, as sorted,
    /// disjoint `[start, end)` row ranges. `ranges` must be sorted, disjoint and within
    /// `0..count`.
    pub fn rows_of(&self, ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &(a, b) in ranges {
            debug_assert!(
                a <= b && b <= self.count,
                "{a}..{b} of {} usable",
                self.count
            );
            if a >= b {
                continue;
            }
            let mut word = self.before.partition_point(|&n| n <= a) - 1;
            // Usable rows of this word still to pass over before `a`.
            let mut skip = a - self.before[word];
            let mut left = b - a;
            while left > 0 {
                let mut bits = self.words[word];
                while bits != 0 && left > 0 {
                    let bit = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    if skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    let row = word as u64 * 64 + bit;
                    match out.last_mut() {
                        Some(last) if last.1 == row => last.1 += 1,
                        _ => out.push((row, row + 1)),
                    }
                    left -= 1;
                }
                word += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(flags: &[bool], ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let usable: Vec<u64> = (0..flags.len() as u64)
            .filter(|&i| flags[i as usize])
            .collect();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &(a, b) in ranges {
            for &row in &usable[a as usize..b as usize] {
                match out.last_mut() {
                    Some(last) if last.1 == row => last.1 += 1,
                    _ => out.push((row, row + 1)),
                }
            }
        }
        out
    }

    #[test]
    fn usable_numbers_map_to_the_rows_they_stand_for() {
        let mut state = 7u64;
        for len in [1usize, 5, 63, 64, 65, 130, 300] {
            let flags: Vec<bool> = (0..len)
                .map(|_| {
                    state = crate::plan::mix(state);
                    !state.is_multiple_of(3)
                })
                .collect();
            let u = UsableRows::from_flags(flags.iter().copied());
            let n = flags.iter().filter(|&&f| f).count() as u64;
            assert_eq!(u.count(), n);
            assert_eq!(u.rows_of(&[(0, n)]), brute(&flags, &[(0, n)]));
            for a in 0..n {
                for b in a..=n.min(a + 70) {
                    let ranges = [(0, a / 2), (a, b)];
                    assert_eq!(u.rows_of(&ranges), brute(&flags, &ranges), "{len} {a}..{b}");
                }
            }
        }
    }

    #[test]
    fn all_rows_usable_is_the_identity_and_none_usable_counts_zero() {
        let u = UsableRows::from_flags(std::iter::repeat_n(true, 100));
        assert_eq!(u.rows_of(&[(3, 10), (64, 100)]), [(3, 10), (64, 100)]);
        assert_eq!(UsableRows::from_flags([false; 70]).count(), 0);
    }
}

//! Retrieval measures of a similarity matrix whose diagonal holds the true pairs.

/// Rank (0-based) of the true item in each row of a row-major `[n, n]` similarity matrix
/// (`sim[i][i]` is the positive): how many items score strictly higher, plus the ties that
/// come before it in index order (a stable sort).
pub fn ranks(sim: &[f32], n: usize) -> Vec<usize> {
    assert_eq!(sim.len(), n * n, "ranks: a [n, n] matrix");
    (0..n)
        .map(|i| {
            let row = &sim[i * n..(i + 1) * n];
            let s = row[i];
            row.iter()
                .enumerate()
                .filter(|&(j, &x)| x > s || (x == s && j < i))
                .count()
        })
        .collect()
}

/// Percent of ranks below `k` (Recall@K).
pub fn recall_at(ranks: &[usize], k: usize) -> f64 {
    if ranks.is_empty() {
        return 0.0;
    }
    100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len() as f64
}

/// Mean rank, 1-based (1: the true item always first).
pub fn mean_rank(ranks: &[usize]) -> f64 {
    if ranks.is_empty() {
        return 0.0;
    }
    1.0 + ranks.iter().sum::<usize>() as f64 / ranks.len() as f64
}

/// Median rank, 1-based, as the retrieval literature reports it (VSE++, CLIP benchmarks):
/// `floor(median(0-based ranks)) + 1`.
pub fn median_rank(ranks: &[usize]) -> f64 {
    if ranks.is_empty() {
        return 0.0;
    }
    let mut r = ranks.to_vec();
    r.sort_unstable();
    let n = r.len();
    let median = if n % 2 == 1 {
        r[n / 2] as f64
    } else {
        (r[n / 2 - 1] + r[n / 2]) as f64 / 2.0
    };
    median.floor() + 1.0
}

/// The indices of the `k` largest scores, best first (ties: the lower index first).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_recall_by_hand() {
        // 3 pairs; row i scores the 3 candidates.
        let sim = [
            0.9, 0.1, 0.0, // image 0: text 0 best -> rank 0
            0.8, 0.5, 0.2, // image 1: text 0 beats text 1 -> rank 1
            0.7, 0.7, 0.1, // image 2: two above -> rank 2
        ];
        let r = ranks(&sim, 3);
        assert_eq!(r, vec![0, 1, 2]);
        assert!((recall_at(&r, 1) - 100.0 / 3.0).abs() < 1e-9);
        assert!((recall_at(&r, 2) - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(recall_at(&r, 5), 100.0);
        // A tie with an earlier index counts against the positive, a later one does not.
        assert_eq!(ranks(&[0.5, 0.5, 0.5, 0.5], 2), vec![0, 1]);
    }

    #[test]
    fn mean_and_median_ranks_are_one_based() {
        assert_eq!(mean_rank(&[0, 1, 2]), 2.0);
        assert_eq!(median_rank(&[0, 1, 2]), 2.0);
        // Even count: median of 0-based ranks 1 and 4 is 2.5, floored 2, plus 1.
        assert_eq!(median_rank(&[4, 0, 1, 9]), 3.0);
        assert_eq!(mean_rank(&[4, 0, 1, 9]), 4.5);
    }

    #[test]
    fn top_k_is_best_first_with_stable_ties() {
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.9], 3), vec![1, 3, 2]);
        assert_eq!(top_k(&[0.3], 5), vec![0]);
    }
}

//! Caption metrics as the COCO caption evaluation (`pycocoevalcap`) computes them: corpus
//! BLEU-1..4 with the closest reference length, ROUGE-L with β = 1.2 averaged over images,
//! CIDEr-D with σ = 6, clipped n-gram weights and the ×10 scale.
//!
//! Captions are compared as token lists: [`tokenize`] lower-cases and splits at every
//! character that is not a letter, digit or in-word apostrophe, which is close to (not the same
//! as) the Stanford PTB tokenizer `pycocoevalcap` runs first: PTB also splits contractions.

// Ordered maps: the sums over n-grams run in one order, so that a score has the same bits
// in every process (a HashMap's order, and so the rounding, changes from run to run).
use std::collections::{BTreeMap, BTreeSet};

/// A caption as tokens.
pub type Tokens = Vec<String>;

/// Lower-case words of `s`: letters, digits and apostrophes inside a word; everything else
/// separates.
pub fn tokenize(s: &str) -> Tokens {
    let mut out = Vec::new();
    let mut word = String::new();
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let inner_apostrophe =
            c == '\'' && !word.is_empty() && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        if c.is_alphanumeric() || inner_apostrophe {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

type Ngram<'a> = &'a [String];

/// Counts of the n-grams of `tokens` for n in 1..=max_n.
fn ngram_counts(tokens: &[String], max_n: usize) -> BTreeMap<Ngram<'_>, usize> {
    let mut counts = BTreeMap::new();
    for n in 1..=max_n {
        for g in tokens.windows(n) {
            *counts.entry(g).or_insert(0) += 1;
        }
    }
    counts
}

/// The n-gram statistics of BLEU over a corpus.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BleuCounts {
    /// Candidate n-grams matched by a reference (clipped at the largest count in one
    /// reference), n = 1..4.
    pub correct: [usize; 4],
    /// Candidate n-grams, n = 1..4.
    pub guess: [usize; 4],
    /// Candidate tokens.
    pub candidate_len: usize,
    /// For each candidate, the length of the reference closest to it (the shorter on a tie),
    /// summed.
    pub reference_len: usize,
}

/// [`BleuCounts`] of `candidates[i]` against `references[i]`.
pub fn bleu_counts(candidates: &[Tokens], references: &[Vec<Tokens>]) -> BleuCounts {
    assert_eq!(
        candidates.len(),
        references.len(),
        "bleu: one reference set per candidate"
    );
    let mut c = BleuCounts::default();
    for (cand, refs) in candidates.iter().zip(references) {
        let mut max_counts: BTreeMap<Ngram<'_>, usize> = BTreeMap::new();
        for r in refs {
            for (g, n) in ngram_counts(r, 4) {
                let m = max_counts.entry(g).or_insert(0);
                *m = (*m).max(n);
            }
        }
        let len = cand.len();
        c.candidate_len += len;
        c.reference_len += refs
            .iter()
            .map(Vec::len)
            .min_by_key(|&l| (l.abs_diff(len), l))
            .unwrap_or(0);
        for (k, guess) in c.guess.iter_mut().enumerate() {
            *guess += len.saturating_sub(k);
        }
        for (g, n) in ngram_counts(cand, 4) {
            c.correct[g.len() - 1] += n.min(max_counts.get(g).copied().unwrap_or(0));
        }
    }
    c
}

/// Corpus BLEU-1..4 (pycocoevalcap's `Bleu(4)`): the geometric mean of the clipped n-gram
/// precisions up to n, times the brevity penalty `exp(1 − r/c)` when the candidates are shorter
/// than their closest references (with pycocoevalcap's `1e-15`/`1e-9` guards against 0/0).
pub fn bleu(candidates: &[Tokens], references: &[Vec<Tokens>]) -> [f64; 4] {
    bleu_of(&bleu_counts(candidates, references))
}

/// BLEU-1..4 of corpus statistics.
pub fn bleu_of(c: &BleuCounts) -> [f64; 4] {
    const TINY: f64 = 1e-15;
    const SMALL: f64 = 1e-9;
    let mut out = [0.0; 4];
    let mut product = 1.0f64;
    for (k, b) in out.iter_mut().enumerate() {
        product *= (c.correct[k] as f64 + TINY) / (c.guess[k] as f64 + SMALL);
        *b = product.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (c.candidate_len as f64 + TINY) / (c.reference_len as f64 + SMALL);
    if ratio < 1.0 {
        let penalty = (1.0 - 1.0 / ratio).exp();
        for b in &mut out {
            *b *= penalty;
        }
    }
    out
}

/// Length of the longest common subsequence of two token lists.
pub fn lcs(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                row[j + 1].max(row[j])
            };
            diagonal = up;
        }
    }
    row[b.len()]
}

/// ROUGE-L of one candidate (pycocoevalcap's `Rouge`): the F-measure with β = 1.2 of the best
/// LCS precision and the best LCS recall over the references.
pub fn rouge_l(candidate: &[String], references: &[Tokens]) -> f64 {
    const BETA: f64 = 1.2;
    if candidate.is_empty() {
        return 0.0;
    }
    let (mut p, mut r) = (0.0f64, 0.0f64);
    for reference in references.iter().filter(|x| !x.is_empty()) {
        let l = lcs(candidate, reference) as f64;
        p = p.max(l / candidate.len() as f64);
        r = r.max(l / reference.len() as f64);
    }
    if p == 0.0 || r == 0.0 {
        return 0.0;
    }
    (1.0 + BETA * BETA) * p * r / (r + BETA * BETA * p)
}

/// Mean ROUGE-L over a corpus.
pub fn rouge_l_corpus(candidates: &[Tokens], references: &[Vec<Tokens>]) -> f64 {
    assert_eq!(
        candidates.len(),
        references.len(),
        "rouge: one reference set per candidate"
    );
    if candidates.is_empty() {
        return 0.0;
    }
    candidates
        .iter()
        .zip(references)
        .map(|(c, r)| rouge_l(c, r))
        .sum::<f64>()
        / candidates.len() as f64
}

/// TF-IDF vectors of one caption, per n (pycocoevalcap's `counts2vec`), with their norms and
/// the caption's "length" as pycocoevalcap counts it: the number of its bigrams.
struct Vectors<'a> {
    vec: [BTreeMap<Ngram<'a>, f64>; 4],
    norm: [f64; 4],
    length: f64,
}

fn vectors<'a>(tokens: &'a [String], df: &BTreeMap<Ngram<'_>, usize>, ref_len: f64) -> Vectors<'a> {
    let mut v = Vectors {
        vec: Default::default(),
        norm: [0.0; 4],
        length: 0.0,
    };
    for (g, tf) in ngram_counts(tokens, 4) {
        let n = g.len() - 1;
        let d = (df.get(g).copied().unwrap_or(0).max(1) as f64).ln();
        let w = tf as f64 * (ref_len - d);
        v.norm[n] += w * w;
        v.vec[n].insert(g, w);
        // pycocoevalcap counts the length in bigrams (`if n == 1`, n being the order − 1).
        if n == 1 {
            v.length += tf as f64;
        }
    }
    for x in &mut v.norm {
        *x = x.sqrt();
    }
    v
}

/// CIDEr-D of every candidate and their mean (pycocoevalcap's `CiderD`): per n = 1..4 the
/// cosine of TF-IDF n-gram vectors (document frequencies over the reference sets of the
/// corpus), the candidate's weights clipped at the reference's, times
/// `exp(−Δlength² / 2σ²)` with σ = 6; averaged over n and over the references, times 10.
pub fn cider_d(candidates: &[Tokens], references: &[Vec<Tokens>]) -> (f64, Vec<f64>) {
    const SIGMA: f64 = 6.0;
    assert_eq!(
        candidates.len(),
        references.len(),
        "cider: one reference set per candidate"
    );
    if candidates.is_empty() {
        return (0.0, Vec::new());
    }
    let mut df: BTreeMap<Ngram<'_>, usize> = BTreeMap::new();
    for refs in references {
        let grams: BTreeSet<Ngram<'_>> = refs
            .iter()
            .flat_map(|r| ngram_counts(r, 4).into_keys())
            .collect();
        for g in grams {
            *df.entry(g).or_insert(0) += 1;
        }
    }
    let ref_len = (references.len() as f64).ln();
    let scores: Vec<f64> = candidates
        .iter()
        .zip(references)
        .map(|(cand, refs)| {
            let h = vectors(cand, &df, ref_len);
            let mut total = 0.0;
            for r in refs {
                let r = vectors(r, &df, ref_len);
                let delta = h.length - r.length;
                let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
                let mut sum = 0.0;
                for n in 0..4 {
                    let mut val: f64 = h.vec[n]
                        .iter()
                        .map(|(g, w)| {
                            let rw = r.vec[n].get(g).copied().unwrap_or(0.0);
                            w.min(rw) * rw
                        })
                        .sum();
                    if h.norm[n] != 0.0 && r.norm[n] != 0.0 {
                        val /= h.norm[n] * r.norm[n];
                    }
                    sum += val * penalty;
                }
                total += sum / 4.0;
            }
            10.0 * total / refs.len().max(1) as f64
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    (mean, scores)
}

/// Every caption metric of a corpus.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaptionScores {
    /// Candidates scored.
    pub n: usize,
    /// BLEU-1.
    pub bleu1: f64,
    /// BLEU-2.
    pub bleu2: f64,
    /// BLEU-3.
    pub bleu3: f64,
    /// BLEU-4.
    pub bleu4: f64,
    /// ROUGE-L.
    pub rouge_l: f64,
    /// CIDEr-D.
    pub cider_d: f64,
}

/// BLEU-1..4, ROUGE-L and CIDEr-D of `candidates[i]` against `references[i]` (strings,
/// [`tokenize`]d here).
pub fn score_captions(candidates: &[String], references: &[Vec<String>]) -> CaptionScores {
    let c: Vec<Tokens> = candidates.iter().map(|s| tokenize(s)).collect();
    let r: Vec<Vec<Tokens>> = references
        .iter()
        .map(|refs| refs.iter().map(|s| tokenize(s)).collect())
        .collect();
    let [bleu1, bleu2, bleu3, bleu4] = bleu(&c, &r);
    CaptionScores {
        n: c.len(),
        bleu1,
        bleu2,
        bleu3,
        bleu4,
        rouge_l: rouge_l_corpus(&c, &r),
        cider_d: cider_d(&c, &r).0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Tokens {
        tokenize(s)
    }

    #[test]
    fn tokens_are_lower_case_words() {
        assert_eq!(t("A man's dog, running!"), ["a", "man's", "dog", "running"]);
        assert_eq!(t("  'quoted' -- 3 cats."), ["quoted", "3", "cats"]);
        assert!(t("...").is_empty());
    }

    /// Papineni et al. (2002), section 2.1, example 2: candidate 1 against the three
    /// references has modified unigram precision 17/18 and modified bigram precision 10/17.
    #[test]
    fn bleu_counts_of_the_papers_example() {
        let cand = t("It is a guide to action which ensures that the military always obeys the commands of the party.");
        let refs = vec![
            t("It is a guide to action that ensures that the military will forever heed Party commands."),
            t("It is the guiding principle which guarantees the military forces always being under the command of the Party."),
            t("It is the practical guide for the army always to heed the directions of the party."),
        ];
        let c = bleu_counts(&[cand], &[refs]);
        assert_eq!((c.correct[0], c.guess[0]), (17, 18));
        assert_eq!((c.correct[1], c.guess[1]), (10, 17));
        // Reference lengths 16, 18, 16: the closest to the candidate's 18 is reference 2's.
        assert_eq!((c.candidate_len, c.reference_len), (18, 18));
    }

    /// The paper's other example: "the the the the the the the" against "The cat is on the
    /// mat" / "There is a cat on the mat" has modified unigram precision 2/7.
    #[test]
    fn clipping_counts_a_word_at_most_as_often_as_one_reference_has_it() {
        let c = bleu_counts(
            &[t("the the the the the the the")],
            &[vec![
                t("The cat is on the mat."),
                t("There is a cat on the mat."),
            ]],
        );
        assert_eq!((c.correct[0], c.guess[0]), (2, 7));
        assert_eq!(c.correct[1], 0);
    }

    #[test]
    fn bleu_by_hand() {
        // A candidate equal to its reference: every precision 1, no penalty.
        let b = bleu(&[t("a cat on a mat")], &[vec![t("a cat on a mat")]]);
        for x in b {
            assert!((x - 1.0).abs() < 1e-9, "{b:?}");
        }
        // "a cat on" against "a cat on a mat": precisions 3/3, 2/2, 1/1 and, with no 4-gram,
        // pycocoevalcap's guards make 0/0 = 1e-15/1e-9 = 1e-6, so BLEU-4 = (1e-6)^(1/4)·BP;
        // the brevity penalty BP = exp(1 − 5/3).
        let b = bleu(&[t("a cat on")], &[vec![t("a cat on a mat")]]);
        let bp = (1.0f64 - 5.0 / 3.0).exp();
        assert!(
            (b[0] - bp).abs() < 1e-9 && (b[1] - bp).abs() < 1e-9 && (b[2] - bp).abs() < 1e-9,
            "{b:?}"
        );
        assert!((b[3] - 1e-6f64.powf(0.25) * bp).abs() < 1e-9, "{b:?}");
        // Unigrams 2/4 ("the", "cat"), bigrams 1/3 ("the cat"): BLEU-1 = 1/2, BLEU-2 =
        // sqrt(1/2 · 1/3) (the candidate is the longer: no penalty).
        let b = bleu(&[t("the cat sat down")], &[vec![t("the cat on")]]);
        assert!(
            (b[0] - 0.5).abs() < 1e-9 && (b[1] - (1.0f64 / 6.0).sqrt()).abs() < 1e-9,
            "{b:?}"
        );
    }

    /// Lin (2004), section 3.1: against S1 "police killed the gunman", S2 "police kill the
    /// gunman" has ROUGE-L 3/4 and S3 "the gunman kill police" 1/2 (precision equals recall,
    /// so β does not matter).
    #[test]
    fn rouge_l_of_the_papers_example() {
        let s1 = t("police killed the gunman");
        assert!(
            (rouge_l(&t("police kill the gunman"), std::slice::from_ref(&s1)) - 0.75).abs() < 1e-12
        );
        assert!(
            (rouge_l(&t("the gunman kill police"), std::slice::from_ref(&s1)) - 0.5).abs() < 1e-12
        );
        // P = 2/2, R = 2/4: F = (1 + 1.44)·1·0.5 / (0.5 + 1.44·1) = 1.22 / 1.94.
        let f = rouge_l(&t("the gunman"), &[s1]);
        assert!((f - 1.22 / 1.94).abs() < 1e-12, "{f}");
        assert_eq!(lcs(&t("a b c d e"), &t("a x c y e")), 3);
    }

    #[test]
    fn cider_d_by_hand() {
        // Two images whose references share no n-gram: every document frequency is 1 and
        // every weight log 2, so the cosines are of counts.
        let refs = vec![vec![t("a b c d")], vec![t("e f g h")]];
        // Candidates equal to their references: every cosine 1, no length penalty: 10.
        let (mean, each) = cider_d(&[t("a b c d"), t("e f g h")], &refs);
        assert!((mean - 10.0).abs() < 1e-9 && each.iter().all(|s| (s - 10.0).abs() < 1e-9));
        // "e f g" against "e f g h": unigrams 3/(√3·2), bigrams 2/(√2·√3), trigrams
        // 1/(1·√2), no 4-gram: 0; lengths in bigrams 2 and 3: penalty exp(−1/72).
        let (mean, each) = cider_d(&[t("a b c d"), t("e f g")], &refs);
        let by_hand = 10.0
            * ((3.0 / (3f64.sqrt() * 2.0)) + 2.0 / (2f64.sqrt() * 3f64.sqrt()) + 1.0 / 2f64.sqrt())
            / 4.0
            * (-1.0f64 / 72.0).exp();
        assert!((each[1] - by_hand).abs() < 1e-9, "{} vs {by_hand}", each[1]);
        assert!((mean - (10.0 + by_hand) / 2.0).abs() < 1e-9);
        // An n-gram in every image's references weighs log(N) − log(N) = 0: "x" adds nothing.
        let refs = vec![vec![t("x a")], vec![t("x b")]];
        let (_, each) = cider_d(&[t("x"), t("x b")], &refs);
        assert_eq!(each[0], 0.0);
        assert!(each[1] > 0.0);
    }

    #[test]
    fn score_captions_tokenizes_and_gathers_every_metric() {
        let s = score_captions(
            &["A cat on a mat.".to_string()],
            &[vec!["a cat on a mat".to_string(), "A dog.".to_string()]],
        );
        assert_eq!(s.n, 1);
        assert!(
            (s.bleu4 - 1.0).abs() < 1e-9 && (s.rouge_l - 1.0).abs() < 1e-12,
            "{s:?}"
        );
    }
}

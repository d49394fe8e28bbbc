//! A deterministic sub-word trainer.
//!
//! The `tokenizers` crate's trainers break ties between equally frequent pairs in the order of a
//! randomly seeded hash map, so two trainings on the same captions can give different
//! vocabularies. This learner does the same byte-pair merging with every order fixed: words are
//! counted in a sorted map, the alphabet is sorted, symbols get ids in a fixed order, and among
//! equally frequent pairs the one with the smallest ids merges first. Its output is an ordinary
//! `tokenizers` WordPiece or BPE model.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

/// How symbols of a word are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// WordPiece: `##` before every symbol that does not start a word.
    WordPiece,
    /// BPE: `</w>` after the symbol that ends a word.
    Bpe,
}

/// What the learner produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// Tokens by id: the special tokens, the alphabet (sorted), then one token per merge.
    pub tokens: Vec<String>,
    /// Merges in the order they were learned (left, right).
    pub merges: Vec<(String, String)>,
}

const PREFIX: &str = "##";
const SUFFIX: &str = "</w>";

/// Learn merges over `word_counts` until the vocabulary (specials included) has `vocab_size`
/// tokens or no pair occurs `min_frequency` times.
pub fn learn(
    word_counts: &BTreeMap<String, u64>,
    specials: &[&str],
    vocab_size: usize,
    min_frequency: u64,
    style: Style,
) -> Learned {
    let symbol = |i: usize, c: char, n: usize| -> String {
        match style {
            Style::WordPiece if i > 0 => format!("{PREFIX}{c}"),
            Style::Bpe if i + 1 == n => format!("{c}{SUFFIX}"),
            _ => c.to_string(),
        }
    };
    let (mut tokens, mut ids) = alphabet(word_counts, specials, vocab_size, &symbol);
    // Words as symbol ids; words with a symbol outside the alphabet take no part.
    let mut words: Vec<(Vec<u32>, u64)> = Vec::new();
    for (w, &count) in word_counts {
        let n = w.chars().count();
        let syms: Option<Vec<u32>> = w
            .chars()
            .enumerate()
            .map(|(i, c)| ids.get(&symbol(i, c, n)).copied())
            .collect();
        if let Some(syms) = syms {
            words.push((syms, count));
        }
    }
    let mut pairs = PairCounts::of(&words);
    let mut merges = Vec::new();
    while tokens.len() < vocab_size {
        let Some((count, pair)) = pairs.most_frequent() else {
            break;
        };
        if count < min_frequency.max(1) {
            break;
        }
        let (a, b) = pair;
        let (sa, sb) = (tokens[a as usize].clone(), tokens[b as usize].clone());
        let merged = match style {
            Style::WordPiece => format!("{sa}{}", sb.strip_prefix(PREFIX).unwrap_or(&sb)),
            Style::Bpe => format!("{sa}{sb}"),
        };
        let new_id = match ids.get(&merged) {
            Some(&id) => id,
            None => {
                let id = tokens.len() as u32;
                ids.insert(merged.clone(), id);
                tokens.push(merged);
                id
            }
        };
        merges.push((sa, sb));
        pairs.merge(&mut words, pair, new_id);
    }
    Learned { tokens, merges }
}

/// The special tokens, then the alphabet: every symbol of every word (`symbol(i, c, n)`: the
/// `i`-th char `c` of a word of `n`), sorted, the most frequent kept if they do not all fit in
/// `vocab_size`. Returns the tokens and their ids.
fn alphabet(
    word_counts: &BTreeMap<String, u64>,
    specials: &[&str],
    vocab_size: usize,
    symbol: &dyn Fn(usize, char, usize) -> String,
) -> (Vec<String>, HashMap<String, u32>) {
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    let mut ids: HashMap<String, u32> = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        ids.insert(t.clone(), i as u32);
    }
    let mut alphabet: BTreeMap<String, u64> = BTreeMap::new();
    for (w, &count) in word_counts {
        let n = w.chars().count();
        for (i, c) in w.chars().enumerate() {
            *alphabet.entry(symbol(i, c, n)).or_default() += count;
        }
    }
    let room = vocab_size.saturating_sub(tokens.len());
    let mut kept: Vec<(String, u64)> = alphabet.into_iter().collect();
    if kept.len() > room {
        kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        kept.truncate(room);
        kept.sort();
    }
    for (s, _) in kept {
        if !ids.contains_key(&s) {
            ids.insert(s.clone(), tokens.len() as u32);
            tokens.push(s);
        }
    }
    (tokens, ids)
}

/// How often each pair of adjacent symbols occurs, in which words, and a heap of the counts
/// (entries go stale as merges change the counts; a stale one is put back with its count).
struct PairCounts {
    counts: HashMap<(u32, u32), u64>,
    words: HashMap<(u32, u32), BTreeSet<usize>>,
    heap: BinaryHeap<(u64, Reverse<(u32, u32)>)>,
}

impl PairCounts {
    /// The pairs of `words` (symbol ids, count).
    fn of(words: &[(Vec<u32>, u64)]) -> Self {
        let mut counts: HashMap<(u32, u32), u64> = HashMap::new();
        let mut at: HashMap<(u32, u32), BTreeSet<usize>> = HashMap::new();
        for (wi, (syms, count)) in words.iter().enumerate() {
            for p in syms.windows(2) {
                *counts.entry((p[0], p[1])).or_default() += count;
                at.entry((p[0], p[1])).or_default().insert(wi);
            }
        }
        let heap = counts.iter().map(|(&p, &c)| (c, Reverse(p))).collect();
        Self {
            counts,
            words: at,
            heap,
        }
    }

    /// The most frequent pair and its count (among equal counts, the smallest ids), or None
    /// when no pair is left.
    fn most_frequent(&mut self) -> Option<(u64, (u32, u32))> {
        loop {
            let (count, Reverse(pair)) = self.heap.pop()?;
            let current = self.counts.get(&pair).copied().unwrap_or(0);
            if current == count {
                return Some((count, pair));
            }
            if current > 0 {
                self.heap.push((current, Reverse(pair)));
            }
        }
    }

    /// Replace `pair` by `new_id` in every word that holds it, and update the counts.
    fn merge(&mut self, words: &mut [(Vec<u32>, u64)], pair: (u32, u32), new_id: u32) {
        let (a, b) = pair;
        let affected: Vec<usize> = self
            .words
            .remove(&pair)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut touched: BTreeSet<(u32, u32)> = BTreeSet::new();
        for wi in affected {
            let (syms, wcount) = &mut words[wi];
            if !syms.windows(2).any(|p| p[0] == a && p[1] == b) {
                continue;
            }
            for p in syms.windows(2) {
                let k = (p[0], p[1]);
                if let Some(c) = self.counts.get_mut(&k) {
                    *c -= *wcount;
                }
                touched.insert(k);
            }
            let mut out = Vec::with_capacity(syms.len());
            let mut i = 0;
            while i < syms.len() {
                if i + 1 < syms.len() && syms[i] == a && syms[i + 1] == b {
                    out.push(new_id);
                    i += 2;
                } else {
                    out.push(syms[i]);
                    i += 1;
                }
            }
            *syms = out;
            for p in syms.windows(2) {
                let k = (p[0], p[1]);
                *self.counts.entry(k).or_default() += *wcount;
                self.words.entry(k).or_default().insert(wi);
                touched.insert(k);
            }
        }
        self.counts.remove(&pair);
        for k in touched {
            match self.counts.get(&k).copied() {
                Some(0) => {
                    self.counts.remove(&k);
                }
                Some(c) if k != pair => self.heap.push((c, Reverse(k))),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(words: &[(&str, u64)]) -> BTreeMap<String, u64> {
        words.iter().map(|(w, c)| (w.to_string(), *c)).collect()
    }

    #[test]
    fn merges_most_frequent_pairs_first() {
        // "ab" occurs 5 + 3 times, "bc" 3 times: "ab" merges first, then "##b" + "##c" in
        // "abc"... here: a ##b ##c -> ab ##c -> abc.
        let l = learn(
            &counts(&[("ab", 5), ("abc", 3)]),
            &["[UNK]"],
            100,
            1,
            Style::WordPiece,
        );
        assert_eq!(l.tokens[..4], ["[UNK]", "##b", "##c", "a"]);
        assert_eq!(
            l.merges,
            vec![
                ("a".to_string(), "##b".to_string()),
                ("ab".to_string(), "##c".to_string())
            ]
        );
        assert_eq!(l.tokens[4..], ["ab", "abc"]);
    }

    #[test]
    fn ties_break_by_ids_and_bpe_marks_word_ends() {
        let l = learn(&counts(&[("xy", 2), ("zy", 2)]), &[], 100, 1, Style::Bpe);
        // Alphabet sorted: x, y</w>, z. (x, y</w>) and (z, y</w>) tie: smaller ids first.
        assert_eq!(l.tokens, ["x", "y</w>", "z", "xy</w>", "zy</w>"]);
    }

    #[test]
    fn vocabulary_size_is_respected() {
        let words = counts(&[("hello", 3), ("help", 2), ("world", 4), ("word", 1)]);
        for size in [3, 10, 14, 1000] {
            let l = learn(&words, &["[PAD]"], size, 1, Style::WordPiece);
            assert!(l.tokens.len() <= size, "{size}: {}", l.tokens.len());
        }
    }
}

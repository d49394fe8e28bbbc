//! Classification accuracy from class scores (zero-shot: the similarity of an image to each
//! class's text embedding).

use crate::retrieval::top_k;

/// Top-1 and top-5 accuracy in percent, and a row per class.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accuracy {
    /// Samples.
    pub n: usize,
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent.
    pub top5: f64,
    /// Top-1 of guessing (`100 / classes`).
    pub chance_top1: f64,
    /// Per class, in class order.
    pub per_class: Vec<ClassAccuracy>,
}

/// One class's row.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassAccuracy {
    /// The class name.
    pub class: String,
    /// Samples of the class.
    pub n: usize,
    /// Top-1 accuracy on them, percent.
    pub top1: f64,
    /// Top-5 accuracy on them, percent.
    pub top5: f64,
}

/// Accuracy of row-major `[n, classes]` `scores` against `labels` (class indices).
pub fn accuracy(scores: &[f32], labels: &[usize], classes: &[String]) -> Accuracy {
    let c = classes.len();
    assert_eq!(
        scores.len(),
        labels.len() * c,
        "accuracy: a [n, classes] score matrix"
    );
    let mut hits = vec![(0usize, 0usize, 0usize); c];
    for (i, &label) in labels.iter().enumerate() {
        assert!(
            label < c,
            "accuracy: label {label} of sample {i} is not one of {c} classes"
        );
        let best = top_k(&scores[i * c..(i + 1) * c], 5);
        let h = &mut hits[label];
        h.0 += 1;
        h.1 += usize::from(best.first() == Some(&label));
        h.2 += usize::from(best.contains(&label));
    }
    let pct = |a: usize, b: usize| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    let n = labels.len();
    let (t1, t5) = hits.iter().fold((0, 0), |(a, b), h| (a + h.1, b + h.2));
    Accuracy {
        n,
        top1: pct(t1, n),
        top5: pct(t5, n),
        chance_top1: if c == 0 { 0.0 } else { 100.0 / c as f64 },
        per_class: classes
            .iter()
            .zip(&hits)
            .map(|(name, h)| ClassAccuracy {
                class: name.clone(),
                n: h.0,
                top1: pct(h.1, h.0),
                top5: pct(h.2, h.0),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_by_hand() {
        let classes: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
        // Sample 0 (class 0): class 0 best. Sample 1 (class 1): class 1 second. Sample 2
        // (class 1): class 1 last of six, outside the top 5.
        let scores = [
            0.9, 0.1, 0.0, 0.0, 0.0, 0.0, //
            0.9, 0.8, 0.0, 0.0, 0.0, 0.0, //
            0.5, 0.0, 0.6, 0.7, 0.8, 0.9, //
        ];
        let a = accuracy(&scores, &[0, 1, 1], &classes);
        assert!((a.top1 - 100.0 / 3.0).abs() < 1e-9);
        assert!((a.top5 - 200.0 / 3.0).abs() < 1e-9);
        assert!((a.chance_top1 - 100.0 / 6.0).abs() < 1e-9);
        assert_eq!((a.per_class[0].n, a.per_class[0].top1), (1, 100.0));
        assert_eq!(
            (a.per_class[1].n, a.per_class[1].top1, a.per_class[1].top5),
            (2, 0.0, 50.0)
        );
        assert_eq!(a.per_class[2].n, 0);
    }
}

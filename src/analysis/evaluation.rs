//! How good a model is on a labelled folder: top-1/top-5, per-class precision and recall, the
//! confusion matrix and the most confident mistakes, from each image's top-5 as it streams past.
use serde::Serialize;
use std::collections::HashMap;

/// What one image came to.
#[derive(Clone, Debug, Serialize)]
pub struct ImageResult {
    pub path: std::path::PathBuf,
    /// The class the folder layout gives it, if any.
    pub label: Option<usize>,
    /// The five most probable classes, best first, with their probabilities.
    pub top5: Vec<(usize, f32)>,
}

impl ImageResult {
    pub fn predicted(&self) -> usize {
        self.top5.first().map_or(0, |p| p.0)
    }
    pub fn correct(&self) -> Option<bool> {
        self.label.map(|l| l == self.predicted())
    }
}

/// One class's row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    pub index: usize,
    pub label: String,
    /// Images labelled with this class.
    pub support: usize,
    /// Of the images predicted as this class, the share labelled so (`None`: never predicted).
    pub precision: Option<f64>,
    /// Of the images labelled so, the share predicted so (`None`: no such image).
    pub recall: Option<f64>,
}

/// The folder's scores over its labelled images.
#[derive(Clone, Debug, Serialize)]
pub struct Scores {
    pub labelled: usize,
    pub top1: f64,
    pub top5: f64,
    pub per_class: Vec<ClassReport>,
    /// `confusion[true][predicted]`, over the classes; `None` above [`MAX_CONFUSION`] classes.
    pub confusion: Option<Vec<Vec<u32>>>,
}

/// The widest dense confusion matrix written out (1000 classes: 4 MB as numbers).
pub const MAX_CONFUSION: usize = 1000;

/// The results of every image, kept small (a path and ten numbers each).
#[derive(Default, Clone, Debug)]
pub struct Evaluation {
    pub images: Vec<ImageResult>,
}

impl Evaluation {
    pub fn push(&mut self, r: ImageResult) {
        self.images.push(r);
    }

    pub fn labelled(&self) -> impl Iterator<Item = &ImageResult> {
        self.images.iter().filter(|r| r.label.is_some())
    }

    /// `None` when no image has a label.
    pub fn scores(&self, labels: &[String]) -> Option<Scores> {
        let k = labels.len();
        let labelled: Vec<&ImageResult> = self.labelled().collect();
        if labelled.is_empty() {
            return None;
        }
        let n = labelled.len() as f64;
        let top1 = labelled
            .iter()
            .filter(|r| r.correct() == Some(true))
            .count() as f64
            / n;
        let top5 = labelled
            .iter()
            .filter(|r| r.top5.iter().any(|p| Some(p.0) == r.label))
            .count() as f64
            / n;
        let pairs = self.pairs();
        let per_class = (0..k)
            .map(|c| class_report(c, &labels[c], &pairs))
            .filter(|r| r.support > 0 || r.precision.is_some())
            .collect();
        let confusion = (k <= MAX_CONFUSION).then(|| {
            let mut m = vec![vec![0u32; k]; k];
            for (&(t, p), &count) in &pairs {
                if t < k && p < k {
                    m[t][p] = count;
                }
            }
            m
        });
        Some(Scores {
            labelled: labelled.len(),
            top1,
            top5,
            per_class,
            confusion,
        })
    }

    /// (true, predicted) → count, over the labelled images.
    fn pairs(&self) -> HashMap<(usize, usize), u32> {
        let mut m = HashMap::new();
        for r in self.labelled() {
            if let Some(t) = r.label {
                *m.entry((t, r.predicted())).or_insert(0) += 1;
            }
        }
        m
    }

    /// The images labelled `truth` and predicted `predicted`, most confident first.
    pub fn cell(&self, truth: usize, predicted: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.images.len())
            .filter(|&i| {
                let r = &self.images[i];
                r.label == Some(truth) && r.predicted() == predicted
            })
            .collect();
        v.sort_by(|&a, &b| self.confidence(b).total_cmp(&self.confidence(a)));
        v
    }

    /// The wrongly predicted images, most confident first.
    pub fn mistakes(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.images.len())
            .filter(|&i| self.images[i].correct() == Some(false))
            .collect();
        v.sort_by(|&a, &b| self.confidence(b).total_cmp(&self.confidence(a)));
        v
    }

    fn confidence(&self, i: usize) -> f32 {
        self.images[i].top5.first().map_or(0.0, |p| p.1)
    }
}

fn class_report(c: usize, label: &str, pairs: &HashMap<(usize, usize), u32>) -> ClassReport {
    let (mut tp, mut support, mut predicted) = (0u32, 0u32, 0u32);
    for (&(t, p), &n) in pairs {
        if t == c {
            support += n;
        }
        if p == c {
            predicted += n;
        }
        if t == c && p == c {
            tp += n;
        }
    }
    let share = |a: u32, b: u32| (b > 0).then(|| a as f64 / b as f64);
    ClassReport {
        index: c,
        label: label.to_string(),
        support: support as usize,
        precision: share(tp, predicted),
        recall: share(tp, support),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(label: Option<usize>, top: &[usize], p: f32) -> ImageResult {
        ImageResult {
            path: "x.png".into(),
            label,
            top5: top.iter().map(|&c| (c, p)).collect(),
        }
    }

    #[test]
    fn scores_precision_recall_and_confusion() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut e = Evaluation::default();
        e.push(r(Some(0), &[0, 1], 0.9)); // right
        e.push(r(Some(0), &[1, 0], 0.8)); // wrong, 0 in top-5
        e.push(r(Some(1), &[1, 2], 0.7)); // right
        e.push(r(Some(2), &[0, 1], 0.95)); // wrong, not in top-5
        e.push(r(None, &[2], 0.5)); // unlabelled: not scored
        let s = e.scores(&labels).unwrap();
        assert_eq!(s.labelled, 4);
        assert_eq!(s.top1, 0.5);
        assert_eq!(s.top5, 0.75);
        let m = s.confusion.unwrap();
        assert_eq!(m, vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]);
        assert_eq!(m.iter().flatten().sum::<u32>(), 4);
        let a = &s.per_class[0];
        assert_eq!(
            (a.support, a.precision, a.recall),
            (2, Some(0.5), Some(0.5))
        );
        let c = &s.per_class[2];
        assert_eq!((c.support, c.precision, c.recall), (1, None, Some(0.0)));
        // Most confident mistake first.
        assert_eq!(e.mistakes(), vec![3, 1]);
        assert_eq!(e.cell(0, 1), vec![1]);
        assert!(Evaluation::default().scores(&labels).is_none());
    }
}

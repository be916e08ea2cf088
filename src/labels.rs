//! Class names: the checkpoint's own, else ImageNet's by head size, else `class N`.
//!
//! `assets/labels/imagenet1k.txt` and `imagenet22k.txt` were made from timm 1.0.31's
//! `timm/data/_info` files (`imagenet_synsets.txt`, `imagenet22k_synsets.txt`,
//! `imagenet_synset_to_lemma.txt`; Apache-2.0, WordNet lemmas), one class a line, in the order
//! of the classifier's outputs.

const IMAGENET_1K: &str = include_str!("../assets/labels/imagenet1k.txt");
const IMAGENET_22K: &str = include_str!("../assets/labels/imagenet22k.txt");

/// Where a set of labels came from, so the UI can say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LabelSource {
    Checkpoint,
    ImageNet1k,
    ImageNet22k,
    Numbered,
}

/// Labels from a `config.json`: Hugging Face `id2label`, or timm's `label_names` (top level or
/// in `pretrained_cfg`).
pub fn from_json(json: &serde_json::Value, num_classes: usize) -> Option<Vec<String>> {
    if let Some(map) = json.get("id2label").and_then(|v| v.as_object()) {
        let mut v = vec![None; num_classes];
        for (k, name) in map {
            let i: usize = k.parse().ok()?;
            *v.get_mut(i)? = Some(name.as_str()?.to_string());
        }
        // HF writes LABEL_0… when nobody named the classes: that is no information.
        let named: Option<Vec<String>> = v.into_iter().collect();
        return named.filter(|n| !n.iter().all(|s| s.starts_with("LABEL_")));
    }
    let names = json
        .get("label_names")
        .or_else(|| json.pointer("/pretrained_cfg/label_names"))?
        .as_array()?;
    if names.len() != num_classes {
        return None;
    }
    names
        .iter()
        .map(|n| n.as_str().map(str::to_string))
        .collect()
}

pub fn labels_for(
    num_classes: usize,
    json: Option<&serde_json::Value>,
) -> (Vec<String>, LabelSource) {
    if let Some(l) = json.and_then(|j| from_json(j, num_classes)) {
        return (l, LabelSource::Checkpoint);
    }
    let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
    match num_classes {
        1000 => (lines(IMAGENET_1K), LabelSource::ImageNet1k),
        21841 => (lines(IMAGENET_22K), LabelSource::ImageNet22k),
        n => (
            (0..n).map(|i| format!("class {i}")).collect(),
            LabelSource::Numbered,
        ),
    }
}

/// The short name of a label: WordNet lemmas list synonyms after commas.
pub fn short(label: &str) -> &str {
    label.split(',').next().unwrap_or(label).trim()
}

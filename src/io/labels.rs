//! Class names: the checkpoint's own, else ImageNet's by head size, else `class N`.
//!
//! `assets/labels/imagenet1k.txt` and `imagenet22k.txt` were made from timm 1.0.31's
//! `timm/data/_info` files (`imagenet_synsets.txt`, `imagenet22k_synsets.txt`,
//! `imagenet_synset_to_lemma.txt`; Apache-2.0, WordNet lemmas), one class a line, in the order
//! of the classifier's outputs.

const IMAGENET_1K: &str = include_str!("../../assets/labels/imagenet1k.txt");
const IMAGENET_22K: &str = include_str!("../../assets/labels/imagenet22k.txt");
/// Fashion-MNIST's ten classes, in its label order.
pub const FASHION_LABELS: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where a set of labels came from, so the UI can say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LabelSource {
    Checkpoint,
    ImageNet1k,
    ImageNet22k,
    Numbered,
}

/// Labels from a `config.json`: Hugging Face `id2label`, or timm's `label_names` (top level or
/// in `pretrained_cfg`). `Ok(None)` where the config names no classes; an error where it names
/// them wrongly (an index out of range, a count that is not the head's).
pub fn from_json(
    json: &serde_json::Value,
    num_classes: usize,
) -> Result<Option<Vec<String>>, String> {
    if let Some(v) = json.get("id2label") {
        let map = v.as_object().ok_or("`id2label` is not an object")?;
        let mut names = vec![None; num_classes];
        for (k, name) in map {
            let i: usize = k.parse().ok().filter(|&i| i < num_classes).ok_or_else(|| {
                format!("`id2label` key `{k}` is not a class index below {num_classes}")
            })?;
            let name = name
                .as_str()
                .ok_or_else(|| format!("`id2label[{k}]` is not a string"))?;
            names[i] = Some(name.to_string());
        }
        let named = names.iter().filter(|n| n.is_some()).count();
        if named != num_classes {
            return Err(format!(
                "`id2label` names {named} of the head's {num_classes} classes"
            ));
        }
        let names: Vec<String> = names.into_iter().flatten().collect();
        // HF writes LABEL_0… when nobody named the classes: that is no information.
        return Ok((!names.iter().all(|s| s.starts_with("LABEL_"))).then_some(names));
    }
    for pointer in ["/label_names", "/pretrained_cfg/label_names"] {
        let Some(v) = json.pointer(pointer) else {
            continue;
        };
        let field = &pointer[1..];
        let list = v
            .as_array()
            .ok_or_else(|| format!("`{field}` is not a list"))?;
        if list.len() != num_classes {
            return Err(format!(
                "`{field}` has {} names for the head's {num_classes} classes",
                list.len()
            ));
        }
        return list
            .iter()
            .map(|n| n.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| format!("`{field}` holds something that is not a string"));
    }
    Ok(None)
}

pub fn labels_for(
    num_classes: usize,
    json: Option<&serde_json::Value>,
) -> Result<(Vec<String>, LabelSource), String> {
    if let Some(l) = json
        .map(|j| from_json(j, num_classes))
        .transpose()?
        .flatten()
    {
        return Ok((l, LabelSource::Checkpoint));
    }
    let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
    Ok(match num_classes {
        1000 => (lines(IMAGENET_1K), LabelSource::ImageNet1k),
        21841 => (lines(IMAGENET_22K), LabelSource::ImageNet22k),
        n => (
            (0..n).map(|i| format!("class {i}")).collect(),
            LabelSource::Numbered,
        ),
    })
}

/// The short name of a label: WordNet lemmas list synonyms after commas.
pub fn short(label: &str) -> &str {
    label.split(',').next().unwrap_or(label).trim()
}

//! A model card for every model: what it was trained on, what it can tell apart, what input it
//! expects and how well it did, read from the checkpoint's configs where they say so, and said
//! plainly where they do not (so that a newcomer does not take "Bag, 60%" for a cat at face
//! value).
use crate::io::labels::LabelSource;
use crate::io::preprocess::PreprocessConfig;
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ModelCard {
    /// What the weights were trained on, if the checkpoint says.
    pub dataset: Option<String>,
    /// The kind of image the model knows (`28×28 grey images of clothing`).
    pub domain: Option<String>,
    /// `10 classes: T-shirt/top, Trouser, …`
    pub classes: String,
    /// The input size and the preprocessing.
    pub input: String,
    /// Its accuracy, where the checkpoint records it.
    pub accuracy: Option<String>,
    /// Where the weights came from.
    pub origin: String,
    /// Trained on grey images: colour in is far from what it knows.
    pub grey: bool,
}

fn classes_line(labels: &[String], source: LabelSource) -> String {
    let n = labels.len();
    match source {
        LabelSource::ImageNet1k => format!("{n} classes (ImageNet-1k)"),
        LabelSource::ImageNet22k => format!("{n} classes (ImageNet-22k)"),
        LabelSource::Numbered => format!("{n} classes, unnamed"),
        LabelSource::Checkpoint => {
            let shown: Vec<&str> = labels
                .iter()
                .take(10)
                .map(|l| crate::io::labels::short(l))
                .collect();
            let more = if n > 10 { ", …" } else { "" };
            format!("{n} classes: {}{more}", shown.join(", "))
        }
    }
}

fn input_line(p: &PreprocessConfig) -> String {
    let (h, w) = p.input_size;
    let resize = if (p.crop_pct - 1.0).abs() < 1e-9 {
        format!("shorter side to {h} px")
    } else {
        format!("shorter side to {} px", (h as f64 / p.crop_pct).floor())
    };
    format!(
        "{h}×{w} RGB: {resize} ({:?}), centre crop {h}×{w}, mean {:?}, std {:?}",
        p.interpolation,
        p.mean.map(|v| (v * 1000.0).round() / 1000.0),
        p.std.map(|v| (v * 1000.0).round() / 1000.0)
    )
    .to_lowercase()
    .replace("rgb", "RGB")
}

impl ModelCard {
    /// The card of a checkpoint, from its config (`model_card`, `training`, Hugging Face and
    /// timm fields) and what the loader found.
    pub fn from_config(
        json: Option<&serde_json::Value>,
        labels: &[String],
        source: LabelSource,
        preprocess: &PreprocessConfig,
        origin: String,
    ) -> ModelCard {
        let get = |p: &str| json.and_then(|j| j.pointer(p));
        let text = |p: &str| get(p).and_then(|v| v.as_str()).map(str::to_string);
        let dataset = text("/model_card/dataset")
            .or_else(|| text("/training/dataset"))
            .or_else(|| match source {
                LabelSource::ImageNet1k => Some(
                    "ImageNet-1k, judging by its 1000-class head (the checkpoint does not say)"
                        .into(),
                ),
                LabelSource::ImageNet22k => Some(
                    "ImageNet-22k, judging by its 21,841-class head (the checkpoint does not say)"
                        .into(),
                ),
                _ => None,
            });
        let top1 = get("/model_card/top1")
            .or_else(|| get("/training/test_top1_ema"))
            .and_then(|v| v.as_f64());
        let accuracy = top1.map(|a| {
            let on = text("/model_card/evaluated_on").unwrap_or_else(|| "its test set".into());
            format!("{:.2}% top-1 on {on}", 100.0 * a)
        });
        ModelCard {
            dataset,
            domain: text("/model_card/domain"),
            classes: classes_line(labels, source),
            input: input_line(preprocess),
            accuracy,
            origin,
            grey: get("/model_card/grey")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        }
    }

    /// The card of seeded random weights.
    pub fn random(
        labels: &[String],
        source: LabelSource,
        preprocess: &PreprocessConfig,
        origin: String,
    ) -> ModelCard {
        ModelCard {
            dataset: None,
            domain: Some("nothing: the weights are random".into()),
            classes: classes_line(labels, source),
            input: input_line(preprocess),
            accuracy: Some(
                "none (random weights: shapes, MACs and timing are real, predictions are not)"
                    .into(),
            ),
            origin,
            grey: false,
        }
    }

    /// A notice when an image is far from what the model was trained on.
    pub fn notice_for(&self, img: &image::DynamicImage) -> Option<String> {
        if self.grey && colourfulness(img) > 0.05 {
            let domain = self.domain.as_deref().unwrap_or("grey images");
            return Some(format!(
                "This is a colour image; the model was trained on {domain}: its answer says little about this picture."
            ));
        }
        None
    }
}

/// Mean channel spread (|r − g| + |g − b|) / 2 on [0, 1], on a downscaled copy: 0 for grey.
pub fn colourfulness(img: &image::DynamicImage) -> f32 {
    let small = img.thumbnail(64, 64).to_rgb8();
    let n = (small.width() * small.height()).max(1) as f32;
    let sum: f32 = small
        .pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(|v| v as f32 / 255.0);
            ((r - g).abs() + (g - b).abs()) / 2.0
        })
        .sum();
    sum / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_is_told_from_grey() {
        let grey = image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(40, 30, |x, _| {
            image::Luma([x as u8 * 5])
        }));
        let colour = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([x as u8 * 6, 40, y as u8 * 8])
        }));
        assert_eq!(colourfulness(&grey), 0.0);
        assert!(colourfulness(&colour) > 0.1);
    }
}

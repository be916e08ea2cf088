//! From an image file to the network's input tensor, as timm's eval transform does it:
//! resize the shorter side to `size / crop_pct` (bicubic), centre-crop `size`, scale to [0, 1],
//! normalise with the model's mean and std.
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use image::{imageops::FilterType, DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// File extensions that image lists and dialogs offer (decoding itself goes by content).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

pub fn is_image_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decoding limits: an image larger than this is refused before memory is spent on it.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interpolation {
    Bicubic,
    Bilinear,
    Nearest,
}

impl Interpolation {
    fn filter(self) -> FilterType {
        match self {
            // PIL's bicubic is Keys' kernel with a = -0.5, i.e. Catmull-Rom.
            Interpolation::Bicubic => FilterType::CatmullRom,
            Interpolation::Bilinear => FilterType::Triangle,
            Interpolation::Nearest => FilterType::Nearest,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "bicubic" => Some(Self::Bicubic),
            "bilinear" => Some(Self::Bilinear),
            "nearest" => Some(Self::Nearest),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// (height, width) of the network input.
    pub input_size: (usize, usize),
    pub crop_pct: f64,
    pub interpolation: Interpolation,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for PreprocessConfig {
    /// timm's ConvNeXt ImageNet eval transform.
    fn default() -> Self {
        Self {
            input_size: (224, 224),
            crop_pct: 0.875,
            interpolation: Interpolation::Bicubic,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

fn arr3(v: Option<&serde_json::Value>) -> Option<[f32; 3]> {
    let a = v?.as_array()?;
    if a.len() != 3 {
        return None;
    }
    Some([
        a[0].as_f64()? as f32,
        a[1].as_f64()? as f32,
        a[2].as_f64()? as f32,
    ])
}

impl PreprocessConfig {
    /// From a timm `config.json` (`pretrained_cfg`) or Hugging Face `preprocessor_config.json`;
    /// missing fields keep timm's defaults.
    pub fn from_json(
        config: Option<&serde_json::Value>,
        hf_pre: Option<&serde_json::Value>,
    ) -> Self {
        let mut p = Self::default();
        if let Some(pc) = config.map(|c| c.get("pretrained_cfg").unwrap_or(c)) {
            if let Some(sz) = pc.get("input_size").and_then(|v| v.as_array()) {
                if sz.len() == 3 {
                    if let (Some(h), Some(w)) = (sz[1].as_u64(), sz[2].as_u64()) {
                        p.input_size = (h as usize, w as usize);
                    }
                }
            }
            if let Some(c) = pc.get("crop_pct").and_then(|v| v.as_f64()) {
                p.crop_pct = c;
            }
            if let Some(i) = pc
                .get("interpolation")
                .and_then(|v| v.as_str())
                .and_then(Interpolation::parse)
            {
                p.interpolation = i;
            }
            p.mean = arr3(pc.get("mean")).unwrap_or(p.mean);
            p.std = arr3(pc.get("std")).unwrap_or(p.std);
        }
        if let Some(h) = hf_pre {
            if let Some(s) = h.pointer("/size/shortest_edge").and_then(|v| v.as_u64()) {
                p.input_size = (s as usize, s as usize);
                // Hugging Face's ConvNeXt processor skips the crop from 384 up.
                p.crop_pct = if s >= 384 { 1.0 } else { p.crop_pct };
            }
            if let Some(c) = h.get("crop_pct").and_then(|v| v.as_f64()) {
                if p.input_size.0 < 384 {
                    p.crop_pct = c;
                }
            }
            p.interpolation = match h.get("resample").and_then(|v| v.as_u64()) {
                Some(0) => Interpolation::Nearest,
                Some(2) => Interpolation::Bilinear,
                Some(3) => Interpolation::Bicubic,
                _ => p.interpolation,
            };
            p.mean = arr3(h.get("image_mean")).unwrap_or(p.mean);
            p.std = arr3(h.get("image_std")).unwrap_or(p.std);
        }
        p
    }
}

fn limits() -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(MAX_DECODE_BYTES);
    l
}

/// Decodes any image the `image` crate reads (by content, not extension), within limits.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::Image {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    decode_image(&bytes, &path.display().to_string())
}

pub fn decode_image(bytes: &[u8], name: &str) -> Result<DynamicImage> {
    let err = |msg: String| Error::Image {
        path: name.to_string(),
        msg,
    };
    if bytes.is_empty() {
        return Err(err("file is empty".into()));
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(err(
            "not an image in a format this build reads (PNG, JPEG, WebP, BMP, GIF, TIFF)".into(),
        ));
    }
    reader.limits(limits());
    let img = reader.decode().map_err(|e| err(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(err("image has no pixels".into()));
    }
    Ok(img)
}

/// Python's `round` (half to even), which torchvision's centre crop uses.
fn round_half_even(x: f64) -> i64 {
    let f = x.floor();
    let d = x - f;
    let r = if d > 0.5 || (d == 0.5 && (f as i64) % 2 != 0) {
        f + 1.0
    } else {
        f
    };
    r as i64
}

/// Resized and centre-cropped RGB, exactly the pixels the network sees (before normalising).
pub fn resize_and_crop(img: &DynamicImage, cfg: &PreprocessConfig) -> RgbImage {
    let rgb = img.to_rgb8();
    let (th, tw) = cfg.input_size;
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let (rw, rh) = if th == tw {
        let scale = ((th as f64) / cfg.crop_pct).floor() as usize;
        // torchvision: the shorter side becomes `scale`, the longer is truncated in proportion.
        if w <= h {
            (scale, (scale as f64 * h as f64 / w as f64) as usize)
        } else {
            ((scale as f64 * w as f64 / h as f64) as usize, scale)
        }
    } else {
        (
            ((tw as f64) / cfg.crop_pct).floor() as usize,
            ((th as f64) / cfg.crop_pct).floor() as usize,
        )
    };
    let (rw, rh) = (rw.max(1), rh.max(1));
    let resized = if (rw, rh) == (w, h) {
        rgb
    } else {
        image::imageops::resize(&rgb, rw as u32, rh as u32, cfg.interpolation.filter())
    };
    // Centre crop; torchvision pads with zeros when the crop is larger than the image.
    let top = round_half_even((rh as f64 - th as f64) / 2.0);
    let left = round_half_even((rw as f64 - tw as f64) / 2.0);
    let top = if rh >= th {
        top
    } else {
        -(((th - rh) / 2) as i64)
    };
    let left = if rw >= tw {
        left
    } else {
        -(((tw - rw) / 2) as i64)
    };
    let mut out = RgbImage::new(tw as u32, th as u32);
    for y in 0..th {
        let sy = y as i64 + top;
        if sy < 0 || sy >= rh as i64 {
            continue;
        }
        for x in 0..tw {
            let sx = x as i64 + left;
            if sx >= 0 && sx < rw as i64 {
                out.put_pixel(x as u32, y as u32, *resized.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

/// `[3, H, W]` normalised f32 values of an RGB image.
pub fn normalise(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut v = vec![0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            v[c * h * w + y as usize * w + x as usize] =
                (p[c] as f32 / 255.0 - cfg.mean[c]) / cfg.std[c];
        }
    }
    v
}

/// A preprocessed image: the tensor for the network and the cropped pixels for display.
pub struct Prepared {
    pub tensor: Tensor,
    pub crop: RgbImage,
}

/// `[1, 3, H, W]` input for one image.
pub fn prepare(img: &DynamicImage, cfg: &PreprocessConfig, device: &Device) -> Result<Prepared> {
    let crop = resize_and_crop(img, cfg);
    let (h, w) = cfg.input_size;
    let tensor = Tensor::from_vec(normalise(&crop, cfg), (1, 3, h, w), device)?;
    Ok(Prepared { tensor, crop })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(16.0), 16);
        assert_eq!(round_half_even(2.4), 2);
    }
}

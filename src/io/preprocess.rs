//! From an image file to the network's input tensor, as timm's eval transform does it:
//! resize the shorter side to `size / crop_pct` (bicubic), centre-crop `size`, scale to [0, 1],
//! normalise with the model's mean and std.
use crate::base::error::{Error, Result};
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
pub const MAX_DECODE_BYTES: u64 = 512 << 20;
/// Most pixels the resize before the centre crop may produce (an extreme aspect ratio, or a
/// config asking for a huge input, would need more).
pub const MAX_RESIZE_PIXELS: usize = 64 << 20;

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

/// Largest network input side a config may ask for.
pub const MAX_INPUT_SIDE: usize = 4096;

type Field = std::result::Result<(), String>;

/// Three finite numbers (`mean`, `std`), the std ones positive.
fn arr3(
    v: &serde_json::Value,
    field: &str,
    positive: bool,
) -> std::result::Result<[f32; 3], String> {
    let bad = || {
        format!(
            "`{field}` is {v}: want three finite numbers{}",
            if positive { " > 0" } else { "" }
        )
    };
    let a = v.as_array().filter(|a| a.len() == 3).ok_or_else(bad)?;
    let mut out = [0f32; 3];
    for (o, x) in out.iter_mut().zip(a) {
        let x = x.as_f64().filter(|x| x.is_finite()).ok_or_else(bad)?;
        if positive && x < 1e-6 {
            return Err(bad());
        }
        *o = x as f32;
    }
    Ok(out)
}

fn side(v: &serde_json::Value, field: &str) -> std::result::Result<usize, String> {
    v.as_u64()
        .map(|s| s as usize)
        .filter(|s| (1..=MAX_INPUT_SIDE).contains(s))
        .ok_or_else(|| format!("`{field}` is {v}: want a size from 1 to {MAX_INPUT_SIDE} px"))
}

fn crop_pct(v: &serde_json::Value) -> std::result::Result<f64, String> {
    v.as_f64()
        .filter(|c| c.is_finite() && (0.1..=1.0).contains(c))
        .ok_or_else(|| format!("`crop_pct` is {v}: want a number from 0.1 to 1"))
}

impl PreprocessConfig {
    /// Fields of a timm `config.json` (its `pretrained_cfg`, or the top level); each one
    /// present must be valid, absent ones keep what they were.
    pub fn apply_timm(&mut self, config: &serde_json::Value) -> Field {
        let pc = config.get("pretrained_cfg").unwrap_or(config);
        if let Some(v) = pc.get("input_size") {
            let bad = || format!("`input_size` is {v}: want [3, H, W]");
            let a = v.as_array().filter(|a| a.len() == 3).ok_or_else(bad)?;
            if a[0].as_u64() != Some(3) {
                return Err(bad());
            }
            self.input_size = (side(&a[1], "input_size")?, side(&a[2], "input_size")?);
        }
        if let Some(v) = pc.get("crop_pct") {
            self.crop_pct = crop_pct(v)?;
        }
        if let Some(v) = pc.get("interpolation") {
            self.interpolation = v.as_str().and_then(Interpolation::parse).ok_or_else(|| {
                format!("`interpolation` is {v}: want bicubic, bilinear or nearest")
            })?;
        }
        if let Some(v) = pc.get("mean") {
            self.mean = arr3(v, "mean", false)?;
        }
        if let Some(v) = pc.get("std") {
            self.std = arr3(v, "std", true)?;
        }
        Ok(())
    }

    /// Fields of a Hugging Face `preprocessor_config.json`.
    pub fn apply_hf(&mut self, h: &serde_json::Value) -> Field {
        if let Some(v) = h.pointer("/size/shortest_edge") {
            let s = side(v, "size.shortest_edge")?;
            self.input_size = (s, s);
            // Hugging Face's ConvNeXt processor skips the crop from 384 up.
            if s >= 384 {
                self.crop_pct = 1.0;
            }
        }
        if let Some(v) = h.get("crop_pct") {
            let c = crop_pct(v)?;
            if self.input_size.0 < 384 {
                self.crop_pct = c;
            }
        }
        if let Some(v) = h.get("resample") {
            self.interpolation = match v.as_u64() {
                Some(0) => Interpolation::Nearest,
                Some(2) => Interpolation::Bilinear,
                Some(3) => Interpolation::Bicubic,
                _ => {
                    return Err(format!(
                        "`resample` is {v}: want 0 (nearest), 2 (bilinear) or 3 (bicubic)"
                    ))
                }
            };
        }
        if let Some(v) = h.get("image_mean") {
            self.mean = arr3(v, "image_mean", false)?;
        }
        if let Some(v) = h.get("image_std") {
            self.std = arr3(v, "image_std", true)?;
        }
        Ok(())
    }
}

fn limits() -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(MAX_DECODE_BYTES);
    l
}

/// Decodes any image the `image` crate reads (by content, not extension), within limits; only
/// a regular file, of at most [`crate::base::files::MAX_IMAGE_FILE_BYTES`].
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let bytes = crate::base::files::read_capped(
        path,
        crate::base::files::MAX_IMAGE_FILE_BYTES,
        "an image",
    )?;
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
    let format = reader.format().ok_or_else(|| {
        err("not an image in a format this build reads (PNG, JPEG, WebP, BMP, GIF, TIFF)".into())
    })?;
    // The JPEG decoder fills a truncated scan with grey and says nothing; PIL refuses it.
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(err(
            "truncated JPEG (no end-of-image marker after its data)".into(),
        ));
    }
    reader.limits(limits());
    let img = reader.decode().map_err(|e| err(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(err("image has no pixels".into()));
    }
    Ok(img)
}

/// A JPEG ends its scan data with an end-of-image marker (`FF D9`); one cut short does not.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]);
    sos.is_some_and(|at| bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]))
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
/// A resize that would exceed [`MAX_RESIZE_PIXELS`] is refused.
pub fn resize_and_crop(img: &DynamicImage, cfg: &PreprocessConfig) -> Result<RgbImage> {
    let (th, tw) = cfg.input_size;
    let (w, h) = (img.width() as usize, img.height() as usize);
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
    if rw.saturating_mul(rh) > MAX_RESIZE_PIXELS || rw > u32::MAX as usize || rh > u32::MAX as usize
    {
        return Err(Error::Input(format!(
            "a {w}×{h} image would be resized to {rw}×{rh} before the {tw}×{th} centre crop, more than the {} Mpx limit (an extreme aspect ratio?)",
            MAX_RESIZE_PIXELS >> 20
        )));
    }
    let rgb = img.to_rgb8();
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
    Ok(out)
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

/// The RGB pixels a normalised `[3, H, W]` input stands for (to draw maps over a tensor that
/// came without its image).
pub fn denormalise(chw: &[f32], (h, w): (usize, usize), cfg: &PreprocessConfig) -> RgbImage {
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let at = |c: usize| chw[c * h * w + y as usize * w + x as usize];
        image::Rgb(std::array::from_fn(|c| {
            ((at(c) * cfg.std[c] + cfg.mean[c]) * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        }))
    })
}

/// An image resized (bicubic) to exactly `side`×`side`, aspect ignored, and normalised as the
/// model wants: how RepLKNet feeds images to its receptive-field analysis.
pub fn prepare_square(
    img: &DynamicImage,
    side: usize,
    cfg: &PreprocessConfig,
    device: &Device,
) -> Result<Tensor> {
    if side == 0 || side > MAX_INPUT_SIDE {
        return Err(Error::Input(format!(
            "size {side}: want 1 to {MAX_INPUT_SIDE} px"
        )));
    }
    let rgb = img.to_rgb8();
    let resized = image::imageops::resize(
        &rgb,
        side as u32,
        side as u32,
        Interpolation::Bicubic.filter(),
    );
    Ok(Tensor::from_vec(
        normalise(&resized, cfg),
        (1, 3, side, side),
        device,
    )?)
}

/// A preprocessed image: the tensor for the network and the cropped pixels for display.
pub struct Prepared {
    pub tensor: Tensor,
    pub crop: RgbImage,
}

/// `[1, 3, H, W]` input for one image.
pub fn prepare(img: &DynamicImage, cfg: &PreprocessConfig, device: &Device) -> Result<Prepared> {
    let crop = resize_and_crop(img, cfg)?;
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

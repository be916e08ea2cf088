//! GPU textures for images the panels show, made once per content and reused every frame.
use egui::{ColorImage, TextureHandle, TextureOptions};
use std::collections::HashMap;

#[derive(Default)]
pub struct Textures {
    map: HashMap<String, TextureHandle>,
}

impl Textures {
    /// The texture for `key`, made by `make` the first time.
    pub fn get(
        &mut self,
        ctx: &egui::Context,
        key: &str,
        options: TextureOptions,
        make: impl FnOnce() -> ColorImage,
    ) -> TextureHandle {
        if let Some(t) = self.map.get(key) {
            return t.clone();
        }
        // A few hundred textures at most: drop everything rather than track use.
        if self.map.len() > 256 {
            self.map.clear();
        }
        let t = ctx.load_texture(key, make(), options);
        self.map.insert(key.to_string(), t.clone());
        t
    }

    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}

pub fn rgba(img: &image::RgbaImage) -> ColorImage {
    ColorImage::from_rgba_unmultiplied([img.width() as usize, img.height() as usize], img.as_raw())
}

pub fn rgb(img: &image::RgbImage) -> ColorImage {
    ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw())
}

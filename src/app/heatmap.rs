//! A map drawn over the image the network saw, and its colour bar: the features tab's large
//! view, the attribution maps and the evidence map all use these.
use super::textures::{self, Textures};
use super::views::RunView;
use crate::analysis::colormap::Colormap;
use egui::{Color32, Rect, Sense, TextureOptions, Vec2};

/// The image the network saw, under its run's own texture key: an overlay is drawn over the
/// image it was computed for, never over whatever image a shared key happened to hold.
pub struct Base<'a> {
    pub key: String,
    pub image: &'a image::RgbImage,
}

impl<'a> Base<'a> {
    pub fn of(run: &'a RunView) -> Self {
        Self {
            key: run.texture_key(),
            image: &run.input,
        }
    }
}

/// `base` with a map texture (made by `make` the first time `key` is seen) blended over it at
/// `opacity`, in a `side`×`side` square.
pub fn over_input(
    ui: &mut egui::Ui,
    tex: &mut Textures,
    base: Base,
    key: &str,
    make: impl FnOnce() -> image::RgbaImage,
    side: f32,
    opacity: f32,
) {
    let image = base.image;
    let base = tex.get(ui.ctx(), &base.key, TextureOptions::LINEAR, || {
        textures::rgb(image)
    });
    let over = tex.get(ui.ctx(), key, TextureOptions::LINEAR, || {
        textures::rgba(&make())
    });
    let (rect, _) = ui.allocate_exact_size(Vec2::splat(side), Sense::hover());
    let uv = Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
    ui.painter().image(base.id(), rect, uv, Color32::WHITE);
    let a = opacity.clamp(0.0, 1.0);
    ui.painter().image(
        over.id(),
        rect,
        uv,
        Color32::from_white_alpha((a * 255.0) as u8),
    );
}

/// The colour map from its low end to its high end.
pub fn colour_bar(ui: &mut egui::Ui, cmap: Colormap, w: f32) {
    let (rect, _) = ui.allocate_exact_size(Vec2::new(w, 10.0), Sense::hover());
    let n = 64;
    for i in 0..n {
        let [r, g, b] = cmap.rgb((i as f32 + 0.5) / n as f32);
        let x0 = rect.left() + rect.width() * i as f32 / n as f32;
        let x1 = rect.left() + rect.width() * (i + 1) as f32 / n as f32;
        ui.painter().rect_filled(
            Rect::from_min_max(egui::pos2(x0, rect.top()), egui::pos2(x1, rect.bottom())),
            0.0,
            Color32::from_rgb(r, g, b),
        );
    }
}

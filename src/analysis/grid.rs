//! Feature-map grids: which channels to show in which order, and the picture of a page of them
//! (the app's texture and the PNG a user saves are the same image).
use crate::analysis::colormap::Colormap;
use crate::analysis::stats::FeatureMap;
use image::{Rgba, RgbaImage};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SortBy {
    #[default]
    Index,
    /// Highest mean activation first.
    Mean,
    /// Highest maximum activation first.
    Max,
}

impl SortBy {
    pub const ALL: [SortBy; 3] = [SortBy::Index, SortBy::Mean, SortBy::Max];
    pub fn name(self) -> &'static str {
        match self {
            SortBy::Index => "index",
            SortBy::Mean => "mean (high first)",
            SortBy::Max => "max (high first)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Scale {
    /// Each channel stretched over its own min..max: shows every channel's pattern.
    #[default]
    PerChannel,
    /// One min..max for the layer: shows which channels are strong.
    Shared,
}

/// Maps this small (2×2 or less) are drawn on one scale for the layer: stretched channel by
/// channel, each tile would be one flat colour.
pub const TINY_MAP: usize = 4;

impl Scale {
    /// The scale `fm` is drawn with when this one is chosen: shared for tiny maps.
    pub fn for_map(self, fm: &FeatureMap) -> Scale {
        if is_tiny(fm) {
            Scale::Shared
        } else {
            self
        }
    }
}

/// Whether `fm`'s maps are too small to stretch channel by channel ([`TINY_MAP`]).
pub fn is_tiny(fm: &FeatureMap) -> bool {
    fm.height * fm.width <= TINY_MAP
}

/// Channel indices in display order.
pub fn order(fm: &FeatureMap, sort: SortBy) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..fm.channels).collect();
    let key = |c: usize| match sort {
        SortBy::Index => 0.0,
        SortBy::Mean => fm.stats[c].mean,
        SortBy::Max => fm.stats[c].max,
    };
    if sort != SortBy::Index {
        // Stable, so ties keep index order; NaN sorts last.
        idx.sort_by(|&a, &b| {
            let (ka, kb) = (key(a), key(b));
            match (ka.is_nan(), kb.is_nan()) {
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => kb.total_cmp(&ka),
            }
        });
    }
    idx
}

/// The value range a channel is drawn with.
pub fn channel_range(fm: &FeatureMap, c: usize, scale: Scale, cmap: Colormap) -> (f32, f32) {
    let (lo, hi) = match scale {
        Scale::PerChannel => (fm.stats[c].min, fm.stats[c].max),
        Scale::Shared => fm.range(),
    };
    cmap.range(lo, hi)
}

/// One channel as an RGBA image at the map's own resolution.
pub fn channel_image(fm: &FeatureMap, c: usize, scale: Scale, cmap: Colormap) -> RgbaImage {
    let (lo, hi) = channel_range(fm, c, scale, cmap);
    let plane = fm.plane(c);
    RgbaImage::from_fn(fm.width as u32, fm.height as u32, |x, y| {
        let [r, g, b] = cmap.map(plane[y as usize * fm.width + x as usize], lo, hi);
        Rgba([r, g, b, 255])
    })
}

/// Layout of a page of channel cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridLayout {
    pub cols: usize,
    pub rows: usize,
    /// Pixels per activation (nearest-neighbour upsampling).
    pub zoom: usize,
    /// Transparent pixels between cells.
    pub gap: usize,
}

impl GridLayout {
    /// A near-square grid for `n` cells.
    pub fn for_count(n: usize, zoom: usize, gap: usize) -> Self {
        let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
        let rows = n.div_ceil(cols).max(1);
        Self {
            cols,
            rows,
            zoom: zoom.max(1),
            gap,
        }
    }

    pub fn cell_px(&self, fm: &FeatureMap) -> (usize, usize) {
        (fm.width * self.zoom, fm.height * self.zoom)
    }

    pub fn image_px(&self, fm: &FeatureMap) -> (usize, usize) {
        let (cw, ch) = self.cell_px(fm);
        (
            self.cols * (cw + self.gap) - self.gap,
            self.rows * (ch + self.gap) - self.gap,
        )
    }

    /// Top-left pixel of a slot's cell.
    pub fn cell_origin(&self, fm: &FeatureMap, slot: usize) -> (usize, usize) {
        let (cw, ch) = self.cell_px(fm);
        (
            (slot % self.cols) * (cw + self.gap),
            (slot / self.cols) * (ch + self.gap),
        )
    }

    /// Which cell (slot in the page) holds pixel `(x, y)`, if any (gaps hold none).
    pub fn cell_at(&self, fm: &FeatureMap, x: usize, y: usize) -> Option<usize> {
        let (cw, ch) = self.cell_px(fm);
        let (col, row) = (x / (cw + self.gap), y / (ch + self.gap));
        let inside = x % (cw + self.gap) < cw && y % (ch + self.gap) < ch;
        (inside && col < self.cols && row < self.rows).then_some(row * self.cols + col)
    }
}

/// A page of channels (`channels`, in display order) as one image.
pub fn render_grid(
    fm: &FeatureMap,
    channels: &[usize],
    layout: GridLayout,
    scale: Scale,
    cmap: Colormap,
) -> RgbaImage {
    let (w, h) = layout.image_px(fm);
    let mut img = RgbaImage::new(w as u32, h as u32);
    let (cw, ch) = layout.cell_px(fm);
    for (slot, &c) in channels.iter().enumerate().take(layout.cols * layout.rows) {
        let (ox, oy) = layout.cell_origin(fm, slot);
        let (lo, hi) = channel_range(fm, c, scale, cmap);
        let plane = fm.plane(c);
        for y in 0..ch {
            for x in 0..cw {
                let v = plane[(y / layout.zoom) * fm.width + x / layout.zoom];
                let [r, g, b] = cmap.map(v, lo, hi);
                img.put_pixel((ox + x) as u32, (oy + y) as u32, Rgba([r, g, b, 255]));
            }
        }
    }
    img
}

/// A single-channel map `[h, w]` (row-major) as colours over `[lo, hi]`.
pub fn map_image(
    map: &[f32],
    (h, w): (usize, usize),
    (lo, hi): (f32, f32),
    cmap: Colormap,
) -> RgbaImage {
    RgbaImage::from_fn(w as u32, h as u32, |x, y| {
        let [r, g, b] = cmap.map(map[y as usize * w + x as usize], lo, hi);
        Rgba([r, g, b, 255])
    })
}

/// `map` stretched (bilinear) over `base` and blended in with opacity `alpha`.
pub fn overlay(base: &image::RgbImage, map: &RgbaImage, alpha: f32) -> RgbaImage {
    let (w, h) = base.dimensions();
    let map = image::imageops::resize(map, w, h, image::imageops::FilterType::Triangle);
    let a = alpha.clamp(0.0, 1.0);
    RgbaImage::from_fn(w, h, |x, y| {
        let (p, q) = (base.get_pixel(x, y).0, map.get_pixel(x, y).0);
        Rgba(std::array::from_fn(|k| {
            if k == 3 {
                255
            } else {
                (p[k] as f32 * (1.0 - a) + q[k] as f32 * a).round() as u8
            }
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::stats::ChannelStats;

    fn map() -> FeatureMap {
        // 3 channels of 2×2: means 1, 3, 2; maxima 4, 3, 2.
        let data = vec![0., 0., 0., 4., 3., 3., 3., 3., 2., 2., 2., 2.];
        let stats = data
            .chunks(4)
            .map(|p| ChannelStats {
                min: p.iter().cloned().fold(f32::INFINITY, f32::min),
                max: p.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
                mean: p.iter().sum::<f32>() / 4.0,
            })
            .collect();
        FeatureMap {
            channels: 3,
            height: 2,
            width: 2,
            data,
            stats,
        }
    }

    #[test]
    fn tiny_maps_are_drawn_on_the_shared_scale_whatever_is_chosen() {
        let tiny = map();
        assert_eq!(Scale::PerChannel.for_map(&tiny), Scale::Shared);
        let mut larger = map();
        (larger.height, larger.width) = (3, 2);
        assert_eq!(Scale::PerChannel.for_map(&larger), Scale::PerChannel);
        assert_eq!(Scale::Shared.for_map(&larger), Scale::Shared);
    }

    #[test]
    fn orders() {
        let fm = map();
        assert_eq!(order(&fm, SortBy::Index), vec![0, 1, 2]);
        assert_eq!(order(&fm, SortBy::Mean), vec![1, 2, 0]);
        assert_eq!(order(&fm, SortBy::Max), vec![0, 1, 2]);
    }

    #[test]
    fn grid_places_cells_and_finds_them_back() {
        let fm = map();
        let layout = GridLayout::for_count(3, 3, 1);
        assert_eq!((layout.cols, layout.rows), (2, 2));
        assert_eq!(layout.image_px(&fm), (13, 13));
        let img = render_grid(&fm, &[2, 0], layout, Scale::PerChannel, Colormap::Grey);
        // Slot 1 holds channel 0: its bottom-right activation (4) is its max -> white; top-left 0 -> black.
        assert_eq!(img.get_pixel(7 + 5, 5).0, [255, 255, 255, 255]);
        assert_eq!(img.get_pixel(7, 0).0, [0, 0, 0, 255]);
        // Gaps and the unused slot stay transparent.
        assert_eq!(img.get_pixel(6, 0).0[3], 0);
        assert_eq!(img.get_pixel(10, 10).0[3], 0);
        assert_eq!(layout.cell_at(&fm, 8, 2), Some(1));
        assert_eq!(layout.cell_at(&fm, 6, 2), None);
        assert_eq!(layout.cell_at(&fm, 2, 9), Some(2));
    }

    #[test]
    fn shared_scale_uses_the_layer_range() {
        let fm = map();
        // Channel 2 is flat at 2: per channel it is mid-grey, on the shared 0..4 scale also 0.5.
        let a = channel_image(&fm, 2, Scale::Shared, Colormap::Grey);
        assert_eq!(a.get_pixel(0, 0).0, [128, 128, 128, 255]);
        let b = channel_image(&fm, 1, Scale::Shared, Colormap::Grey);
        assert_eq!(b.get_pixel(0, 0).0, [191, 191, 191, 255]);
    }
}

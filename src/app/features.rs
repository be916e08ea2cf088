//! Feature maps: pick a layer on the architecture strip, page through its channels, hover for
//! statistics, click one to see it large over the input; histogram and channel means below.
use super::folder_jobs::TopPatches;
use super::plots::histogram_bars;
use super::tab::{Tab, TabCtx};
use super::views::ModelView;
use super::widgets::TopImages;
use super::worker::{JobSender, SaveContent};
use super::{heatmap, save_as, strip, textures, Shared};
use crate::analysis::colormap::Colormap;
use crate::analysis::grid::{self, GridLayout, Scale, SortBy};
use crate::analysis::stats::FeatureMap;
use crate::model::layer_id::LayerId;
use egui::{Color32, Rect, Sense, Stroke, TextureOptions, Vec2};
use egui_plot::{BarChart, Line, Plot, VLine};
use image::RgbaImage;
use std::sync::Arc;

pub const NAME: &str = "Feature maps";

pub const PAGE_SIZES: [usize; 5] = [16, 36, 64, 144, 256];

/// The feature map of the selected layer.
pub fn current_map(shared: &Shared) -> Option<(LayerId, Arc<FeatureMap>)> {
    let run = shared.run.as_ref()?;
    let layer = shared.selection.layer?;
    run.maps
        .iter()
        .find(|(id, _)| *id == layer)
        .map(|(id, m)| (*id, m.clone()))
}

/// Channels on the current page, in display order, and the page count.
pub fn page_channels(shared: &Shared, fm: &FeatureMap) -> (Vec<usize>, usize) {
    let order = grid::order(fm, shared.settings.sort);
    let per = shared.settings.page_size.max(1);
    let pages = order.len().div_ceil(per).max(1);
    let page = shared.selection.page.min(pages - 1);
    (
        order.into_iter().skip(page * per).take(per).collect(),
        pages,
    )
}

/// The scale a map is drawn with: the chosen one, or shared for tiny maps.
fn effective_scale(shared: &Shared, fm: &FeatureMap) -> Scale {
    shared.settings.scale.for_map(fm)
}

fn layout_for(shared: &Shared, fm: &FeatureMap, zoom: usize) -> GridLayout {
    GridLayout::for_count(
        shared.settings.page_size.min(fm.channels).max(1),
        zoom,
        zoom.max(1),
    )
}

/// The current page as a picture (for saving): cells at least 48 px wide.
pub fn grid_image(shared: &Shared) -> Option<RgbaImage> {
    let (_, fm) = current_map(shared)?;
    let (channels, _) = page_channels(shared, &fm);
    let zoom = 48usize.div_ceil(fm.width).max(1);
    Some(grid::render_grid(
        &fm,
        &channels,
        layout_for(shared, &fm, zoom),
        effective_scale(shared, &fm),
        shared.settings.colormap,
    ))
}

/// What the large view shows: the selected channel, else the selected class's evidence.
fn large_map(shared: &Shared) -> Option<(String, Arc<FeatureMap>, usize, Colormap)> {
    let run = shared.run.as_ref()?;
    if let (Some(c), Some((id, fm))) = (shared.selection.channel, current_map(shared)) {
        if c < fm.channels {
            return Some((
                format!("{id} · channel {c}"),
                fm,
                c,
                shared.settings.colormap,
            ));
        }
    }
    let class = shared.selection.class?;
    let label = run
        .top
        .iter()
        .find(|p| p.index == class)
        .map(|p| crate::io::labels::short(&p.label).to_string())
        .unwrap_or_default();
    if let Some(e) = run.explained.as_ref().filter(|e| e.class == class) {
        return Some((
            format!("Grad-CAM at {} for “{label}”", e.layer),
            e.map.clone(),
            0,
            Colormap::Magma,
        ));
    }
    let (_, ev) = run.evidence.iter().find(|(k, _)| *k == class)?;
    // Evidence is signed (for and against the class): always the diverging map.
    Some((
        format!("evidence for “{label}” (last stage)"),
        ev.clone(),
        0,
        Colormap::Diverging,
    ))
}

/// The large view as a picture: the network's input with the map blended over it.
pub fn overlay_image(shared: &Shared) -> Option<RgbaImage> {
    let run = shared.run.as_ref()?;
    let (_, fm, c, cmap) = large_map(shared)?;
    let base = image::DynamicImage::ImageRgb8(run.input.clone());
    let side = 448u32;
    let base = base
        .resize_exact(side, side, image::imageops::FilterType::Triangle)
        .to_rgba8();
    let map = grid::channel_image(&fm, c, effective_scale(shared, &fm), cmap);
    let map = image::imageops::resize(&map, side, side, image::imageops::FilterType::Triangle);
    let a = shared.settings.overlay_opacity.clamp(0.0, 1.0);
    Some(RgbaImage::from_fn(side, side, |x, y| {
        let (p, q) = (base.get_pixel(x, y).0, map.get_pixel(x, y).0);
        image::Rgba(std::array::from_fn(|k| {
            if k == 3 {
                255
            } else {
                (p[k] as f32 * (1.0 - a) + q[k] as f32 * a).round() as u8
            }
        }))
    }))
}

/// The feature-map tab. Its choices (layer, page, channel) live in the shared selection, since
/// other tabs set them too.
#[derive(Default)]
pub struct FeaturesTab {
    top: TopImages,
}

impl Tab for FeaturesTab {
    fn name(&self) -> &'static str {
        NAME
    }

    fn poll(&mut self, ctx: &mut TabCtx) {
        self.top.poll(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        show(ctx.shared, ui, &mut self.top, ctx.jobs)
    }

    fn on_model_changed(&mut self, _model: &ModelView) {
        self.top = TopImages::default();
    }
}

impl FeaturesTab {
    /// The folder run's top images of the channel shown large, once they have come.
    pub fn top_patches(&self) -> Option<&TopPatches> {
        self.top.patches()
    }
}

/// File > Save feature grid as PNG.
pub fn save_grid(shared: &mut Shared) {
    let img = grid_image(shared).ok_or_else(|| "no feature map".to_string());
    let content = img.map(SaveContent::Png);
    save_as(shared, "feature_grid.png", ("PNG", "png"), content);
}

/// File > Save overlay as PNG.
pub fn save_overlay(shared: &mut Shared) {
    let img = overlay_image(shared).ok_or_else(|| "select a channel (or class) first".into());
    let content = img.map(SaveContent::Png);
    save_as(shared, "overlay.png", ("PNG", "png"), content);
}

fn show(shared: &mut Shared, ui: &mut egui::Ui, top: &mut TopImages, jobs: &JobSender) {
    if shared.run.is_none() {
        ui.label("Open an image (drop it on the window, File > Open image, or a sample on the left) to see its feature maps.");
        return;
    }
    layer_strip(shared, ui);
    let tiny = current_map(shared).is_some_and(|(_, fm)| grid::is_tiny(&fm));
    controls(shared, ui, tiny);
    ui.separator();
    let Some((id, fm)) = current_map(shared) else {
        ui.label("Pick a layer above.");
        return;
    };
    let avail = ui.available_size();
    let side_w = (avail.x * 0.36).clamp(240.0, 460.0);
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width(avail.x - side_w - 12.0);
            grid_view(shared, ui, id, &fm, avail.y * 0.62);
        });
        ui.add_space(8.0);
        ui.vertical(|ui| {
            ui.set_width(side_w);
            large_view(shared, ui, top, jobs);
        });
    });
    ui.separator();
    plots(shared, ui, &fm);
}

fn layer_strip(shared: &mut Shared, ui: &mut egui::Ui) {
    let Some(run) = &shared.run else { return };
    let shape = |id: LayerId| {
        let dims = run
            .maps
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, m)| format!("{id}: {} × {} × {}", m.channels, m.height, m.width))
            .unwrap_or_default();
        match id {
            LayerId::Stage(_) => format!("{dims} (the stage's output)"),
            _ => dims,
        }
    };
    let depths = shared
        .model
        .as_ref()
        .map(|m| m.plan.depths())
        .unwrap_or_default();
    if let Some(id) = strip::layer_strip(ui, &depths, shared.selection.layer, shape) {
        shared.selection.layer = Some(id);
        shared.selection.page = 0;
        shared.selection.channel = None;
    }
}

/// The toolbar; on a layer of `tiny` maps the scale shown is the shared one in use.
fn controls(shared: &mut Shared, ui: &mut egui::Ui, tiny: bool) {
    let s = &mut shared.settings;
    let mut reset_page = false;
    ui.horizontal_wrapped(|ui| {
        let lbl = ui.label("Sort");
        egui::ComboBox::from_id_salt("sort")
            .selected_text(s.sort.name())
            .show_ui(ui, |ui| {
                for v in SortBy::ALL {
                    reset_page |= ui.selectable_value(&mut s.sort, v, v.name()).changed();
                }
            })
            .response
            .labelled_by(lbl.id);
        let lbl = ui.label("Colours");
        egui::ComboBox::from_id_salt("cmap")
            .selected_text(s.colormap.name())
            .show_ui(ui, |ui| {
                for v in Colormap::ALL {
                    ui.selectable_value(&mut s.colormap, v, v.name());
                }
            })
            .response
            .labelled_by(lbl.id);
        ui.label("Scale");
        ui.add_enabled_ui(!tiny, |ui| {
            let shown = if tiny { Scale::Shared } else { s.scale };
            let per = ui
                .selectable_label(shown == Scale::PerChannel, "per channel")
                .on_hover_text("Each channel stretched over its own min..max")
                .on_disabled_hover_text("These maps are too small to stretch channel by channel");
            let shared = ui
                .selectable_label(shown == Scale::Shared, "shared")
                .on_hover_text("One min..max for the whole layer: strong channels stand out");
            if per.clicked() {
                s.scale = Scale::PerChannel;
            }
            if shared.clicked() {
                s.scale = Scale::Shared;
            }
        });
        let lbl = ui.label("Per page");
        egui::ComboBox::from_id_salt("page_size")
            .selected_text(s.page_size.to_string())
            .width(50.0)
            .show_ui(ui, |ui| {
                for v in PAGE_SIZES {
                    reset_page |= ui
                        .selectable_value(&mut s.page_size, v, v.to_string())
                        .changed();
                }
            })
            .response
            .labelled_by(lbl.id);
    });
    if reset_page {
        shared.selection.page = 0;
    }
}

fn grid_view(
    shared: &mut Shared,
    ui: &mut egui::Ui,
    id: LayerId,
    fm: &Arc<FeatureMap>,
    max_h: f32,
) {
    let (channels, pages) = page_channels(shared, fm);
    let page = shared.selection.page.min(pages - 1);
    ui.horizontal(|ui| {
        ui.strong(format!("{id}"));
        ui.label(format!(
            "{} channels · {}×{}",
            fm.channels, fm.height, fm.width
        ));
        ui.add_enabled_ui(page > 0, |ui| {
            if ui
                .small_button("<")
                .on_hover_text("Previous page")
                .clicked()
            {
                shared.selection.page = page - 1;
            }
        });
        ui.label(format!("page {}/{pages}", page + 1));
        ui.add_enabled_ui(page + 1 < pages, |ui| {
            if ui.small_button(">").on_hover_text("Next page").clicked() {
                shared.selection.page = page + 1;
            }
        });
    });
    if grid::is_tiny(fm) && shared.settings.scale != Scale::Shared {
        ui.label(
            egui::RichText::new(format!(
                "{}×{} maps: stretched channel by channel each tile would be one flat colour, so the layer is shown on one shared scale (strong channels stand out).",
                fm.height, fm.width
            ))
            .small()
            .weak(),
        );
    }
    let layout = layout_for(shared, fm, 1);
    let s = &shared.settings;
    let key = format!(
        "grid:{id}:{page}:{:?}:{:?}:{:?}:{}",
        s.sort, s.colormap, s.scale, s.page_size
    );
    let (scale, cmap) = (effective_scale(shared, fm), s.colormap);
    let tex = shared
        .textures
        .get(ui.ctx(), &key, TextureOptions::NEAREST, || {
            textures::rgba(&grid::render_grid(fm, &channels, layout, scale, cmap))
        });
    let px = tex.size_vec2();
    let fit = (ui.available_width() / px.x).min(max_h.max(120.0) / px.y);
    let (rect, resp) = ui.allocate_exact_size(px * fit, Sense::click());
    ui.painter().image(
        tex.id(),
        rect,
        Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
        Color32::WHITE,
    );
    let cell_rect = |slot: usize| {
        let (x, y) = layout.cell_origin(fm, slot);
        let (cw, ch) = layout.cell_px(fm);
        Rect::from_min_size(
            rect.min + Vec2::new(x as f32, y as f32) * fit,
            Vec2::new(cw as f32, ch as f32) * fit,
        )
    };
    if let Some(sel) = shared.selection.channel {
        if let Some(slot) = channels.iter().position(|&c| c == sel) {
            ui.painter().rect_stroke(
                cell_rect(slot).expand(1.0),
                0.0,
                Stroke::new(2.0, Color32::from_rgb(255, 80, 0)),
                egui::StrokeKind::Outside,
            );
        }
    }
    let slot_at = |pos: egui::Pos2| {
        let p = (pos - rect.min) / fit;
        layout.cell_at(fm, p.x.max(0.0) as usize, p.y.max(0.0) as usize)
    };
    if let Some(pos) = resp.hover_pos() {
        if let Some(&c) = slot_at(pos).and_then(|s| channels.get(s)) {
            let st = fm.stats[c];
            resp.clone().on_hover_text_at_pointer(format!(
                "channel {c}\nmin {:.4}\nmax {:.4}\nmean {:.4}\nclick to enlarge",
                st.min, st.max, st.mean
            ));
        }
    }
    if resp.clicked() {
        if let Some(&c) = resp
            .interact_pointer_pos()
            .and_then(slot_at)
            .and_then(|s| channels.get(s))
        {
            shared.selection.channel = Some(c);
        }
    }
    // Also reachable by keyboard and accessibility tools (and UI tests): one button per channel.
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing.x = 2.0;
        ui.label(egui::RichText::new("channels:").small().weak());
        for &c in channels.iter().take(16) {
            if ui
                .small_button(format!("ch {c}"))
                .on_hover_text("Show this channel large")
                .clicked()
            {
                shared.selection.channel = Some(c);
            }
        }
        if channels.len() > 16 {
            ui.label(egui::RichText::new("… (click the grid)").small().weak());
        }
    });
}

fn large_view(shared: &mut Shared, ui: &mut egui::Ui, top: &mut TopImages, jobs: &JobSender) {
    let Some(run) = &shared.run else { return };
    let Some((title, fm, c, cmap)) = large_map(shared) else {
        ui.label(
            "Click a channel in the grid (or a class on the left) to see it here, over the input.",
        );
        return;
    };
    ui.strong(&title);
    if let Some(e) = run
        .explained
        .as_ref()
        .filter(|e| shared.selection.channel.is_none() && Some(e.class) == shared.selection.class)
    {
        ui.label(format!(
            "{}: the last stage's exact evidence map would be a few flat blocks here. The Attribution tab has it, and any other layer.",
            e.reason
        ));
    }
    if fm.height * fm.width == 1 {
        ui.label(
            egui::RichText::new(
                "At this input size the map is a single position (1×1): it shows one value.",
            )
            .small()
            .weak(),
        );
    }
    let scale = effective_scale(shared, &fm);
    let key = format!("large:{title}:{c}:{cmap:?}:{scale:?}");
    let w = ui.available_width().min(420.0);
    let opacity = shared.settings.overlay_opacity;
    let make = || grid::channel_image(&fm, c, scale, cmap);
    heatmap::over_input(
        ui,
        &mut shared.textures,
        heatmap::Base::of(run),
        &key,
        make,
        w,
        opacity,
    );
    ui.add(egui::Slider::new(&mut shared.settings.overlay_opacity, 0.0..=1.0).text("opacity"));
    let st = fm.stats[c];
    let (lo, hi) = grid::channel_range(&fm, c, scale, cmap);
    ui.label(format!(
        "min {:.4} · max {:.4} · mean {:.4}\ncolours span {lo:.3} … {hi:.3} ({})",
        st.min,
        st.max,
        st.mean,
        cmap.name()
    ));
    heatmap::colour_bar(ui, cmap, w);
    let shown = current_map(shared).map(|(layer, _)| layer);
    if let (Some(layer), Some(channel)) = (shown, shared.selection.channel) {
        ui.add_space(6.0);
        top.ui(ui, shared, jobs, (layer, channel));
    }
}

fn plots(shared: &mut Shared, ui: &mut egui::Ui, fm: &FeatureMap) {
    let h = ui.available_height().max(120.0);
    let w = ui.available_width() / 2.0 - 8.0;
    let (lo, hi) = fm.range();
    let bars = histogram_bars(&fm.data, 60, lo, hi, f32::MIN_POSITIVE);
    let means: Vec<[f64; 2]> = fm
        .stats
        .iter()
        .enumerate()
        .map(|(i, s)| [i as f64, s.mean as f64])
        .collect();
    let selected = shared.selection.channel;
    ui.horizontal(|ui| {
        ui.vertical(|ui| {
            ui.label("Activation histogram (all channels)");
            Plot::new("hist")
                .width(w)
                .height(h - 24.0)
                .allow_scroll(false)
                .show(ui, |p| p.bar_chart(BarChart::new("values", bars)));
        });
        ui.vertical(|ui| {
            ui.label("Mean activation per channel");
            let r = Plot::new("means")
                .width(w)
                .height(h - 24.0)
                .allow_scroll(false)
                .show(ui, |p| {
                    p.line(Line::new("mean", means));
                    if let Some(c) = selected {
                        p.vline(
                            VLine::new("selected", c as f64).color(Color32::from_rgb(255, 80, 0)),
                        );
                    }
                    p.pointer_coordinate()
                });
            if r.response.clicked() {
                if let Some(pt) = r.inner {
                    let c = pt.x.round().clamp(0.0, (fm.channels - 1) as f64) as usize;
                    shared.selection.channel = Some(c);
                }
            }
        });
    });
}

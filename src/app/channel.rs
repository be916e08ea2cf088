//! The Channel tab, OpenAI Microscope's page for the channel selected anywhere in the app: the
//! image it would most like to see (optimised from noise with Lucid's recipe; with diversity,
//! four different ones), beside what it does on the current image and the folder images that
//! excite it most; and the layer atlas, every channel's image in a grid, cached on disk.
use super::tab::{Tab, TabCtx};
use super::views::ModelView;
use super::widgets::{job_progress, TopImages};
use super::worker::{Pending, WorkerCtx};
use super::{heatmap, strip, textures, Shared};
use crate::analysis::feature_vis::{self, Objective, Settings, Visual};
use crate::analysis::grid;
use crate::base::progress::Progress;
use crate::io::cache;
use crate::io::engine::ModelSpec;
use crate::model::flops;
use crate::model::layer_id::LayerId;
use candle_core::{DType, Tensor};
use egui::{RichText, TextureOptions, Vec2};
use std::collections::HashMap;

/// How many different images the diversity button makes.
const DIVERSE: usize = 4;
/// The atlas's steps: half of Lucid's 512, so that a layer of hundreds of channels takes
/// minutes rather than an hour on a laptop (the Channel view uses the full recipe).
pub const ATLAS_STEPS: usize = 256;
/// The atlas's largest image side (ConvNeXt-T's 224 px cost 5× as much as 96 px).
const ATLAS_MAX_SIZE: usize = 96;

/// One optimised image and its objective measured on it.
pub struct Picture {
    pub rgb: image::RgbImage,
    pub objective: f32,
}

/// The optimised images of one channel.
pub struct ChannelImages {
    pub layer: LayerId,
    pub channel: usize,
    pub pictures: Vec<Picture>,
}

/// A layer's atlas: one picture per channel, in channel order.
pub struct Atlas {
    pub layer: LayerId,
    pub pictures: Vec<Picture>,
    /// Read from the disk cache rather than computed.
    pub cached: bool,
}

#[derive(Default)]
pub struct ChannelTab {
    /// `(layer, channel, diverse)` last asked for.
    asked: Option<(LayerId, usize, bool)>,
    images: Option<ChannelImages>,
    pending: Option<Pending<ChannelImages>>,
    atlas: Option<Atlas>,
    atlas_pending: Option<Pending<Atlas>>,
    top: TopImages,
    /// Counts the results taken in: names their textures.
    serial: u64,
}

impl Tab for ChannelTab {
    fn name(&self) -> &'static str {
        "Channel"
    }

    fn poll(&mut self, ctx: &mut TabCtx) {
        if let Some(i) = ctx.take(&mut self.pending) {
            self.images = Some(i);
            self.serial += 1;
        }
        if let Some(a) = ctx.take(&mut self.atlas_pending) {
            self.atlas = Some(a);
            self.serial += 1;
        }
        self.top.poll(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        ui.label("What a channel looks for: the image it would most like to see, optimised from noise (Lucid's recipe: a 1/f spectrum in decorrelated colour, grey for a grey model, jittered, scaled and rotated each step), beside what it does on the current image and the images of your folder that excite it most.");
        let Some(model) = &ctx.shared.model else {
            ui.label("Load a model first.");
            return;
        };
        let (mut layer, mut channel) = selected(ctx.shared, model);
        let depths = model.plan.depths();
        if let Some(id) = strip::layer_strip(ui, &depths, Some(layer), |id| id.name()) {
            (layer, channel) = (id, 0);
        }
        let channels = channels_of(model, layer);
        let mut c = channel.min(channels.saturating_sub(1));
        ui.horizontal(|ui| {
            ui.label(format!("Channel of {layer} ({channels} channels):"));
            ui.add(egui::DragValue::new(&mut c).range(0..=channels.saturating_sub(1)));
        });
        ctx.shared.selection.layer = Some(layer);
        ctx.shared.selection.channel = Some(c);
        self.channel_view(ui, ctx, (layer, c));
        ui.separator();
        self.atlas_view(ui, ctx, layer);
    }

    fn on_model_changed(&mut self, _model: &ModelView) {
        *self = ChannelTab {
            serial: self.serial + 1,
            ..Default::default()
        };
    }
}

impl ChannelTab {
    /// The channel's optimised images on show, once they have come.
    pub fn images(&self) -> Option<&ChannelImages> {
        self.images.as_ref()
    }

    /// The folder run's top images of the channel, once they have come.
    pub fn top_patches(&self) -> Option<&super::folder_jobs::TopPatches> {
        self.top.patches()
    }

    /// The atlas on show, once it has come.
    pub fn atlas(&self) -> Option<&Atlas> {
        self.atlas.as_ref()
    }

    fn channel_view(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx, (layer, c): (LayerId, usize)) {
        let diverse = self.asked.is_some_and(|a| a.2);
        if self.asked.map(|a| (a.0, a.1)) != Some((layer, c)) && !ctx.shared.busy() {
            self.optimise(ctx, (layer, c), false);
        }
        ui.horizontal(|ui| {
            let idle = self.pending.is_none();
            if ui
                .add_enabled(idle && !diverse, egui::Button::new(format!("{DIVERSE} different images (diversity)")))
                .on_hover_text("Lucid's diversity term pushes the images' Gram matrices apart: the different things one channel responds to.")
                .clicked()
            {
                self.optimise(ctx, (layer, c), true);
            }
            if let Some(p) = &self.pending {
                job_progress(ui, p);
            }
        });
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| self.pictures(ui, ctx.shared, (layer, c)));
            ui.vertical(|ui| on_current_image(ui, ctx.shared, (layer, c)));
        });
        if ctx.shared.folder_run.is_none() {
            ui.label(
                RichText::new("Run a folder (Folder tab) to see the images of your data that excite this channel most, beside its optimised image.")
                    .small()
                    .weak(),
            );
        }
        self.top.ui(ui, ctx.shared, ctx.jobs, (layer, c));
    }

    /// Starts the optimisation of a channel's image (or of four different ones).
    pub fn optimise(&mut self, ctx: &mut TabCtx, (layer, c): (LayerId, usize), diverse: bool) {
        self.asked = Some((layer, c, diverse));
        let job =
            move |w: &mut WorkerCtx, p: &mut dyn Progress| channel_job(w, (layer, c), diverse, p);
        self.pending = Some(ctx.jobs.submit("Channel", job));
    }

    fn pictures(&self, ui: &mut egui::Ui, shared: &mut Shared, (layer, c): (LayerId, usize)) {
        let Some(imgs) = self
            .images
            .as_ref()
            .filter(|i| (i.layer, i.channel) == (layer, c))
        else {
            let asked = self.asked.is_some_and(|a| (a.0, a.1) == (layer, c));
            ui.label(if asked {
                "Optimising the image …"
            } else {
                "Waiting for the job under way to finish …"
            });
            return;
        };
        ui.strong(format!("What {layer} channel {c} looks for"));
        let side = if imgs.pictures.len() > 1 {
            112.0
        } else {
            224.0
        };
        ui.horizontal_wrapped(|ui| {
            for (i, p) in imgs.pictures.iter().enumerate() {
                let key = format!("vis:{}:{i}", self.serial);
                let t = shared
                    .textures
                    .get(ui.ctx(), &key, TextureOptions::NEAREST, || {
                        textures::rgb(&p.rgb)
                    });
                ui.vertical(|ui| {
                    ui.add(egui::Image::new((t.id(), Vec2::splat(side))));
                    ui.label(RichText::new(format!("mean activation {:.3}", p.objective)).small());
                });
            }
        });
        if shared.model.as_ref().is_some_and(|m| m.is_random) {
            ui.label(RichText::new("Random weights: these images are noise, as they should be; a trained model's show patterns.").small().weak());
        }
    }

    fn atlas_view(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx, layer: LayerId) {
        ui.strong(format!("Atlas of {layer}"));
        ui.horizontal(|ui| {
            let idle = self.atlas_pending.is_none();
            let label = format!("Make the atlas of {layer} (cached on disk)");
            if ui.add_enabled(idle, egui::Button::new(label)).clicked() {
                self.start_atlas(ctx, layer);
            }
            if let Some(p) = &self.atlas_pending {
                job_progress(ui, p);
            }
        });
        let Some(atlas) = self.atlas.as_ref().filter(|a| a.layer == layer) else {
            ui.label(format!("Every channel's image in a grid ({ATLAS_STEPS} steps each); click one to open it above. Kept on disk per model and layer, so it opens at once next time."));
            return;
        };
        if atlas.cached {
            ui.label(RichText::new("From the disk cache.").small().weak());
        }
        if let Some(c) = atlas_grid(ui, ctx.shared, atlas, self.serial) {
            ctx.shared.selection.layer = Some(layer);
            ctx.shared.selection.channel = Some(c);
        }
    }

    /// Starts (or reads from the cache) the atlas of `layer`.
    pub fn start_atlas(&mut self, ctx: &mut TabCtx, layer: LayerId) {
        let job = move |w: &mut WorkerCtx, p: &mut dyn Progress| atlas_job(w, layer, p);
        self.atlas_pending = Some(ctx.jobs.submit("Atlas", job));
    }
}

/// The selected layer and channel, else the layer the app explains by default and channel 0.
fn selected(shared: &Shared, model: &ModelView) -> (LayerId, usize) {
    let layer = shared
        .selection
        .layer
        .filter(|l| l.is_spatial())
        .unwrap_or_else(|| model.explain_layer().0);
    (layer, shared.selection.channel.unwrap_or(0))
}

fn channels_of(model: &ModelView, layer: LayerId) -> usize {
    flops::channels(&model.layers, layer).unwrap_or(1)
}

/// The channel's map on the current image, over it, with its mean beside the optimised one's.
fn on_current_image(ui: &mut egui::Ui, shared: &mut Shared, (layer, c): (LayerId, usize)) {
    let Some(run) = &shared.run else {
        ui.label("Open an image to see what this channel does on it.");
        return;
    };
    let Some((_, fm)) = run.maps.iter().find(|(id, _)| *id == layer) else {
        return;
    };
    if c >= fm.channels {
        return;
    }
    ui.strong(format!("On {}", run.name));
    let (scale, cmap) = (shared.settings.scale.for_map(fm), shared.settings.colormap);
    let key = format!("chan:{}:{layer}:{c}:{cmap:?}:{scale:?}", run.id);
    let fm = fm.clone();
    let make = || grid::channel_image(&fm, c, scale, cmap);
    let opacity = shared.settings.overlay_opacity;
    heatmap::over_input(
        ui,
        &mut shared.textures,
        heatmap::Base::of(run),
        &key,
        make,
        224.0,
        opacity,
    );
    let st = fm.stats[c];
    ui.label(
        RichText::new(format!(
            "mean activation {:.3} · max {:.3}",
            st.mean, st.max
        ))
        .small(),
    );
}

/// Draws the atlas; the channel clicked, if one was.
fn atlas_grid(ui: &mut egui::Ui, shared: &mut Shared, atlas: &Atlas, serial: u64) -> Option<usize> {
    let mut clicked = None;
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = Vec2::splat(2.0);
        for (c, p) in atlas.pictures.iter().enumerate() {
            let key = format!("atlas:{serial}:{c}");
            let t = shared
                .textures
                .get(ui.ctx(), &key, TextureOptions::LINEAR, || {
                    textures::rgb(&p.rgb)
                });
            let r = ui
                .add(egui::Image::new((t.id(), Vec2::splat(56.0))).sense(egui::Sense::click()))
                .on_hover_text(format!("channel {c}: mean activation {:.3}", p.objective));
            r.widget_info(|| {
                egui::WidgetInfo::labeled(egui::Role::Button, true, format!("atlas channel {c}"))
            });
            if r.clicked() {
                clicked = Some(c);
            }
        }
    });
    clicked
}

fn pictures_of(visuals: Vec<Visual>) -> Vec<Picture> {
    visuals
        .into_iter()
        .map(|v| Picture {
            rgb: v.rgb,
            objective: v.objective,
        })
        .collect()
}

fn channel_job(
    w: &WorkerCtx,
    (layer, channel): (LayerId, usize),
    diverse: bool,
    progress: &mut dyn Progress,
) -> anyhow::Result<ChannelImages> {
    let engine = w.engine()?;
    let objective = Objective::Channel { layer, channel };
    let s = Settings::for_model(engine);
    let visuals = if diverse {
        let div = (None, feature_vis::DIVERSITY_WEIGHT);
        feature_vis::visualize_diverse(engine, &objective, DIVERSE, div, &s, progress)?
    } else {
        feature_vis::visualize(engine, &[objective], &s, progress)?
    };
    Ok(ChannelImages {
        layer,
        channel,
        pictures: pictures_of(visuals),
    })
}

/// The atlas's settings for a model: [`ATLAS_STEPS`], at most [`ATLAS_MAX_SIZE`] pixels.
fn atlas_settings(engine: &crate::io::engine::Engine) -> Settings {
    let mut s = Settings::for_model(engine);
    s.steps = ATLAS_STEPS;
    s.size = s.size.min(ATLAS_MAX_SIZE);
    s
}

/// The cache file of an atlas: named by the model (a file's path, length and time; a random
/// variant's name, classes and seed), the layer and the recipe.
fn atlas_path(spec: &ModelSpec, layer: LayerId, s: &Settings) -> Option<std::path::PathBuf> {
    let model = match spec {
        ModelSpec::Weights(p) => cache::fingerprint(p),
        other => format!("{other:?}"),
    };
    let key = format!("atlas v1|{model}|{layer}|{}|{}|{}", s.steps, s.size, s.seed);
    Some(
        cache::dir()?
            .join("atlas")
            .join(cache::file_name(&key, "safetensors")),
    )
}

fn atlas_job(w: &WorkerCtx, layer: LayerId, progress: &mut dyn Progress) -> anyhow::Result<Atlas> {
    let engine = w.engine()?;
    let s = atlas_settings(engine);
    let channels = flops::channels(&engine.layers(1), layer)
        .ok_or_else(|| anyhow::anyhow!("`{layer}` has no channels to visualise"))?;
    let path = atlas_path(&w.spec()?, layer, &s);
    if let Some(p) = &path {
        // A cache file that does not read back as this atlas is made again, not trusted.
        if let Ok(Some(atlas)) = read_atlas(p, layer, channels, s.size) {
            return Ok(atlas);
        }
    }
    let objectives: Vec<Objective> = (0..channels)
        .map(|channel| Objective::Channel { layer, channel })
        .collect();
    let visuals = feature_vis::visualize(engine, &objectives, &s, progress)?;
    let atlas = Atlas {
        layer,
        pictures: pictures_of(visuals),
        cached: false,
    };
    if let Some(p) = &path {
        // A cache that cannot be written only costs the next opening its time.
        let _ = write_atlas(p, &atlas, s.size);
    }
    Ok(atlas)
}

fn read_atlas(
    path: &std::path::Path,
    layer: LayerId,
    n: usize,
    size: usize,
) -> anyhow::Result<Option<Atlas>> {
    let wanted: [(&str, DType, &[usize]); 2] = [
        ("images", DType::U8, &[n, size, size, 3]),
        ("objectives", DType::F32, &[n]),
    ];
    let Some(t) = cache::read(path, &wanted)? else {
        return Ok(None);
    };
    let bytes: Vec<u8> = t[0].flatten_all()?.to_vec1()?;
    let objectives: Vec<f32> = t[1].to_vec1()?;
    let per = size * size * 3;
    let pictures = bytes
        .chunks(per)
        .zip(objectives)
        .map(|(b, objective)| {
            let rgb = image::RgbImage::from_raw(size as u32, size as u32, b.to_vec())
                .ok_or_else(|| anyhow::anyhow!("short atlas image"))?;
            Ok(Picture { rgb, objective })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(Atlas {
        layer,
        pictures,
        cached: true,
    }))
}

fn write_atlas(path: &std::path::Path, atlas: &Atlas, size: usize) -> anyhow::Result<()> {
    let n = atlas.pictures.len();
    let dev = &candle_core::Device::Cpu;
    let bytes: Vec<u8> = atlas
        .pictures
        .iter()
        .flat_map(|p| p.rgb.as_raw().clone())
        .collect();
    let objectives: Vec<f32> = atlas.pictures.iter().map(|p| p.objective).collect();
    let tensors = HashMap::from([
        (
            "images".to_string(),
            Tensor::from_vec(bytes, (n, size, size, 3), dev)?,
        ),
        (
            "objectives".to_string(),
            Tensor::from_vec(objectives, n, dev)?,
        ),
    ]);
    Ok(cache::write(path, tensors)?)
}

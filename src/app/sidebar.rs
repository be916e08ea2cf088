//! Left panel: the model (checkpoints, variants, device), the image, and the predictions.
use super::{sample_images, textures, ImageSource, Request, Shared, Tab};
use crate::engine::ModelSpec;
use crate::model::config::{variant_names, Version};
use crate::model::plan::{Family, Plan};
use crate::text::{file_label, human};
use egui::{RichText, TextureOptions};

#[derive(Default)]
pub struct Sidebar;

impl Sidebar {
    pub fn ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        model_section(ui, shared);
        ui.separator();
        image_section(ui, shared);
        ui.separator();
        predictions(ui, shared);
    }
}

fn model_section(ui: &mut egui::Ui, shared: &mut Shared) {
    ui.heading("Model");
    match &shared.model {
        Some(m) => {
            ui.label(RichText::new(m.spec.label()).strong());
            ui.label(architecture_line(&m.plan));
            ui.label(format!(
                "{} params · {} classes · input {}×{}",
                human(m.num_params as f64),
                m.plan.num_classes(),
                m.input_size.0,
                m.input_size.1
            ));
            if m.is_random {
                ui.colored_label(
                    ui.visuals().warn_fg_color,
                    "Random weights: shapes, MACs and timing are real, predictions are meaningless.",
                );
            }
        }
        None if shared.status.loading.is_some() => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Loading…");
            });
        }
        None => {
            ui.label("No model loaded.");
        }
    }
    device_and_dtype(ui, shared);
    egui::CollapsingHeader::new("Checkpoints in weights/")
        .default_open(true)
        .show(ui, |ui| weights_list(ui, shared));
    egui::CollapsingHeader::new("Named variant (random weights)")
        .default_open(false)
        .show(ui, |ui| variant_picker(ui, shared));
}

/// `convnext_tiny (V1) · depths [3, 3, 9, 3] · dims [96, …]`, or a roadmap step's title.
fn architecture_line(plan: &Plan) -> String {
    match &plan.family {
        Family::ConvNeXt(c) => format!(
            "{} {} · depths {:?} · dims {:?}",
            c.variant_name().unwrap_or("custom"),
            match c.version {
                Version::V1 => "(V1)",
                Version::V2 => "(V2, GRN)",
            },
            c.depths,
            c.dims
        ),
        Family::Roadmap(i) => format!(
            "roadmap step {i}: {} · depths {:?}",
            crate::model::roadmap::STEPS[*i].title,
            plan.depths()
        ),
    }
}

fn device_and_dtype(ui: &mut egui::Ui, shared: &mut Shared) {
    let settings = &mut shared.settings;
    let mut changed = false;
    ui.horizontal(|ui| {
        let lbl = ui.label("Device");
        egui::ComboBox::from_id_salt("device")
            .selected_text(settings.device.clone())
            .show_ui(ui, |ui| {
                for d in crate::device::available() {
                    changed |= ui
                        .selectable_value(&mut settings.device, d.clone(), d)
                        .changed();
                }
            })
            .response
            .labelled_by(lbl.id);
        let lbl = ui.label("dtype");
        egui::ComboBox::from_id_salt("dtype")
            .selected_text(settings.dtype.clone())
            .show_ui(ui, |ui| {
                for d in ["f32", "bf16", "f16"] {
                    changed |= ui
                        .selectable_value(&mut settings.dtype, d.to_string(), d)
                        .changed();
                }
            })
            .response
            .labelled_by(lbl.id);
    });
    if changed {
        shared.request(Request::Reload);
    }
}

fn weights_list(ui: &mut egui::Ui, shared: &mut Shared) {
    match &shared.weights {
        None => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Reading…");
            });
        }
        Some(list) if list.is_empty() => {
            ui.label("None yet: put checkpoints in weights/.");
        }
        Some(list) => {
            let current = shared.model.as_ref().map(|m| &m.spec);
            let mut pick = None;
            for e in list {
                let name = file_label(&e.path);
                match &e.summary {
                    Ok(s) => {
                        let spec = ModelSpec::Weights(e.path.clone());
                        let r = ui
                            .selectable_label(current == Some(&spec), &name)
                            .on_hover_text(e.path.display().to_string());
                        ui.label(RichText::new(s).small().weak());
                        if r.clicked() {
                            pick = Some(spec);
                        }
                    }
                    Err(err) => {
                        ui.label(RichText::new(&name).strikethrough())
                            .on_hover_text(err);
                    }
                }
            }
            if let Some(spec) = pick {
                shared.request(Request::Load(spec));
            }
        }
    }
    ui.horizontal(|ui| {
        if ui.button("Open weights…").clicked() {
            super::open_weights_dialog(shared);
        }
        if ui.button("Rescan").clicked() {
            shared.request(Request::RescanWeights);
        }
        #[cfg(feature = "hub")]
        if ui.button("Download…").clicked() {
            shared.request(Request::ShowDownload);
        }
    });
}

fn variant_picker(ui: &mut egui::Ui, shared: &mut Shared) {
    let settings = &mut shared.settings;
    ui.horizontal(|ui| {
        let lbl = ui.label("Variant");
        egui::ComboBox::from_id_salt("variant")
            .selected_text(settings.variant.clone())
            .height(400.0)
            .show_ui(ui, |ui| {
                for v in variant_names() {
                    ui.selectable_value(&mut settings.variant, v.to_string(), v);
                }
            })
            .response
            .labelled_by(lbl.id);
        ui.add(
            egui::DragValue::new(&mut settings.variant_classes)
                .range(1..=100_000)
                .suffix(" classes"),
        );
    });
    if ui.button("Build").clicked() {
        let spec = ModelSpec::Variant {
            name: settings.variant.clone(),
            classes: settings.variant_classes,
            seed: 0,
        };
        shared.request(Request::Load(spec));
    }
}

fn image_section(ui: &mut egui::Ui, shared: &mut Shared) {
    ui.heading("Image");
    if let Some(run) = &shared.run {
        let tex = shared
            .textures
            .get(ui.ctx(), "original", TextureOptions::LINEAR, || {
                textures::rgba(&run.original)
            });
        let w = ui.available_width().min(280.0);
        let size = tex.size_vec2();
        let scale = (w / size.x).min(150.0 / size.y);
        ui.add(egui::Image::new((tex.id(), size * scale)));
        ui.label(RichText::new(&run.name).small());
    } else {
        ui.label("Drop an image on the window, open one, or pick a sample.");
    }
    if ui.button("Open image…").clicked() {
        super::open_image_dialog(shared);
    }
    egui::CollapsingHeader::new("Samples")
        .default_open(true)
        .show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                for p in sample_images() {
                    let name = p
                        .file_stem()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if ui.small_button(&name).clicked() {
                        shared.request(Request::OpenImage(ImageSource::Path(p.clone())));
                    }
                }
            });
        });
}

fn predictions(ui: &mut egui::Ui, shared: &mut Shared) {
    ui.heading("Predictions");
    let Some(run) = &shared.run else {
        ui.label("No image yet.");
        return;
    };
    let mut clicked = None;
    let bar_width = ui.available_width().min(280.0);
    for p in &run.top {
        let selected = shared.selection.class == Some(p.index);
        let label = format!(
            "{:5.1}%  {}",
            p.prob * 100.0,
            crate::labels::short(&p.label)
        );
        let r = ui
            .selectable_label(selected, RichText::new(label).monospace())
            .on_hover_text(format!(
                "class {}: {}\nClick to show where the image supports this class.",
                p.index, p.label
            ));
        if r.clicked() {
            clicked = Some(p.index);
        }
        ui.add(
            egui::ProgressBar::new(p.prob.clamp(0.0, 1.0))
                .desired_width(bar_width)
                .desired_height(6.0),
        );
    }
    if let Some(c) = clicked {
        shared.selection.class = Some(c);
        shared.selection.channel = None;
        shared.settings.tab = Tab::Features;
    }
}

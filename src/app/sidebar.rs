//! Left panel: the model (checkpoints, variants, device), the image, and the predictions.
use super::textures;
use super::worker::{ImageSource, ModelSpec};
use super::{sample_images, ExplorerApp};
use crate::flops::human;
use crate::model::config::variant_names;
use egui::{RichText, TextureOptions};

pub fn show(app: &mut ExplorerApp, ui: &mut egui::Ui) {
    model_section(app, ui);
    ui.separator();
    image_section(app, ui);
    ui.separator();
    predictions(app, ui);
}

fn model_section(app: &mut ExplorerApp, ui: &mut egui::Ui) {
    ui.heading("Model");
    match &app.model {
        Some(m) => {
            let name = match &m.spec {
                ModelSpec::Weights(p) => p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                ModelSpec::Variant { name, .. } => name.clone(),
            };
            ui.label(RichText::new(name).strong());
            ui.label(format!(
                "{} {} · depths {:?} · dims {:?}",
                m.variant.as_deref().unwrap_or("custom"),
                match m.version {
                    crate::model::config::Version::V1 => "(V1)",
                    crate::model::config::Version::V2 => "(V2, GRN)",
                },
                m.depths,
                m.dims
            ));
            ui.label(format!(
                "{} params · {} classes · input {}×{}",
                human(m.num_params as f64),
                m.num_classes,
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
        None if app.loading.is_some() => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Loading…");
            });
        }
        None => {
            ui.label("No model loaded.");
        }
    }

    ui.horizontal(|ui| {
        let devices = crate::device::available();
        let mut changed = false;
        let lbl = ui.label("Device");
        egui::ComboBox::from_id_salt("device")
            .selected_text(app.settings.device.clone())
            .show_ui(ui, |ui| {
                for d in devices {
                    changed |= ui
                        .selectable_value(&mut app.settings.device, d.clone(), d)
                        .changed();
                }
            })
            .response
            .labelled_by(lbl.id);
        let lbl = ui.label("dtype");
        egui::ComboBox::from_id_salt("dtype")
            .selected_text(app.settings.dtype.clone())
            .show_ui(ui, |ui| {
                for d in ["f32", "bf16", "f16"] {
                    changed |= ui
                        .selectable_value(&mut app.settings.dtype, d.to_string(), d)
                        .changed();
                }
            })
            .response
            .labelled_by(lbl.id);
        if changed {
            app.reload();
        }
    });

    egui::CollapsingHeader::new("Checkpoints in weights/")
        .default_open(true)
        .show(ui, |ui| {
            let list = app.weights.lock().expect("weights list").clone();
            match list {
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
                    for e in list {
                        let name = e
                            .path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let current = app.model.as_ref().map(|m| &m.spec)
                            == Some(&ModelSpec::Weights(e.path.clone()));
                        match &e.summary {
                            Ok(s) => {
                                let r = ui
                                    .selectable_label(current, &name)
                                    .on_hover_text(e.path.display().to_string());
                                ui.label(RichText::new(s).small().weak());
                                if r.clicked() {
                                    app.load_model(ModelSpec::Weights(e.path.clone()));
                                }
                            }
                            Err(err) => {
                                ui.label(RichText::new(&name).strikethrough())
                                    .on_hover_text(err);
                            }
                        }
                    }
                }
            }
            ui.horizontal(|ui| {
                if ui.button("Open weights…").clicked() {
                    app.open_weights_dialog();
                }
                if ui.button("Rescan").clicked() {
                    app.rescan_weights();
                }
                #[cfg(feature = "hub")]
                if ui.button("Download…").clicked() {
                    app.download.open = true;
                }
            });
        });

    egui::CollapsingHeader::new("Named variant (random weights)")
        .default_open(false)
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                let lbl = ui.label("Variant");
                egui::ComboBox::from_id_salt("variant")
                    .selected_text(app.settings.variant.clone())
                    .height(400.0)
                    .show_ui(ui, |ui| {
                        for v in variant_names() {
                            ui.selectable_value(&mut app.settings.variant, v.to_string(), v);
                        }
                    })
                    .response
                    .labelled_by(lbl.id);
                ui.add(
                    egui::DragValue::new(&mut app.settings.variant_classes)
                        .range(1..=100_000)
                        .suffix(" classes"),
                );
            });
            if ui.button("Build").clicked() {
                app.load_model(ModelSpec::Variant {
                    name: app.settings.variant.clone(),
                    classes: app.settings.variant_classes,
                    seed: 0,
                });
            }
        });
}

fn image_section(app: &mut ExplorerApp, ui: &mut egui::Ui) {
    ui.heading("Image");
    if let Some(run) = &app.run {
        let tex = app
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
        app.open_image_dialog();
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
                        app.open_image(ImageSource::Path(p.clone()));
                    }
                }
            });
        });
}

fn predictions(app: &mut ExplorerApp, ui: &mut egui::Ui) {
    ui.heading("Predictions");
    let Some(run) = &app.run else {
        ui.label("No image yet.");
        return;
    };
    let mut clicked = None;
    let bar_width = ui.available_width().min(280.0);
    for p in &run.top {
        let selected = app.selection.class == Some(p.index);
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
        app.selection.class = Some(c);
        app.selection.channel = None;
        app.settings.tab = super::Tab::Features;
    }
}

//! Left panel: the model (checkpoints, variants, device), the image, and the predictions.
use super::{sample_images, textures, ImageSource, Request, Shared};
use crate::base::text::{file_label, human};
use crate::io::engine::ModelSpec;
use crate::model::config::{variant_names, Version};
use crate::model::plan::{Family, Plan};
use egui::{RichText, TextureOptions};

#[derive(Default)]
pub struct Sidebar;

impl Sidebar {
    /// The model in brief, the image, the predictions; then the details and the choices.
    pub fn ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        model_section(ui, shared);
        ui.separator();
        image_section(ui, shared);
        ui.separator();
        predictions(ui, shared);
        ui.separator();
        model_choices(ui, shared);
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
                super::widgets::busy(ui);
                ui.label("Loading…");
            });
        }
        None => {
            ui.label("No model loaded.");
        }
    }
    if let Some(m) = &shared.model {
        let card = m.card.clone();
        let brief = format!(
            "knows {} · {}",
            card.domain
                .as_deref()
                .unwrap_or("what its checkpoint does not say"),
            card.accuracy.as_deref().unwrap_or("accuracy not recorded")
        );
        ui.label(RichText::new(brief).small());
        egui::CollapsingHeader::new("Model card")
            .default_open(false)
            .show(ui, |ui| model_card(ui, &card));
    }
    device_and_dtype(ui, shared);
}

/// Where else a model can come from: `weights/`, a file, a named variant, the hub.
fn model_choices(ui: &mut egui::Ui, shared: &mut Shared) {
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

/// What the model knows, what it expects, how good it is and where it came from.
fn model_card(ui: &mut egui::Ui, card: &crate::io::card::ModelCard) {
    let line = |ui: &mut egui::Ui, k: &str, v: &str| {
        ui.horizontal_wrapped(|ui| {
            ui.label(RichText::new(k).small().strong());
            ui.label(RichText::new(v).small());
        });
    };
    if let Some(d) = &card.domain {
        line(ui, "knows", d);
    }
    line(ui, "classes", &card.classes);
    line(
        ui,
        "trained on",
        card.dataset
            .as_deref()
            .unwrap_or("not recorded in the checkpoint"),
    );
    line(ui, "input", &card.input);
    line(
        ui,
        "accuracy",
        card.accuracy
            .as_deref()
            .unwrap_or("not recorded in the checkpoint"),
    );
    line(ui, "weights", &card.origin);
}

fn device_and_dtype(ui: &mut egui::Ui, shared: &mut Shared) {
    let settings = &mut shared.settings;
    let mut changed = false;
    ui.horizontal(|ui| {
        let lbl = ui.label("Device");
        egui::ComboBox::from_id_salt("device")
            .selected_text(settings.device.clone())
            .show_ui(ui, |ui| {
                for d in crate::base::device::available() {
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
                super::widgets::busy(ui);
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
        let side = ((ui.available_width() - 12.0) / 2.0).min(110.0);
        ui.horizontal_top(|ui| {
            let tex = shared
                .textures
                .get(ui.ctx(), "original", TextureOptions::LINEAR, || {
                    textures::rgba(&run.original)
                });
            let size = tex.size_vec2();
            let scale = (side / size.x).min(side / size.y);
            ui.vertical(|ui| {
                ui.add(egui::Image::new((tex.id(), size * scale)));
                ui.label(RichText::new(&run.name).small());
            });
            // What the network actually sees, after resizing, cropping and (for a grey model)
            // its grey world.
            let input =
                shared
                    .textures
                    .get(ui.ctx(), "input:nearest", TextureOptions::NEAREST, || {
                        textures::rgb(&run.input)
                    });
            ui.vertical(|ui| {
                ui.add(egui::Image::new((input.id(), egui::Vec2::splat(side))));
                let (w, h) = (run.input.width(), run.input.height());
                ui.label(RichText::new(format!("what the network sees ({w}×{h})")).small());
            });
        });
        for n in &run.notices {
            ui.colored_label(ui.visuals().warn_fg_color, n);
        }
    } else if let Some(name) = &shared.status.decoding {
        ui.horizontal(|ui| {
            super::widgets::busy(ui);
            ui.label(format!("decoding {name}…"));
        });
    } else {
        ui.label("Drop an image on the window, open one, or pick a sample.");
    }
    if ui.button("Open image…").clicked() {
        super::open_image_dialog(shared);
    }
    samples(ui, shared);
}

/// The bundled sample images, one click each.
fn samples(ui: &mut egui::Ui, shared: &mut Shared) {
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
        ui.label(match &shared.status.decoding {
            Some(name) => format!("decoding {name}…"),
            None => "No image yet.".into(),
        });
        return;
    };
    let mut clicked = None;
    ui.spacing_mut().item_spacing.y = 2.0;
    // Padded to one width so the bars line up; each bar takes what the label leaves, so the
    // row never asks the panel to grow (a fixed bar width fed back into a panel that fits its
    // content widens the sidebar frame by frame).
    let names: Vec<&str> = run
        .top
        .iter()
        .map(|p| crate::io::labels::short(&p.label))
        .collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    for (p, name) in run.top.iter().zip(names) {
        let selected = shared.selection.class == Some(p.index);
        let label = format!("{:5.1}%  {name:<width$}", p.prob * 100.0);
        let row = egui::vec2(ui.available_width(), ui.spacing().interact_size.y);
        let rtl = egui::Layout::right_to_left(egui::Align::Center);
        ui.allocate_ui_with_layout(row, rtl, |ui| {
            let r = ui
                .selectable_label(selected, RichText::new(label).monospace())
                .on_hover_text(format!(
                    "class {}: {}\nClick to show where the image supports this class.",
                    p.index, p.label
                ));
            if r.clicked() {
                clicked = Some(p.index);
            }
            let bar = egui::ProgressBar::new(p.prob.clamp(0.0, 1.0))
                .desired_width(ui.available_width().max(20.0))
                .desired_height(6.0);
            ui.add(bar);
        });
    }
    if let Some(c) = clicked {
        shared.selection.class = Some(c);
        shared.selection.channel = None;
        if shared.settings.tab != super::attribution::NAME {
            shared.settings.tab = super::features::NAME.into();
        }
    }
}

//! `attribute`: Grad-CAM, Grad-CAM++, occlusion or the evidence map of an image or a tensor, at
//! any layer, as a safetensors file (and a PNG over the image).
use super::export::image_or_tensor;
use super::{Context, ModelArgs};
use crate::analysis::attribution::{self, layer_by_name, Method};
use crate::analysis::colormap::Colormap;
use crate::analysis::grid;
use crate::io::preprocess::denormalise;
use anyhow::{Context as _, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AttributeArgs {
    #[arg(long, conflicts_with = "tensor")]
    image: Option<PathBuf>,
    /// An NCHW f32 tensor named `input` (preprocessing skipped).
    #[arg(long)]
    tensor: Option<PathBuf>,
    /// gradcam, gradcam++, hirescam, layercam, xgradcam, scorecam, ig, occlusion, evidence, or
    /// smoothgrad:<method> (SmoothGrad over any of them).
    #[arg(long)]
    method: String,
    /// Integrated Gradients' number of points (the trapezoid rule).
    #[arg(long, default_value_t = crate::analysis::attribution::IG_STEPS)]
    steps: usize,
    /// SmoothGrad's noisy samples.
    #[arg(long, default_value_t = 16)]
    samples: usize,
    /// SmoothGrad's noise σ (default: 0.15 × the image's value range). `--seed` seeds the noise
    /// (and a --variant's weights).
    #[arg(long)]
    sigma: Option<f64>,
    /// A layer name as the trace names it (`stages.2`, `stages.2.blocks.1.conv_dw`, …).
    #[arg(long)]
    layer: String,
    /// The class to explain (default: each image's top-1).
    #[arg(long)]
    class: Option<usize>,
    /// Occlusion window and stride in pixels of the network input.
    #[arg(long, default_value_t = 32)]
    window: usize,
    #[arg(long, default_value_t = 16)]
    stride: usize,
    #[arg(long)]
    out: PathBuf,
    /// The first image's map upsampled over it.
    #[arg(long)]
    png: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(ctx: &Context, a: &AttributeArgs) -> Result<()> {
    let engine = ctx.engine(Some(&a.model), DType::F32)?;
    let x = image_or_tensor(&engine, a.image.as_deref(), a.tensor.as_deref())?;
    let (method, smooth) = parse_method(a)?;
    let layer = layer_by_name(&engine, &a.layer)?;
    let progress = &mut crate::base::progress::Silent;
    let mut gap = None;
    let attr = match (smooth, method) {
        (Some(s), _) => {
            attribution::smooth_grad(&engine, &x, (method, layer), a.class, s, progress)?
        }
        (None, Method::IntegratedGradients { steps }) => {
            let ig =
                attribution::integrated_gradients(&engine, &x, None, a.class, steps, progress)?;
            for (i, (g, d)) in ig.gap.iter().zip(&ig.logit_difference).enumerate() {
                eprintln!(
                    "image {i}: completeness gap {g:.4} against a logit difference of {d:.4} ({:.2}%)",
                    100.0 * g / d.abs().max(1e-12)
                );
            }
            gap = Some(ig.gap);
            ig.attribution
        }
        (None, _) => attribution::attribute(&engine, &x, method, layer, a.class, progress)?,
    };
    let host =
        |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?) };
    let mut out: HashMap<String, Tensor> = HashMap::new();
    out.insert("map".into(), host(&attr.map)?);
    out.insert("logits".into(), host(&attr.logits)?);
    let classes: Vec<f32> = attr.classes.iter().map(|&k| k as f32).collect();
    out.insert("classes".into(), Tensor::new(classes, &Device::Cpu)?);
    if let Some(g) = gap {
        out.insert("completeness_gap".into(), Tensor::new(g, &Device::Cpu)?);
    }
    candle_core::safetensors::save(&out, &a.out)
        .with_context(|| format!("{}: cannot write", a.out.display()))?;
    let (n, h, w) = attr.map.dims3()?;
    let k = attr.classes[0];
    eprintln!(
        "{} at {} for class {k} ({}): map {n}×{h}×{w}; wrote {}",
        method.name(),
        attr.layer,
        engine.labels.get(k).map(String::as_str).unwrap_or("?"),
        a.out.display()
    );
    if let Some(png) = &a.png {
        let img = overlay_first(&engine, &x, &attr.map, method)?;
        img.save(png)
            .with_context(|| format!("{}: cannot write", png.display()))?;
    }
    Ok(())
}

/// The method asked for, with the command line's settings, and SmoothGrad's when it wraps it.
pub fn parse_method(a: &AttributeArgs) -> Result<(Method, Option<attribution::Smoothing>)> {
    let (name, smooth) = match a.method.strip_prefix("smoothgrad:") {
        Some(inner) => (
            inner,
            Some(attribution::Smoothing {
                samples: a.samples,
                sigma: a.sigma,
                seed: a.model.seed,
            }),
        ),
        None => (a.method.as_str(), None),
    };
    Ok((
        with_settings(Method::parse(name)?, a.window, a.stride, a.steps),
        smooth,
    ))
}

/// A parsed method with the command line's occlusion window and stride and IG's steps.
pub fn with_settings(m: Method, window: usize, stride: usize, steps: usize) -> Method {
    match m {
        Method::Occlusion { .. } => Method::Occlusion { window, stride },
        Method::IntegratedGradients { .. } => Method::IntegratedGradients { steps },
        m => m,
    }
}

/// The first image's map over the image the network saw.
fn overlay_first(
    engine: &crate::io::engine::Engine,
    x: &Tensor,
    map: &Tensor,
    method: Method,
) -> Result<image::RgbaImage> {
    let (_, _, h, w) = x.dims4()?;
    let chw: Vec<f32> = x.get(0)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let base = denormalise(&chw, (h, w), &engine.preprocess);
    let m: Vec<f32> = map.get(0)?.flatten_all()?.to_vec1()?;
    let (mh, mw) = map.get(0)?.dims2()?;
    let (lo, hi) = m
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    // Grad-CAM maps are non-negative; occlusion and evidence are signed.
    let cmap = match method {
        m if m.is_cam() => Colormap::Magma,
        _ => Colormap::Diverging,
    };
    if hi <= 0.0 && cmap == Colormap::Magma {
        eprintln!("the map is zero everywhere (every position's weighted sum is negative, or exactly zero: HiResCAM before a per-position LayerNorm): the PNG shows the image alone");
        return Ok(grid::overlay(
            &base,
            &grid::map_image(&m, (mh, mw), (0.0, 1.0), cmap),
            0.0,
        ));
    }
    let heat = grid::map_image(&m, (mh, mw), cmap.range(lo.min(0.0), hi), cmap);
    Ok(grid::overlay(&base, &heat, 0.6))
}

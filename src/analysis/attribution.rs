//! Why the network decides: Grad-CAM, Grad-CAM++ and occlusion at any layer, the exact
//! class-evidence map, and effective receptive fields (RepLKNet's definition).
//!
//! The gradient path is the inference network itself: the layer asked about hands on a
//! variable in place of its output (see [`Observer::substitute`]) and candle's autograd
//! carries the gradient back through the kernels' own backward passes (the packed GEMM, GELU,
//! the depthwise conv) and the composed LayerNorm. Definitions follow
//! pytorch-grad-cam's, so results can be compared with it.
use super::trace::forward_keeping;
use crate::base::error::{Error, Result};
use crate::base::pool::run_awake;
use crate::base::progress::Progress;
use crate::io::engine::Engine;
use crate::model::flops;
use crate::model::layer_id::LayerId;
use crate::model::observer::Observer;
use candle_core::{DType, Tensor, Var, D};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    GradCam,
    GradCamPlusPlus,
    /// `ReLU(Σ_c g_c ⊙ A_c)`.
    HiResCam,
    /// `ReLU(Σ_c ReLU(g_c) ⊙ A_c)`.
    LayerCam,
    /// `w_c = Σ_hw(g_c ⊙ A_c) / (Σ_hw A_c + 1e-7)`, `ReLU(Σ_c w_c · A_c)`.
    XGradCam,
    /// Each channel's upsampled, normalised map masks the input; the class's softmax
    /// probabilities, softmaxed over the channels, weigh the channels.
    ScoreCam,
    /// Integrated Gradients from the zero input (the dataset mean) with `steps` points of the
    /// trapezoid rule, summed over the colour channels, at the input's resolution.
    IntegratedGradients {
        steps: usize,
    },
    /// The drop of the class's logit when a window of the input is set to 0 (the mean).
    Occlusion {
        window: usize,
        stride: usize,
    },
    /// The exact class-evidence map of the last stage.
    Evidence,
}

impl Method {
    pub fn parse(s: &str) -> Result<Method> {
        Ok(match s {
            "gradcam" | "grad-cam" => Method::GradCam,
            "gradcam++" | "grad-cam++" => Method::GradCamPlusPlus,
            "hirescam" => Method::HiResCam,
            "layercam" => Method::LayerCam,
            "xgradcam" => Method::XGradCam,
            "scorecam" => Method::ScoreCam,
            "ig" => Method::IntegratedGradients {
                steps: IG_STEPS,
            },
            "occlusion" => Method::Occlusion {
                window: 32,
                stride: 16,
            },
            "evidence" => Method::Evidence,
            _ => {
                return Err(Error::Input(format!(
                    "unknown method `{s}` (gradcam, gradcam++, hirescam, layercam, xgradcam, scorecam, ig, occlusion or evidence)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::GradCamPlusPlus => "gradcam++",
            Method::HiResCam => "hirescam",
            Method::LayerCam => "layercam",
            Method::XGradCam => "xgradcam",
            Method::ScoreCam => "scorecam",
            Method::IntegratedGradients { .. } => "ig",
            Method::Occlusion { .. } => "occlusion",
            Method::Evidence => "evidence",
        }
    }

    /// Whether the map is a ReLU'd weighted sum of a layer's channels (non-negative, at the
    /// layer's resolution), as against a signed map.
    pub fn is_cam(self) -> bool {
        matches!(
            self,
            Method::GradCam
                | Method::GradCamPlusPlus
                | Method::HiResCam
                | Method::LayerCam
                | Method::XGradCam
                | Method::ScoreCam
        )
    }

    /// Whether the method works at a layer of the user's choosing.
    pub fn takes_layer(self) -> bool {
        self.is_cam()
    }
}

/// A map per image, and what it explains.
pub struct Attribution {
    /// `[N, h, w]` f32: at the layer's own resolution (occlusion: one value per window).
    pub map: Tensor,
    /// Grad-CAM's map before its final ReLU (the weighted sum of channels).
    pub raw: Option<Tensor>,
    pub logits: Tensor,
    /// The class each image's map explains.
    pub classes: Vec<usize>,
    pub layer: LayerId,
}

/// The layer a name designates: any name the trace uses; an unknown one is an error that
/// lists them.
pub fn layer_by_name(engine: &Engine, name: &str) -> Result<LayerId> {
    let s = engine.plan.stride();
    let list = flops::layers(&engine.plan, 1, s, s);
    if let Some(l) = list.iter().find(|l| l.name == name.trim()) {
        return Ok(l.id);
    }
    let names: Vec<&str> = list.iter().map(|l| l.name.as_str()).collect();
    Err(Error::Input(format!(
        "no layer `{name}` in {}; the layers are: {}",
        engine.plan.name,
        names.join(", ")
    )))
}

/// Hands a variable on in place of one layer's output, so that its gradient is kept.
struct GradientAt {
    layer: LayerId,
    var: Option<Var>,
}

impl Observer for GradientAt {
    /// A stem, stage or block is reported whole by the fused forward too (and everything after
    /// the variable carries a gradient, so runs layer by layer anyway): only a layer inside a
    /// block needs the layers one by one.
    fn sees_outputs(&self) -> bool {
        !self.layer.is_container()
    }

    fn substitute(&mut self, id: LayerId, out: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if id != self.layer {
            return Ok(None);
        }
        let v = Var::from_tensor(&out.detach())?;
        let t = v.as_tensor().clone();
        self.var = Some(v);
        Ok(Some(t))
    }
}

/// The classes to explain: the given one for every image (checked), else each image's top-1.
pub(crate) fn classes_for(
    engine: &Engine,
    logits: &Tensor,
    class: Option<usize>,
) -> Result<Vec<usize>> {
    let n = logits.dim(0)?;
    match class {
        Some(k) if k >= engine.plan.num_classes() => Err(Error::Input(format!(
            "class {k} is out of range: the model has {} classes (0 to {})",
            engine.plan.num_classes(),
            engine.plan.num_classes() - 1
        ))),
        Some(k) => Ok(vec![k; n]),
        None => Ok(logits
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|k| k as usize)
            .collect()),
    }
}

/// `Σ_n logits[n, classes[n]]`: each image's gradient comes from its own class.
pub(crate) fn class_score(logits: &Tensor, classes: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = classes.iter().map(|&k| k as u32).collect();
    let idx = Tensor::from_vec(idx, (classes.len(), 1), logits.device())?;
    Ok(logits.gather(&idx, 1)?.sum_all()?)
}

/// Refuses a layer with no spatial map: a CAM needs positions.
fn check_spatial(layer: LayerId) -> Result<()> {
    if layer.is_spatial() {
        return Ok(());
    }
    Err(Error::Input(format!(
        "`{layer}` has no spatial map (the head pools it away): pick a stem, stage, block or block part"
    )))
}

/// A layer's output `A` and the gradient of the chosen classes' logits at it, channels-last
/// `[N, H, W, C]` f32, with the logits.
pub fn gradient_at(
    engine: &Engine,
    x: &Tensor,
    layer: LayerId,
    class: Option<usize>,
) -> Result<(Tensor, Tensor, Tensor, Vec<usize>)> {
    check_spatial(layer)?;
    // The backward too on the awake pool, as the forward runs (`base::pool`).
    run_awake(|| {
        let mut obs = GradientAt { layer, var: None };
        let logits = engine.forward_observed(x, &mut obs)?;
        let var = obs
            .var
            .ok_or_else(|| Error::Input(format!("layer `{layer}` did not run")))?;
        let classes = classes_for(engine, &logits, class)?;
        let grads = class_score(&logits, &classes)?.backward()?;
        let a = var.as_tensor().to_dtype(DType::F32)?;
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::Input(format!("no gradient reaches `{layer}`")))?
            .to_dtype(DType::F32)?;
        Ok((a, g, logits.detach(), classes))
    })
}

/// Grad-CAM or Grad-CAM++ at `layer`, raw (no normalisation), at the layer's resolution.
pub fn grad_cam(
    engine: &Engine,
    x: &Tensor,
    layer: LayerId,
    class: Option<usize>,
    plus_plus: bool,
) -> Result<Attribution> {
    let method = if plus_plus {
        Method::GradCamPlusPlus
    } else {
        Method::GradCam
    };
    gradient_cam(engine, x, layer, class, method)
}

/// A CAM from the layer's output and its gradient (pytorch-grad-cam's definitions of Grad-CAM,
/// Grad-CAM++, HiResCAM, LayerCAM and XGradCAM), raw, at the layer's resolution.
pub fn gradient_cam(
    engine: &Engine,
    x: &Tensor,
    layer: LayerId,
    class: Option<usize>,
    method: Method,
) -> Result<Attribution> {
    let (a, g, logits, classes) = gradient_at(engine, x, layer, class)?;
    let raw = match method {
        Method::GradCam => a.broadcast_mul(&g.mean_keepdim((1, 2))?)?.sum(3)?,
        Method::GradCamPlusPlus => a.broadcast_mul(&grad_cam_pp_weights(&a, &g)?)?.sum(3)?,
        Method::HiResCam => hirescam_raw(&a, &g)?,
        Method::LayerCam => (&a * g.relu()?)?.sum(3)?,
        Method::XGradCam => {
            let num = (&a * &g)?.sum_keepdim((1, 2))?;
            let den = a.sum_keepdim((1, 2))?.affine(1.0, 1e-7)?;
            a.broadcast_mul(&(num / den)?)?.sum(3)?
        }
        m => return Err(Error::Input(format!("{} is not a gradient CAM", m.name()))),
    };
    cam(raw, logits, classes, layer)
}

/// HiResCAM's `Σ_c A·g` at each position, 0 where it is rounding noise. Where a per-position
/// LayerNorm follows the layer (a ConvNeXt stage's output, before the next downsample), the
/// class score does not change with the scale of a position's vector, so `Σ_c A·∂y/∂A` is
/// zero there in exact arithmetic (Euler's theorem for a function of degree 0). What f32
/// leaves, about 1e-8 on the shipped model at `stages.1`, a normalised map showed as a
/// pattern, and it changed with any change of rounding. A position counts as noise where
/// `|Σ A·g|` is below 1e-4 of `Σ |A·g|`.
fn hirescam_raw(a: &Tensor, g: &Tensor) -> Result<Tensor> {
    let prod = (a * g)?;
    let sum = prod.sum(3)?;
    let scale = prod.abs()?.sum(3)?;
    let signal = sum.abs()?.ge(&scale.affine(1e-4, 0.0)?)?;
    Ok(signal.where_cond(&sum, &sum.zeros_like()?)?)
}

/// A CAM's attribution: the map is its weighted sum of channels after a ReLU.
fn cam(raw: Tensor, logits: Tensor, classes: Vec<usize>, layer: LayerId) -> Result<Attribution> {
    Ok(Attribution {
        map: raw.relu()?,
        raw: Some(raw),
        logits,
        classes,
        layer,
    })
}

/// Grad-CAM++'s channel weights: `α = g² / (2g² + Σ_hw(A)·g³ + 1e-7)` (0 where g = 0),
/// `w_c = Σ_hw ReLU(g)·α`.
fn grad_cam_pp_weights(a: &Tensor, g: &Tensor) -> Result<Tensor> {
    let g2 = g.sqr()?;
    let g3 = (&g2 * g)?;
    let sum_a = a.sum_keepdim((1, 2))?;
    let denom = ((g2.affine(2.0, 1e-7)?) + g3.broadcast_mul(&sum_a)?)?;
    let alpha = (&g2 / denom)?;
    let nonzero = g.ne(0f32)?.to_dtype(DType::F32)?;
    let alpha = (alpha * nonzero)?;
    Ok((g.relu()? * alpha)?.sum_keepdim((1, 2))?)
}

/// The drop of each image's class logit when a `window`×`window` patch of the input (every
/// `stride` pixels) is set to 0, the dataset mean after normalising. Batches of occluded
/// inputs are bounded; `progress` hears of each batch and may cancel.
pub fn occlusion(
    engine: &Engine,
    x: &Tensor,
    class: Option<usize>,
    (window, stride): (usize, usize),
    progress: &mut dyn Progress,
) -> Result<Attribution> {
    let (n, _, h, w) = x.dims4()?;
    if window == 0 || stride == 0 {
        return Err(Error::Input(
            "occlusion window and stride must be at least 1".into(),
        ));
    }
    let logits = engine.forward(x)?;
    let classes = classes_for(engine, &logits, class)?;
    let base: Vec<f32> = class_logits(&logits, &classes)?;
    let positions = |len: usize| {
        if len <= window {
            1
        } else {
            (len - window) / stride + 1
        }
    };
    let (ny, nx) = (positions(h), positions(w));
    let x_host: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut drops = vec![0f32; n * ny * nx];
    // A few occluded copies per forward: memory stays a small multiple of one batch.
    let per_batch = (16 / n).max(1);
    let cells: Vec<(usize, usize)> = (0..ny).flat_map(|i| (0..nx).map(move |j| (i, j))).collect();
    for (done, chunk) in cells.chunks(per_batch).enumerate() {
        progress.check("occlusion")?;
        progress.update(done * per_batch, cells.len(), "occluded inputs");
        let mut data = Vec::with_capacity(chunk.len() * x_host.len());
        for &(i, j) in chunk {
            let mut copy = x_host.clone();
            blank(&mut copy, (n, h, w), (i * stride, j * stride), window);
            data.extend(copy);
        }
        let batch = Tensor::from_vec(data, (chunk.len() * n, 3, h, w), x.device())?;
        let out = engine.forward(&batch)?;
        let rep: Vec<usize> = chunk.iter().flat_map(|_| classes.iter().copied()).collect();
        let vals = class_logits(&out, &rep)?;
        for (c, &(i, j)) in chunk.iter().enumerate() {
            for img in 0..n {
                drops[img * ny * nx + i * nx + j] = base[img] - vals[c * n + img];
            }
        }
    }
    let map = Tensor::from_vec(drops, (n, ny, nx), x.device())?;
    Ok(Attribution {
        map,
        raw: None,
        logits,
        classes,
        layer: LayerId::Stem,
    })
}

pub(crate) fn class_logits(logits: &Tensor, classes: &[usize]) -> Result<Vec<f32>> {
    let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    Ok(rows.iter().zip(classes).map(|(r, &k)| r[k]).collect())
}

/// Zeroes a window (clipped to the image) of every image of an NCHW buffer.
fn blank(
    buf: &mut [f32],
    (n, h, w): (usize, usize, usize),
    (top, left): (usize, usize),
    win: usize,
) {
    for img in 0..n {
        for c in 0..3 {
            let plane = &mut buf[(img * 3 + c) * h * w..(img * 3 + c + 1) * h * w];
            for y in top..(top + win).min(h) {
                plane[y * w + left..y * w + (left + win).min(w)].fill(0.0);
            }
        }
    }
}

/// The exact class-evidence map of the last stage, as an [`Attribution`].
pub fn evidence(engine: &Engine, x: &Tensor, class: Option<usize>) -> Result<Attribution> {
    let last = LayerId::Stage(engine.plan.stages.len().saturating_sub(1));
    let mut cap =
        crate::analysis::trace::CaptureObserver::new(crate::analysis::trace::CaptureLevel::Stages);
    let logits = engine.forward_observed(x, &mut cap)?;
    let classes = classes_for(engine, &logits, class)?;
    let a = cap
        .get(last)
        .ok_or_else(|| Error::Input("the last stage did not run".into()))?;
    let maps = classes
        .iter()
        .enumerate()
        .map(|(i, &k)| engine.model.class_evidence(&a.narrow(0, i, 1)?, k))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Attribution {
        map: Tensor::cat(&maps, 0)?,
        raw: None,
        logits,
        classes,
        layer: last,
    })
}

/// Any method, at `layer` (occlusion works on the input; evidence at the last stage).
pub fn attribute(
    engine: &Engine,
    x: &Tensor,
    method: Method,
    layer: LayerId,
    class: Option<usize>,
    progress: &mut dyn Progress,
) -> Result<Attribution> {
    match method {
        Method::GradCam
        | Method::GradCamPlusPlus
        | Method::HiResCam
        | Method::LayerCam
        | Method::XGradCam => gradient_cam(engine, x, layer, class, method),
        Method::ScoreCam => score_cam(engine, x, layer, class, progress),
        Method::IntegratedGradients { steps } => {
            integrated_gradients(engine, x, None, class, steps, progress).map(|ig| ig.attribution)
        }
        Method::Occlusion { window, stride } => {
            occlusion(engine, x, class, (window, stride), progress)
        }
        Method::Evidence => {
            let last = LayerId::Stage(engine.plan.stages.len().saturating_sub(1));
            if layer != last {
                return Err(Error::Input(format!(
                    "the evidence map is exact at the last stage only: use --layer {last}"
                )));
            }
            evidence(engine, x, class)
        }
    }
}

/// The effective receptive field's raw map for a batch: `Σ_rgb ReLU(∂s/∂x)` per image, with
/// `s = Σ_c ReLU(A[c, H_L/2, W_L/2])` of each image's layer-`layer` output. `[N, H, W]` f32.
pub fn erf_maps(engine: &Engine, x: &Tensor, layer: LayerId) -> Result<Tensor> {
    if !layer.is_spatial() {
        return Err(Error::Input(format!(
            "`{layer}` has no spatial map: pick a stem, stage, block or block part"
        )));
    }
    let input = Var::from_tensor(&x.to_dtype(DType::F32)?.to_device(&engine.device)?)?;
    run_awake(|| {
        // The forward stops at the layer: nothing after it matters.
        let (mut kept, _) = forward_keeping(engine, input.as_tensor(), vec![layer], true)?;
        let out = kept.remove(0).1;
        let (_, hl, wl, _) = out.dims4()?;
        let s = out
            .narrow(1, hl / 2, 1)?
            .narrow(2, wl / 2, 1)?
            .relu()?
            .sum_all()?;
        let grads = s.backward()?;
        let g = grads
            .get(input.as_tensor())
            .ok_or_else(|| Error::Input(format!("no gradient reaches the input from `{layer}`")))?;
        Ok(g.relu()?.sum(1)?.to_dtype(DType::F32)?)
    })
}

/// RepLKNet's scale for an ERF value: `log10(v + 1)`, in f64 (the summary's sums run over the
/// whole map).
fn erf_log_value(v: f32) -> f64 {
    (v as f64 + 1.0).log10()
}

/// [`erf_log_value`] of a whole map, for showing it.
pub fn erf_log(map: &[f32]) -> Vec<f32> {
    map.iter().map(|&v| erf_log_value(v) as f32).collect()
}

/// The share of an ERF picture's values below the one it is scaled to: the brightest 1 %
/// saturate, so that the spread around the centre is seen and not only its peak.
pub const ERF_DISPLAY_PERCENTILE: f64 = 0.99;

/// What an ERF picture shows, in [0, 1]: `log10(map + 1)` over its own
/// [`ERF_DISPLAY_PERCENTILE`] percentile, capped at 1 (all 0 for an all-zero map). The table's
/// numbers come from the map itself ([`area_ratios`]); this is only for the eye.
pub fn erf_display(map: &[f32]) -> Vec<f32> {
    let logs = erf_log(map);
    let mut sorted: Vec<f32> = logs.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f32::total_cmp);
    let at = ((sorted.len() as f64 - 1.0) * ERF_DISPLAY_PERCENTILE).round() as usize;
    let top = sorted.get(at).copied().unwrap_or(0.0);
    let top = if top > 0.0 {
        top
    } else {
        sorted.last().copied().unwrap_or(0.0)
    };
    logs.iter()
        .map(|v| {
            if top > 0.0 {
                (v / top).clamp(0.0, 1.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// RepLKNet's summary of an ERF map: `m = log10(map + 1) / max`, and for each threshold the
/// area ratio of the smallest centred square (side 2i+1, i ≥ 1) holding more than that share of
/// Σm; `None` where no square below the map's half-size does.
pub fn area_ratios(map: &[f32], (h, w): (usize, usize), thresholds: &[f64]) -> Vec<Option<f64>> {
    let m: Vec<f64> = map.iter().map(|&v| erf_log_value(v)).collect();
    let max = m.iter().cloned().fold(0.0, f64::max);
    let m: Vec<f64> = m
        .iter()
        .map(|v| if max > 0.0 { v / max } else { 0.0 })
        .collect();
    let total: f64 = m.iter().sum();
    let square = |i: usize| -> f64 {
        let (cy, cx) = (h / 2, w / 2);
        let (y0, y1) = (cy.saturating_sub(i), (cy + i + 1).min(h));
        let (x0, x1) = (cx.saturating_sub(i), (cx + i + 1).min(w));
        (y0..y1)
            .map(|y| m[y * w + x0..y * w + x1].iter().sum::<f64>())
            .sum()
    };
    thresholds
        .iter()
        .map(|&t| {
            (1..h.min(w) / 2)
                .find(|&i| total > 0.0 && square(i) / total > t)
                .map(|i| ((2 * i + 1) as f64 / h as f64) * ((2 * i + 1) as f64 / w as f64))
        })
        .collect()
}

/// The thresholds RepLKNet reports.
pub const ERF_THRESHOLDS: [f64; 4] = [0.2, 0.3, 0.5, 0.99];

/// One layer's effective receptive field over the images seen so far.
#[derive(Clone, Debug)]
pub struct ErfSummary {
    pub layer: LayerId,
    /// The averaged raw map (before the log), `h × w` row-major.
    pub map: Vec<f32>,
    pub size: (usize, usize),
    /// Area ratios at [`ERF_THRESHOLDS`].
    pub ratios: Vec<Option<f64>>,
}

/// Averages ERF maps of several layers over a stream of inputs (one image at a time: memory
/// does not grow with the folder).
pub struct ErfAccumulator {
    layers: Vec<LayerId>,
    sums: Vec<Option<Tensor>>,
    pub images: usize,
}

impl ErfAccumulator {
    pub fn new(layers: Vec<LayerId>) -> Self {
        let sums = vec![None; layers.len()];
        Self {
            layers,
            sums,
            images: 0,
        }
    }

    /// Adds a batch `[N, 3, H, W]` (every batch the same size).
    pub fn add(&mut self, engine: &Engine, x: &Tensor) -> Result<()> {
        for (layer, sum) in self.layers.iter().zip(&mut self.sums) {
            let m = erf_maps(engine, x, *layer)?.sum(0)?;
            *sum = Some(match sum.take() {
                Some(s) => (s + m)?,
                None => m,
            });
        }
        self.images += x.dim(0)?;
        Ok(())
    }

    pub fn finish(self) -> Result<Vec<ErfSummary>> {
        let n = self.images.max(1) as f64;
        self.layers
            .into_iter()
            .zip(self.sums)
            .filter_map(|(layer, sum)| sum.map(|s| (layer, s)))
            .map(|(layer, s)| {
                let (h, w) = s.dims2()?;
                let map: Vec<f32> = (s / n)?.flatten_all()?.to_vec1()?;
                let ratios = area_ratios(&map, (h, w), &ERF_THRESHOLDS);
                Ok(ErfSummary {
                    layer,
                    map,
                    size: (h, w),
                    ratios,
                })
            })
            .collect()
    }
}

/// The methods a faithfulness comparison runs, by their command-line names.
pub const COMPARED: [&str; 7] = [
    "gradcam",
    "gradcam++",
    "hirescam",
    "layercam",
    "xgradcam",
    "scorecam",
    "ig",
];

/// Integrated Gradients' default number of points.
pub const IG_STEPS: usize = 32;

/// Bilinear resampling of one `h×w` plane to `H×W` as PyTorch's `interpolate(mode="bilinear",
/// align_corners=False)` does it: source coordinate `(d + 0.5)·(in/out) − 0.5`, clamped below
/// at 0, neighbours clamped to the edge.
pub fn resize_bilinear(src: &[f32], size: (usize, usize), out: (usize, usize)) -> Vec<f32> {
    let src: Vec<f64> = src.iter().map(|&v| v as f64).collect();
    resize_bilinear_f64(&src, size, out)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// [`resize_bilinear`] in f64, with PyTorch's order of operations, so that a ranking of the
/// result breaks ties as PyTorch's double-precision one does.
pub fn resize_bilinear_f64(
    src: &[f64],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f64> {
    let axis = |len_in: usize, len_out: usize| -> Vec<(usize, usize, f64)> {
        let scale = len_in as f64 / len_out as f64;
        (0..len_out)
            .map(|d| {
                let s = (scale * (d as f64 + 0.5) - 0.5).max(0.0);
                let i0 = (s as usize).min(len_in - 1);
                let i1 = (i0 + 1).min(len_in - 1);
                (i0, i1, s - i0 as f64)
            })
            .collect()
    };
    let (ys, xs) = (axis(h, oh), axis(w, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let top = (1.0 - fx) * src[y0 * w + x0] + fx * src[y0 * w + x1];
            let bottom = (1.0 - fx) * src[y1 * w + x0] + fx * src[y1 * w + x1];
            out.push((1.0 - fy) * top + fy * bottom);
        }
    }
    out
}

/// Softmax probabilities of `classes[n]` for each row of `logits`.
pub(crate) fn class_probs(logits: &Tensor, classes: &[usize]) -> Result<Vec<f32>> {
    let p = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
    class_logits(&p, classes)
}

/// ScoreCAM at `layer` (pytorch-grad-cam's recipe, with the softmax probability as the score):
/// each channel of the layer's output, upsampled bilinearly to the input's size and min–max
/// normalised per image (a constant channel becomes 0), masks the input; the class's softmax
/// probability on the masked input is the channel's score; the scores' softmax over the
/// channels weighs them, and the map is `ReLU(Σ_c w_c · A_c)`. Masked inputs go through the
/// model a bounded batch at a time; `progress` hears of each batch and may cancel.
pub fn score_cam(
    engine: &Engine,
    x: &Tensor,
    layer: LayerId,
    class: Option<usize>,
    progress: &mut dyn Progress,
) -> Result<Attribution> {
    let (a, logits, classes) = layer_output(engine, x, layer, class)?;
    let (n, lh, lw, c) = a.dims4()?;
    let (_, _, h, w) = x.dims4()?;
    let a_chw: Vec<f32> = a.permute((0, 3, 1, 2))?.flatten_all()?.to_vec1()?;
    let x_host: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let per_batch = score_cam_batch(h * w);
    let mut weights = vec![0f32; n * c];
    for img in 0..n {
        let image = &x_host[img * 3 * h * w..(img + 1) * 3 * h * w];
        let mut scores = Vec::with_capacity(c);
        for start in (0..c).step_by(per_batch) {
            progress.check("ScoreCAM")?;
            progress.update(img * c + start, n * c, "masked inputs");
            let end = (start + per_batch).min(c);
            let mut data = Vec::with_capacity((end - start) * image.len());
            for ch in start..end {
                let plane = &a_chw[(img * c + ch) * lh * lw..(img * c + ch + 1) * lh * lw];
                let mask = min_max(&resize_bilinear(plane, (lh, lw), (h, w)));
                for colour in image.chunks_exact(h * w) {
                    data.extend(colour.iter().zip(&mask).map(|(v, m)| v * m));
                }
            }
            let batch = Tensor::from_vec(data, (end - start, 3, h, w), x.device())?;
            let out = engine.forward(&batch.to_dtype(engine.dtype)?)?;
            scores.extend(class_probs(&out, &vec![classes[img]; end - start])?);
        }
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        for (ch, e) in exp.iter().enumerate() {
            weights[img * c + ch] = e / sum;
        }
    }
    let wt = Tensor::from_vec(weights, (n, 1, 1, c), x.device())?;
    cam(a.broadcast_mul(&wt)?.sum(3)?, logits, classes, layer)
}

/// How many masked inputs of `pixels` each go through the model at once: about 16 of
/// 224×224, more of smaller ones, so that memory stays near a batch-16 forward.
fn score_cam_batch(pixels: usize) -> usize {
    (16 * 224 * 224 / pixels.max(1)).clamp(1, 256)
}

/// `(v − min) / (max − min)`, or all 0 for a constant plane.
fn min_max(v: &[f32]) -> Vec<f32> {
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    if hi > lo {
        v.iter().map(|x| (x - lo) / (hi - lo)).collect()
    } else {
        vec![0.0; v.len()]
    }
}

/// A layer's output (channels-last, f32), the logits and the classes to explain, with no
/// gradient. Only that layer's output is kept, not every layer's.
fn layer_output(
    engine: &Engine,
    x: &Tensor,
    layer: LayerId,
    class: Option<usize>,
) -> Result<(Tensor, Tensor, Vec<usize>)> {
    check_spatial(layer)?;
    let (mut kept, logits) = forward_keeping(engine, x, vec![layer], false)?;
    let logits = logits.ok_or_else(|| Error::Input("the forward stopped early".into()))?;
    let a = kept.remove(0).1.to_dtype(DType::F32)?;
    let classes = classes_for(engine, &logits, class)?;
    Ok((a, logits, classes))
}

/// Integrated Gradients with what checks it: the attribution, and per image the completeness
/// gap `|Σ map − (logit_k(x) − logit_k(x′))|` beside `logit_k(x) − logit_k(x′)`.
pub struct IgResult {
    pub attribution: Attribution,
    pub gap: Vec<f32>,
    pub logit_difference: Vec<f32>,
}

/// Integrated Gradients by the trapezoid rule: `α_i = i/(n−1)`, weights `1/(n−1)` with the two
/// ends halved, from the baseline `x′` (0, the dataset mean after normalising, unless given);
/// `(x − x′) ⊙ Σ_i w_i ∇_x logit_k(x′ + α_i (x − x′))` summed over the colour channels. The
/// points go through the model a few at a time; `progress` hears of each and may cancel.
pub fn integrated_gradients(
    engine: &Engine,
    x: &Tensor,
    baseline: Option<&Tensor>,
    class: Option<usize>,
    steps: usize,
    progress: &mut dyn Progress,
) -> Result<IgResult> {
    if steps < 2 {
        return Err(Error::Input(
            "Integrated Gradients needs at least 2 steps".into(),
        ));
    }
    let x = x.to_dtype(DType::F32)?;
    let base = match baseline {
        Some(b) => b.to_dtype(DType::F32)?,
        None => x.zeros_like()?,
    };
    let diff = (&x - &base)?;
    let logits = engine.forward(&x.to_dtype(engine.dtype)?)?;
    let classes = classes_for(engine, &logits, class)?;
    let (n, c, h, w) = x.dims4()?;
    // Several points per pass: a batch amortises the weights' traffic (bounded like ScoreCAM's).
    let per_pass = (score_cam_batch(h * w) / n).clamp(1, steps);
    let mut total = x.zeros_like()?;
    let mut ends = (Vec::new(), Vec::new());
    for first in (0..steps).step_by(per_pass) {
        progress.check("Integrated Gradients")?;
        progress.update(first, steps, "points along the path");
        let idx: Vec<usize> = (first..(first + per_pass).min(steps)).collect();
        let points = idx
            .iter()
            .map(|&i| &base + diff.affine(i as f64 / (steps - 1) as f64, 0.0)?)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let var = Var::from_tensor(&Tensor::cat(&points, 0)?.to_dtype(engine.dtype)?)?;
        let rows: Vec<usize> = idx.iter().flat_map(|_| classes.iter().copied()).collect();
        let (values, grads) = run_awake(|| -> Result<_> {
            let out = engine.forward(var.as_tensor())?;
            Ok((
                class_logits(&out, &rows)?,
                class_score(&out, &rows)?.backward()?,
            ))
        })?;
        for (j, &i) in idx.iter().enumerate() {
            if i == 0 {
                ends.0 = values[j * n..(j + 1) * n].to_vec();
            }
            if i == steps - 1 {
                ends.1 = values[j * n..(j + 1) * n].to_vec();
            }
        }
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::Input("no gradient reaches the input".into()))?
            .to_dtype(DType::F32)?
            .reshape((idx.len(), n, c, h, w))?;
        for (j, &i) in idx.iter().enumerate() {
            let weight = if i == 0 || i == steps - 1 { 0.5 } else { 1.0 } / (steps - 1) as f64;
            total = (total + g.get(j)?.affine(weight, 0.0)?)?;
        }
    }
    let map = (diff * total)?.sum(1)?;
    let sums: Vec<f32> = map.flatten_from(1)?.sum(1)?.to_vec1()?;
    let logit_difference: Vec<f32> = ends.1.iter().zip(&ends.0).map(|(a, b)| a - b).collect();
    let gap = sums
        .iter()
        .zip(&logit_difference)
        .map(|(s, d)| (s - d).abs())
        .collect();
    Ok(IgResult {
        attribution: Attribution {
            map,
            raw: None,
            logits: logits.detach(),
            classes,
            layer: LayerId::Stem,
        },
        gap,
        logit_difference,
    })
}

/// SmoothGrad's settings: `samples` noisy copies, noise σ (default 0.15 × the image's range),
/// seeded.
#[derive(Clone, Copy, Debug)]
pub struct Smoothing {
    pub samples: usize,
    pub sigma: Option<f64>,
    pub seed: u64,
}

/// SmoothGrad over any method: per image, the mean over `samples` of the method's map on
/// `x + N(0, σ²)`, explaining the class of the clean image (given, or its top-1), so that
/// every sample explains the same class. Seeded: the same seed gives the same map. The noise is
/// drawn image by image, sample by sample; the rest is [`smooth_grad_with_noise`]'s.
pub fn smooth_grad(
    engine: &Engine,
    x: &Tensor,
    (method, layer): (Method, LayerId),
    class: Option<usize>,
    s: Smoothing,
    progress: &mut dyn Progress,
) -> Result<Attribution> {
    use rand::SeedableRng;
    if s.samples == 0 {
        return Err(Error::Input("SmoothGrad needs at least 1 sample".into()));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
    let mut sigmas = Vec::new();
    for i in 0..x.dim(0)? {
        let values: Vec<f32> = x.get(i)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (lo, hi) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        sigmas.push(s.sigma.unwrap_or(0.15 * (hi - lo) as f64) as f32);
    }
    let noise = |i: usize, _: usize, image: &Tensor| -> Result<Tensor> {
        let n = crate::model::plan::normal(&mut rng, image.elem_count(), sigmas[i]);
        Ok(Tensor::from_vec(n, image.shape(), image.device())?)
    };
    smooth_grad_by(
        engine,
        x,
        (method, layer),
        class,
        s.samples,
        noise,
        progress,
    )
}

/// SmoothGrad with the noise given: `noise[j]` (shaped like `x`) is the j-th sample's noise
/// for every image; per image, the mean over the samples of the method's map on
/// `x + noise[j]`, explaining the class of the clean image (given, or its top-1). What
/// [`smooth_grad`] computes from the noise it draws, so that it can be checked against a
/// reference that draws its own.
pub fn smooth_grad_with_noise(
    engine: &Engine,
    x: &Tensor,
    (method, layer): (Method, LayerId),
    class: Option<usize>,
    noise: &[Tensor],
    progress: &mut dyn Progress,
) -> Result<Attribution> {
    if noise.is_empty() {
        return Err(Error::Input("SmoothGrad needs at least 1 sample".into()));
    }
    for n in noise {
        if n.dims() != x.dims() {
            return Err(Error::Input(format!(
                "SmoothGrad's noise is {:?}; the input is {:?}",
                n.dims(),
                x.dims()
            )));
        }
    }
    let given = |i: usize, j: usize, image: &Tensor| -> Result<Tensor> {
        let n = noise[j].narrow(0, i, 1)?.to_dtype(DType::F32)?;
        Ok(n.to_device(image.device())?)
    };
    smooth_grad_by(
        engine,
        x,
        (method, layer),
        class,
        noise.len(),
        given,
        progress,
    )
}

/// SmoothGrad's one path: `noise(i, j, image)` is image `i`'s j-th noise (`[1, 3, H, W]` f32),
/// asked for image by image, sample by sample.
fn smooth_grad_by(
    engine: &Engine,
    x: &Tensor,
    (method, layer): (Method, LayerId),
    class: Option<usize>,
    samples: usize,
    mut noise: impl FnMut(usize, usize, &Tensor) -> Result<Tensor>,
    progress: &mut dyn Progress,
) -> Result<Attribution> {
    let logits = engine.forward(x)?;
    let classes = classes_for(engine, &logits, class)?;
    let mut maps = Vec::with_capacity(classes.len());
    for (i, &k) in classes.iter().enumerate() {
        let image = x.narrow(0, i, 1)?.to_dtype(DType::F32)?;
        let mut sum: Option<Tensor> = None;
        for j in 0..samples {
            progress.check("SmoothGrad")?;
            progress.update(i * samples + j, classes.len() * samples, "noisy samples");
            let noisy = (&image + noise(i, j, &image)?)?;
            let noisy = noisy.to_dtype(engine.dtype)?;
            let m = attribute(engine, &noisy, method, layer, Some(k), progress)?.map;
            sum = Some(match sum {
                Some(t) => (t + m)?,
                None => m,
            });
        }
        let total = sum.ok_or_else(|| Error::Input("no samples".into()))?;
        maps.push((total / samples as f64)?);
    }
    Ok(Attribution {
        map: Tensor::cat(&maps, 0)?,
        raw: None,
        logits,
        classes,
        layer,
    })
}

//! Feature visualisation by optimisation (Olah, Mordvintsev and Schubert, "Feature
//! Visualization", Distill 2017), with Lucid's recipe so that the pictures look like the
//! references: the image is a Fourier spectrum scaled by 1/frequency, in decorrelated colour,
//! squashed to pixels by a sigmoid; each step sees it padded, jittered, scaled and rotated a
//! little; Adam climbs the objective. What the network sees is always a real image: pixels in
//! [0, 1], preprocessed as the model's own images are.
//!
//! Every image of a batch has its own objective, its own seed and its own random transforms, so
//! a channel's picture does not depend on which other channels were optimised beside it
//! (`--channel 3,5` and `--channel 5` give channel 5 the same image).
use super::trace::forward_keeping;
use crate::base::error::{Error, Result};
use crate::base::progress::Progress;
use crate::io::engine::Engine;
use crate::io::preprocess::PreprocessConfig;
use crate::model::layer_id::LayerId;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::Optimizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Lucid's default number of steps.
pub const STEPS: usize = 512;
/// Lucid's Adam learning rate.
pub const LR: f64 = 0.05;
/// Weight of the diversity term (Lucid's examples use 1e2 against a mean over the batch; here
/// the objectives are summed over the batch, so the same balance is this weight per image).
pub const DIVERSITY_WEIGHT: f32 = 1e2;

/// What an image should excite. Channel and neuron values are read channels-last.
#[derive(Clone, Debug, PartialEq)]
pub enum Objective {
    /// The mean of a channel's map.
    Channel { layer: LayerId, channel: usize },
    /// A channel's value at the centre position (`H/2`, `W/2`, rounded down).
    Neuron { layer: LayerId, channel: usize },
    /// The mean over positions of the dot product of the layer's channels with a vector.
    Direction { layer: LayerId, vector: Vec<f32> },
    /// A class logit.
    Class(usize),
    /// A weighted sum of objectives.
    Sum(Vec<(f32, Objective)>),
}

impl Objective {
    /// The layers whose outputs the objective reads, added to `out` once each.
    fn layers(&self, out: &mut Vec<LayerId>) {
        match self {
            Objective::Channel { layer, .. }
            | Objective::Neuron { layer, .. }
            | Objective::Direction { layer, .. } => {
                if !out.contains(layer) {
                    out.push(*layer);
                }
            }
            Objective::Class(_) => {}
            Objective::Sum(parts) => parts.iter().for_each(|(_, o)| o.layers(out)),
        }
    }

    fn needs_logits(&self) -> bool {
        match self {
            Objective::Class(_) => true,
            Objective::Sum(parts) => parts.iter().any(|(_, o)| o.needs_logits()),
            _ => false,
        }
    }

    /// How the objective reads: `stages.1 channel 5`, `class 3`, …
    pub fn describe(&self) -> String {
        match self {
            Objective::Channel { layer, channel } => format!("{layer} channel {channel}"),
            Objective::Neuron { layer, channel } => format!("{layer} neuron {channel} (centre)"),
            Objective::Direction { layer, .. } => format!("{layer} direction"),
            Objective::Class(k) => format!("class {k}"),
            Objective::Sum(parts) => parts
                .iter()
                .map(|(w, o)| format!("{w} × {}", o.describe()))
                .collect::<Vec<_>>()
                .join(" + "),
        }
    }

    /// The objective of image `i` of a batch, a scalar that keeps its gradient.
    fn value(&self, i: usize, outs: &Outputs) -> Result<Tensor> {
        Ok(match self {
            Objective::Channel { layer, channel } => {
                channel_of(outs.get(*layer)?, i, *channel, *layer)?.mean_all()?
            }
            Objective::Neuron { layer, channel } => {
                let t = channel_of(outs.get(*layer)?, i, *channel, *layer)?;
                match t.dims() {
                    [_, h, w, _] => t.narrow(1, h / 2, 1)?.narrow(2, w / 2, 1)?.sum_all()?,
                    _ => t.sum_all()?,
                }
            }
            Objective::Direction { layer, vector } => {
                let t = outs.get(*layer)?.narrow(0, i, 1)?;
                let c = t.dim(D::Minus1)?;
                if vector.len() != c {
                    return Err(Error::Input(format!(
                        "the direction has {} values; `{layer}` has {c} channels",
                        vector.len()
                    )));
                }
                let v = Tensor::from_slice(vector, c, t.device())?.to_dtype(t.dtype())?;
                t.broadcast_mul(&v)?.sum(D::Minus1)?.mean_all()?
            }
            Objective::Class(k) => {
                let logits = outs
                    .logits
                    .as_ref()
                    .ok_or_else(|| Error::Input("the forward stopped before the logits".into()))?;
                let classes = logits.dim(1)?;
                if *k >= classes {
                    return Err(Error::Input(format!(
                        "class {k} is out of range: the model has {classes} classes"
                    )));
                }
                logits.narrow(0, i, 1)?.narrow(1, *k, 1)?.sum_all()?
            }
            Objective::Sum(parts) => {
                let mut total: Option<Tensor> = None;
                for (w, o) in parts {
                    let v = o.value(i, outs)?.affine(*w as f64, 0.0)?;
                    total = Some(match total {
                        Some(t) => (t + v)?,
                        None => v,
                    });
                }
                total.ok_or_else(|| Error::Input("an empty sum of objectives".into()))?
            }
        }
        .to_dtype(DType::F32)?)
    }

    /// A stable number for the objective, so that its seed does not depend on its place in a
    /// batch (FNV-1a over its description and vector).
    fn key(&self) -> u64 {
        let mut text = self.describe();
        if let Objective::Direction { vector, .. } = self {
            text.push_str(&format!("{vector:?}"));
        }
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

/// Image `i`'s channel `c` of a layer's output (`[1, H, W, 1]` or `[1, 1]`), checked.
fn channel_of(t: &Tensor, i: usize, c: usize, layer: LayerId) -> Result<Tensor> {
    let channels = t.dim(D::Minus1)?;
    if c >= channels {
        return Err(Error::Input(format!(
            "channel {c} is out of range: `{layer}` has {channels} channels (0 to {})",
            channels - 1
        )));
    }
    Ok(t.narrow(0, i, 1)?.narrow(t.rank() - 1, c, 1)?)
}

/// The outputs an objective reads: some layers' (channels-last) and perhaps the logits.
struct Outputs {
    layers: Vec<(LayerId, Tensor)>,
    logits: Option<Tensor>,
}

impl Outputs {
    fn get(&self, layer: LayerId) -> Result<&Tensor> {
        self.layers
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::Input(format!("layer `{layer}` did not run")))
    }
}

/// Runs `x` through the model as far as the objectives (and the diversity layer) need.
fn run(engine: &Engine, x: &Tensor, wanted: Vec<LayerId>, logits: bool) -> Result<Outputs> {
    let x = x.to_dtype(engine.dtype)?;
    let (layers, logits) = forward_keeping(engine, &x, wanted, !logits)?;
    Ok(Outputs { layers, logits })
}

/// The layers a batch of objectives reads, the diversity layer included.
fn wanted(objectives: &[Objective], diversity: Option<LayerId>) -> Vec<LayerId> {
    let mut layers = Vec::new();
    objectives.iter().for_each(|o| o.layers(&mut layers));
    if let Some(l) = diversity.filter(|l| !layers.contains(l)) {
        layers.push(l);
    }
    layers
}

/// Each objective's value for each image of `input` (image `i` against objective `i`), with no
/// gradient: how well a saved image does.
pub fn measure(engine: &Engine, input: &Tensor, objectives: &[Objective]) -> Result<Vec<f32>> {
    let logits = objectives.iter().any(Objective::needs_logits);
    let outs = run(engine, input, wanted(objectives, None), logits)?;
    objectives
        .iter()
        .enumerate()
        .map(|(i, o)| Ok(o.value(i, &outs)?.to_scalar::<f32>()?))
        .collect()
}

/// Lucid's diversity term for a batch: the Gram matrix (channels × channels) of each image's
/// map at the layer, each scaled to unit norm, and the sum of the cosines of every ordered pair
/// of different images, over the batch size. A scalar that keeps its gradient.
fn gram_pairs(t: &Tensor) -> Result<Tensor> {
    let n = t.dim(0)?;
    let c = t.dim(D::Minus1)?;
    let flat = t.to_dtype(DType::F32)?.reshape((n, (), c))?;
    let gram = flat.transpose(1, 2)?.contiguous()?.matmul(&flat)?;
    let gram = gram.reshape((n, c * c))?;
    let norm = (gram.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-10)?;
    let unit = gram.broadcast_div(&norm)?;
    let cos = unit.matmul(&unit.t()?)?;
    let same = unit.sqr()?.sum_all()?;
    Ok(((cos.sum_all()? - same)? / n as f64)?)
}

/// The mean cosine similarity of the Gram matrices of every pair of different images of
/// `input` at `layer` (1: the same style everywhere; lower: more diverse).
pub fn gram_similarity(engine: &Engine, input: &Tensor, layer: LayerId) -> Result<f32> {
    let n = input.dim(0)?;
    if n < 2 {
        return Err(Error::Input("diversity needs at least 2 images".into()));
    }
    let outs = run(engine, input, vec![layer], false)?;
    let pairs = gram_pairs(outs.get(layer)?)?.to_scalar::<f32>()?;
    Ok(pairs / (n - 1) as f32)
}

/// How an optimisation runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub steps: usize,
    /// The image's side in pixels.
    pub size: usize,
    pub seed: u64,
    pub lr: f64,
    /// Lucid's robustness transforms at every step but the last [`Settings::polish`] (off:
    /// the plain image is optimised throughout).
    pub transforms: bool,
}

impl Settings {
    /// How many of the last steps see the image exactly as it is saved (no transforms): a
    /// sixteenth. ConvNeXt's stem cuts the image into 4×4 patches, so its channels (and some of
    /// stage 0's) respond to patterns aligned with that grid, which the transforms' sub-patch
    /// shifts, scales and turns average away; the last steps align the pattern with the grid
    /// the measured objective sees, and change the picture little.
    pub fn polish(&self) -> usize {
        if self.transforms {
            self.steps / 16
        } else {
            0
        }
    }

    /// Whether step `i` sees the transformed image.
    pub fn transformed(&self, i: usize) -> bool {
        self.transforms && i + self.polish() < self.steps
    }

    /// Lucid's defaults at the model's own input size.
    pub fn for_model(engine: &Engine) -> Settings {
        Settings {
            steps: STEPS,
            size: engine.preprocess.input_size.0,
            seed: 0,
            lr: LR,
            transforms: true,
        }
    }
}

/// One optimised image: its 8-bit pixels, what the model sees (`[1, 3, S, S]`, those pixels
/// preprocessed) and the objective measured on it.
pub struct Visual {
    pub rgb: image::RgbImage,
    /// A grey model's image is grey (its three channels equal).
    pub grey: bool,
    pub input: Tensor,
    pub objective: f32,
}

/// A grey dataset's model (the same mean and deviation for the three channels, as the shipped
/// Fashion-MNIST model has) is shown grey images: colour it never saw would only distract.
pub fn is_grey(cfg: &PreprocessConfig) -> bool {
    cfg.mean.iter().all(|m| *m == cfg.mean[0]) && cfg.std.iter().all(|s| *s == cfg.std[0])
}

/// How many images go through the model at once: about 16 of 224×224, more of smaller ones
/// (the optimisation keeps one forward's activations for its backward, as attribution does).
pub fn batch_for(size: usize) -> usize {
    (16 * 224 * 224 / (size * size).max(1)).clamp(1, 64)
}

/// One image per objective, optimised a batch at a time. `progress` hears of every step and
/// may cancel.
pub fn visualize(
    engine: &Engine,
    objectives: &[Objective],
    s: &Settings,
    progress: &mut dyn Progress,
) -> Result<Vec<Visual>> {
    let per = batch_for(s.size);
    let parts = objectives.len().div_ceil(per);
    let mut out = Vec::with_capacity(objectives.len());
    for (part, chunk) in objectives.chunks(per).enumerate() {
        let mut run = Run::new(engine, chunk.to_vec(), None, s)?;
        for step in 0..s.steps {
            progress.check("feature visualisation")?;
            progress.update(part * s.steps + step, parts * s.steps, "optimisation steps");
            run.step(s.transformed(step))?;
        }
        out.extend(run.finish()?);
    }
    Ok(out)
}

/// `n` different images of one objective, pushed apart by Lucid's diversity term at `layer`
/// (the objective's own layer unless given) with `weight` ([`DIVERSITY_WEIGHT`] by default;
/// 0 gives `n` independent images, differently seeded).
pub fn visualize_diverse(
    engine: &Engine,
    objective: &Objective,
    n: usize,
    (layer, weight): (Option<LayerId>, f32),
    s: &Settings,
    progress: &mut dyn Progress,
) -> Result<Vec<Visual>> {
    let mut layers = Vec::new();
    objective.layers(&mut layers);
    let layer = layer.or(layers.first().copied()).ok_or_else(|| {
        Error::Input("diversity needs a layer: the objective reads none; give one".into())
    })?;
    if !(2..=batch_for(s.size)).contains(&n) {
        return Err(Error::Input(format!(
            "diversity takes 2 to {} images at {} pixels (they go through the model together)",
            batch_for(s.size),
            s.size
        )));
    }
    let mut run = Run::new(engine, vec![objective.clone(); n], Some((layer, weight)), s)?;
    for step in 0..s.steps {
        progress.check("feature visualisation")?;
        progress.update(step, s.steps, "optimisation steps");
        run.step(s.transformed(step))?;
    }
    run.finish()
}

/// One batch being optimised: an image (its spectrum, under Adam) per objective, each with its
/// own random stream (seeded by the settings' seed and the objective, and its place among
/// copies of the same objective), and the diversity term's layer and weight.
pub struct Run<'a> {
    engine: &'a Engine,
    objectives: Vec<Objective>,
    diversity: Option<(LayerId, f32)>,
    image: ImageParam,
    spectrum: Var,
    adam: candle_nn::AdamW,
    rngs: Vec<StdRng>,
    layers: Vec<LayerId>,
    logits: bool,
    norm: Normalise,
}

impl<'a> Run<'a> {
    pub fn new(
        engine: &'a Engine,
        objectives: Vec<Objective>,
        diversity: Option<(LayerId, f32)>,
        s: &Settings,
    ) -> Result<Self> {
        if !(8..=1024).contains(&s.size) {
            return Err(Error::Input(format!(
                "size {} is out of range (8 to 1024 pixels)",
                s.size
            )));
        }
        let dev = &engine.device;
        let image = ImageParam::new(s.size, is_grey(&engine.preprocess), dev)?;
        let mut rngs = Vec::with_capacity(objectives.len());
        for (j, o) in objectives.iter().enumerate() {
            let copy = objectives[..j].iter().filter(|p| *p == o).count() as u64;
            let key = o.key() ^ copy.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            rngs.push(StdRng::seed_from_u64(s.seed ^ key));
        }
        let spectrum = image.init(&mut rngs)?;
        let params = candle_nn::ParamsAdamW {
            lr: s.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let adam = candle_nn::AdamW::new(vec![spectrum.clone()], params)?;
        Ok(Self {
            layers: wanted(&objectives, diversity.map(|d| d.0)),
            logits: objectives.iter().any(Objective::needs_logits),
            norm: Normalise::new(&engine.preprocess, dev)?,
            engine,
            objectives,
            diversity,
            image,
            spectrum,
            adam,
            rngs,
        })
    }

    /// One Adam step up the objectives (and away from each other, with diversity), on the
    /// images through freshly drawn transforms or as they are.
    pub fn step(&mut self, transformed: bool) -> Result<()> {
        // The backward too on the awake pool, as the forward runs (`base::pool`).
        crate::base::pool::run_awake(|| self.step_here(transformed))
    }

    fn step_here(&mut self, transformed: bool) -> Result<()> {
        let pixels = self.image.pixels(self.spectrum.as_tensor())?;
        let seen = if transformed {
            transform(&pixels, &mut self.rngs)?
        } else {
            pixels
        };
        let x = self.norm.apply(&seen)?;
        let outs = run(self.engine, &x, self.layers.clone(), self.logits)?;
        let mut total = Tensor::zeros((), DType::F32, &self.engine.device)?;
        for (i, o) in self.objectives.iter().enumerate() {
            total = (total + o.value(i, &outs)?)?;
        }
        if let Some((layer, weight)) = self.diversity {
            let pairs = gram_pairs(outs.get(layer)?)?;
            total = (total - pairs.affine(weight as f64, 0.0)?)?;
        }
        Ok(self.adam.backward_step(&total.neg()?)?)
    }

    /// The images as they stand, measured.
    pub fn finish(self) -> Result<Vec<Visual>> {
        let pixels = self.image.pixels(self.spectrum.as_tensor())?.detach();
        let grey = self.image.channels == 1;
        finish(self.engine, &pixels, &self.objectives, grey)
    }
}

/// The optimised pixels as 8-bit images, what the model sees of those 8-bit images, and each
/// objective measured on that.
fn finish(
    engine: &Engine,
    pixels: &Tensor,
    objectives: &[Objective],
    grey: bool,
) -> Result<Vec<Visual>> {
    let (n, _, h, w) = pixels.dims4()?;
    let bytes: Vec<u8> = (pixels.to_dtype(DType::F32)? * 255.0)?
        .round()?
        .clamp(0f32, 255f32)?
        .permute((0, 2, 3, 1))?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let mut inputs = Vec::with_capacity(n);
    let mut rgbs = Vec::with_capacity(n);
    for plane in bytes.chunks(h * w * 3) {
        let img = image::RgbImage::from_raw(w as u32, h as u32, plane.to_vec())
            .ok_or_else(|| Error::Input("pixel buffer of the wrong size".into()))?;
        let chw = crate::io::preprocess::normalise(&img, &engine.preprocess);
        inputs.push(Tensor::from_vec(chw, (1, 3, h, w), &engine.device)?);
        rgbs.push(img);
    }
    let input = Tensor::cat(&inputs, 0)?;
    let values = measure(engine, &input, objectives)?;
    Ok(rgbs
        .into_iter()
        .zip(inputs)
        .zip(values)
        .map(|((rgb, input), objective)| Visual {
            rgb,
            grey,
            input,
            objective,
        })
        .collect())
}

/// The model's normalisation, `(p − mean) / std` per colour channel.
struct Normalise {
    mean: Tensor,
    std: Tensor,
}

impl Normalise {
    fn new(cfg: &PreprocessConfig, dev: &Device) -> Result<Self> {
        Ok(Self {
            mean: Tensor::from_slice(&cfg.mean, (1, 3, 1, 1), dev)?,
            std: Tensor::from_slice(&cfg.std, (1, 3, 1, 1), dev)?,
        })
    }

    fn apply(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(pixels.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?)
    }
}

/// Lucid's colour decorrelation: the square root of ImageNet's colour correlation matrix
/// (Lucid's `color_correlation_svd_sqrt`), scaled so that its largest column has unit norm.
const COLOR_CORRELATION_SQRT: [[f32; 3]; 3] =
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]];

/// Lucid's `fft_image` with `to_valid_rgb(decorrelate=True, sigmoid=True)`: the variables are
/// the real and imaginary parts of a half spectrum (`[B, ch, 2, S, S/2+1]`), scaled by
/// `√(S·S) / max(f, 1/S)` (f the frequency, decay power 1), inverse-transformed, divided by 4,
/// colour-decorrelated and squashed by a sigmoid.
struct ImageParam {
    size: usize,
    channels: usize,
    scale: Tensor,
    /// `cos` and `sin` of the inverse transform along the rows (`[S, S]`, with 1/S) and along
    /// the columns (`[K, S]`, the half spectrum's weights 1 or 2 and 1/S, transposed).
    cy: Tensor,
    sy: Tensor,
    cxt: Tensor,
    sxt: Tensor,
    colour: Tensor,
}

impl ImageParam {
    fn new(size: usize, grey: bool, dev: &Device) -> Result<Self> {
        let s = size;
        let k = s / 2 + 1;
        let freq = |i: usize| {
            // numpy's fftfreq: 0, 1, …, then the negative frequencies, over the length.
            let i = i as f64;
            let n = s as f64;
            if i < n.div_euclid(2.0) + (s % 2) as f64 {
                i / n
            } else {
                (i - n) / n
            }
        };
        let mut scale = vec![0f32; s * k];
        for y in 0..s {
            for x in 0..k {
                let f = (freq(y).powi(2) + (x as f64 / s as f64).powi(2)).sqrt();
                scale[y * k + x] = ((s as f64) / f.max(1.0 / s as f64)) as f32;
            }
        }
        let tau = std::f64::consts::TAU;
        let trig = |rows: usize, cols: usize, f: &dyn Fn(usize, usize) -> f64| {
            let v: Vec<f32> = (0..rows * cols)
                .map(|i| f(i / cols, i % cols) as f32)
                .collect();
            Tensor::from_vec(v, (rows, cols), dev)
        };
        let n = s as f64;
        let cy = trig(s, s, &|y, ky| (tau * (ky * y) as f64 / n).cos() / n)?;
        let sy = trig(s, s, &|y, ky| (tau * (ky * y) as f64 / n).sin() / n)?;
        // The half spectrum counts its inner columns twice (their mirror images are implied);
        // column 0 and, for an even size, column S/2 once.
        let weight = |kx: usize| {
            if kx == 0 || (s.is_multiple_of(2) && kx == s / 2) {
                1.0
            } else {
                2.0
            }
        };
        let cxt = trig(k, s, &|kx, x| {
            weight(kx) * (tau * (kx * x) as f64 / n).cos() / n
        })?;
        let sxt = trig(k, s, &|kx, x| {
            weight(kx) * (tau * (kx * x) as f64 / n).sin() / n
        })?;
        let max_norm = (0..3)
            .map(|c| {
                COLOR_CORRELATION_SQRT
                    .iter()
                    .map(|r| r[c] * r[c])
                    .sum::<f32>()
                    .sqrt()
            })
            .fold(0f32, f32::max);
        let m: Vec<f32> = COLOR_CORRELATION_SQRT
            .iter()
            .flatten()
            .map(|v| v / max_norm)
            .collect();
        Ok(Self {
            size: s,
            channels: if grey { 1 } else { 3 },
            scale: Tensor::from_vec(scale, (s, k), dev)?,
            cy,
            sy,
            cxt,
            sxt,
            colour: Tensor::from_vec(m, (3, 3), dev)?,
        })
    }

    /// Lucid's initial spectrum: normal with deviation 0.01, each image from its own stream.
    fn init(&self, rngs: &mut [StdRng]) -> Result<Var> {
        let per = self.channels * 2 * self.size * (self.size / 2 + 1);
        let mut v = Vec::with_capacity(rngs.len() * per);
        for rng in rngs.iter_mut() {
            v.extend(crate::model::plan::normal(rng, per, 0.01));
        }
        let shape = (rngs.len(), self.channels, 2, self.size, self.size / 2 + 1);
        let dev = self.scale.device();
        Ok(Var::from_tensor(&Tensor::from_vec(v, shape, dev)?)?)
    }

    /// numpy's `irfft2` of the scaled spectrum (`[B, ch, 2, S, K]` → `[B, ch, S, S]`).
    fn inverse(&self, spectrum: &Tensor) -> Result<Tensor> {
        let re = spectrum.narrow(2, 0, 1)?.squeeze(2)?;
        let im = spectrum.narrow(2, 1, 1)?.squeeze(2)?;
        let re = re.broadcast_mul(&self.scale)?;
        let im = im.broadcast_mul(&self.scale)?;
        // Along the rows, a complex inverse transform; along the columns, the real one.
        let yre = (self.cy.broadcast_matmul(&re)? - self.sy.broadcast_matmul(&im)?)?;
        let yim = (self.sy.broadcast_matmul(&re)? + self.cy.broadcast_matmul(&im)?)?;
        Ok((yre.broadcast_matmul(&self.cxt)? - yim.broadcast_matmul(&self.sxt)?)?)
    }

    /// The pixels (`[B, 3, S, S]`, in (0, 1)) a spectrum stands for.
    fn pixels(&self, spectrum: &Tensor) -> Result<Tensor> {
        let img = (self.inverse(spectrum)? / 4.0)?;
        let (b, c, h, w) = img.dims4()?;
        let img = if c == 3 {
            self.colour
                .broadcast_matmul(&img.reshape((b, 3, h * w))?)?
                .reshape((b, 3, h, w))?
        } else {
            img
        };
        let pixels = (img.neg()?.exp()? + 1.0)?.recip()?;
        Ok(if c == 3 {
            pixels
        } else {
            pixels.broadcast_as((b, 3, h, w))?.contiguous()?
        })
    }
}

/// Lucid's robustness transforms as drawn for one image at one step, for a 224-pixel input
/// (scaled to the image's size): pad 12 (reflect), jitter 8, scale, rotate, jitter 4, then
/// resampled (bilinear) to the image's size so the model sees its own input size.
struct Draw {
    shift1: (usize, usize),
    scale: f64,
    degrees: f64,
    shift2: (usize, usize),
}

const SCALES: [f64; 5] = [1.0, 0.975, 1.025, 0.95, 1.05];

/// `(pad, jitter 1, jitter 2)` in pixels at `size` (Lucid's 12, 8, 4 at 224).
fn amounts(size: usize) -> (usize, usize, usize) {
    let at = |v: f64| (v * size as f64 / 224.0).round() as usize;
    (at(12.0), at(8.0), at(4.0))
}

impl Draw {
    fn new(rng: &mut StdRng, size: usize) -> Draw {
        let (_, j1, j2) = amounts(size);
        Draw {
            shift1: (rng.random_range(0..=j1), rng.random_range(0..=j1)),
            scale: SCALES[rng.random_range(0..SCALES.len())],
            degrees: rng.random_range(-5i32..=5) as f64,
            shift2: (rng.random_range(0..=j2), rng.random_range(0..=j2)),
        }
    }

    /// Where each output pixel (row-major) samples the image, in pixel-index coordinates
    /// (`(y, x)`, pixel centres at integers): the five transforms composed into one map.
    fn sources(&self, size: usize) -> Vec<(f64, f64)> {
        let (pad, j1, j2) = amounts(size);
        let s = size as f64;
        let l1 = s + 2.0 * pad as f64 - j1 as f64;
        let ls = l1 * self.scale;
        let l2 = ls - j2 as f64;
        let (sin, cos) = self.degrees.to_radians().sin_cos();
        let mut out = Vec::with_capacity(size * size);
        for u in 0..size {
            for v in 0..size {
                // Output → the second crop → the scaled, rotated image around its centre.
                let ty = (u as f64 + 0.5) * l2 / s + self.shift2.0 as f64 - ls / 2.0;
                let tx = (v as f64 + 0.5) * l2 / s + self.shift2.1 as f64 - ls / 2.0;
                // Undo the rotation and the scale → the first crop → the padded image.
                let qy = (cos * ty + sin * tx) / self.scale + l1 / 2.0 + self.shift1.0 as f64;
                let qx = (-sin * ty + cos * tx) / self.scale + l1 / 2.0 + self.shift1.1 as f64;
                out.push((qy - pad as f64 - 0.5, qx - pad as f64 - 0.5));
            }
        }
        out
    }
}

/// numpy's "reflect" padding for an index (the edge pixel is not repeated).
fn reflect(i: i64, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as i64 - 1);
    let r = i.rem_euclid(period);
    (if r >= n as i64 { period - r } else { r }) as usize
}

/// Bilinear resampling as four gathers and weights: `out[p] = Σ_k w_k[p] · img[idx_k[p]]`.
fn gathers(sources: &[(f64, f64)], size: usize, dev: &Device) -> Result<[(Tensor, Tensor); 4]> {
    let mut idx = [(); 4].map(|_| Vec::with_capacity(sources.len()));
    let mut wts = [(); 4].map(|_| Vec::with_capacity(sources.len()));
    for &(y, x) in sources {
        let (y0, x0) = (y.floor(), x.floor());
        let (fy, fx) = (y - y0, x - x0);
        let corners = [
            (0, 0, (1.0 - fy) * (1.0 - fx)),
            (0, 1, (1.0 - fy) * fx),
            (1, 0, fy * (1.0 - fx)),
            (1, 1, fy * fx),
        ];
        for (k, (dy, dx, wt)) in corners.into_iter().enumerate() {
            let ry = reflect(y0 as i64 + dy, size);
            let rx = reflect(x0 as i64 + dx, size);
            idx[k].push((ry * size + rx) as u32);
            wts[k].push(wt as f32);
        }
    }
    let n = sources.len();
    let mut out = Vec::with_capacity(4);
    for (i, w) in idx.into_iter().zip(wts) {
        out.push((
            Tensor::from_vec(i, n, dev)?,
            Tensor::from_vec(w, (1, n), dev)?,
        ));
    }
    out.try_into()
        .map_err(|_| Error::Input("four corners expected".into()))
}

/// Each image of `pixels` (`[B, 3, S, S]`) through its own freshly drawn transforms.
fn transform(pixels: &Tensor, rngs: &mut [StdRng]) -> Result<Tensor> {
    let (b, c, h, w) = pixels.dims4()?;
    let mut out = Vec::with_capacity(b);
    for (i, rng) in rngs.iter_mut().enumerate().take(b) {
        let draw = Draw::new(rng, h);
        let flat = pixels.narrow(0, i, 1)?.reshape((c, h * w))?;
        let mut acc: Option<Tensor> = None;
        for (idx, wt) in gathers(&draw.sources(h), h, pixels.device())? {
            let part = flat.index_select(&idx, 1)?.broadcast_mul(&wt)?;
            acc = Some(match acc {
                Some(a) => (a + part)?,
                None => part,
            });
        }
        let img = acc.ok_or_else(|| Error::Input("no corners".into()))?;
        out.push(img.reshape((1, c, h, w))?);
    }
    Ok(Tensor::cat(&out, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A single frequency in the spectrum becomes the wave numpy's `irfft2` makes of it: a real
    /// coefficient 1 a cosine, an imaginary one minus a sine (inner columns count twice).
    #[test]
    fn the_spectrum_inverts_like_irfft2() {
        let dev = Device::Cpu;
        let s = 8;
        let p = ImageParam::new(s, true, &dev).unwrap();
        let k = s / 2 + 1;
        let (ky, kx) = (1usize, 2usize);
        let scale = p.scale.to_vec2::<f32>().unwrap()[ky][kx];
        for part in 0..2 {
            let mut v = vec![0f32; 2 * s * k];
            // Undo the 1/f scale so that the coefficient is exactly 1.
            v[part * s * k + ky * k + kx] = 1.0 / scale;
            let spec = Tensor::from_vec(v, (1, 1, 2, s, k), &dev).unwrap();
            let img: Vec<f32> = p
                .inverse(&spec)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for y in 0..s {
                for x in 0..s {
                    let phase =
                        std::f64::consts::TAU * ((ky * y) as f64 + (kx * x) as f64) / s as f64;
                    let wave = if part == 0 { phase.cos() } else { -phase.sin() };
                    let want = 2.0 * wave / (s * s) as f64;
                    assert!(
                        (img[y * s + x] as f64 - want).abs() < 1e-6,
                        "{part}: ({y}, {x})"
                    );
                }
            }
        }
    }

    #[test]
    fn reflect_is_numpys() {
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    /// With no shift, scale or rotation the map only pads and resizes: the centre pixel of an
    /// odd image samples its own centre.
    #[test]
    fn the_identity_draw_keeps_the_centre() {
        let d = Draw {
            shift1: (0, 0),
            scale: 1.0,
            degrees: 0.0,
            shift2: (0, 0),
        };
        let size = 224;
        let (pad, j1, j2) = amounts(size);
        assert_eq!((pad, j1, j2), (12, 8, 4));
        let src = d.sources(size);
        // The padded, cropped image is 228 wide; its centre (114) is the image's 112 − 0.5 + 2.
        let (y, x) = src[112 * size + 112];
        let l2 = 224.0 + 24.0 - 8.0 - 4.0;
        let want = 112.5 * l2 / 224.0 - 12.0 - 0.5;
        assert!(
            (y - want).abs() < 1e-9 && (x - want).abs() < 1e-9,
            "{y} {x} {want}"
        );
    }
}

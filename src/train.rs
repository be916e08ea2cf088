//! Training a small ConvNeXt on Fashion-MNIST with the paper's recipe, scaled down: AdamW,
//! linear warm-up then cosine decay, weight decay (not on norms, biases or gamma), label
//! smoothing, stochastic depth, layer scale initialised at 1e-6, an EMA of the weights (the
//! EMA is what gets saved), and light augmentation (horizontal flip, ±2 px shifts).
use crate::base::error::{Error, Result};
use crate::base::pool::run_awake;
use crate::io::preprocess::{Interpolation, PreprocessConfig};
use crate::model::layers::BuildOptions;
use crate::model::{Config, Network, Plan, Version};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";
pub use crate::io::labels::FASHION_LABELS;
/// Fashion-MNIST pixel mean and std (on [0, 1]), the same for the three replicated channels.
pub const FASHION_MEAN: f32 = 0.2860;
pub const FASHION_STD: f32 = 0.3530;
/// The shipped model's input side: Fashion-MNIST's 28×28 resized to 64×64, so that the stage
/// maps are 16, 8, 4 and 2 pixels wide (at 32×32, the last stage and the evidence maps were a
/// single pixel).
pub const INPUT: usize = 64;

/// A set of grey images (`n × rows × cols` bytes) and their labels.
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.images[i * n..(i + 1) * n]
    }
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("bad gzip: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// Reads an IDX image file (magic 0x803) and its label file (magic 0x801), gzipped or not.
pub fn read_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    let im = read_maybe_gz(images)?;
    let lb = read_maybe_gz(labels)?;
    if im.len() < 16 || be32(&im, 0) != 0x803 {
        return Err(Error::file(
            images,
            "not an IDX image file (magic 0x00000803)",
        ));
    }
    if lb.len() < 8 || be32(&lb, 0) != 0x801 {
        return Err(Error::file(
            labels,
            "not an IDX label file (magic 0x00000801)",
        ));
    }
    let (n, rows, cols) = (be32(&im, 4), be32(&im, 8), be32(&im, 12));
    if im.len() != 16 + n * rows * cols || lb.len() != 8 + n || be32(&lb, 4) != n {
        return Err(Error::file(
            images,
            "IDX sizes do not match their headers or their labels",
        ));
    }
    Ok(Dataset {
        images: im[16..].to_vec(),
        labels: lb[8..].to_vec(),
        rows,
        cols,
    })
}

/// `split` is `train` or `t10k`.
pub fn fashion_mnist(dir: &Path, split: &str) -> Result<Dataset> {
    let pick = |stem: &str| {
        let gz = dir.join(format!("{stem}.gz"));
        if gz.exists() {
            gz
        } else {
            dir.join(stem)
        }
    };
    read_idx(
        &pick(&format!("{split}-images-idx3-ubyte")),
        &pick(&format!("{split}-labels-idx1-ubyte")),
    )
}

/// The preprocessing of a Fashion-MNIST model with `side`×`side` inputs (the shipped model's
/// is [`INPUT`]); users' images get the same.
pub fn preprocess_config(side: usize) -> PreprocessConfig {
    PreprocessConfig {
        input_size: (side, side),
        crop_pct: 1.0,
        interpolation: Interpolation::Bicubic,
        mean: [FASHION_MEAN; 3],
        std: [FASHION_STD; 3],
    }
}

/// Images resized and normalised for one model: one grey `side`×`side` plane each (replicated
/// to RGB at batch time).
pub struct Prepared {
    pub pixels: Vec<f32>,
    pub side: usize,
    /// The value of a black pixel once normalised: what shifted-in borders are filled with.
    pub background: f32,
}

/// Every image resized exactly as `preprocess` resizes a user's image with `cfg` (square input,
/// crop 1, the first channel's mean and std: Fashion-MNIST is grey), in parallel.
pub fn prepare_dataset(ds: &Dataset, cfg: &PreprocessConfig) -> Result<Prepared> {
    let side = cfg.input_size.0;
    if cfg.input_size.1 != side {
        return Err(Error::Input(format!(
            "Fashion-MNIST models take square inputs, this one {:?}",
            cfg.input_size
        )));
    }
    let (mean, std) = (cfg.mean[0], cfg.std[0]);
    // Written in place: at 64×64 the training set alone is about 1 GB of f32.
    let mut pixels = vec![0f32; ds.len() * side * side];
    pixels
        .par_chunks_mut((side * side).max(1))
        .enumerate()
        .try_for_each(|(i, plane)| -> Result<()> {
            // `read_idx` checked that every image holds rows × cols bytes.
            let g =
                image::GrayImage::from_raw(ds.cols as u32, ds.rows as u32, ds.image(i).to_vec())
                    .ok_or_else(|| Error::Input(format!("image {i}: short data")))?;
            let img = image::DynamicImage::ImageLuma8(g);
            let crop = crate::io::preprocess::resize_and_crop(&img, cfg)?;
            for (o, p) in plane.iter_mut().zip(crop.pixels()) {
                *o = (p[0] as f32 / 255.0 - mean) / std;
            }
            Ok(())
        })?;
    Ok(Prepared {
        pixels,
        side,
        background: -mean / std,
    })
}

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub config: Config,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    pub label_smoothing: f64,
    pub drop_path: f64,
    pub ema_decay: f64,
    pub seed: u64,
    /// Input side in pixels (the data must be prepared at this size).
    pub input: usize,
    /// Stop after this many steps (tests); `None` runs every epoch.
    pub max_steps: Option<usize>,
    /// Use only the first N training images (tests).
    pub limit: Option<usize>,
}

impl TrainConfig {
    pub fn fashion_default() -> Self {
        Self {
            config: fashion_config(),
            epochs: 20,
            batch: 128,
            lr: 2e-3,
            min_lr: 1e-5,
            weight_decay: 0.05,
            warmup_epochs: 1.0,
            label_smoothing: 0.1,
            drop_path: 0.05,
            ema_decay: 0.999,
            seed: 0,
            input: INPUT,
            max_steps: None,
            limit: None,
        }
    }
}

/// The shipped model's architecture: ConvNeXt V1 with depths 1-1-3-1, widths 32-64-128-256.
pub fn fashion_config() -> Config {
    Config {
        version: Version::V1,
        depths: vec![1, 1, 3, 1],
        dims: vec![32, 64, 128, 256],
        num_classes: 10,
        ln_eps: 1e-6,
        head_ln_eps: 1e-6,
        layer_scale: true,
        kernel_size: 7,
    }
}

/// A batch of `idx` images as `[B, 3, side, side]`, with augmentation when `rng` is given:
/// a horizontal flip and a shift of up to 2 of Fashion-MNIST's 28 pixels.
pub fn batch_tensor(
    data: &Prepared,
    idx: &[usize],
    rng: Option<&mut rand::rngs::StdRng>,
    dev: &Device,
) -> Result<Tensor> {
    let side = data.side as i32;
    let shift = (side / 14).max(1);
    let n = data.side * data.side;
    let mut out = vec![0f32; idx.len() * 3 * n];
    let mut rng = rng;
    for (b, &i) in idx.iter().enumerate() {
        let src = &data.pixels[i * n..(i + 1) * n];
        let (flip, dy, dx) = match rng.as_deref_mut() {
            Some(r) => (
                r.random_bool(0.5),
                r.random_range(-shift..=shift),
                r.random_range(-shift..=shift),
            ),
            None => (false, 0, 0),
        };
        let plane = &mut out[b * 3 * n..b * 3 * n + n];
        for y in 0..side {
            for x in 0..side {
                let sy = y - dy;
                let sx0 = x - dx;
                let sx = if flip { side - 1 - sx0 } else { sx0 };
                plane[(y * side + x) as usize] =
                    if (0..side).contains(&sy) && (0..side).contains(&sx) {
                        src[(sy * side + sx) as usize]
                    } else {
                        data.background
                    };
            }
        }
        let (first, rest) = out[b * 3 * n..(b + 1) * 3 * n].split_at_mut(n);
        rest[..n].copy_from_slice(first);
        rest[n..].copy_from_slice(first);
    }
    Ok(Tensor::from_vec(
        out,
        (idx.len(), 3, data.side, data.side),
        dev,
    )?)
}

fn smoothed_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let smooth = logp.mean(D::Minus1)?.neg()?;
    ((nll * (1.0 - eps))? + (smooth * eps)?)?.mean_all()
}

pub struct Trained {
    pub varmap: VarMap,
    /// EMA of every parameter, by timm name.
    pub ema: HashMap<String, Tensor>,
    pub losses: Vec<f32>,
}

/// Trains on `data` (prepared with [`prepare_dataset`] at `cfg.input`).
pub fn train(
    cfg: &TrainConfig,
    data: &Prepared,
    labels: &[u8],
    mut progress: impl FnMut(usize, usize, f32, f64),
) -> Result<Trained> {
    let mut run = Run::new(cfg, data, false)?;
    let n = cfg.limit.unwrap_or(labels.len()).min(labels.len());
    let schedule = Schedule::new(cfg, n);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut losses = Vec::new();
    'outer: for _epoch in 0..cfg.epochs.max(1) {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        for chunk in order.chunks(cfg.batch) {
            let step = losses.len();
            if step >= schedule.total {
                break 'outer;
            }
            let lr = schedule.lr(step);
            let l = run.step(data, labels, chunk, lr, &mut rng)?;
            losses.push(l);
            progress(step + 1, schedule.total, l, lr);
        }
    }
    let ema = run.named.into_iter().map(|(k, _)| k).zip(run.ema).collect();
    Ok(Trained {
        varmap: run.varmap,
        ema,
        losses,
    })
}

/// A model being trained: its variables, optimiser and EMA.
struct Run {
    cfg: TrainConfig,
    varmap: VarMap,
    named: Vec<(String, Var)>,
    model: Network,
    opt: Optimisers,
    /// The EMA of every variable, in the order of `named`.
    ema: Vec<Tensor>,
    steps: usize,
}

impl Run {
    fn new(cfg: &TrainConfig, data: &Prepared, generic_ops: bool) -> Result<Self> {
        if data.side != cfg.input {
            return Err(Error::Input(format!(
                "training at {0}×{0} on images prepared at {1}×{1}",
                cfg.input, data.side
            )));
        }
        let (varmap, named) = init_vars(cfg)?;
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let options = BuildOptions {
            differentiable: true,
            generic_ops,
            ..Default::default()
        };
        let model = Network::new_with(vb, &Plan::convnext(&cfg.config), options)?;
        let opt = Optimisers::new(cfg, &named)?;
        // The EMA starts as a copy of the initial weights.
        let ema = named
            .iter()
            .map(|(_, v)| v.as_tensor().detach().copy())
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            varmap,
            named,
            model,
            opt,
            ema,
            steps: 0,
        })
    }

    /// One optimiser step on the images `chunk` at learning rate `lr`, then the EMA's; the loss.
    fn step(
        &mut self,
        data: &Prepared,
        labels: &[u8],
        chunk: &[usize],
        lr: f64,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<f32> {
        let (cfg, dev) = (&self.cfg, Device::Cpu);
        self.opt.set_learning_rate(lr);
        let x = batch_tensor(data, chunk, Some(&mut *rng), &dev)?;
        let targets: Vec<u32> = chunk.iter().map(|&i| labels[i] as u32).collect();
        let y = Tensor::from_vec(targets, chunk.len(), &dev)?;
        let masks = drop_path_masks(cfg, chunk.len(), rng, &dev)?;
        let (model, opt) = (&self.model, &mut self.opt);
        // The backward and the update too on the awake pool, as the forward runs.
        let loss = run_awake(|| -> Result<Tensor> {
            let logits = model.forward_train(&x, &masks)?;
            let loss = smoothed_cross_entropy(&logits, &y, cfg.label_smoothing)?;
            opt.step(&loss.backward()?)?;
            Ok(loss)
        })?;
        // EMA with a warm-up of its own, so that short runs are not all initialisation.
        let s = self.steps as f64;
        let d = cfg.ema_decay.min((1.0 + s) / (10.0 + s));
        for (e, (_, v)) in self.ema.iter_mut().zip(&self.named) {
            // Detached: the EMA must not drag the autograd graph of every step along.
            *e = ((&*e * d)? + (v.as_tensor().detach() * (1.0 - d))?)?;
        }
        self.steps += 1;
        Ok(loss.to_scalar()?)
    }
}

/// Seconds per training step, `steps` steps from the same initial weights, with the fused
/// kernels or with candle's generic ops (`generic_ops`, the reference of `train --bench`).
pub fn time_steps(
    cfg: &TrainConfig,
    data: &Prepared,
    labels: &[u8],
    steps: usize,
    generic_ops: bool,
) -> Result<Vec<f64>> {
    let n = labels
        .len()
        .min(data.pixels.len() / (data.side * data.side).max(1));
    if n == 0 {
        return Err(Error::Input("no training images to time steps on".into()));
    }
    let mut run = Run::new(cfg, data, generic_ops)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut times = Vec::with_capacity(steps);
    for s in 0..steps {
        let chunk: Vec<usize> = (0..cfg.batch).map(|i| (s * cfg.batch + i) % n).collect();
        let t = std::time::Instant::now();
        run.step(data, labels, &chunk, cfg.lr, &mut rng)?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// timm-style initial weights as trainable variables, and the variables by name (sorted, so
/// that the optimiser sees them in the same order on every run).
fn init_vars(cfg: &TrainConfig) -> Result<(VarMap, Vec<(String, Var)>)> {
    let varmap = VarMap::new();
    let mut vars = crate::base::sync::lock(varmap.data());
    for (name, t) in Plan::convnext(&cfg.config).random_weights(cfg.seed)? {
        vars.insert(name, Var::from_tensor(&t)?);
    }
    let mut named: Vec<(String, Var)> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    drop(vars);
    Ok((varmap, named))
}

/// AdamW with weight decay on matrices and kernels, and without it on norms, biases and gamma.
struct Optimisers {
    decay: candle_nn::AdamW,
    plain: candle_nn::AdamW,
}

impl Optimisers {
    fn new(cfg: &TrainConfig, named: &[(String, Var)]) -> Result<Self> {
        let (decay, plain): (Vec<_>, Vec<_>) = named.iter().partition(|(_, v)| v.rank() >= 2);
        let make = |vars: Vec<&(String, Var)>, wd| {
            let params = candle_nn::ParamsAdamW {
                lr: cfg.lr,
                weight_decay: wd,
                ..Default::default()
            };
            candle_nn::AdamW::new(vars.into_iter().map(|(_, v)| v.clone()).collect(), params)
        };
        Ok(Self {
            decay: make(decay, cfg.weight_decay)?,
            plain: make(plain, 0.0)?,
        })
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.decay.set_learning_rate(lr);
        self.plain.set_learning_rate(lr);
    }

    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        self.decay.step(grads)?;
        self.plain.step(grads)?;
        Ok(())
    }
}

/// Linear warm-up, then cosine decay to `min_lr`, over `total` steps.
struct Schedule {
    total: usize,
    warmup: usize,
    lr: f64,
    min_lr: f64,
}

impl Schedule {
    fn new(cfg: &TrainConfig, images: usize) -> Self {
        let steps_per_epoch = images.div_ceil(cfg.batch);
        let total = cfg
            .max_steps
            .unwrap_or(steps_per_epoch * cfg.epochs)
            .min(steps_per_epoch * cfg.epochs.max(1));
        let warmup = ((cfg.warmup_epochs * steps_per_epoch as f64) as usize)
            .min(total / 2)
            .max(1);
        Self {
            total,
            warmup,
            lr: cfg.lr,
            min_lr: cfg.min_lr,
        }
    }

    fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            self.lr * (step + 1) as f64 / self.warmup as f64
        } else {
            let t = (step - self.warmup) as f64 / (self.total - self.warmup).max(1) as f64;
            self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// Stochastic depth: per block a `[B,1,1,1]` keep mask scaled by 1/keep-probability, the drop
/// rate growing linearly with depth as in the paper.
fn drop_path_masks(
    cfg: &TrainConfig,
    batch: usize,
    rng: &mut rand::rngs::StdRng,
    dev: &Device,
) -> Result<Vec<Vec<Tensor>>> {
    let depth_total = cfg.config.total_blocks().max(1);
    let mut k = 0;
    let mut masks = Vec::with_capacity(cfg.config.depths.len());
    for &d in &cfg.config.depths {
        let mut stage = Vec::with_capacity(d);
        for _ in 0..d {
            let rate = cfg.drop_path * k as f64 / (depth_total - 1).max(1) as f64;
            k += 1;
            let keep = 1.0 - rate;
            let m: Vec<f32> = (0..batch)
                .map(|_| {
                    if rng.random_bool(keep) {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            stage.push(Tensor::from_vec(m, (batch, 1, 1, 1), dev)?);
        }
        masks.push(stage);
    }
    Ok(masks)
}

/// Writes timm-named weights and a timm `pretrained_cfg`-style `config.json` beside them
/// (`X.safetensors` + `X.json`).
pub fn save(
    tensors: &HashMap<String, Tensor>,
    cfg: &Config,
    pre: &PreprocessConfig,
    out: &Path,
    extra: serde_json::Value,
) -> Result<PathBuf> {
    candle_core::safetensors::save(tensors, out).map_err(|e| Error::file(out, e))?;
    let json = serde_json::json!({
        "architecture": "convnext_fashion",
        "num_classes": cfg.num_classes,
        "num_features": cfg.dims.last(),
        "model_args": {"depths": cfg.depths, "dims": cfg.dims, "ls_init_value": 1e-6},
        "label_names": FASHION_LABELS,
        "pretrained_cfg": {
            "input_size": [3, pre.input_size.0, pre.input_size.1],
            "crop_pct": pre.crop_pct,
            "interpolation": "bicubic",
            "mean": pre.mean,
            "std": pre.std,
            "num_classes": cfg.num_classes,
            "label_names": FASHION_LABELS,
        },
        "training": extra,
        "model_card": {
            "dataset": "Fashion-MNIST (Zalando Research, MIT licence): 60,000 training images",
            "domain": "28×28 grey images of clothing (Fashion-MNIST)",
            "grey": true,
            "top1": extra.get("test_top1_ema"),
            "evaluated_on": "the 10,000 Fashion-MNIST test images",
            "trained_by": "this project: convnext-explorer train (see weights/README.md)",
        },
    });
    let jp = out.with_extension("json");
    std::fs::write(&jp, serde_json::to_string_pretty(&json).unwrap_or_default())
        .map_err(|e| Error::file(&jp, e))?;
    Ok(jp)
}

/// Top-1 accuracy of a model on images prepared for it.
pub fn accuracy(model: &Network, data: &Prepared, labels: &[u8], batch: usize) -> Result<f64> {
    let dev = model.device().clone();
    let mut correct = 0usize;
    let idx: Vec<usize> = (0..labels.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let x = batch_tensor(data, chunk, None, &dev)?;
        let logits = model.forward(&x)?;
        if !crate::model::observer::all_finite(&logits)? {
            return Err(Error::NonFinite("the logits".into()));
        }
        let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        correct += chunk
            .iter()
            .zip(pred)
            .filter(|(&i, p)| labels[i] as u32 == *p)
            .count();
    }
    Ok(correct as f64 / labels.len().max(1) as f64)
}

/// A model from a tensor map (for evaluating the EMA without a round trip through disk).
pub fn model_from(tensors: &HashMap<String, Tensor>, cfg: &Config) -> Result<Network> {
    let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
    Ok(Network::new(vb, &Plan::convnext(cfg))?)
}

//! Layer identities and observers: how a forward pass reports what each named layer produced.
//!
//! `ConvNeXt::forward_observed` calls `enter(id)` before and `layer(id, out)` after every named
//! layer, containers (stem, stage, block, head) included. Plain `forward` passes [`NoObserver`],
//! whose calls compile away.
use candle_core::{Result, Tensor};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Parts of a block. ConvNeXt's are named as timm names them; the other block types of the
/// modernization roadmap number their convolutions, norms and activations in order (`conv1`,
/// `norm1`, `act1`, …) as torchvision's ResNet does, with the projection shortcut under
/// `shortcut`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    ConvDw,
    Norm,
    Fc1,
    Act,
    Grn,
    Fc2,
    Gamma,
    /// The residual add that ends the block.
    Add,
    /// `conv1`, `conv2`, … (numbered from 1).
    Conv(u8),
    NormN(u8),
    ActN(u8),
    ShortcutConv,
    ShortcutNorm,
}

impl Part {
    pub fn name(self) -> String {
        match self {
            Part::ConvDw => "conv_dw".into(),
            Part::Norm => "norm".into(),
            Part::Fc1 => "mlp.fc1".into(),
            Part::Act => "mlp.act".into(),
            Part::Grn => "mlp.grn".into(),
            Part::Fc2 => "mlp.fc2".into(),
            Part::Gamma => "gamma".into(),
            Part::Add => "add".into(),
            Part::Conv(i) => format!("conv{i}"),
            Part::NormN(i) => format!("norm{i}"),
            Part::ActN(i) => format!("act{i}"),
            Part::ShortcutConv => "shortcut.0".into(),
            Part::ShortcutNorm => "shortcut.1".into(),
        }
    }
}

/// A named layer. Names follow timm's parameter names (`stages.2.blocks.5.conv_dw`) so what the
/// user sees matches the checkpoint and timm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerId {
    Stem,
    /// `stem.0`, `stem.1`, …: the stem's layers in order.
    StemPart(u8),
    Stage(usize),
    Downsample(usize),
    /// `stages.S.downsample.0`, `.1`: the layers between stages.
    DownsamplePart(usize, u8),
    Block(usize, usize),
    BlockPart(usize, usize, Part),
    Head,
    HeadPool,
    HeadNorm,
    HeadFc,
}

impl LayerId {
    pub fn name(&self) -> String {
        match *self {
            LayerId::Stem => "stem".into(),
            LayerId::StemPart(i) => format!("stem.{i}"),
            LayerId::Stage(s) => format!("stages.{s}"),
            LayerId::Downsample(s) => format!("stages.{s}.downsample"),
            LayerId::DownsamplePart(s, i) => format!("stages.{s}.downsample.{i}"),
            LayerId::Block(s, b) => format!("stages.{s}.blocks.{b}"),
            LayerId::BlockPart(s, b, p) => format!("stages.{s}.blocks.{b}.{}", p.name()),
            LayerId::Head => "head".into(),
            LayerId::HeadPool => "head.global_pool".into(),
            LayerId::HeadNorm => "head.norm".into(),
            LayerId::HeadFc => "head.fc".into(),
        }
    }

    /// Containers hold other layers; leaves do the work.
    pub fn is_container(&self) -> bool {
        matches!(
            self,
            LayerId::Stem
                | LayerId::Stage(_)
                | LayerId::Downsample(_)
                | LayerId::Block(..)
                | LayerId::Head
        )
    }

    /// The stage a layer belongs to (the stem is reported as `None`, as is the head).
    pub fn stage(&self) -> Option<usize> {
        match *self {
            LayerId::Stage(s)
            | LayerId::Downsample(s)
            | LayerId::DownsamplePart(s, _)
            | LayerId::Block(s, _)
            | LayerId::BlockPart(s, _, _) => Some(s),
            _ => None,
        }
    }

    /// Activations of this layer are 4-D channels-last inside the model.
    pub fn is_spatial(&self) -> bool {
        !matches!(
            self,
            LayerId::Head | LayerId::HeadPool | LayerId::HeadNorm | LayerId::HeadFc
        )
    }
}

impl std::fmt::Display for LayerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Sees each named layer of a forward pass. Spatial outputs arrive channels-last
/// (`[N, H, W, C]`, the model's working layout); use [`to_nchw`] to present them.
pub trait Observer {
    fn enter(&mut self, _id: LayerId) -> Result<()> {
        Ok(())
    }
    fn layer(&mut self, _id: LayerId, _out: &Tensor) -> Result<()> {
        Ok(())
    }
    /// Whether this observer needs every named layer reported one by one. One that does not
    /// lets the model fuse neighbouring layers (fc1's bias into the GELU).
    fn sees_outputs(&self) -> bool {
        true
    }
    /// A tensor to flow on in place of a layer's output (asked right after `layer`): the
    /// gradient path puts a variable there to learn the gradient at that layer.
    fn substitute(&mut self, _id: LayerId, _out: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// Reports a layer's output to `obs` and returns what flows on (the output, or the observer's
/// substitute for it).
pub fn report<O: Observer + ?Sized>(obs: &mut O, id: LayerId, out: Tensor) -> Result<Tensor> {
    obs.layer(id, &out)?;
    Ok(obs.substitute(id, &out)?.unwrap_or(out))
}

/// Observes nothing: the plain forward.
pub struct NoObserver;
impl Observer for NoObserver {
    fn sees_outputs(&self) -> bool {
        false
    }
}

/// Channels-last `[N,H,W,C]` to PyTorch's `[N,C,H,W]` (contiguous); other ranks unchanged.
pub fn to_nchw(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 4 {
        t.permute((0, 3, 1, 2))?.contiguous()
    } else {
        Ok(t.clone())
    }
}

/// Wall time per layer. The device is synchronised before each clock reading, or GPU times
/// would measure only the kernel launches.
pub struct TimingObserver {
    device: candle_core::Device,
    stack: Vec<(LayerId, Instant)>,
    pub times: Vec<(LayerId, Duration)>,
}

impl TimingObserver {
    pub fn new(device: &candle_core::Device) -> Self {
        Self {
            device: device.clone(),
            stack: Vec::with_capacity(8),
            times: Vec::with_capacity(256),
        }
    }

    pub fn as_map(&self) -> HashMap<LayerId, Duration> {
        self.times.iter().copied().collect()
    }
}

impl Observer for TimingObserver {
    fn enter(&mut self, id: LayerId) -> Result<()> {
        if !self.device.is_cpu() {
            self.device.synchronize()?;
        }
        self.stack.push((id, Instant::now()));
        Ok(())
    }
    fn layer(&mut self, id: LayerId, _out: &Tensor) -> Result<()> {
        if !self.device.is_cpu() {
            self.device.synchronize()?;
        }
        let now = Instant::now();
        if let Some((top, start)) = self.stack.pop() {
            debug_assert_eq!(top, id);
            self.times.push((id, now - start));
        }
        Ok(())
    }
}

/// Which outputs a [`CaptureObserver`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureLevel {
    /// The stem and each stage's output.
    Stages,
    /// The above and every block's output.
    Blocks,
    /// Every named layer.
    All,
}

/// Keeps layer outputs (channels-last, as the model made them: converting costs a copy that a
/// viewer only pays for the layer it shows).
pub struct CaptureObserver {
    pub level: CaptureLevel,
    pub outputs: Vec<(LayerId, Tensor)>,
}

impl CaptureObserver {
    pub fn new(level: CaptureLevel) -> Self {
        Self {
            level,
            outputs: Vec::new(),
        }
    }

    fn wants(&self, id: LayerId) -> bool {
        match self.level {
            CaptureLevel::All => true,
            CaptureLevel::Blocks => matches!(
                id,
                LayerId::Stem | LayerId::Stage(_) | LayerId::Block(..) | LayerId::HeadFc
            ),
            CaptureLevel::Stages => {
                matches!(id, LayerId::Stem | LayerId::Stage(_) | LayerId::HeadFc)
            }
        }
    }

    pub fn get(&self, id: LayerId) -> Option<&Tensor> {
        self.outputs.iter().find(|(i, _)| *i == id).map(|(_, t)| t)
    }
}

impl Observer for CaptureObserver {
    fn layer(&mut self, id: LayerId, out: &Tensor) -> Result<()> {
        if self.wants(id) {
            self.outputs.push((id, out.clone()));
        }
        Ok(())
    }
}

/// Whether every value of a tensor is finite (copies it to the host).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    let v: Vec<f32> = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

/// Finds the first layer (in forward order) whose output is not finite, and stops the
/// forward there.
#[derive(Default)]
pub struct FirstNonFinite {
    pub first: Option<LayerId>,
}

impl Observer for FirstNonFinite {
    fn layer(&mut self, id: LayerId, out: &Tensor) -> Result<()> {
        if !id.is_container() && !all_finite(out)? {
            self.first = Some(id);
            candle_core::bail!("non-finite output at {id}");
        }
        Ok(())
    }
}

/// Runs two observers side by side (time a run while capturing it).
pub struct Both<'a, A: Observer, B: Observer>(pub &'a mut A, pub &'a mut B);

impl<A: Observer, B: Observer> Observer for Both<'_, A, B> {
    fn enter(&mut self, id: LayerId) -> Result<()> {
        self.0.enter(id)?;
        self.1.enter(id)
    }
    fn layer(&mut self, id: LayerId, out: &Tensor) -> Result<()> {
        self.1.layer(id, out)?;
        self.0.layer(id, out)
    }
    fn sees_outputs(&self) -> bool {
        self.0.sees_outputs() || self.1.sees_outputs()
    }
    fn substitute(&mut self, id: LayerId, out: &Tensor) -> Result<Option<Tensor>> {
        match self.0.substitute(id, out)? {
            Some(t) => Ok(Some(t)),
            None => self.1.substitute(id, out),
        }
    }
}

//! Observers that keep, time or combine what a forward pass reports (the [`Observer`] trait
//! itself is the model's, in `model::observer`).
use crate::model::layer_id::LayerId;
use crate::model::observer::Observer;
use candle_core::{Result, Tensor};
use std::collections::HashMap;
use std::time::{Duration, Instant};

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
    /// Stems, stages, blocks and the head are reported whole by the fused forward too: only
    /// keeping every layer needs the layers run one by one.
    fn sees_outputs(&self) -> bool {
        self.level == CaptureLevel::All
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

/// Keeps some layers' outputs as they flow (still tracked when the input is, so a gradient can
/// be taken from them) and, with `stop`, ends the forward once it has them all: nothing after
/// them matters to the caller.
struct KeepLayers {
    wanted: Vec<LayerId>,
    got: Vec<(LayerId, Tensor)>,
    stop: bool,
}

impl Observer for KeepLayers {
    fn layer(&mut self, id: LayerId, out: &Tensor) -> Result<()> {
        if self.wanted.contains(&id) && !self.got.iter().any(|(l, _)| *l == id) {
            self.got.push((id, out.clone()));
            if self.stop && self.got.len() == self.wanted.len() {
                candle_core::bail!("stop: every wanted layer reached");
            }
        }
        Ok(())
    }
    /// As for a capture: only a layer inside a block needs the layers one by one.
    fn sees_outputs(&self) -> bool {
        self.wanted.iter().any(|l| !l.is_container())
    }
}

/// Layers' outputs in the order they ran, and the logits if the forward got that far.
pub type Kept = (Vec<(LayerId, Tensor)>, Option<Tensor>);

/// Runs `x` through the model keeping the `wanted` layers' outputs (in the order they ran),
/// and the logits unless `stop` ended the forward at the last wanted layer. A wanted layer that
/// never ran is an error naming it.
pub fn forward_keeping(
    engine: &crate::io::engine::Engine,
    x: &Tensor,
    wanted: Vec<LayerId>,
    stop: bool,
) -> crate::base::error::Result<Kept> {
    let mut keep = KeepLayers {
        wanted,
        got: Vec::new(),
        stop,
    };
    let logits = match engine.forward_observed(x, &mut keep) {
        Ok(l) => Some(l),
        // The stop above is expected; any other failure is not.
        Err(_) if stop && keep.got.len() == keep.wanted.len() => None,
        Err(e) => return Err(e),
    };
    if let Some(missing) = keep
        .wanted
        .iter()
        .find(|w| !keep.got.iter().any(|(l, _)| l == *w))
    {
        return Err(crate::base::error::Error::Input(format!(
            "layer `{missing}` did not run"
        )));
    }
    Ok((keep.got, logits))
}

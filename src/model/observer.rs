//! How a forward pass reports what each named layer produced.
//!
//! [`Network::forward_observed`](super::Network::forward_observed) calls `enter(id)` before and
//! `layer(id, out)` after every named layer, containers (stem, stage, block, head) included.
//! Plain `forward` passes [`NoObserver`], whose calls compile away. The observers that keep or
//! time outputs live in `analysis::trace`.
use super::layer_id::LayerId;
use candle_core::{Result, Tensor};

/// Sees each named layer of a forward pass. Spatial outputs arrive channels-last
/// (`[N, H, W, C]`, the model's working layout); `analysis::trace::to_nchw` presents them.
/// `Send`: the forward, observer and all, runs on a worker of rayon's pool (`base::pool`).
pub trait Observer: Send {
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

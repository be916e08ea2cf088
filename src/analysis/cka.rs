//! Centred kernel alignment between every pair of layers of two models (Kornblith et al. 2019),
//! in its minibatch form (Nguyen et al. 2021) with the unbiased HSIC (Song et al. 2012).
//!
//! The images go through both models in consecutive mini-batches of m (a last, smaller batch
//! counts with its own m when m ≥ 4 and is dropped otherwise). For each layer, a batch's
//! activations X (`[m, C·H·W]`, f32) give the Gram matrix K = X Xᵀ in f64; with K̃ = K with
//! its diagonal set to 0,
//!
//! HSIC₁(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((m−1)(m−2)) − 2/(m−2) · 1ᵀK̃L̃1] / (m(m−3)),
//!
//! summed over the batches for every pair, and CKA(a, b) = Σ HSIC₁(K, L) / √(Σ HSIC₁(K, K) ·
//! Σ HSIC₁(L, L)) (`None` where that is 0: a layer constant over the images). Only a batch's
//! Gram matrices (m × m) and the running sums are kept, never the activations. The Gram matrix
//! does not depend on the order of a row's values, so the channels-last maps are used as they
//! come.
use crate::base::error::{Error, Result};
use crate::base::progress::Progress;
use crate::io::engine::Engine;
use crate::model::layer_id::LayerId;
use crate::model::observer::Observer;
use crate::model::plan::Plan;
use candle_core::{DType, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The mini-batch size when none is given.
pub const BATCH: usize = 32;
/// A last batch smaller than this is dropped (the unbiased HSIC needs m ≥ 4).
pub const MIN_BATCH: usize = 4;

/// The layers compared, in the order the network computes them: `stem`, then for each stage
/// its blocks and then the stage's output (the same tensor as its last block's, kept so that
/// the matrix reads by stage).
pub fn layers(plan: &Plan) -> Vec<LayerId> {
    let mut out = vec![LayerId::Stem];
    for (s, stage) in plan.stages.iter().enumerate() {
        out.extend((0..stage.blocks.len()).map(|b| LayerId::Block(s, b)));
        out.push(LayerId::Stage(s));
    }
    out
}

/// A batch's Gram matrix with its diagonal zeroed, and the sums HSIC needs.
#[derive(Clone, Debug)]
pub struct Gram {
    m: usize,
    /// Row-major m × m, diagonal 0.
    k: Vec<f64>,
    row_sums: Vec<f64>,
    total: f64,
}

impl Gram {
    /// From a batch's activations, any layout with the batch first.
    pub fn of(t: &Tensor) -> Result<Gram> {
        let m = t.dim(0)?;
        let x = t
            .to_dtype(DType::F32)?
            .flatten_from(1)?
            .to_dtype(DType::F64)?;
        let k = x.matmul(&x.t()?)?.flatten_all()?.to_vec1::<f64>()?;
        Ok(Gram::from_matrix(m, k))
    }

    fn from_matrix(m: usize, mut k: Vec<f64>) -> Gram {
        for i in 0..m {
            k[i * m + i] = 0.0;
        }
        let row_sums: Vec<f64> = k.chunks_exact(m.max(1)).map(|r| r.iter().sum()).collect();
        let total = row_sums.iter().sum();
        Gram {
            m,
            k,
            row_sums,
            total,
        }
    }
}

impl Gram {
    /// tr(K̃K̃)/(m(m−3)): the first term of HSIC₁(K, K).
    fn self_scale(&self) -> f64 {
        let m = self.m as f64;
        self.k.iter().map(|x| x * x).sum::<f64>() / (m * (m - 3.0))
    }
}

/// The unbiased HSIC of two Gram matrices of one batch (K̃ and L̃ symmetric, so
/// tr(K̃L̃) = Σ K̃ᵢⱼL̃ᵢⱼ and 1ᵀK̃L̃1 = (K̃1)·(L̃1)).
pub fn hsic(a: &Gram, b: &Gram) -> f64 {
    let m = a.m as f64;
    let tr: f64 = a.k.iter().zip(&b.k).map(|(x, y)| x * y).sum();
    let cross: f64 = a.row_sums.iter().zip(&b.row_sums).map(|(x, y)| x * y).sum();
    let ones = a.total * b.total / ((m - 1.0) * (m - 2.0));
    (tr + ones - 2.0 / (m - 2.0) * cross) / (m * (m - 3.0))
}

/// The running sums of every pair.
#[derive(Clone, Debug)]
pub struct CkaAccumulator {
    na: usize,
    nb: usize,
    ab: Vec<f64>,
    aa: Vec<f64>,
    bb: Vec<f64>,
    /// Σ tr(K̃K̃)/(m(m−3)) per layer: the size of its terms, against which a self-HSIC is
    /// called 0 (a constant layer's cancels to rounding error, not exactly; a layer that is
    /// nearly constant, such as a V2 model's last 1×1 stage, is legitimately 1e-10 of it).
    scale_a: Vec<f64>,
    scale_b: Vec<f64>,
    pub images: usize,
}

impl CkaAccumulator {
    pub fn new(na: usize, nb: usize) -> Self {
        Self {
            na,
            nb,
            ab: vec![0.0; na * nb],
            aa: vec![0.0; na],
            bb: vec![0.0; nb],
            scale_a: vec![0.0; na],
            scale_b: vec![0.0; nb],
            images: 0,
        }
    }

    /// One batch: the Gram matrix of each of A's layers and of each of B's.
    pub fn add(&mut self, a: &[Gram], b: &[Gram]) {
        assert_eq!((a.len(), b.len()), (self.na, self.nb), "a Gram per layer");
        for (i, ga) in a.iter().enumerate() {
            self.aa[i] += hsic(ga, ga);
            self.scale_a[i] += ga.self_scale();
            for (j, gb) in b.iter().enumerate() {
                self.ab[i * self.nb + j] += hsic(ga, gb);
            }
        }
        for (j, gb) in b.iter().enumerate() {
            self.bb[j] += hsic(gb, gb);
            self.scale_b[j] += gb.self_scale();
        }
        self.images += a.first().map_or(0, |g| g.m);
    }

    /// Rows are A's layers, columns B's.
    pub fn finish(&self) -> Vec<Vec<Option<f64>>> {
        (0..self.na)
            .map(|i| {
                (0..self.nb)
                    .map(|j| {
                        let live = |v: f64, scale: f64| v > 1e-13 * scale;
                        let d = self.aa[i] * self.bb[j];
                        (live(self.aa[i], self.scale_a[i]) && live(self.bb[j], self.scale_b[j]))
                            .then(|| self.ab[i * self.nb + j] / d.sqrt())
                    })
                    .collect()
            })
            .collect()
    }
}

/// Computes the Gram matrix of each wanted layer as the forward passes it.
struct GramObserver<'a> {
    wanted: &'a [LayerId],
    grams: Vec<Option<Gram>>,
}

impl Observer for GramObserver<'_> {
    fn layer(&mut self, id: LayerId, out: &Tensor) -> candle_core::Result<()> {
        if let Some(i) = self.wanted.iter().position(|w| *w == id) {
            self.grams[i] = Some(Gram::of(out).map_err(candle_core::Error::wrap)?);
        }
        Ok(())
    }
}

/// The Gram matrices of `engine`'s `wanted` layers for one batch.
fn grams(engine: &Engine, x: &Tensor, wanted: &[LayerId]) -> Result<Vec<Gram>> {
    let mut obs = GramObserver {
        wanted,
        grams: vec![None; wanted.len()],
    };
    engine.forward_observed(x, &mut obs)?;
    obs.grams
        .into_iter()
        .zip(wanted)
        .map(|(g, id)| g.ok_or_else(|| Error::Input(format!("the model has no layer {id}"))))
        .collect()
}

/// What `cka` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CkaResult {
    pub images: usize,
    pub batch: usize,
    pub layers_a: Vec<String>,
    pub layers_b: Vec<String>,
    /// Rows are `layers_a`, columns `layers_b`; `None` where a layer is constant.
    pub cka: Vec<Vec<Option<f64>>>,
    /// Files that could not be decoded (left out for both models).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<(PathBuf, String)>,
}

/// Both models, their layers and the running sums: the caller feeds it one mini-batch at a
/// time (each model's own preprocessed input) and takes the result at the end.
struct Pair<'a> {
    a: &'a Engine,
    b: &'a Engine,
    la: Vec<LayerId>,
    lb: Vec<LayerId>,
    acc: CkaAccumulator,
    batch: usize,
}

impl<'a> Pair<'a> {
    fn new(a: &'a Engine, b: &'a Engine, batch: usize) -> Result<Self> {
        if batch < MIN_BATCH {
            return Err(Error::Input(format!(
                "a mini-batch of {batch} is too small for the unbiased HSIC (at least {MIN_BATCH})"
            )));
        }
        let (la, lb) = (layers(&a.plan), layers(&b.plan));
        let acc = CkaAccumulator::new(la.len(), lb.len());
        Ok(Self {
            a,
            b,
            la,
            lb,
            acc,
            batch,
        })
    }

    /// One mini-batch through both models (a batch under [`MIN_BATCH`] is dropped).
    fn add(&mut self, xa: &Tensor, xb: &Tensor) -> Result<()> {
        if xa.dim(0)? < MIN_BATCH {
            return Ok(());
        }
        let ga = grams(self.a, xa, &self.la)?;
        let gb = grams(self.b, xb, &self.lb)?;
        self.acc.add(&ga, &gb);
        Ok(())
    }

    fn finish(self, skipped: Vec<(PathBuf, String)>) -> CkaResult {
        CkaResult {
            images: self.acc.images,
            batch: self.batch,
            layers_a: self.la.iter().map(LayerId::name).collect(),
            layers_b: self.lb.iter().map(LayerId::name).collect(),
            cka: self.acc.finish(),
            skipped,
        }
    }
}

/// CKA over a ready NCHW input (both models take it as it is), in its own order.
pub fn cka_tensor(
    a: &Engine,
    b: &Engine,
    x: &Tensor,
    batch: usize,
    progress: &mut dyn Progress,
) -> Result<CkaResult> {
    let mut pair = Pair::new(a, b, batch)?;
    let n = x.dim(0)?;
    for start in (0..n).step_by(batch) {
        progress.check("CKA")?;
        progress.update(start, n, "images");
        let xs = x.narrow(0, start, batch.min(n - start))?;
        let (xa, xb) = (xs.to_device(&a.device)?, xs.to_device(&b.device)?);
        pair.add(&xa, &xb)?;
    }
    progress.update(n, n, "images");
    Ok(pair.finish(Vec::new()))
}

/// CKA over the images of a folder (full paths sorted byte-wise; at most `limit`), each model
/// preprocessing them its own way; files that do not decode are left out for both and listed.
pub fn cka_folder(
    a: &Engine,
    b: &Engine,
    dir: &Path,
    limit: Option<usize>,
    batch: usize,
    progress: &mut dyn Progress,
) -> Result<CkaResult> {
    let mut files = crate::io::listing::list_images(dir, limit)?;
    files.sort_by(|x, y| {
        x.as_os_str()
            .as_encoded_bytes()
            .cmp(y.as_os_str().as_encoded_bytes())
    });
    let mut pair = Pair::new(a, b, batch)?;
    let mut skipped = Vec::new();
    let mut pending: Vec<(Tensor, Tensor)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        progress.check("CKA")?;
        progress.update(i, files.len(), &crate::base::text::file_label(f));
        match crate::io::preprocess::load_image(f).and_then(|img| {
            let pa = crate::io::preprocess::prepare(&img, &a.preprocess, &a.device)?.tensor;
            let pb = crate::io::preprocess::prepare(&img, &b.preprocess, &b.device)?.tensor;
            Ok((pa, pb))
        }) {
            Ok(p) => pending.push(p),
            Err(e) => skipped.push((f.clone(), e.to_string())),
        }
        if pending.len() == batch {
            add_pending(&mut pair, &mut pending)?;
        }
    }
    add_pending(&mut pair, &mut pending)?;
    progress.update(files.len(), files.len(), "images");
    Ok(pair.finish(skipped))
}

fn add_pending(pair: &mut Pair, pending: &mut Vec<(Tensor, Tensor)>) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let (xa, xb): (Vec<Tensor>, Vec<Tensor>) = std::mem::take(pending).into_iter().unzip();
    pair.add(&Tensor::cat(&xa, 0)?, &Tensor::cat(&xb, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HSIC₁ written out with explicit matrices, as the formula reads.
    fn by_definition(k: &[f64], l: &[f64], m: usize) -> f64 {
        let z = |k: &[f64]| -> Vec<f64> {
            (0..m * m)
                .map(|i| if i / m == i % m { 0.0 } else { k[i] })
                .collect()
        };
        let (k, l) = (z(k), z(l));
        let mut kl = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..m {
                kl[i * m + j] = (0..m).map(|t| k[i * m + t] * l[t * m + j]).sum();
            }
        }
        let tr: f64 = (0..m).map(|i| kl[i * m + i]).sum();
        let (sk, sl, skl): (f64, f64, f64) = (k.iter().sum(), l.iter().sum(), kl.iter().sum());
        let mf = m as f64;
        (tr + sk * sl / ((mf - 1.0) * (mf - 2.0)) - 2.0 / (mf - 2.0) * skl) / (mf * (mf - 3.0))
    }

    fn gram(x: &[f64], m: usize, d: usize) -> Vec<f64> {
        (0..m * m)
            .map(|i| {
                (0..d)
                    .map(|t| x[(i / m) * d + t] * x[(i % m) * d + t])
                    .sum()
            })
            .collect()
    }

    #[test]
    fn hsic_matches_the_formula_and_a_layer_against_itself_is_1() {
        let (m, d) = (7, 5);
        let x: Vec<f64> = (0..m * d).map(|i| ((i * 37 % 13) as f64) - 6.0).collect();
        let y: Vec<f64> = (0..m * d).map(|i| ((i * 11 % 7) as f64).sin()).collect();
        let (k, l) = (gram(&x, m, d), gram(&y, m, d));
        let (gk, gl) = (
            Gram::from_matrix(m, k.clone()),
            Gram::from_matrix(m, l.clone()),
        );
        assert!((hsic(&gk, &gl) - by_definition(&k, &l, m)).abs() < 1e-9);
        let mut acc = CkaAccumulator::new(2, 2);
        acc.add(&[gk.clone(), gl.clone()], &[gk, gl]);
        let c = acc.finish();
        assert!((c[0][0].unwrap() - 1.0).abs() < 1e-12 && (c[1][1].unwrap() - 1.0).abs() < 1e-12);
        assert!(c[0][1].unwrap() < 0.999);
    }

    #[test]
    fn a_constant_layer_gives_none() {
        let m = 6;
        let k = vec![4.0; m * m];
        let g = Gram::from_matrix(m, k);
        let mut acc = CkaAccumulator::new(1, 1);
        acc.add(std::slice::from_ref(&g), std::slice::from_ref(&g));
        assert!(hsic(&g, &g).abs() < 1e-12);
        assert_eq!(acc.finish()[0][0], None);
    }
}

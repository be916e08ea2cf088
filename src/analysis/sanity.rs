//! The model-randomisation sanity check (Adebayo et al. 2018, cascading): the weights are
//! re-initialised from the head down, one part at a time (the head, each stage from the last,
//! then the stem), with the architecture's own initialisation and a seed; after each step the
//! map is computed again, for the class the trained model explained, and compared with the
//! original by the Spearman rank correlation and the SSIM. A method whose map survives the
//! destruction of the weights is not explaining the model.
//!
//! Both maps are upsampled bilinearly (align_corners = false) to the input's size first and
//! min–max normalised (a constant map becomes 0). SSIM is scikit-image's
//! `structural_similarity` with its defaults for such maps: a 7×7 uniform window, data range
//! 1, K1 = 0.01, K2 = 0.03, sample (co)variances, averaged over the positions whose window lies
//! inside the image. Spearman ranks ties by their average rank.
use crate::analysis::attribution::{attribute, resize_bilinear, Method};
use crate::base::error::{Error, Result};
use crate::base::progress::Progress;
use crate::io::engine::Engine;
use crate::model::layer_id::LayerId;
use candle_core::{DType, Tensor};
use serde::Serialize;

/// One step of the cascade: what has been re-initialised so far (the part added last), and
/// how alike the map still is.
#[derive(Clone, Debug, Serialize)]
pub struct SanityStep {
    pub randomised: String,
    pub spearman: f64,
    pub ssim: f64,
    /// The map after this step (first image), upsampled to the input and normalised.
    #[serde(skip)]
    pub map: Vec<f32>,
    /// The input's height and width: the map's size.
    #[serde(skip)]
    pub size: (usize, usize),
}

/// The parts re-initialised in turn: `head`, `stages.S` from the last, `stem`.
pub fn cascade_parts(engine: &Engine) -> Vec<String> {
    let mut v = vec!["head".to_string()];
    v.extend(
        (0..engine.plan.stages.len())
            .rev()
            .map(|s| format!("stages.{s}")),
    );
    v.push("stem".into());
    v
}

/// Runs the cascade for the first image of `x`; the original map comes first as step
/// "none" (Spearman and SSIM 1). `progress` hears of each step and may cancel.
pub fn cascade(
    engine: &Engine,
    x: &Tensor,
    (method, layer): (Method, LayerId),
    class: Option<usize>,
    seed: u64,
    progress: &mut dyn Progress,
) -> Result<Vec<SanityStep>> {
    let x = x.narrow(0, 0, 1)?;
    let (_, _, h, w) = x.dims4()?;
    let first = attribute(engine, &x, method, layer, class, progress)?;
    let k = first.classes[0];
    let original = normalised(&first.map, (h, w))?;
    let mut weights = engine.weights()?;
    let fresh = engine.plan.random_weights(seed)?;
    let mut steps = vec![SanityStep {
        randomised: "none".into(),
        spearman: 1.0,
        ssim: 1.0,
        map: original.clone(),
        size: (h, w),
    }];
    let parts = cascade_parts(engine);
    for (i, part) in parts.iter().enumerate() {
        progress.check("the sanity check")?;
        progress.update(i, parts.len(), part);
        for (name, t) in weights.iter_mut() {
            if belongs(name, part) {
                if let Some(f) = fresh.get(name) {
                    *t = f.clone();
                }
            }
        }
        let what = format!("{} with {part} and above re-initialised", engine.plan.name);
        let broken = engine.with_weights(weights.clone(), what)?;
        let m = attribute(&broken, &x, method, layer, Some(k), progress)?;
        let map = normalised(&m.map, (h, w))?;
        steps.push(SanityStep {
            randomised: part.clone(),
            spearman: spearman(&original, &map),
            ssim: ssim(&original, &map, (h, w)),
            map,
            size: (h, w),
        });
    }
    progress.update(parts.len(), parts.len(), "done");
    Ok(steps)
}

/// Whether a canonical tensor name lies in a part (`head`, `stem`, `stages.S`).
fn belongs(name: &str, part: &str) -> bool {
    name == part || name.starts_with(&format!("{part}."))
}

/// The first image's map upsampled to `(h, w)` and min–max normalised.
fn normalised(map: &Tensor, (h, w): (usize, usize)) -> Result<Vec<f32>> {
    let m = map.get(0)?.to_dtype(DType::F32)?;
    let (mh, mw) = m.dims2()?;
    let up = resize_bilinear(&m.flatten_all()?.to_vec1()?, (mh, mw), (h, w));
    let (lo, hi) = up
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return Ok(vec![0.0; up.len()]);
    }
    Ok(up.iter().map(|v| (v - lo) / (hi - lo)).collect())
}

/// Ranks from 1, ties given their average rank.
fn ranks(v: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// The Spearman rank correlation (0 when either side is constant).
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        return 0.0;
    }
    sab / (saa * sbb).sqrt()
}

/// scikit-image's SSIM of two maps in [0, 1] (see the module's notes).
pub fn ssim(a: &[f32], b: &[f32], (h, w): (usize, usize)) -> f64 {
    const WIN: usize = 7;
    if h < WIN || w < WIN {
        return f64::NAN;
    }
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let np = (WIN * WIN) as f64;
    let cov = np / (np - 1.0);
    let mut total = 0.0;
    let mut count = 0usize;
    for y in 0..=h - WIN {
        for x in 0..=w - WIN {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for dy in 0..WIN {
                for dx in 0..WIN {
                    let i = (y + dy) * w + x + dx;
                    let (p, q) = (a[i] as f64, b[i] as f64);
                    sa += p;
                    sb += q;
                    saa += p * p;
                    sbb += q * q;
                    sab += p * q;
                }
            }
            let (ua, ub) = (sa / np, sb / np);
            let va = cov * (saa / np - ua * ua);
            let vb = cov * (sbb / np - ub * ub);
            let vab = cov * (sab / np - ua * ub);
            total += ((2.0 * ua * ub + c1) * (2.0 * vab + c2))
                / ((ua * ua + ub * ub + c1) * (va + vb + c2));
            count += 1;
        }
    }
    total / count as f64
}

/// Checks the cascade can run: the method needs a model to explain.
pub fn check_method(method: Method) -> Result<()> {
    if method == Method::Evidence {
        return Err(Error::Input(
            "the evidence map is the model's own arithmetic: a sanity check says nothing about it"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_maps_is_1_and_reversed_is_minus_1() {
        let a = [0.1f32, 0.5, 0.2, 0.9];
        let b = [1.0f32, 5.0, 2.0, 9.0];
        assert!((spearman(&a, &b) - 1.0).abs() < 1e-12);
        let c = [9.0f32, 1.0, 5.0, 0.0];
        assert!((spearman(&a, &c) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn ssim_of_a_map_with_itself_is_1() {
        let (h, w) = (9, 8);
        let a: Vec<f32> = (0..h * w).map(|i| ((i * 7) % 11) as f32 / 10.0).collect();
        assert!((ssim(&a, &a, (h, w)) - 1.0).abs() < 1e-12);
        let b: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
        assert!(ssim(&a, &b, (h, w)) < 0.0);
    }

    #[test]
    fn ties_share_their_average_rank() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }
}

//! Is a map faithful to the model? Deletion and insertion curves (Petsiuk et al. 2018) with
//! exact definitions, so that numbers from different tools can be compared.
//!
//! For an image x (preprocessed), a class k and a map M of any resolution: M is upsampled
//! bilinearly (align_corners = false) to x's H×W and the pixels are ranked by value, highest
//! first, ties by ascending row-major index. For i = 0…n, the first round(i·H·W/n) ranked
//! pixels are set to 0 in every colour channel (deletion: the dataset mean) or copied from x
//! into a blurred copy of x (insertion: Gaussian, kernel 31, σ = 5 px, per channel, reflect
//! padding, as torchvision's `gaussian_blur`); each curve holds the softmax probability of k.
//! AUC is the trapezoid rule over i/n ∈ [0, 1]: (Σ_i v_i − (v_0 + v_n)/2) / n.
use crate::analysis::attribution::{
    attribute, class_probs, classes_for, resize_bilinear_f64, Method,
};
use crate::base::error::{Error, Result};
use crate::base::progress::Progress;
use crate::io::engine::Engine;
use crate::model::layer_id::LayerId;
use candle_core::{DType, Tensor};
use serde::Serialize;
use std::path::PathBuf;

/// The number of steps when none is given.
pub const STEPS: usize = 32;
/// torchvision's `gaussian_blur` as insertion uses it: kernel side and σ in pixels.
pub const BLUR_KERNEL: usize = 31;
pub const BLUR_SIGMA: f64 = 5.0;

/// One image's two curves (n + 1 values each) and their areas.
#[derive(Clone, Debug, Serialize)]
pub struct Curves {
    pub class: usize,
    pub deletion: Vec<f32>,
    pub insertion: Vec<f32>,
    pub deletion_auc: f64,
    pub insertion_auc: f64,
}

/// A map of one image: row-major values and their height and width.
pub struct Map<'a> {
    pub values: &'a [f32],
    pub size: (usize, usize),
}

/// The pixels of an `H×W` image in the order deletion removes them: `map` upsampled, highest
/// first, ties by ascending index.
pub fn ranking(map: &Map, (h, w): (usize, usize)) -> Vec<usize> {
    let values: Vec<f64> = map.values.iter().map(|&v| v as f64).collect();
    let up = resize_bilinear_f64(&values, map.size, (h, w));
    let mut order: Vec<usize> = (0..h * w).collect();
    // A stable sort of −M: equal values (0 and −0 alike) keep ascending index order.
    order.sort_by(|&a, &b| {
        up[b]
            .partial_cmp(&up[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    order
}

/// The trapezoid rule over `i/n`, `i = 0…n`.
pub fn auc(v: &[f32]) -> f64 {
    let n = v.len().saturating_sub(1);
    if n == 0 {
        return 0.0;
    }
    let sum: f64 = v.iter().map(|&x| x as f64).sum();
    (sum - (v[0] as f64 + v[n] as f64) / 2.0) / n as f64
}

/// torchvision's Gaussian kernel: `exp(−x²/2σ²)` at `x = −(k−1)/2 … (k−1)/2`, normalised.
fn gaussian_kernel(k: usize, sigma: f64) -> Vec<f64> {
    let half = (k as f64 - 1.0) / 2.0;
    let pdf: Vec<f64> = (0..k)
        .map(|i| (-0.5 * ((i as f64 - half) / sigma).powi(2)).exp())
        .collect();
    let sum: f64 = pdf.iter().sum();
    pdf.iter().map(|p| p / sum).collect()
}

/// Reflect padding's source index (the edge is not repeated), folded as often as needed.
fn reflect(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let m = i.rem_euclid(period);
    (if m < len as isize { m } else { period - m }) as usize
}

/// One `H×W` plane blurred as torchvision's `gaussian_blur(kernel 31, σ 5)` blurs it (the 2-D
/// kernel is the outer product of the 1-D one, so two 1-D passes give the same sums).
pub fn blur_plane(p: &[f32], (h, w): (usize, usize)) -> Vec<f32> {
    let k = gaussian_kernel(BLUR_KERNEL, BLUR_SIGMA);
    let r = (BLUR_KERNEL / 2) as isize;
    let mut rows = vec![0f64; h * w];
    for y in 0..h {
        for x in 0..w {
            rows[y * w + x] = (0..BLUR_KERNEL)
                .map(|t| k[t] * p[y * w + reflect(x as isize + t as isize - r, w)] as f64)
                .sum();
        }
    }
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (0..BLUR_KERNEL)
                .map(|t| k[t] * rows[reflect(y as isize + t as isize - r, h) * w + x])
                .sum::<f64>() as f32;
        }
    }
    out
}

/// Deletion and insertion for each image of `x` (`[N, 3, H, W]`) with its map, explaining
/// `class` (each image's top-1 when `None`). The 2(n + 1) inputs of an image go through the
/// model a bounded batch at a time; `progress` hears of each image and may cancel.
pub fn deletion_insertion(
    engine: &Engine,
    x: &Tensor,
    maps: &[Map],
    class: Option<usize>,
    steps: usize,
    progress: &mut dyn Progress,
) -> Result<Vec<Curves>> {
    let (n, c, h, w) = x.dims4()?;
    if maps.len() != n {
        return Err(Error::Input(format!(
            "{} maps for {n} images: give one map per image",
            maps.len()
        )));
    }
    if steps == 0 {
        return Err(Error::Input("--steps must be at least 1".into()));
    }
    let logits = engine.forward(x)?;
    let classes = classes_for(engine, &logits, class)?;
    let host: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(n);
    for (img, map) in maps.iter().enumerate() {
        progress.check("deletion and insertion")?;
        progress.update(img, n, "images");
        let image = &host[img * c * h * w..(img + 1) * c * h * w];
        let order = ranking(map, (h, w));
        let blurred: Vec<f32> = image
            .chunks_exact(h * w)
            .flat_map(|p| blur_plane(p, (h, w)))
            .collect();
        let inputs = curve_inputs(image, &blurred, &order, (c, h, w), steps);
        let probs = probabilities(engine, inputs, (c, h, w), classes[img], x.device())?;
        let (deletion, insertion) = probs.split_at(steps + 1);
        out.push(Curves {
            class: classes[img],
            deletion_auc: auc(deletion),
            insertion_auc: auc(insertion),
            deletion: deletion.to_vec(),
            insertion: insertion.to_vec(),
        });
    }
    progress.update(n, n, "images");
    Ok(out)
}

/// The n + 1 deletion inputs, then the n + 1 insertion inputs, concatenated (`CHW` each).
fn curve_inputs(
    image: &[f32],
    blurred: &[f32],
    order: &[usize],
    (c, h, w): (usize, usize, usize),
    steps: usize,
) -> Vec<f32> {
    let hw = h * w;
    let count = |i: usize| ((i * hw) as f64 / steps as f64).round() as usize;
    let mut data = Vec::with_capacity(2 * (steps + 1) * c * hw);
    for insertion in [false, true] {
        for i in 0..=steps {
            let mut v = if insertion {
                blurred.to_vec()
            } else {
                image.to_vec()
            };
            for &p in &order[..count(i).min(hw)] {
                for ch in 0..c {
                    v[ch * hw + p] = if insertion { image[ch * hw + p] } else { 0.0 };
                }
            }
            data.extend(v);
        }
    }
    data
}

/// The softmax probability of `class` for every `CHW` input in `data`, a bounded batch at a
/// time.
fn probabilities(
    engine: &Engine,
    data: Vec<f32>,
    (c, h, w): (usize, usize, usize),
    class: usize,
    device: &candle_core::Device,
) -> Result<Vec<f32>> {
    let per = c * h * w;
    let total = data.len() / per;
    let batch = (16 * 224 * 224 / (h * w).max(1)).clamp(1, 128);
    let mut probs = Vec::with_capacity(total);
    for chunk in data.chunks(batch * per) {
        let m = chunk.len() / per;
        let t = Tensor::from_slice(chunk, (m, c, h, w), device)?.to_dtype(engine.dtype)?;
        probs.extend(class_probs(&engine.forward(&t)?, &vec![class; m])?);
    }
    Ok(probs)
}

/// One method's deletion and insertion areas over a folder: mean and (population) spread.
#[derive(Clone, Debug, Serialize)]
pub struct MethodScore {
    pub method: String,
    pub images: usize,
    pub deletion_mean: f64,
    pub deletion_std: f64,
    pub insertion_mean: f64,
    pub insertion_std: f64,
}

/// The first image's map of an attribution: values and size.
pub fn first_map(map: &Tensor) -> Result<(Vec<f32>, (usize, usize))> {
    let m = map.get(0)?.to_dtype(DType::F32)?;
    let size = m.dims2()?;
    Ok((m.flatten_all()?.to_vec1()?, size))
}

/// Each method's areas over `files`, one image at a time (memory stays one image's; files
/// that do not decode are skipped), each image's top-1 explained at `layer`.
pub fn rank_methods(
    engine: &Engine,
    files: &[PathBuf],
    methods: &[Method],
    layer: LayerId,
    steps: usize,
    progress: &mut dyn Progress,
) -> Result<Vec<MethodScore>> {
    let mut scores: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); methods.len()];
    let quiet = &mut crate::base::progress::Silent;
    for (i, f) in files.iter().enumerate() {
        progress.check("the ranking")?;
        progress.update(i, files.len(), &crate::base::text::file_label(f));
        let Ok(p) = engine.prepare_file(f) else {
            continue;
        };
        for (m, s) in methods.iter().zip(&mut scores) {
            let (values, size) =
                first_map(&attribute(engine, &p.tensor, *m, layer, None, quiet)?.map)?;
            let map = Map {
                values: &values,
                size,
            };
            let c = deletion_insertion(engine, &p.tensor, &[map], None, steps, quiet)?.remove(0);
            s.0.push(c.deletion_auc);
            s.1.push(c.insertion_auc);
        }
    }
    let stat = |v: &[f64]| {
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        (
            mean,
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt(),
        )
    };
    Ok(methods
        .iter()
        .zip(&scores)
        .map(|(m, (d, ins))| {
            let ((dm, ds), (im, is)) = (stat(d), stat(ins));
            MethodScore {
                method: m.name().to_string(),
                images: d.len(),
                deletion_mean: dm,
                deletion_std: ds,
                insertion_mean: im,
                insertion_std: is,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_the_trapezoid_rule() {
        assert!((auc(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((auc(&[0.0, 0.5, 1.0]) - 0.5).abs() < 1e-12);
        assert_eq!(auc(&[3.0]), 0.0);
    }

    #[test]
    fn ties_rank_by_index_and_highest_comes_first() {
        let m = Map {
            values: &[0.0, 2.0, 2.0, 1.0],
            size: (2, 2),
        };
        assert_eq!(ranking(&m, (2, 2)), vec![1, 2, 3, 0]);
    }

    #[test]
    fn reflect_padding_skips_the_edge() {
        assert_eq!(reflect(-1, 5), 1);
        assert_eq!(reflect(-2, 5), 2);
        assert_eq!(reflect(5, 5), 3);
        assert_eq!(reflect(0, 5), 0);
        // Folded again past the far side, for images smaller than the kernel.
        assert_eq!(reflect(-6, 5), 2);
    }

    #[test]
    fn blurring_a_constant_keeps_it() {
        let p = vec![0.7f32; 20 * 17];
        for v in blur_plane(&p, (20, 17)) {
            assert!((v - 0.7).abs() < 1e-6);
        }
    }
}

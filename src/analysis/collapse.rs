//! Feature collapse (ConvNeXt V2, Woo et al. 2023, Sec. 4): how alike a layer's channels are.
//!
//! For an activation X with C channels of H·W values, the distance is
//! `1/C² Σ_i Σ_j (1 − cos(X_i, X_j)) / 2`, per image, averaged over the images. An all-zero
//! channel has cos 0 with every channel, itself included (PyTorch's `F.normalize` leaves it
//! zero). Since `Σ_i Σ_j cos(X_i, X_j) = ‖Σ_i X_i/‖X_i‖‖²`, no C×C matrix is needed: one pass
//! over the map gives the sum of the normalised channels.
//!
//! Measured at every block's `mlp.act` (the GELU output of the expansion layer) and every stage
//! output, as the trace names them.
use crate::base::error::Result;
use crate::model::layer_id::{LayerId, Part};
use crate::model::observer::Observer;
use candle_core::{DType, Tensor};
use serde::Serialize;

/// The layers the analysis looks at.
pub fn measured(id: LayerId) -> bool {
    matches!(id, LayerId::Stage(_) | LayerId::BlockPart(_, _, Part::Act))
}

/// The distance of each image of a channels-last `[N, H, W, C]` map.
pub fn distances_nhwc(t: &Tensor) -> Result<Vec<f64>> {
    let (n, h, w, c) = t.dims4()?;
    let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let hw = h * w;
    Ok(data
        .chunks_exact((hw * c).max(1))
        .take(n)
        .map(|img| distance(img, hw, c))
        .collect())
}

/// One image's distance: `img` is `[HW, C]`, channels last.
fn distance(img: &[f32], hw: usize, c: usize) -> f64 {
    if c == 0 {
        return 0.0;
    }
    let mut norm2 = vec![0f64; c];
    for row in img.chunks_exact(c) {
        for (n, &v) in norm2.iter_mut().zip(row) {
            *n += v as f64 * v as f64;
        }
    }
    let inv: Vec<f64> = norm2
        .iter()
        .map(|&n| if n > 0.0 { 1.0 / n.sqrt() } else { 0.0 })
        .collect();
    // ‖Σ_i x_i/‖x_i‖‖², position by position.
    let mut sum_cos = 0f64;
    for row in img.chunks_exact(c).take(hw) {
        let s: f64 = row.iter().zip(&inv).map(|(&v, &k)| v as f64 * k).sum();
        sum_cos += s * s;
    }
    let c2 = (c * c) as f64;
    (c2 - sum_cos) / (2.0 * c2)
}

/// A layer's mean distance over the images seen.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerCollapse {
    pub name: String,
    pub distance: f64,
    /// Where the layer sits along the network, 0 (first measured) to 1 (last).
    pub depth: f64,
}

/// Sums distances layer by layer while images stream past; as an [`Observer`] it measures every
/// layer it sees that [`measured`] names.
#[derive(Default)]
pub struct CollapseAccumulator {
    layers: Vec<(LayerId, f64)>,
    images: usize,
}

impl CollapseAccumulator {
    /// Adds a batch's map at `id`.
    pub fn add(&mut self, id: LayerId, t: &Tensor) -> Result<()> {
        let d: f64 = distances_nhwc(t)?.iter().sum();
        match self.layers.iter_mut().find(|(l, _)| *l == id) {
            Some((_, s)) => *s += d,
            None => self.layers.push((id, d)),
        }
        Ok(())
    }

    /// Counts the images of a batch once all its layers are in.
    pub fn images_done(&mut self, n: usize) {
        self.images += n;
    }

    pub fn images(&self) -> usize {
        self.images
    }

    /// Every measured layer in forward order, with its mean and normalised depth.
    pub fn finish(&self) -> Vec<LayerCollapse> {
        let n = self.images.max(1) as f64;
        let last = self.layers.len().saturating_sub(1).max(1) as f64;
        self.layers
            .iter()
            .enumerate()
            .map(|(i, (id, s))| LayerCollapse {
                name: id.name(),
                distance: s / n,
                depth: i as f64 / last,
            })
            .collect()
    }
}

impl Observer for CollapseAccumulator {
    fn layer(&mut self, id: LayerId, out: &Tensor) -> candle_core::Result<()> {
        if measured(id) && out.rank() == 4 {
            self.add(id, out).map_err(candle_core::Error::wrap)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The C×C definition, written out.
    fn by_definition(img: &[f32], hw: usize, c: usize) -> f64 {
        let ch = |i: usize| -> Vec<f64> { (0..hw).map(|p| img[p * c + i] as f64).collect() };
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut s = 0.0;
        for i in 0..c {
            for j in 0..c {
                let (a, b) = (ch(i), ch(j));
                let (na, nb) = (norm(&a), norm(&b));
                let cos = if na == 0.0 || nb == 0.0 {
                    0.0
                } else {
                    a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() / (na * nb)
                };
                s += (1.0 - cos) / 2.0;
            }
        }
        s / (c * c) as f64
    }

    #[test]
    fn matches_the_pairwise_definition_zero_channels_included() {
        let (hw, c) = (6, 5);
        let mut img: Vec<f32> = (0..hw * c).map(|i| ((i * 37 % 11) as f32) - 4.0).collect();
        for p in 0..hw {
            img[p * c + 2] = 0.0; // an all-zero channel
        }
        let got = distance(&img, hw, c);
        assert!((got - by_definition(&img, hw, c)).abs() < 1e-12);
        // Identical channels: no distance; a tensor gives one value per image.
        let same: Vec<f32> = (0..hw).flat_map(|p| vec![p as f32 + 1.0; c]).collect();
        assert!(distance(&same, hw, c).abs() < 1e-12);
        let t = Tensor::from_vec([img, same].concat(), (2, 2, 3, c), &Device::Cpu).unwrap();
        let d = distances_nhwc(&t).unwrap();
        assert_eq!(d.len(), 2);
        assert!(d[1].abs() < 1e-12 && d[0] > 0.1);
    }
}

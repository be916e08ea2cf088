//! Summaries of activations for display: per-channel statistics and histograms.
use candle_core::{DType, Result, Tensor};

/// One channel of a channels-last `[H, W, C]` map (batch item already chosen).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ChannelStats {
    pub min: f32,
    pub max: f32,
    pub mean: f32,
}

/// A feature map of one image, copied to the host as `[C][H·W]` f32 planes.
#[derive(Debug, Clone)]
pub struct FeatureMap {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Channel-major values: `data[c * h * w + y * w + x]`.
    pub data: Vec<f32>,
    pub stats: Vec<ChannelStats>,
}

impl FeatureMap {
    /// From a channels-last `[N, H, W, C]` activation, item `n` of the batch.
    pub fn from_nhwc(t: &Tensor, n: usize) -> Result<Self> {
        let t = t
            .get(n)?
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let (c, h, w) = t.dims3()?;
        let data = t.flatten_all()?.to_vec1::<f32>()?;
        let stats = data
            .chunks(h * w)
            .map(|p| {
                let (mut min, mut max, mut sum) = (f32::INFINITY, f32::NEG_INFINITY, 0f64);
                for &v in p {
                    min = min.min(v);
                    max = max.max(v);
                    sum += v as f64;
                }
                ChannelStats {
                    min,
                    max,
                    mean: (sum / p.len().max(1) as f64) as f32,
                }
            })
            .collect();
        Ok(Self {
            channels: c,
            height: h,
            width: w,
            data,
            stats,
        })
    }

    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }

    pub fn range(&self) -> (f32, f32) {
        self.stats
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), s| {
                (a.min(s.min), b.max(s.max))
            })
    }
}

/// `bins` equal-width counts over `[lo, hi]` (values outside are clamped into the end bins).
pub fn histogram(values: &[f32], bins: usize, lo: f32, hi: f32) -> Vec<u32> {
    let mut h = vec![0u32; bins.max(1)];
    let span = (hi - lo).max(f32::MIN_POSITIVE);
    for &v in values {
        if v.is_finite() {
            let i = (((v - lo) / span) * bins as f32).floor() as isize;
            h[i.clamp(0, bins as isize - 1) as usize] += 1;
        }
    }
    h
}

/// The median: the middle value, or the mean of the middle two for an even count; NaN for
/// none. Every figure the project reports as "median" comes from here.
pub fn median(values: &[f64]) -> f64 {
    let mut s = values.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[m],
        _ => 0.5 * (s[m - 1] + s[m]),
    }
}

/// [`median`] of durations.
pub fn median_duration(values: &[std::time::Duration]) -> std::time::Duration {
    let secs: Vec<f64> = values.iter().map(|d| d.as_secs_f64()).collect();
    match values.len() {
        0 => std::time::Duration::ZERO,
        _ => std::time::Duration::from_secs_f64(median(&secs)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        let ms = |v: u64| std::time::Duration::from_millis(v);
        assert_eq!(median_duration(&[ms(1), ms(4)]), ms(2) + ms(1) / 2);
    }
    #[test]
    fn histogram_counts_every_finite_value() {
        let h = histogram(&[0.0, 0.5, 1.0, 2.0, -1.0, f32::NAN], 2, 0.0, 1.0);
        assert_eq!(h, vec![2, 3]);
    }
}

//! The images that excite a channel most (as OpenAI Microscope showed them): for every channel
//! of the layers watched, the k images with the highest activation anywhere in the map, and where
//! in the map it was. Kept by bounded heaps while images stream past, so a folder of any size
//! costs `layers × channels × k` entries.
use crate::base::error::Result;
use crate::model::layer_id::LayerId;
use crate::model::observer::Observer;
use candle_core::{DType, Tensor};
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One image's best position in one channel.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Hit {
    /// The image's index in the run (its place in the folder's list).
    pub image: usize,
    /// The channel's largest value in that image's map.
    pub score: f32,
    /// Where the largest value is, in map cells (the first such place).
    pub y: usize,
    pub x: usize,
}

/// Orders hits so that the heap's top is the weakest kept: lower score first, and among equal
/// scores the later image (earlier images win ties, whatever the batch order).
#[derive(Clone, Copy)]
struct Weakest(Hit);

impl PartialEq for Weakest {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Weakest {}
impl PartialOrd for Weakest {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Weakest {
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.score
            .total_cmp(&self.0.score)
            .then(self.0.image.cmp(&o.0.image))
    }
}

/// A layer's heaps, one per channel, and its map size.
struct Watched {
    id: LayerId,
    map: (usize, usize),
    heaps: Vec<BinaryHeap<Weakest>>,
}

/// Which layers to keep top images for.
pub type LayerFilter = Box<dyn Fn(LayerId) -> bool + Send>;

/// Top-k images per channel of the watched layers (all layers when built with [`TopImages::any`]
/// filtered by a predicate).
pub struct TopImages {
    k: usize,
    wants: LayerFilter,
    layers: Vec<Watched>,
    /// Index of the first image of the batch going through.
    first: usize,
}

/// One channel's result.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelTop {
    pub layer: String,
    pub channel: usize,
    pub map: (usize, usize),
    /// Best first.
    pub hits: Vec<Hit>,
}

impl TopImages {
    /// Watches the layers `wants` picks, keeping `k` images per channel.
    pub fn new(k: usize, wants: impl Fn(LayerId) -> bool + Send + 'static) -> Self {
        Self {
            k: k.max(1),
            wants: Box::new(wants),
            layers: Vec::new(),
            first: 0,
        }
    }

    /// Sets the index of the next batch's first image.
    pub fn start_batch(&mut self, first: usize) {
        self.first = first;
    }

    /// Takes a batch's channels-last `[N, H, W, C]` map at `id` in.
    pub fn add(&mut self, id: LayerId, t: &Tensor) -> Result<()> {
        let (n, h, w, c) = t.dims4()?;
        let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let k = self.k;
        let first = self.first;
        let watched = match self.layers.iter().position(|l| l.id == id) {
            Some(i) => &mut self.layers[i],
            None => {
                self.layers.push(Watched {
                    id,
                    map: (h, w),
                    heaps: (0..c).map(|_| BinaryHeap::with_capacity(k + 1)).collect(),
                });
                self.layers.last_mut().expect("just pushed")
            }
        };
        for (i, img) in data.chunks_exact((h * w * c).max(1)).take(n).enumerate() {
            for (ch, best) in best_per_channel(img, c).into_iter().enumerate() {
                let (score, pos) = best;
                let hit = Hit {
                    image: first + i,
                    score,
                    y: pos / w.max(1),
                    x: pos % w.max(1),
                };
                let heap = &mut watched.heaps[ch];
                heap.push(Weakest(hit));
                if heap.len() > k {
                    heap.pop();
                }
            }
        }
        Ok(())
    }

    /// The best images of one channel, best first; `None` when the layer was not watched or has
    /// no such channel.
    pub fn channel(&self, layer: LayerId, channel: usize) -> Option<ChannelTop> {
        let l = self.layers.iter().find(|l| l.id == layer)?;
        let heap = l.heaps.get(channel)?;
        let mut hits: Vec<Hit> = heap.iter().map(|w| w.0).collect();
        hits.sort_by_key(|h| Weakest(*h));
        Some(ChannelTop {
            layer: layer.name(),
            channel,
            map: l.map,
            hits,
        })
    }

    /// The layers watched so far, in the order they were first seen.
    pub fn layers(&self) -> Vec<LayerId> {
        self.layers.iter().map(|l| l.id).collect()
    }
}

/// Each channel's largest value and its first position in a `[HW, C]` image.
fn best_per_channel(img: &[f32], c: usize) -> Vec<(f32, usize)> {
    let mut best = vec![(f32::NEG_INFINITY, 0usize); c];
    for (p, row) in img.chunks_exact(c.max(1)).enumerate() {
        for (b, &v) in best.iter_mut().zip(row) {
            if v > b.0 {
                *b = (v, p);
            }
        }
    }
    best
}

impl Observer for TopImages {
    fn layer(&mut self, id: LayerId, out: &Tensor) -> candle_core::Result<()> {
        if (self.wants)(id) && out.rank() == 4 {
            self.add(id, out).map_err(candle_core::Error::wrap)?;
        }
        Ok(())
    }
}

/// The part of an `input`-sized image that map cell `(y, x)` of an `(mh, mw)` map looks at
/// most directly: a square of twice the layer's stride centred on the cell, kept inside the
/// image. Returns `(top, left, side)`.
pub fn patch_rect(
    input: (usize, usize),
    map: (usize, usize),
    (y, x): (usize, usize),
) -> (usize, usize, usize) {
    let stride_y = input.0 as f64 / map.0.max(1) as f64;
    let stride_x = input.1 as f64 / map.1.max(1) as f64;
    let side = ((2.0 * stride_y.max(stride_x)).round() as usize)
        .max(8)
        .min(input.0.min(input.1));
    let cy = (y as f64 + 0.5) * stride_y;
    let cx = (x as f64 + 0.5) * stride_x;
    let clamp = |c: f64, len: usize| -> usize {
        let start = (c - side as f64 / 2.0).round().max(0.0) as usize;
        start.min(len - side)
    };
    (clamp(cy, input.0), clamp(cx, input.1), side)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn keeps_the_k_best_images_per_channel_with_their_positions() {
        // 5 images, 2×2 maps, 2 channels; channel 0 peaks at image i with value i at (1, 0),
        // channel 1 is constant (ties: earlier images win).
        let mut top = TopImages::new(3, |_| true);
        for batch in [0usize, 3] {
            let n = if batch == 0 { 3 } else { 2 };
            let mut v = vec![0f32; n * 4 * 2];
            for i in 0..n {
                let img = batch + i;
                v[i * 8 + 2 * 2] = img as f32; // position 2 = (1, 0), channel 0
                for p in 0..4 {
                    v[i * 8 + p * 2 + 1] = 1.0;
                }
            }
            let t = Tensor::from_vec(v, (n, 2, 2, 2), &Device::Cpu).unwrap();
            top.start_batch(batch);
            top.add(LayerId::Stage(0), &t).unwrap();
        }
        let c0 = top.channel(LayerId::Stage(0), 0).unwrap();
        let images: Vec<usize> = c0.hits.iter().map(|h| h.image).collect();
        assert_eq!(images, [4, 3, 2]);
        assert_eq!((c0.hits[0].y, c0.hits[0].x, c0.hits[0].score), (1, 0, 4.0));
        let c1 = top.channel(LayerId::Stage(0), 1).unwrap();
        let images: Vec<usize> = c1.hits.iter().map(|h| h.image).collect();
        assert_eq!(images, [0, 1, 2]);
        assert_eq!((c1.hits[0].y, c1.hits[0].x), (0, 0));
        assert!(top.channel(LayerId::Stage(1), 0).is_none());
        assert!(top.channel(LayerId::Stage(0), 2).is_none());
    }

    #[test]
    fn patches_are_twice_the_stride_and_stay_inside() {
        assert_eq!(patch_rect((224, 224), (7, 7), (0, 0)), (0, 0, 64));
        assert_eq!(patch_rect((224, 224), (7, 7), (6, 3)), (160, 80, 64));
        assert_eq!(patch_rect((32, 32), (1, 1), (0, 0)), (0, 0, 32));
        assert_eq!(patch_rect((32, 32), (8, 8), (4, 4)), (14, 14, 8));
    }
}

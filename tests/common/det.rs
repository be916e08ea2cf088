//! Weights and inputs computed from a tensor's name, bit for bit as
//! `tests/fixtures/roadmap_fixtures.py` computes them, so that PyTorch references need no stored
//! weights.
use candle_core::{Device, Tensor};

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// `n` values in [-1, 1), exact in f32.
pub fn values(name: &str, n: usize) -> Vec<f64> {
    let base = fnv1a(name);
    (0..n as u64)
        .map(|i| {
            let mut z = base.wrapping_add(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f64 / 8_388_608.0 - 1.0
        })
        .collect()
}

/// A weight from its name and shape (the fixture script's `det_tensor`).
pub fn tensor(name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or("");
    let v: Vec<f32> = values(name, n)
        .into_iter()
        .map(|u| {
            let x = match leaf {
                "running_var" => 1.0 + 0.25 * (u + 1.0),
                "running_mean" | "bias" => 0.1 * u,
                "gamma" => 0.5 + 0.1 * u,
                _ if shape.len() <= 1 => 1.0 + 0.1 * u,
                _ => {
                    let fan_in: usize = shape[1..].iter().product();
                    u * (3.0 / fan_in as f64).sqrt()
                }
            };
            x as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The fixture script's batch-2 64×96 input.
pub fn input() -> Tensor {
    let v: Vec<f32> = values("input", 2 * 3 * 64 * 96)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    Tensor::from_vec(v, (2, 3, 64, 96), &Device::Cpu).unwrap()
}

//! The values behind candle's storages and tensors, borrowed for the CPU kernels.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// The f32 values a contiguous layout covers; an error naming `op` for any other storage.
pub fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: input must be contiguous"),
        _ => candle_core::bail!("{op}: f32 only, got {:?}", s.dtype()),
    }
}

/// Runs `f` on the values of a contiguous f32 CPU tensor without copying them; `None` for any
/// other tensor (the caller then uses candle's ops).
pub fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => contiguous_f32(s, layout, "").ok().map(f),
        _ => None,
    }
}

/// How many values one parallel task takes from rows of `c` values: whole rows, about 16k
/// values, enough work to be worth a thread.
pub fn task_len(c: usize) -> usize {
    let c = c.max(1);
    (16_384 / c).max(1) * c
}

/// `rows(out, x)` over chunks of whole rows of `c` values ([`task_len`]) in parallel, into a
/// new vector of `x.len()` values.
///
/// The vector is not zeroed first. Zeroing is one serial pass over the output (the allocator
/// keeps freed memory, so it is not fresh zero pages), and it cost about as much as the op
/// itself: ConvNeXt-T's stage-0 GELU in the traced forward, 4.8 MB.
///
/// # Safety
/// `rows` must write every value of the `out` it is given (as long as its `x`).
pub unsafe fn map_rows(
    x: &[f32],
    c: usize,
    rows: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) -> Vec<f32> {
    let chunk = task_len(c);
    let mut out: Vec<f32> = Vec::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(o, xi)| {
            // SAFETY: `o` is this task's own part of the allocation, and `rows` writes all of
            // it before anything reads it (the caller's promise).
            let o =
                unsafe { std::slice::from_raw_parts_mut(o.as_mut_ptr().cast::<f32>(), o.len()) };
            rows(o, xi)
        });
    // SAFETY: every value was written above.
    unsafe { out.set_len(x.len()) };
    out
}

#[cfg(test)]
mod tests {
    /// Every value of every chunk, the short last one too, comes from `rows`.
    #[test]
    fn map_rows_covers_every_chunk() {
        let c = 5;
        let x: Vec<f32> = (0..c * 10_001).map(|i| i as f32).collect();
        assert!(x.len() > 3 * super::task_len(c) && !x.len().is_multiple_of(super::task_len(c)));
        // SAFETY: the closure writes every value of `o`.
        let out = unsafe {
            super::map_rows(&x, c, |o, xi| {
                for (o, x) in o.iter_mut().zip(xi) {
                    *o = 2.0 * x + 1.0;
                }
            })
        };
        assert_eq!(out.len(), x.len());
        assert!(out.iter().zip(&x).all(|(o, x)| *o == 2.0 * x + 1.0));
    }
}

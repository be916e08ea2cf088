//! The values behind candle's storages and tensors, borrowed for the CPU kernels.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

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

//! Results kept on disk between launches (a layer's atlas of optimised images), keyed by what
//! made them. A cache file is only ever a shortcut: one that is missing, too large, of another
//! shape or unreadable is ignored and the result made again.
use crate::base::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Largest cache file read back: far above any atlas (768 channels of 224² RGB is 116 MB).
const MAX_BYTES: u64 = 512 << 20;

/// `CONVNEXT_CACHE_DIR` if set (tests use it), else `$XDG_CACHE_HOME/convnext-explorer`, else
/// `~/.cache/convnext-explorer` (`~/Library/Caches/…` on macOS, `%LOCALAPPDATA%\…` on Windows).
pub fn dir() -> Option<PathBuf> {
    let env_dir = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(d) = env_dir("CONVNEXT_CACHE_DIR") {
        return Some(d);
    }
    let base = if cfg!(target_os = "macos") {
        env_dir("HOME").map(|h| h.join("Library/Caches"))
    } else if cfg!(windows) {
        env_dir("LOCALAPPDATA")
    } else {
        env_dir("XDG_CACHE_HOME").or_else(|| env_dir("HOME").map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("convnext-explorer"))
}

/// A file's identity for a cache key: its path, length and modification time (a checkpoint
/// replaced in place gets a new key).
pub fn fingerprint(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let len = meta.as_ref().map_or(0, |m| m.len());
    let modified = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}|{len}|{modified}", path.display())
}

/// A file name from a key's text: 16 hex digits of its FNV-1a hash (no text from outside
/// becomes a path).
pub fn file_name(key: &str, ext: &str) -> String {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}.{ext}")
}

/// Reads back tensors written by [`write`], each checked against the shape and dtype wanted;
/// `Ok(None)` when the file is absent.
pub fn read(path: &Path, wanted: &[(&str, DType, &[usize])]) -> Result<Option<Vec<Tensor>>> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let bytes = crate::base::files::read_capped(path, MAX_BYTES, "a cache file")?;
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| Error::file(path, e))?;
    let mut out = Vec::with_capacity(wanted.len());
    for (name, dtype, shape) in wanted {
        let t = tensors
            .remove(*name)
            .filter(|t| t.dtype() == *dtype && t.dims() == *shape)
            .ok_or_else(|| Error::file(path, format!("no `{name}` of shape {shape:?}")))?;
        out.push(t);
    }
    Ok(Some(out))
}

/// Writes tensors to `path` (its folder made if needed), through a temporary file renamed into
/// place so that a reader never sees half a file.
pub fn write(path: &Path, tensors: HashMap<String, Tensor>) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::file(parent, e))?;
    }
    let tmp = path.with_extension("partial");
    candle_core::safetensors::save(&tensors, &tmp).map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back_and_a_wrong_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join(file_name("k", "safetensors"));
        let t = Tensor::new(&[[1u8, 2], [3, 4]], &Device::Cpu).unwrap();
        write(&p, HashMap::from([("images".to_string(), t)])).unwrap();
        let got = read(&p, &[("images", DType::U8, &[2, 2])])
            .unwrap()
            .unwrap();
        assert_eq!(
            got[0].to_vec2::<u8>().unwrap(),
            vec![vec![1, 2], vec![3, 4]]
        );
        assert!(read(&p, &[("images", DType::U8, &[4])]).is_err());
        assert!(read(&dir.path().join("none"), &[]).unwrap().is_none());
        std::fs::write(&p, b"not safetensors").unwrap();
        assert!(read(&p, &[("images", DType::U8, &[2, 2])]).is_err());
    }
}

//! PyTorch zip checkpoints (`torch.save` since 1.6): `<name>/data.pkl` says which tensors there
//! are, `<name>/data/<key>` holds each storage's bytes. Read with the project's own pickle
//! reader (see `pickle.rs`), and checked as PyTorch's `weights_only` loader checks them: one
//! `data.pkl`, no member twice, little-endian, each storage exactly `numel × element size` bytes,
//! each tensor inside its storage. Members are inflated with a cap.
use super::pickle::{self, Pickle, TensorRef, Value};
use super::stored::{
    checked_numel, tensor_from_bytes, Kind, Location, StoredDtype, StoredTensor, TensorFile,
};
use crate::base::error::{Error, Result};
use candle_core::Tensor;
use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::path::Path;

type Archive = zip::ZipArchive<BufReader<std::fs::File>>;

/// Largest `data.pkl` read: a state dict of a few thousand tensors is a few hundred kB.
pub const MAX_PICKLE_BYTES: u64 = 16 << 20;

/// Bytes a member may inflate to, per byte of the file: real checkpoints are stored
/// uncompressed (ratio 1); a zip bomb inflates a thousandfold.
const MAX_INFLATE_RATIO: u64 = 8;

/// Keys that hold the state dict in training checkpoints, in the order they are preferred.
const STATE_DICT_KEYS: [&str; 5] = [
    "model",
    "state_dict",
    "model_ema",
    "state_dict_ema",
    "module",
];

fn archive(path: &Path) -> Result<(Archive, u64)> {
    let (f, len) = crate::base::files::open_regular(path)?;
    let zip = zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| Error::file(path, format!("corrupt zip archive: {e}")))?;
    if zip.has_duplicate_names() {
        return Err(Error::file(
            path,
            "zip archive lists a member twice: refused",
        ));
    }
    Ok((zip, len))
}

/// The archive's one `<prefix>/data.pkl`.
fn pickle_member(path: &Path, zip: &Archive) -> Result<(String, String)> {
    let pkls: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n.ends_with("data.pkl"))
        .collect();
    match pkls.as_slice() {
        [one] => {
            let prefix = one.strip_suffix("data.pkl").unwrap_or_default();
            Ok((one.to_string(), prefix.to_string()))
        }
        [] => Err(Error::file(
            path,
            "zip archive holds no data.pkl: not a PyTorch checkpoint",
        )),
        many => Err(Error::file(
            path,
            format!(
                "zip archive holds {} data.pkl files ({}): ambiguous, refused",
                many.len(),
                many.join(", ")
            ),
        )),
    }
}

/// A member's bytes, inflated to at most `cap`; the length it declares must be `want` if given.
fn member(
    path: &Path,
    zip: &mut Archive,
    name: &str,
    cap: u64,
    want: Option<u64>,
) -> Result<Vec<u8>> {
    let f = zip
        .by_name(name)
        .map_err(|e| Error::file(path, format!("zip member `{name}`: {e}")))?;
    let size = f.size();
    if let Some(w) = want {
        if size != w {
            return Err(Error::file(
                path,
                format!("zip member `{name}` holds {size} bytes where its tensors need {w}"),
            ));
        }
    }
    if size > cap {
        return Err(Error::file(
            path,
            format!("zip member `{name}` declares {size} bytes, more than the {cap}-byte limit"),
        ));
    }
    let mut out = Vec::with_capacity(size as usize);
    f.take(size + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::file(path, format!("zip member `{name}`: {e}")))?;
    if out.len() as u64 != size {
        return Err(Error::file(
            path,
            format!(
                "zip member `{name}` inflates to {} bytes, not the {size} it declares",
                out.len()
            ),
        ));
    }
    Ok(out)
}

pub fn open(path: &Path) -> Result<TensorFile> {
    let (mut zip, _) = archive(path)?;
    let (pkl, prefix) = pickle_member(path, &zip)?;
    let byteorder = format!("{prefix}byteorder");
    if zip.index_for_name(&byteorder).is_some() {
        let order = member(path, &mut zip, &byteorder, 16, None)?;
        if order != b"little" {
            return Err(Error::file(path, "big-endian checkpoint: not supported"));
        }
    }
    let bytes = member(path, &mut zip, &pkl, MAX_PICKLE_BYTES, None)?;
    let p = pickle::parse(&bytes).map_err(|e| Error::file(path, format!("corrupt pickle: {e}")))?;
    let entries = state_dict(&p).map_err(|e| Error::file(path, e))?;
    let tensors = entries
        .into_iter()
        .map(|(name, t)| stored(name, t))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(|e| Error::file(path, e))?;
    check_storages_agree(&tensors).map_err(|e| Error::file(path, e))?;
    check_member_sizes(path, &mut zip, &prefix, &tensors)?;
    Ok(TensorFile {
        path: path.to_path_buf(),
        kind: Kind::Pytorch { prefix },
        tensors,
    })
}

/// The state dict: the top-level dict if it holds tensors, else the dict under the first of
/// [`STATE_DICT_KEYS`] it has. Every entry must be a name and a tensor, each name once.
fn state_dict(p: &Pickle) -> std::result::Result<Vec<(String, &TensorRef)>, String> {
    let top = p
        .dict(&p.top)
        .ok_or("the pickle holds no dict of tensors")?;
    let holds_tensors = top.iter().any(|(_, v)| p.tensor(v).is_some());
    let sd = if holds_tensors {
        top
    } else {
        let under = |key: &str| {
            top.iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
                .and_then(|(_, v)| p.dict(v))
        };
        STATE_DICT_KEYS
            .iter()
            .find_map(|k| under(k))
            .ok_or("no state dict: the top-level dict holds no tensors and none of the keys model, state_dict, model_ema, state_dict_ema, module")?
    };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(sd.len());
    for (k, v) in sd {
        let Value::Str(name) = k else {
            return Err("a state dict key is not a string".into());
        };
        let t = p
            .tensor(v)
            .ok_or_else(|| format!("state dict entry `{name}` is not a tensor"))?;
        if !seen.insert(name.clone()) {
            return Err(format!(
                "the state dict sets `{name}` twice: ambiguous, refused"
            ));
        }
        out.push((name.to_string(), t));
    }
    Ok(out)
}

/// Tensors that share a storage must agree on its size and element type (each was checked to
/// lie inside the storage it declares; the storage is read once, at the size it declares).
fn check_storages_agree(tensors: &[StoredTensor]) -> std::result::Result<(), String> {
    let mut seen: HashMap<&str, (u64, StoredDtype, &str)> = HashMap::new();
    for t in tensors {
        if let Location::Storage { key, numel, .. } = &t.location {
            let (n, d, first) = *seen.entry(key).or_insert((*numel, t.dtype, &t.name));
            if (n, d) != (*numel, t.dtype) {
                return Err(format!(
                    "tensors `{first}` and `{}` describe storage {key} differently: refused",
                    t.name
                ));
            }
        }
    }
    Ok(())
}

/// Each storage's member must hold exactly `numel × element size` bytes (checked from the zip's
/// directory, before any data is read).
fn check_member_sizes(
    path: &Path,
    zip: &mut Archive,
    prefix: &str,
    tensors: &[StoredTensor],
) -> Result<()> {
    let mut done = HashSet::new();
    for t in tensors {
        let Location::Storage { key, numel, .. } = &t.location else {
            continue;
        };
        if !done.insert(key.as_str()) {
            continue;
        }
        let name = format!("{prefix}data/{key}");
        let size = zip
            .by_name(&name)
            .map_err(|e| {
                Error::file(
                    path,
                    format!("tensor `{}`: zip member `{name}`: {e}", t.name),
                )
            })?
            .size();
        let want = numel.checked_mul(t.dtype.size() as u64);
        if want != Some(size) {
            return Err(Error::file(
                path,
                format!(
                    "tensor `{}`: storage `{name}` of {numel} {} elements needs {} bytes, the archive holds {size}",
                    t.name,
                    t.dtype.name(),
                    want.map_or("more than 2^64".to_string(), |w| w.to_string())
                ),
            ));
        }
    }
    Ok(())
}

/// A tensor of the state dict, checked to lie inside its storage.
fn stored(name: String, t: &TensorRef) -> std::result::Result<StoredTensor, String> {
    let s = &t.storage;
    let dtype = StoredDtype::from_storage(&s.kind)
        .ok_or_else(|| format!("tensor `{name}` has unsupported storage type `{}`", s.kind))?;
    let shape: Vec<usize> = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("tensor `{name}` has a dimension too large"))?;
    let numel = checked_numel(&shape)
        .ok_or_else(|| format!("tensor `{name}` has shape {shape:?}, too large"))?;
    // The last element's index: offset + Σ (size - 1) × stride, within the storage.
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &st)| {
            d.checked_sub(1).map_or(Some(acc), |d1| {
                d1.checked_mul(st).and_then(|x| acc.checked_add(x))
            })
        });
    let inside = numel == 0 || last.is_some_and(|l| l < s.numel);
    if !inside {
        return Err(format!(
            "tensor `{name}` (shape {shape:?}, stride {:?}, offset {}) reaches past its storage of {} elements",
            t.stride, t.offset, s.numel
        ));
    }
    Ok(StoredTensor {
        name,
        dtype,
        shape,
        location: Location::Storage {
            key: s.key.to_string(),
            numel: s.numel,
            offset: t.offset,
            stride: t.stride.clone(),
        },
    })
}

pub fn read(file: &TensorFile, prefix: &str, indices: &[usize]) -> Result<Vec<Tensor>> {
    let path = &file.path;
    let (mut zip, len) = archive(path)?;
    let mut budget = len.saturating_mul(MAX_INFLATE_RATIO);
    // Each storage is read once, however many tensors view it.
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(indices.len());
    for &i in indices {
        let t = &file.tensors[i];
        let Location::Storage {
            key,
            numel,
            offset,
            stride,
        } = &t.location
        else {
            return Err(Error::file(path, "inconsistent checkpoint table"));
        };
        let elt = t.dtype.size() as u64;
        if !storages.contains_key(key) {
            let want = numel.checked_mul(elt).unwrap_or(u64::MAX);
            let name = format!("{prefix}data/{key}");
            let bytes = member(path, &mut zip, &name, budget, Some(want))?;
            budget -= bytes.len() as u64;
            storages.insert(key.clone(), bytes);
        }
        let data = gather(&storages[key], t, *offset, stride);
        out.push(tensor_from_bytes(t, &data, path)?);
    }
    Ok(out)
}

/// The tensor's elements in row-major order (a copy of a slice when it is contiguous).
fn gather(storage: &[u8], t: &StoredTensor, offset: u64, stride: &[u64]) -> Vec<u8> {
    let elt = t.dtype.size();
    let numel = t.numel();
    let contiguous = {
        let mut want = 1u64;
        let mut ok = true;
        for (&d, &s) in t.shape.iter().zip(stride).rev() {
            ok &= d <= 1 || s == want;
            want *= d as u64;
        }
        ok
    };
    let start = offset as usize * elt;
    if contiguous {
        return storage[start..start + numel * elt].to_vec();
    }
    // Bounds were checked against the storage when the table was read.
    let mut out = Vec::with_capacity(numel * elt);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at: u64 = offset
            + idx
                .iter()
                .zip(stride)
                .map(|(&i, &s)| i as u64 * s)
                .sum::<u64>();
        let b = at as usize * elt;
        out.extend_from_slice(&storage[b..b + elt]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

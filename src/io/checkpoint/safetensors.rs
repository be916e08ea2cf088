//! safetensors: an 8-byte header length, a JSON table `{name: {dtype, shape, data_offsets}}`,
//! then the bytes. The table is checked as the format's own reader does (every byte range
//! matches its dtype × shape, the ranges tile the data with no gap or overlap, no name twice)
//! before any tensor is read; tensors are then read one by one from their ranges.
use super::stored::{
    checked_numel, tensor_from_bytes, Kind, Location, StoredDtype, StoredTensor, TensorFile,
    MAX_SAFETENSORS_HEADER,
};
use crate::base::error::{Error, Result};
use candle_core::Tensor;
use serde::de::{MapAccess, Visitor};
use serde::Deserialize;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The header's entries in file order, duplicates kept (a JSON map would silently keep one).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, serde_json::Value>()? {
                    v.push(e);
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct Info {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

pub fn open(path: &Path, mut f: File, len: u64, header_len: u64) -> Result<TensorFile> {
    let err = |m: String| Error::file(path, format!("invalid safetensors header: {m}"));
    if header_len > MAX_SAFETENSORS_HEADER {
        return Err(err(format!(
            "declares {header_len} bytes, more than the {MAX_SAFETENSORS_HEADER}-byte limit"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.seek(SeekFrom::Start(8))
        .and_then(|_| f.read_exact(&mut header))
        .map_err(|e| Error::file(path, e))?;
    let entries: Entries =
        serde_json::from_slice(&header).map_err(|e| err(format!("not JSON: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = len - data_start;
    let mut tensors = Vec::with_capacity(entries.0.len());
    let mut seen = std::collections::HashSet::new();
    for (name, value) in entries.0 {
        if name == "__metadata__" {
            continue;
        }
        if !seen.insert(name.clone()) {
            return Err(err(format!("tensor `{name}` is listed twice")));
        }
        let info: Info =
            serde_json::from_value(value).map_err(|e| err(format!("entry `{name}`: {e}")))?;
        tensors.push(entry(&name, info, data_start, data_len).map_err(err)?);
    }
    check_coverage(&tensors, data_start, data_len).map_err(err)?;
    Ok(TensorFile {
        path: path.to_path_buf(),
        kind: Kind::Safetensors,
        tensors,
    })
}

fn entry(
    name: &str,
    info: Info,
    data_start: u64,
    data_len: u64,
) -> std::result::Result<StoredTensor, String> {
    let dtype = StoredDtype::from_name(&info.dtype)
        .ok_or_else(|| format!("tensor `{name}` has unknown dtype `{}`", info.dtype))?;
    let shape: Vec<usize> = info
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("tensor `{name}` has a dimension too large"))?;
    if shape.len() > super::pickle::MAX_DIMS {
        return Err(format!("tensor `{name}` has {} dimensions", shape.len()));
    }
    let bytes = checked_numel(&shape)
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| format!("tensor `{name}` has shape {shape:?}, too large"))?;
    let [b, e] = info.data_offsets;
    if b > e || e > data_len || e - b != bytes as u64 {
        return Err(format!(
            "tensor `{name}` ({} {shape:?}, {bytes} bytes) has data_offsets [{b}, {e}] in {data_len} bytes of data",
            dtype.name()
        ));
    }
    Ok(StoredTensor {
        name: name.to_string(),
        dtype,
        shape,
        location: Location::Range {
            start: data_start + b,
            len: bytes as u64,
        },
    })
}

/// The ranges must tile the data exactly: no gap, no overlap, nothing after the last.
fn check_coverage(
    tensors: &[StoredTensor],
    data_start: u64,
    data_len: u64,
) -> std::result::Result<(), String> {
    let mut ranges: Vec<(u64, u64, &str)> = tensors
        .iter()
        .filter_map(|t| match t.location {
            Location::Range { start, len } => Some((start - data_start, len, t.name.as_str())),
            Location::Storage { .. } => None,
        })
        .collect();
    ranges.sort();
    let mut at = 0u64;
    for (b, len, name) in ranges {
        if b != at {
            return Err(format!(
                "tensor `{name}` starts at byte {b} of the data where {at} was expected (a gap or an overlap)"
            ));
        }
        at = b + len;
    }
    if at != data_len {
        return Err(format!(
            "{} bytes of data after the last tensor",
            data_len - at
        ));
    }
    Ok(())
}

pub fn read(file: &TensorFile, indices: &[usize]) -> Result<Vec<Tensor>> {
    let path = &file.path;
    let (mut f, _) = crate::base::files::open_regular(path)?;
    let mut out = Vec::with_capacity(indices.len());
    for &i in indices {
        let t = &file.tensors[i];
        let Location::Range { start, len } = t.location else {
            return Err(Error::file(path, "inconsistent safetensors table"));
        };
        // `len` was checked against the file's length when the header was read.
        let mut bytes = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(|e| Error::file(path, format!("tensor `{}`: {e}", t.name)))?;
        out.push(tensor_from_bytes(t, &bytes, path)?);
    }
    Ok(out)
}

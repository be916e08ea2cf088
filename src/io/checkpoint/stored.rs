//! The tensors a weights file holds, as its header describes them (name, dtype, shape, where the
//! bytes are), read without touching the data; and then the data of the ones wanted.
use crate::base::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// How a tensor is stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    U16,
    U32,
    U64,
    Bool,
    F8E4M3,
    F8E5M2,
}

impl StoredDtype {
    pub fn size(self) -> usize {
        use StoredDtype::*;
        match self {
            F64 | I64 | U64 => 8,
            F32 | I32 | U32 => 4,
            F16 | BF16 | I16 | U16 => 2,
            I8 | U8 | Bool | F8E4M3 | F8E5M2 => 1,
        }
    }

    /// The name safetensors uses (also how errors name it).
    pub fn name(self) -> &'static str {
        use StoredDtype::*;
        match self {
            F64 => "F64",
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            I64 => "I64",
            I32 => "I32",
            I16 => "I16",
            I8 => "I8",
            U8 => "U8",
            U16 => "U16",
            U32 => "U32",
            U64 => "U64",
            Bool => "BOOL",
            F8E4M3 => "F8_E4M3",
            F8E5M2 => "F8_E5M2",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        use StoredDtype::*;
        [
            F64, F32, F16, BF16, I64, I32, I16, I8, U8, U16, U32, U64, Bool, F8E4M3, F8E5M2,
        ]
        .into_iter()
        .find(|d| d.name() == s)
    }

    /// PyTorch's storage classes (`torch.FloatStorage`, …).
    pub fn from_storage(kind: &str) -> Option<Self> {
        use StoredDtype::*;
        Some(match kind {
            "DoubleStorage" => F64,
            "FloatStorage" => F32,
            "HalfStorage" => F16,
            "BFloat16Storage" => BF16,
            "LongStorage" => I64,
            "IntStorage" => I32,
            "ShortStorage" => I16,
            "CharStorage" => I8,
            "ByteStorage" => U8,
            "BoolStorage" => Bool,
            _ => return None,
        })
    }

    /// The dtype a weight of this kind loads as; `None` for what no ConvNeXt weight can be.
    pub fn float(self) -> Option<DType> {
        match self {
            StoredDtype::F64 => Some(DType::F64),
            StoredDtype::F32 => Some(DType::F32),
            StoredDtype::F16 => Some(DType::F16),
            StoredDtype::BF16 => Some(DType::BF16),
            _ => None,
        }
    }
}

/// Where a tensor's bytes are.
#[derive(Clone, Debug)]
pub enum Location {
    /// A byte range of the file (safetensors).
    Range { start: u64, len: u64 },
    /// Elements of a PyTorch storage (a zip member), at an offset with strides.
    Storage {
        key: String,
        numel: u64,
        offset: u64,
        stride: Vec<u64>,
    },
}

#[derive(Clone, Debug)]
pub struct StoredTensor {
    pub name: String,
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
    pub location: Location,
}

impl StoredTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Element count of a shape, refusing overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

pub enum Kind {
    Safetensors,
    /// The archive's folder name (`archive` in `archive/data.pkl`).
    Pytorch {
        prefix: String,
    },
}

/// A weights file's table of contents.
pub struct TensorFile {
    pub path: PathBuf,
    pub kind: Kind,
    pub tensors: Vec<StoredTensor>,
}

/// Largest safetensors header read; real ones are a few hundred kB.
pub const MAX_SAFETENSORS_HEADER: u64 = 16 << 20;

/// A tensor from raw little-endian bytes of a float dtype.
pub fn tensor_from_bytes(t: &StoredTensor, bytes: &[u8], path: &Path) -> Result<Tensor> {
    let dtype = t.dtype.float().ok_or_else(|| {
        Error::file(
            path,
            format!(
                "tensor `{}` has dtype {}, not a float",
                t.name,
                t.dtype.name()
            ),
        )
    })?;
    Tensor::from_raw_buffer(bytes, dtype, &t.shape, &Device::Cpu)
        .map_err(|e| Error::file(path, format!("tensor `{}`: {e}", t.name)))
}

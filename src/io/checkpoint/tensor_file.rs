//! Opening a weights file: its format is told by content (not by extension), then the format's
//! reader gives the table of contents and the data. Apart from `stored.rs` (the types every
//! reader fills in) so that the readers do not use the module that calls them.
use super::stored::{Kind, TensorFile};
use super::{pytorch, safetensors};
use crate::base::error::{Error, Result};
use candle_core::Tensor;
use std::path::Path;

impl TensorFile {
    /// Reads the table of contents of a safetensors or PyTorch file, by content (not by
    /// extension), without reading any tensor's data.
    pub fn open(path: &Path) -> Result<TensorFile> {
        let (mut f, len) = crate::base::files::open_regular(path)?;
        if len == 0 {
            return Err(Error::file(path, "file is empty"));
        }
        let mut head = [0u8; 9];
        let n = read_up_to(&mut f, &mut head).map_err(|e| Error::file(path, e))?;
        if n >= 4 && &head[..4] == b"PK\x03\x04" {
            return pytorch::open(path);
        }
        if n < 9 {
            return Err(Error::file(path, "file too short to be a checkpoint"));
        }
        let header_len = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        if head[8] == b'{' && header_len >= 2 && header_len.saturating_add(8) <= len {
            return safetensors::open(path, f, len, header_len);
        }
        if head[0] == 0x80 {
            return Err(Error::file(
                path,
                "legacy (pre-1.6, non-zip) PyTorch pickle: re-save it with torch.save(..., _use_new_zipfile_serialization=True) or as safetensors",
            ));
        }
        Err(Error::file(
            path,
            "neither a safetensors file nor a PyTorch (zip) checkpoint (truncated or corrupt?)",
        ))
    }

    /// The data of the tensors at `indices` (float dtypes only), in that order, on the CPU.
    pub fn read(&self, indices: &[usize]) -> Result<Vec<Tensor>> {
        match &self.kind {
            Kind::Safetensors => safetensors::read(self, indices),
            Kind::Pytorch { prefix } => pytorch::read(self, prefix, indices),
        }
    }
}

/// Reads into `buf` until it is full or the file ends; how many bytes were read.
fn read_up_to(f: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

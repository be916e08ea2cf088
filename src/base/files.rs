//! Reading files a user hands us: only regular files (a FIFO or `/dev/zero` behind a name is
//! refused, never waited on or read forever), never more bytes than a cap that depends on what
//! the file is for.
use crate::base::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Largest JSON config read (`config.json` with 21,841 ImageNet-22k labels is about 1 MB).
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Largest image file read.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// Opens `path` for reading if it is a regular file (following links), with its length.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::file(path, e))?;
    if !meta.is_file() {
        return Err(Error::file(path, not_regular(&meta)));
    }
    let f = open_nonblocking(path).map_err(|e| Error::file(path, e))?;
    // Checked again on the open file: the name may have been swapped in between.
    let meta = f.metadata().map_err(|e| Error::file(path, e))?;
    if !meta.is_file() {
        return Err(Error::file(path, not_regular(&meta)));
    }
    Ok((f, meta.len()))
}

fn not_regular(meta: &std::fs::Metadata) -> &'static str {
    if meta.is_dir() {
        "is a folder, not a file"
    } else {
        "is not a regular file (a pipe, device or socket): refused"
    }
}

/// Opening a FIFO for reading blocks until a writer comes; non-blocking, it returns at once
/// (and the check after opening refuses it).
#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// The whole of a regular file of at most `cap` bytes; `what` names it in the error.
pub fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    if len > cap {
        return Err(Error::file(
            path,
            format!(
                "{} is larger than the {} limit for {what}",
                mb(len),
                mb(cap)
            ),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::file(path, e))?;
    if out.len() as u64 > cap {
        return Err(Error::file(
            path,
            format!("grew past the {} limit for {what}", mb(cap)),
        ));
    }
    Ok(out)
}

/// `12.3 MB`.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A JSON config: `None` when there is no such file; an error naming the file and the line
/// when it is there but unreadable, too large or not JSON.
pub fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read_capped(path, MAX_CONFIG_BYTES, "a config")?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::file(
            path,
            format!(
                "not valid JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })
}

//! Folders of images: every image below a folder, recursively and in name order, with a limit.
//! Links to folders are not followed (a link loop cannot trap the walk), and depth is capped.
use crate::error::{Error, Result};
use crate::preprocess::is_image_file;
use std::path::{Path, PathBuf};

/// Deepest folder nesting walked.
pub const MAX_DEPTH: usize = 32;

/// The image files below `dir` (by extension; decoding goes by content later), sorted by path,
/// at most `limit` of them.
pub fn list_images(dir: &Path, limit: Option<usize>) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::file(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::file(dir, "is not a folder"));
    }
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    walk(dir, 0, limit, &mut out)?;
    if out.is_empty() {
        return Err(Error::file(
            dir,
            format!(
                "holds no image ({})",
                crate::preprocess::IMAGE_EXTENSIONS.join(", ")
            ),
        ));
    }
    Ok(out)
}

fn walk(dir: &Path, depth: usize, limit: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mut entries: Vec<(PathBuf, std::fs::FileType)> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_type().ok().map(|t| (e.path(), t)))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, kind) in entries {
        if out.len() >= limit {
            break;
        }
        if kind.is_dir() {
            walk(&path, depth + 1, limit, out)?;
        } else if is_image_file(&path) && !kind.is_dir() {
            out.push(path);
        }
    }
    Ok(())
}

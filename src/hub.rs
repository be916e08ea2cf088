//! Hugging Face downloads (feature `hub`): a repo's config, weights and preprocessing config,
//! copied into `weights/<owner>--<name>/` so that the loader and the app find them. Needs the
//! network, so no test runs it; the files it writes are read by the same loader the tests cover.
use crate::error::{Error, Result};
use crate::progress::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use std::path::{Path, PathBuf};

/// Repos users most often want (timm and Hugging Face transformers layouts).
pub const COMMON_REPOS: &[&str] = &[
    "timm/convnext_atto.d2_in1k",
    "timm/convnext_tiny.fb_in1k",
    "timm/convnext_small.fb_in1k",
    "timm/convnext_base.fb_in22k_ft_in1k",
    "timm/convnextv2_nano.fcmae_ft_in22k_in1k",
    "timm/convnextv2_tiny.fcmae_ft_in22k_in1k",
    "facebook/convnext-tiny-224",
    "facebook/convnext-base-224-22k",
    "facebook/convnextv2-tiny-1k-224",
];

/// The folder a repo lands in under `dest_root`.
pub fn dest_folder(repo_id: &str, dest_root: &Path) -> Result<PathBuf> {
    let ok = repo_id.split('/').count() == 2
        && !repo_id.contains("..")
        && repo_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if !ok {
        return Err(Error::Input(format!(
            "`{repo_id}` is not a Hugging Face repo id (owner/name)"
        )));
    }
    Ok(dest_root.join(repo_id.replace('/', "--")))
}

/// Downloads `repo_id` (with a progress bar on the terminal) into `dest_root`; returns the folder.
pub fn download(repo_id: &str, dest_root: &Path) -> Result<PathBuf> {
    fetch_repo(repo_id, dest_root, true, |repo, file| repo.get(file))
}

/// Raised (by unwinding, which hf-hub's progress callback offers no other way to do) when a
/// download is cancelled; [`download_with_progress`] catches it.
struct Cancelled;

/// hf-hub's progress callbacks, forwarded to a [`Progress`].
struct Reporter<'a> {
    file: String,
    done: usize,
    total: usize,
    progress: &'a mut dyn Progress,
}

impl hf_hub::api::Progress for Reporter<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.file = filename.to_string();
        self.total = size;
        self.progress.update(0, size, &self.file);
    }
    fn update(&mut self, size: usize) {
        if self.progress.cancelled() {
            // resume_unwind skips the panic hook: this is control flow, not a bug.
            std::panic::resume_unwind(Box::new(Cancelled));
        }
        self.done += size;
        self.progress.update(self.done, self.total, &self.file);
    }
    fn finish(&mut self) {}
}

/// Like [`download`], reporting each file's bytes to `progress` and stopping soon after it
/// says the user cancelled ([`Error::Cancelled`]).
pub fn download_with_progress(
    repo_id: &str,
    dest_root: &Path,
    progress: &mut dyn Progress,
) -> Result<PathBuf> {
    let run = std::panic::AssertUnwindSafe(|| {
        fetch_repo(repo_id, dest_root, false, |repo, file| {
            let reporter = Reporter {
                file: file.to_string(),
                done: 0,
                total: 0,
                progress: &mut *progress,
            };
            repo.download_with_progress(file, reporter)
        })
    });
    match std::panic::catch_unwind(run) {
        Ok(r) => r,
        Err(payload) if payload.is::<Cancelled>() => {
            Err(Error::Cancelled(format!("download of `{repo_id}`")))
        }
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

fn fetch_repo(
    repo_id: &str,
    dest_root: &Path,
    terminal_progress: bool,
    mut fetch: impl FnMut(&ApiRepo, &str) -> std::result::Result<PathBuf, ApiError>,
) -> Result<PathBuf> {
    let err = |e: ApiError| Error::Download {
        repo: repo_id.to_string(),
        msg: e.to_string(),
    };
    let dest = dest_folder(repo_id, dest_root)?;
    let api = ApiBuilder::new()
        .with_progress(terminal_progress)
        .build()
        .map_err(err)?;
    let repo = api.model(repo_id.to_string());
    let config = fetch(&repo, "config.json").map_err(err)?;
    let preprocessor = fetch(&repo, "preprocessor_config.json").ok();
    let weights = match fetch(&repo, "model.safetensors") {
        Ok(p) => (p, "model.safetensors"),
        Err(_) => (
            fetch(&repo, "pytorch_model.bin").map_err(err)?,
            "pytorch_model.bin",
        ),
    };
    // Only a complete download becomes a folder in weights/.
    std::fs::create_dir_all(&dest).map_err(|e| Error::file(&dest, e))?;
    copy(&config, &dest.join("config.json"))?;
    if let Some(p) = preprocessor {
        copy(&p, &dest.join("preprocessor_config.json"))?;
    }
    copy(&weights.0, &dest.join(weights.1))?;
    Ok(dest)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(|e| Error::file(to, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn repo_ids_are_checked_before_any_request() {
        let root = Path::new("/w");
        assert_eq!(
            dest_folder("timm/convnext_tiny.fb_in1k", root).unwrap(),
            root.join("timm--convnext_tiny.fb_in1k")
        );
        for bad in ["convnext", "a/b/c", "../x", "a/..", "a/b c", ""] {
            let e = dest_folder(bad, root).err().unwrap().to_string();
            assert!(e.contains("not a Hugging Face repo id"), "{bad}: {e}");
        }
    }
}

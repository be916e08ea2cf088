//! Hugging Face downloads (feature `hub`): a repo's config, weights and preprocessing config,
//! copied into `weights/<owner>--<name>/` so that the loader and the app find them.
//!
//! The hub is `HF_ENDPOINT` where set (a mirror; the tests' local server), else huggingface.co;
//! hf-hub's cache is `HF_HOME` (default `~/.cache/huggingface`). A transfer cut short resumes
//! from hf-hub's partial file, within the call (a few retries) and at the next attempt; nothing
//! reaches `weights/` until every file is complete.
use crate::base::error::{Error, Result};
use crate::base::progress::Progress;
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
        // hf-hub calls this again before each (re)started transfer, then reports the bytes a
        // resumed one already has as an update: start over each time.
        self.file = filename.to_string();
        self.done = 0;
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

/// Where downloads come from: `HF_ENDPOINT`, else the Hugging Face hub.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

/// Retries of a transfer that broke off, each resuming where the last one stopped.
const RETRIES: usize = 2;

/// Is this the hub saying the file (or the whole repo) is not there?
fn not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(b) if matches!(**b, ureq::Error::Status(404, _)))
}

/// One line a user can act on, for what hf-hub reports.
fn explain(e: ApiError, file: &str) -> String {
    let ApiError::RequestError(boxed) = &e else {
        return format!("{file}: {e}");
    };
    match &**boxed {
        ureq::Error::Status(code, r) => match (code, r.header("x-error-code")) {
            (401 | 404, Some("RepositoryNotFound")) => {
                format!("no such repo on {} (or it is private)", endpoint())
            }
            (404, Some("RevisionNotFound")) => "the repo has no `main` branch".into(),
            (404, _) => format!("{file} is not in the repo"),
            (code, _) => format!("{file}: the hub answered HTTP {code}"),
        },
        ureq::Error::Transport(t) => format!("could not reach {}: {t}", endpoint()),
    }
}

fn fetch_repo(
    repo_id: &str,
    dest_root: &Path,
    terminal_progress: bool,
    mut fetch: impl FnMut(&ApiRepo, &str) -> std::result::Result<PathBuf, ApiError>,
) -> Result<PathBuf> {
    let fail = |msg: String| Error::Download {
        repo: repo_id.to_string(),
        msg,
    };
    let dest = dest_folder(repo_id, dest_root)?;
    let api = ApiBuilder::from_env()
        .with_progress(terminal_progress)
        .with_retries(RETRIES)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let repo = api.model(repo_id.to_string());
    let config = fetch(&repo, "config.json").map_err(|e| fail(explain(e, "config.json")))?;
    let preprocessor = match fetch(&repo, "preprocessor_config.json") {
        Ok(p) => Some(p),
        Err(e) if not_found(&e) => None,
        Err(e) => return Err(fail(explain(e, "preprocessor_config.json"))),
    };
    // Only a missing model.safetensors sends us to the older pickle; a failed transfer is an
    // error of its own, not a reason to fetch something else.
    let weights = match fetch(&repo, "model.safetensors") {
        Ok(p) => (p, "model.safetensors"),
        Err(e) if not_found(&e) => match fetch(&repo, "pytorch_model.bin") {
            Ok(p) => (p, "pytorch_model.bin"),
            Err(e) if not_found(&e) => {
                return Err(fail(
                    "the repo has neither model.safetensors nor pytorch_model.bin".into(),
                ))
            }
            Err(e) => return Err(fail(explain(e, "pytorch_model.bin"))),
        },
        Err(e) => return Err(fail(explain(e, "model.safetensors"))),
    };
    // Only a complete download becomes a folder in weights/: each file is copied under a
    // temporary name and renamed, the weights before the config the loader looks for first.
    std::fs::create_dir_all(&dest).map_err(|e| Error::file(&dest, e))?;
    copy(&weights.0, &dest.join(weights.1))?;
    if let Some(p) = preprocessor {
        copy(&p, &dest.join("preprocessor_config.json"))?;
    }
    copy(&config, &dest.join("config.json"))?;
    Ok(dest)
}

/// Copies whole or not at all (a half-copied file never carries the final name).
fn copy(from: &Path, to: &Path) -> Result<()> {
    let mut partial = to.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::copy(from, &partial).map_err(|e| Error::file(to, e))?;
    std::fs::rename(&partial, to).map_err(|e| Error::file(to, e))?;
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

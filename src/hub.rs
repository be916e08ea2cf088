//! Hugging Face downloads (feature `hub`): a repo's config, weights and preprocessing config,
//! copied into `weights/<owner>--<name>/` so that the loader and the app find them. Needs the
//! network, so no test runs it; the files it writes are read by the same loader the tests cover.
use crate::error::{Error, Result};
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

/// Downloads `repo_id` (with a progress bar on the terminal) into `dest_root`; returns the folder.
pub fn download(repo_id: &str, dest_root: &Path) -> Result<PathBuf> {
    let err = |e: hf_hub::api::sync::ApiError| {
        Error::Input(format!("download of `{repo_id}` failed: {e}"))
    };
    if repo_id.split('/').count() != 2 || repo_id.contains("..") {
        return Err(Error::Input(format!(
            "`{repo_id}` is not a Hugging Face repo id (owner/name)"
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(true)
        .build()
        .map_err(err)?;
    let repo = api.model(repo_id.to_string());
    let dest = dest_root.join(repo_id.replace('/', "--"));
    std::fs::create_dir_all(&dest).map_err(|e| Error::file(&dest, e))?;
    let config = repo.get("config.json").map_err(err)?;
    copy(&config, &dest.join("config.json"))?;
    if let Ok(p) = repo.get("preprocessor_config.json") {
        copy(&p, &dest.join("preprocessor_config.json"))?;
    }
    let weights = match repo.get("model.safetensors") {
        Ok(p) => (p, "model.safetensors"),
        Err(_) => (
            repo.get("pytorch_model.bin").map_err(err)?,
            "pytorch_model.bin",
        ),
    };
    copy(&weights.0, &dest.join(weights.1))?;
    Ok(dest)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(|e| Error::file(to, e))?;
    Ok(())
}

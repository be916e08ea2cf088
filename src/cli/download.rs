//! `download`: a Hugging Face repo into `weights/`, then what the loader makes of it.
use crate::base::text::human;
use crate::io::checkpoint::CheckpointInfo;
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// e.g. `timm/convnext_tiny.fb_in1k` or `facebook/convnext-tiny-224`.
    repo: String,
}

pub fn run(a: &DownloadArgs) -> Result<()> {
    let dir = crate::io::hub::download(&a.repo, &crate::io::engine::weights_dir())?;
    let info = CheckpointInfo::read(&dir)?;
    println!(
        "{} ({}, {}) in {}",
        info.config.describe(),
        info.format,
        human(info.num_params as f64),
        dir.display()
    );
    Ok(())
}

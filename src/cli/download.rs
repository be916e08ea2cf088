//! `download`: a Hugging Face repo into `weights/` (or `--out`), verified, then what the loader
//! makes of it and the sha256 of the weights kept.
use crate::base::progress::Progress;
use crate::base::text::human;
use crate::io::checkpoint::CheckpointInfo;
use crate::io::hub::{download, DownloadOptions};
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// e.g. `timm/convnext_tiny.fb_in1k` or `facebook/convnext-tiny-224`.
    repo: String,
    /// The folder the repo's folder goes in; default `weights/` in the current folder if it
    /// exists, else the user's data folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The sha256 the weights file must have (from a source you trust): a mirror that serves
    /// other bytes, with or without a matching hash header, is refused.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
}

pub fn run(a: &DownloadArgs) -> Result<()> {
    let root = match &a.out {
        Some(d) => d.clone(),
        None => crate::io::engine::download_dir()
            .context("no folder to download into: pass --out DIR (no ./weights, no HOME)")?,
    };
    let options = DownloadOptions {
        sha256: a.sha256.clone(),
        ..DownloadOptions::from_env()
    };
    let got = download(&a.repo, &root, &options, &mut Bar::new())?;
    for n in &got.notes {
        eprintln!("note: {n}");
    }
    let info = CheckpointInfo::read(&got.dir)?;
    println!(
        "{} ({}, {}) in {}",
        info.config.describe(),
        info.format,
        human(info.num_params as f64),
        got.dir.display()
    );
    for f in got.files.iter().filter(|f| f.weights) {
        println!("sha256 {}  {}", f.sha256, f.name);
    }
    Ok(())
}

/// A byte bar per file on a terminal (hidden elsewhere): bytes, total and rate.
struct Bar {
    bar: indicatif::ProgressBar,
    file: String,
}

impl Bar {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self {
            bar,
            file: String::new(),
        }
    }
}

impl Progress for Bar {
    fn update(&mut self, done: usize, total: usize, what: &str) {
        if what != self.file {
            self.file = what.to_string();
            self.bar.reset();
            self.bar.set_message(self.file.clone());
        }
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

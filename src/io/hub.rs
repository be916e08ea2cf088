//! Hugging Face downloads (feature `hub`): a repo's config, weights and preprocessing config
//! into `<root>/<owner>--<name>/`, where the loader and the app find them.
//!
//! The hub is `HF_ENDPOINT` where set (a mirror; the tests' local server), else huggingface.co,
//! and nothing it says is trusted: only the fixed file names below are ever written, no string
//! from the server becomes a path, every file's length and hash are checked against what the
//! hub states (and the weights against `--sha256` when given), and the files go to a staging
//! folder beside the destination. Only when every file is complete, verified and accepted by
//! the strict loader does one rename put the new folder in place of the old one; on any failure
//! or cancel the staging folder is removed and an existing model is untouched.
//! The transport and its limits are in [`http`].
mod http;

use crate::base::error::{Error, Result};
use crate::base::progress::Progress;
use http::{Client, Expected, Failure, Kind, Limits};
use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

pub use http::{token_allowed, CONNECT_TIMEOUT, MAX_REDIRECTS};

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

/// The most a config or preprocessing file may be.
pub const MAX_CONFIG_BYTES: u64 = 8_000_000;
/// The stall window when neither the options nor `CONVNEXT_DOWNLOAD_STALL_SECS` say otherwise.
pub const STALL: Duration = Duration::from_secs(30);

/// The weights files the loader reads, in the order they are tried: the older pickle only when
/// the hub has no safetensors.
const WEIGHTS_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// How to download.
#[derive(Clone, Debug)]
pub struct DownloadOptions {
    /// The hub's base URL.
    pub endpoint: String,
    /// Sent only to the endpoint's origin (see [`token_allowed`]).
    pub token: Option<String>,
    /// The sha256 the weights file must have, from a source the user trusts.
    pub sha256: Option<String>,
    /// Less than 1 kB received in this long is an error.
    pub stall: Duration,
}

impl DownloadOptions {
    /// From the environment: `HF_ENDPOINT`, the token in `HF_TOKEN` or `HF_HOME/token`, and
    /// `CONVNEXT_DOWNLOAD_STALL_SECS` (tests shorten the stall window with it).
    pub fn from_env() -> Self {
        let stall = std::env::var("CONVNEXT_DOWNLOAD_STALL_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
            .map_or(STALL, Duration::from_secs_f64);
        Self {
            endpoint: endpoint(),
            token: token_from_env(),
            sha256: None,
            stall,
        }
    }
}

/// A finished download.
#[derive(Clone, Debug)]
pub struct Downloaded {
    pub dir: PathBuf,
    /// Every file kept, with its size and sha256.
    pub files: Vec<KeptFile>,
    /// Things the user should know (a token withheld from another origin).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct KeptFile {
    pub name: &'static str,
    pub bytes: u64,
    pub sha256: String,
    pub weights: bool,
}

/// Where downloads come from: `HF_ENDPOINT`, else the Hugging Face hub.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

/// The token in `HF_TOKEN`, else in `HF_HOME/token` (`~/.cache/huggingface/token`).
fn token_from_env() -> Option<String> {
    if let Some(t) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(t.trim().to_string());
    }
    let home = std::env::var_os("HF_HOME").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface"))
    })?;
    let bytes = crate::base::files::read_capped(&home.join("token"), 4096, "a token").ok()?;
    let t = String::from_utf8(bytes).ok()?;
    let t = t.trim();
    (!t.is_empty() && t.chars().all(|c| c.is_ascii_graphic())).then(|| t.to_string())
}

/// The folder a repo lands in under `dest_root`.
pub fn dest_folder(repo_id: &str, dest_root: &Path) -> Result<PathBuf> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['.', '-'])
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match repo_id.split_once('/') {
        Some((owner, name)) if part_ok(owner) && part_ok(name) => {
            Ok(dest_root.join(format!("{owner}--{name}")))
        }
        _ => Err(Error::Input(format!(
            "`{repo_id}` is not a Hugging Face repo id (owner/name)"
        ))),
    }
}

/// Downloads `repo_id` into `dest_root/<owner>--<name>`, reporting each file's bytes to
/// `progress` and stopping within a moment of it saying the user cancelled
/// ([`Error::Cancelled`]).
pub fn download(
    repo_id: &str,
    dest_root: &Path,
    options: &DownloadOptions,
    progress: &mut dyn Progress,
) -> Result<Downloaded> {
    let fail = |msg: String| Error::Download {
        repo: repo_id.to_string(),
        msg,
    };
    let dest = dest_folder(repo_id, dest_root)?;
    let pin = options.sha256.as_deref().map(parse_pin).transpose()?;
    let base = repo_url(&options.endpoint, repo_id).map_err(fail)?;
    std::fs::create_dir_all(dest_root).map_err(|e| Error::file(dest_root, e))?;
    let staging = Staging::new(&dest)?;
    let limits = Limits {
        stall: options.stall,
        max_small: MAX_CONFIG_BYTES,
    };
    let endpoint = Url::parse(&options.endpoint).map_err(|e| fail(e.to_string()))?;
    let mut client = Client::new(endpoint, options.token.clone(), limits, progress);
    let files =
        fetch_all(&mut client, &base, staging.path(), pin.as_deref()).map_err(|f| match f {
            Failure::Cancelled => Error::Cancelled(format!("download of `{repo_id}`")),
            Failure::Fatal(m) | Failure::Broken(m) => fail(m),
            Failure::NotFound => fail("a file is missing".into()),
        })?;
    crate::io::checkpoint::Checkpoint::open(staging.path())
        .map_err(|e| fail(format!("the files do not load as a model: {e}")))?;
    staging.replace(&dest)?;
    Ok(Downloaded {
        dir: dest,
        files,
        notes: client.notes,
    })
}

/// `{endpoint}/{owner}/{name}/resolve/main/`, from an http(s) endpoint.
fn repo_url(endpoint: &str, repo_id: &str) -> std::result::Result<Url, String> {
    let base = format!("{}/{repo_id}/resolve/main/", endpoint.trim_end_matches('/'));
    let url = Url::parse(&base).map_err(|e| format!("HF_ENDPOINT `{endpoint}`: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "HF_ENDPOINT `{endpoint}` is not an http(s) address"
        ));
    }
    Ok(url)
}

/// The config, the preprocessing config if there is one, and the weights, each verified.
fn fetch_all(
    client: &mut Client,
    base: &Url,
    dir: &Path,
    pin: Option<&str>,
) -> std::result::Result<Vec<KeptFile>, Failure> {
    let mut kept = vec![fetch_one(
        client,
        base,
        dir,
        "config.json",
        Kind::Small,
        None,
    )?];
    match fetch_one(
        client,
        base,
        dir,
        "preprocessor_config.json",
        Kind::Small,
        None,
    ) {
        Ok(f) => kept.push(f),
        Err(Failure::NotFound) => {}
        Err(e) => return Err(e),
    }
    for (i, name) in WEIGHTS_FILES.iter().enumerate() {
        // Only a missing file sends us to the next; a failed transfer is an error of its own.
        match fetch_one(client, base, dir, name, Kind::Weights, pin) {
            Ok(f) => {
                kept.push(f);
                return Ok(kept);
            }
            Err(Failure::NotFound) if i + 1 < WEIGHTS_FILES.len() => {}
            Err(Failure::NotFound) => {
                return Err(Failure::Fatal(
                    "the repo has neither model.safetensors nor pytorch_model.bin".into(),
                ))
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last weights file ends the loop")
}

fn fetch_one(
    client: &mut Client,
    base: &Url,
    dir: &Path,
    name: &'static str,
    kind: Kind,
    pin: Option<&str>,
) -> std::result::Result<KeptFile, Failure> {
    let url = base
        .join(name)
        .map_err(|e| Failure::Fatal(format!("{name}: {e}")))?;
    let path = dir.join(name);
    client.progress.update(0, 0, name);
    let meta = client.fetch(&url, name, &path, kind).map_err(|f| match f {
        Failure::NotFound if kind == Kind::Small && name == "config.json" => {
            Failure::Fatal("config.json is not in the repo".into())
        }
        f => f,
    })?;
    let hashes = hash_file(&path).map_err(|e| Failure::Fatal(format!("{name}: {e}")))?;
    if let Some(size) = meta.size.filter(|&s| s != hashes.bytes) {
        return Err(Failure::Fatal(format!(
            "{name} has {} bytes, but the hub declared {size}",
            hashes.bytes
        )));
    }
    verify(
        name,
        &hashes,
        meta.expected.as_ref(),
        pin.filter(|_| kind == Kind::Weights),
    )?;
    Ok(KeptFile {
        name,
        bytes: hashes.bytes,
        sha256: hashes.sha256,
        weights: kind == Kind::Weights,
    })
}

struct Hashes {
    bytes: u64,
    sha256: String,
    git_sha1: String,
}

/// The file's sha256, and its sha1 as git names a blob.
fn hash_file(path: &Path) -> std::io::Result<Hashes> {
    let bytes = std::fs::metadata(path)?.len();
    let mut sha256 = sha2::Sha256::new();
    let mut git = sha1::Sha1::new();
    git.update(format!("blob {bytes}\0"));
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
        git.update(&buf[..n]);
    }
    Ok(Hashes {
        bytes,
        sha256: hex(&sha256.finalize()),
        git_sha1: hex(&git.finalize()),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash the hub states must match; a pinned sha256 must match too, and stands in for a
/// hub that states none.
fn verify(
    name: &str,
    got: &Hashes,
    expected: Option<&Expected>,
    pin: Option<&str>,
) -> std::result::Result<(), Failure> {
    let mismatch = |what: &str, got: &str, want: &str, who: &str| {
        Failure::Fatal(format!(
            "{name} is corrupt or tampered with: its {what} is {got}, but {who} says {want}"
        ))
    };
    if let Some(p) = pin {
        if got.sha256 != p {
            return Err(mismatch("sha256", &got.sha256, p, "--sha256"));
        }
    }
    match expected {
        Some(Expected::Sha256(want)) if got.sha256 != *want => {
            Err(mismatch("sha256", &got.sha256, want, "the hub"))
        }
        Some(Expected::GitSha1(want)) if got.git_sha1 != *want => {
            Err(mismatch("git sha1", &got.git_sha1, want, "the hub"))
        }
        Some(_) => Ok(()),
        None if pin.is_some() => Ok(()),
        None => Err(Failure::Fatal(format!(
            "the hub stated no hash for {name} (no X-Linked-Etag sha256, no git-sha1 ETag), so \
             it cannot be checked"
        ))),
    }
}

/// `--sha256`: 64 hex digits.
fn parse_pin(s: &str) -> Result<String> {
    let t = s.trim().to_ascii_lowercase();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t)
    } else {
        Err(Error::Input(format!(
            "--sha256 `{s}` is not a sha256 (64 hexadecimal digits)"
        )))
    }
}

/// A folder beside the destination, on the same file system, removed on drop unless it has
/// replaced the destination.
struct Staging {
    path: PathBuf,
    kept: bool,
}

impl Staging {
    fn new(dest: &Path) -> Result<Self> {
        let path = sibling(dest, "download");
        std::fs::create_dir(&path).map_err(|e| Error::file(&path, e))?;
        Ok(Self { path, kept: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Puts the staged folder where `dest` is: the old folder (with files the repo no longer
    /// has) goes as a whole; if the swap fails, the old one is put back.
    fn replace(mut self, dest: &Path) -> Result<()> {
        let old = sibling(dest, "old");
        let had = dest.exists();
        if had {
            std::fs::rename(dest, &old).map_err(|e| Error::file(dest, e))?;
        }
        if let Err(e) = std::fs::rename(&self.path, dest) {
            if had {
                let _ = std::fs::rename(&old, dest);
            }
            return Err(Error::file(dest, e));
        }
        self.kept = true;
        if had {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `.<name>.<what>-<pid>-<n>` beside `dest`: hidden, and unique to this process and call.
fn sibling(dest: &Path, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{what}-{}-{n}", std::process::id()))
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
        for bad in [
            "convnext", "a/b/c", "../x", "a/..", "a/b c", "", "./x", "a/.", "-a/b", "a/",
        ] {
            let e = dest_folder(bad, root).err().unwrap().to_string();
            assert!(e.contains("not a Hugging Face repo id"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_pin_must_be_a_sha256() {
        assert_eq!(parse_pin(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        assert!(parse_pin("abc").is_err());
        assert!(parse_pin(&"z".repeat(64)).is_err());
    }

    #[test]
    fn git_names_a_blob_by_the_sha1_of_its_header_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        let h = hash_file(&p).unwrap();
        // `echo hello | git hash-object --stdin`
        assert_eq!(h.git_sha1, "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(
            h.sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
    }
}

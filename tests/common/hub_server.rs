//! A Hugging Face hub on 127.0.0.1 that can misbehave. It answers as the hub does:
//! `GET /{owner}/{name}/resolve/main/{file}` is, for a file kept in git (configs), the file
//! itself with its git blob sha1 as `ETag`; for an LFS file (weights), a 302 to
//! `/cdn/{owner}/{name}/{file}` carrying `X-Linked-Etag` (the sha256) and `X-Linked-Size`.
//! Ranges are honoured (`206` + `Content-Range`). Unknown repos answer 404 with
//! `x-error-code: RepositoryNotFound`, unknown files 404 with `EntryNotFound`. Each file can be
//! given a [`Fault`]; repos can be replaced while the hub runs (a mirror that gets fixed).
use sha2::Digest;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, PartialEq, Debug)]
pub enum Fault {
    None,
    /// The hash headers (`ETag`, `X-Linked-Etag`) say this.
    Etag(String),
    /// `X-Repo-Commit` says this.
    Commit(String),
    /// The body stops after this many bytes; the connection stays open.
    StallAfter(usize),
    /// One byte a second.
    Trickle,
    /// The request is read and never answered.
    Silent,
    /// A 302 to the same address, relative.
    RedirectSelf,
    /// A 302 to this absolute address instead of the CDN path.
    RedirectTo(String),
    RedirectNoLocation,
    NotModified,
    /// Every transfer stops halfway (the connection closes).
    CutAlways,
    /// The first transfer stops halfway.
    CutFirst,
    /// The first transfer stops halfway; the resumed request gets a 200 with the whole file.
    CutFirstThenWhole,
    /// The hub declares 10 bytes fewer than it sends.
    Longer,
    /// Other bytes, under the original's hash headers.
    Tampered,
    /// Other bytes, with hash headers that match them (a mirror that lies consistently).
    TamperedConsistently,
    /// 64 KiB every 20 ms.
    Slow,
}

#[derive(Clone)]
pub struct Served {
    pub body: Vec<u8>,
    pub lfs: bool,
    pub fault: Fault,
}

impl Served {
    pub fn git(body: Vec<u8>) -> Self {
        Self {
            body,
            lfs: false,
            fault: Fault::None,
        }
    }
    pub fn lfs(body: Vec<u8>) -> Self {
        Self {
            body,
            lfs: true,
            fault: Fault::None,
        }
    }
    pub fn with(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }
}

pub type Repo = HashMap<String, Served>;

/// One request as the hub saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

pub struct Hub {
    pub url: String,
    pub log: Arc<Mutex<Vec<Seen>>>,
    repos: Arc<Mutex<HashMap<String, Repo>>>,
}

type Served2 = Arc<Mutex<HashMap<String, usize>>>;

impl Hub {
    pub fn start(repos: HashMap<String, Repo>) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let repos = Arc::new(Mutex::new(repos));
        let transfers: Served2 = Arc::default();
        let (l, r) = (log.clone(), repos.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repos, transfers, log) = (r.clone(), transfers.clone(), l.clone());
                std::thread::spawn(move || {
                    // A client that hung up mid-answer is part of the tests.
                    let _ = answer(stream, &repos, &transfers, &log);
                });
            }
        });
        Hub { url, log, repos }
    }

    /// Replaces (or adds) a repo.
    pub fn set(&self, name: &str, repo: Repo) {
        self.repos.lock().unwrap().insert(name.into(), repo);
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex(&sha2::Sha256::digest(b))
}

pub fn git_sha1_hex(b: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()));
    h.update(b);
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes a tampering mirror sends: one byte near the end flipped (still a valid file of
/// the same layout, with other weights).
pub fn tampered(body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    let i = b.len().saturating_sub(7);
    if let Some(x) = b.get_mut(i) {
        *x ^= 0x40;
    }
    b
}

struct Request {
    path: String,
    range: Option<String>,
}

fn read_request(stream: &TcpStream, log: &Mutex<Vec<Seen>>) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut authorization) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
        authorization,
    });
    Ok(Request { path, range })
}

fn answer(
    mut out: TcpStream,
    repos: &Mutex<HashMap<String, Repo>>,
    transfers: &Served2,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let req = read_request(&out, log)?;
    let parts: Vec<&str> = req.path.trim_start_matches('/').splitn(5, '/').collect();
    let (cdn, owner, name, file) = match parts[..] {
        [o, n, "resolve", "main", f] => (false, o, n, f),
        ["cdn", o, n, f] => (true, o, n, f),
        _ => return status(&mut out, 400, "Bad Request", ""),
    };
    let repo_name = format!("{owner}/{name}");
    let served = {
        let repos = repos.lock().unwrap();
        let Some(repo) = repos.get(&repo_name) else {
            return status(&mut out, 404, "Not Found", "RepositoryNotFound");
        };
        let Some(s) = repo.get(file) else {
            return status(&mut out, 404, "Not Found", "EntryNotFound");
        };
        s.clone()
    };
    let key = format!("{repo_name}/{file}");
    if !cdn {
        if let Some(done) = resolve_hop(&mut out, &req, &served, &key)? {
            return Ok(done);
        }
    }
    let nth = {
        let mut t = transfers.lock().unwrap();
        let n = t.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    body(&mut out, &req, &served, nth)
}

/// The hub's own answer for `resolve`: faults of the hop, the LFS redirect, or nothing (the
/// file is served here, as git files are).
fn resolve_hop(
    out: &mut TcpStream,
    req: &Request,
    s: &Served,
    key: &str,
) -> std::io::Result<Option<()>> {
    let redirect = |out: &mut TcpStream, code: u16, loc: Option<&str>| {
        let loc = loc.map_or(String::new(), |l| format!("Location: {l}\r\n"));
        write!(
            out,
            "HTTP/1.1 {code} Redirect\r\n{loc}{}Content-Length: 0\r\nConnection: close\r\n\r\n",
            hash_headers(s)
        )
        .map(Some)
    };
    match &s.fault {
        Fault::Silent => {
            std::thread::sleep(Duration::from_secs(60));
            return Ok(Some(()));
        }
        Fault::RedirectSelf => {
            let own = req.path.rsplit('/').next().unwrap_or("");
            return redirect(out, 302, Some(own));
        }
        Fault::RedirectNoLocation => return redirect(out, 302, None),
        Fault::NotModified => return redirect(out, 304, None),
        Fault::RedirectTo(u) => return redirect(out, 302, Some(u)),
        _ => {}
    }
    if s.lfs {
        return redirect(out, 302, Some(&format!("/cdn/{key}")));
    }
    Ok(None)
}

/// `X-Linked-Etag`/`X-Linked-Size` for LFS files, `ETag` for git files, `X-Repo-Commit`.
fn hash_headers(s: &Served) -> String {
    let sent = sent_bytes(s);
    let (sha, git) = match &s.fault {
        Fault::Etag(e) => (e.clone(), e.clone()),
        Fault::TamperedConsistently => (sha256_hex(&sent), git_sha1_hex(&sent)),
        _ => (sha256_hex(&s.body), git_sha1_hex(&s.body)),
    };
    let commit = match &s.fault {
        Fault::Commit(c) => c.clone(),
        _ => "0123456789abcdef0123456789abcdef01234567".into(),
    };
    let declared = declared_size(s);
    if s.lfs {
        format!("X-Linked-Etag: \"{sha}\"\r\nX-Linked-Size: {declared}\r\nETag: \"{sha}\"\r\nX-Repo-Commit: {commit}\r\n")
    } else {
        format!("ETag: \"{git}\"\r\nX-Repo-Commit: {commit}\r\n")
    }
}

fn sent_bytes(s: &Served) -> Vec<u8> {
    match s.fault {
        Fault::Tampered | Fault::TamperedConsistently => tampered(&s.body),
        _ => s.body.clone(),
    }
}

fn declared_size(s: &Served) -> usize {
    match s.fault {
        Fault::Longer => s.body.len().saturating_sub(10),
        _ => s.body.len(),
    }
}

/// The file's bytes (from a range), with the body-level faults.
fn body(out: &mut TcpStream, req: &Request, s: &Served, nth: usize) -> std::io::Result<()> {
    let bytes = sent_bytes(s);
    let whole = s.fault == Fault::CutFirstThenWhole && nth > 1;
    let (start, ranged) = match req.range.as_deref().and_then(parse_start) {
        Some(a) if !whole => (a.min(bytes.len()), true),
        _ => (0, false),
    };
    let part = &bytes[start..];
    let head_hashes = if s.lfs {
        String::new()
    } else {
        hash_headers(s)
    };
    let length = if s.fault == Fault::Longer && !s.lfs {
        part.len().saturating_sub(10)
    } else {
        part.len()
    };
    let (code, range) = if ranged {
        let end = (start + part.len()).saturating_sub(1);
        (
            206,
            format!("Content-Range: bytes {start}-{end}/{}\r\n", bytes.len()),
        )
    } else {
        (200, String::new())
    };
    write!(
        out,
        "HTTP/1.1 {code} OK\r\nContent-Length: {length}\r\n{range}{head_hashes}Connection: close\r\n\r\n"
    )?;
    match s.fault {
        Fault::CutAlways => return cut(out, part),
        Fault::CutFirst | Fault::CutFirstThenWhole if nth == 1 => return cut(out, part),
        Fault::StallAfter(n) => {
            out.write_all(&part[..n.min(part.len())])?;
            out.flush()?;
            std::thread::sleep(Duration::from_secs(60));
            return Ok(());
        }
        Fault::Trickle => {
            for b in part.iter().take(60) {
                out.write_all(&[*b])?;
                out.flush()?;
                std::thread::sleep(Duration::from_secs(1));
            }
            return Ok(());
        }
        Fault::Slow => {
            for chunk in part.chunks(64 << 10) {
                out.write_all(chunk)?;
                out.flush()?;
                std::thread::sleep(Duration::from_millis(20));
            }
            return Ok(());
        }
        _ => {}
    }
    out.write_all(part)
}

/// Half the part, then the connection closes.
fn cut(out: &mut TcpStream, part: &[u8]) -> std::io::Result<()> {
    out.write_all(&part[..part.len() / 2])?;
    out.flush()
}

/// `bytes=A-` → A.
fn parse_start(range: &str) -> Option<usize> {
    let spec = range.strip_prefix("bytes=")?;
    spec.split_once('-')?.0.parse().ok()
}

fn status(out: &mut TcpStream, code: u16, reason: &str, error_code: &str) -> std::io::Result<()> {
    let body = format!("{reason}\n");
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nx-error-code: {error_code}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

//! A Hugging Face hub on 127.0.0.1, speaking the API as hf-hub's sync client uses it: a
//! `GET /{owner}/{name}/resolve/main/{file}` with `Range: bytes=0-0` for the metadata
//! (`x-repo-commit`, `etag`, `Content-Range: bytes 0-0/SIZE`), then a `GET` with
//! `Range: bytes=START-` for the body. Unknown repos answer 404 with
//! `x-error-code: RepositoryNotFound`, unknown files 404 with `EntryNotFound`, as the hub does.
//! Each repo can misbehave: cut its transfers short, or send slowly.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Behaviour {
    Normal,
    /// The first transfer of each file stops halfway (the connection closes).
    CutFirst,
    /// Every transfer stops halfway.
    CutAlways,
    /// 64 KiB every 20 ms.
    Slow,
}

pub struct Repo {
    pub files: HashMap<String, Vec<u8>>,
    pub behaviour: Behaviour,
}

pub struct Hub {
    pub url: String,
    /// `"{path} {range}"` of every request, in order.
    pub log: Arc<Mutex<Vec<String>>>,
}

type Repos = Arc<HashMap<String, Repo>>;
type Served = Arc<Mutex<HashMap<String, usize>>>;

impl Hub {
    pub fn start(repos: HashMap<String, Repo>) -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let repos: Repos = Arc::new(repos);
        let served: Served = Arc::default();
        let l = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repos, served, log) = (repos.clone(), served.clone(), l.clone());
                std::thread::spawn(move || {
                    // A client that hung up mid-answer is part of the tests (cancel).
                    let _ = answer(stream, &repos, &served, &log);
                });
            }
        });
        Hub { url, log }
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn answer(
    stream: TcpStream,
    repos: &Repos,
    served: &Served,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    log.lock()
        .unwrap()
        .push(format!("{path} {}", range.clone().unwrap_or_default()));
    let mut out = stream;
    // /{owner}/{name}/resolve/main/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let [owner, name, "resolve", "main", file] = parts[..] else {
        return status(&mut out, 400, "Bad Request", "");
    };
    let Some(repo) = repos.get(&format!("{owner}/{name}")) else {
        return status(&mut out, 404, "Not Found", "RepositoryNotFound");
    };
    let Some(body) = repo.files.get(file) else {
        return status(&mut out, 404, "Not Found", "EntryNotFound");
    };
    let (start, end) = parse_range(range.as_deref(), body.len());
    let part = &body[start..end];
    // The metadata request (one byte) is never cut; a transfer may be.
    let transfer = part.len() > 1;
    let nth = if transfer {
        let mut s = served.lock().unwrap();
        let n = s.entry(format!("{owner}/{name}/{file}")).or_insert(0);
        *n += 1;
        *n
    } else {
        0
    };
    let cut = transfer
        && match repo.behaviour {
            Behaviour::CutFirst => nth == 1,
            Behaviour::CutAlways => true,
            _ => false,
        };
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nx-repo-commit: {}\r\netag: \"{}\"\r\nConnection: close\r\n\r\n",
        part.len(),
        end.saturating_sub(1),
        body.len(),
        "0123456789abcdef0123456789abcdef01234567",
        etag(body)
    );
    out.write_all(head.as_bytes())?;
    if cut {
        out.write_all(&part[..part.len() / 2])?;
        out.flush()?;
        return Ok(()); // closes mid-body
    }
    if repo.behaviour == Behaviour::Slow && transfer {
        for chunk in part.chunks(64 << 10) {
            out.write_all(chunk)?;
            out.flush()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(());
    }
    out.write_all(part)
}

/// `bytes=A-B` or `bytes=A-` (inclusive B), as an exclusive range; the whole file without one.
fn parse_range(range: Option<&str>, len: usize) -> (usize, usize) {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return (0, len);
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let start = a.parse().unwrap_or(0).min(len);
    let end = b.parse::<usize>().map_or(len, |b| (b + 1).min(len));
    (start, end.max(start))
}

fn status(out: &mut TcpStream, code: u16, reason: &str, error_code: &str) -> std::io::Result<()> {
    let body = format!("{reason}\n");
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nx-error-code: {error_code}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A content hash for the etag (FNV-1a; hf-hub only names the cached blob after it).
fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in body {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

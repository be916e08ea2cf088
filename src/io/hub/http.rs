//! One file from the hub over HTTP(S), with the limits a hostile or broken mirror cannot get
//! past: redirects followed by hand (at most [`MAX_REDIRECTS`], http(s) only), the token sent
//! only to the endpoint's own origin, a connect timeout, a stall watchdog, size caps, and a
//! cancel that answers within a poll interval whatever the server does.
//!
//! Each request runs on a short-lived thread that hands the answer over a bounded channel; the
//! caller waits on that channel in slices of [`POLL`], so neither a server that never answers
//! nor one that sends a byte a second can hold the caller longer than the stall window, and a
//! cancel is seen at once. A thread left behind ends by itself: its socket times out, or its
//! next send finds the caller gone.
use crate::base::progress::Progress;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use url::Url;

pub const MAX_REDIRECTS: usize = 5;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Less than this much received in one stall window is a stall.
pub const STALL_BYTES: u64 = 1024;
/// Retries of a transfer that broke off, each resuming where the last one stopped.
const RETRIES: usize = 2;
/// How often a waiting caller looks at the cancel flag and the stall watchdog.
const POLL: Duration = Duration::from_millis(50);

/// What kind of file is fetched: configs are capped at `max_small` bytes, weights at their
/// declared size.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Small,
    Weights,
}

/// The hash the hub states for a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// LFS files: the sha256 of the content, from `X-Linked-Etag`.
    Sha256(String),
    /// Files kept in git: the blob's sha1 (`sha1("blob <len>\0" + content)`), from `ETag`.
    GitSha1(String),
}

/// What the hub said about a file before its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub size: Option<u64>,
    pub expected: Option<Expected>,
}

/// Why a fetch stopped.
#[derive(Debug)]
pub enum Failure {
    /// The hub has no such file (404 without a repo- or revision-level code).
    NotFound,
    /// Cut off mid-transfer: worth resuming.
    Broken(String),
    /// Anything else, in words for the user.
    Fatal(String),
    Cancelled,
}

/// The limits of one download.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Less than [`STALL_BYTES`] in this long is an error.
    pub stall: Duration,
    /// The most a config or preprocessing file may be.
    pub max_small: u64,
}

/// The transport of one download: an agent that follows no redirect itself, the endpoint whose
/// origin alone may see the token, and notes for the user (a withheld token).
pub struct Client<'a> {
    agent: ureq::Agent,
    endpoint: Url,
    token: Option<String>,
    limits: Limits,
    pub progress: &'a mut dyn Progress,
    pub notes: Vec<String>,
}

enum Msg {
    Head(Head),
    Chunk(Vec<u8>),
    End,
    Failed(String),
}

struct Head {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer whose body is still to come.
struct Opened {
    rx: Receiver<Msg>,
    status: u16,
    meta: Meta,
    /// `Content-Range`'s first byte, for a 206.
    range_start: Option<u64>,
}

impl<'a> Client<'a> {
    pub fn new(
        endpoint: Url,
        token: Option<String>,
        limits: Limits,
        progress: &'a mut dyn Progress,
    ) -> Self {
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout_connect(CONNECT_TIMEOUT)
            // The watchdog decides; this only lets an abandoned thread end.
            .timeout_read(limits.stall + Duration::from_secs(5))
            .user_agent(concat!("convnext-explorer/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent,
            endpoint,
            token,
            limits,
            progress,
            notes: Vec::new(),
        }
    }

    /// Fetches `url` into `dest`, resuming a transfer that broke off; returns what the hub
    /// said of the file (its size was checked against what arrived).
    pub fn fetch(
        &mut self,
        url: &Url,
        file: &str,
        dest: &Path,
        kind: Kind,
    ) -> Result<Meta, Failure> {
        // The file is made only once the hub has it, so that a missing optional file leaves
        // nothing behind.
        let mut out: Option<File> = None;
        let mut have = 0u64;
        let mut first: Option<Meta> = None;
        let mut last = String::new();
        for _ in 0..=RETRIES {
            let opened = self.open(url, have, file)?;
            let meta = opened.meta.clone();
            // A server that ignores the range (or whose file changed) sends it all again.
            let restart = have > 0
                && (opened.status == 200
                    || opened.range_start != Some(have)
                    || first.as_ref() != Some(&meta));
            if restart {
                out = Some(create(dest, file)?);
                have = 0;
                first = None;
                if opened.status == 206 {
                    last = "the file changed between two tries".into();
                    continue; // a part of something else: ask again from byte 0
                }
            } else if out.is_none() {
                out = Some(create(dest, file)?);
            }
            if opened.status == 206 && have == 0 && opened.range_start.unwrap_or(0) != 0 {
                return Err(Failure::Fatal(format!(
                    "answered a request for the whole of {file} with a part from byte {}",
                    opened.range_start.unwrap_or(0)
                )));
            }
            check_declared(&meta, kind, file, &self.limits)?;
            first = Some(meta.clone());
            let Some(out) = out.as_mut() else {
                return Err(Failure::Fatal(format!("could not write {file}")));
            };
            match self.body(opened.rx, out, &mut have, &meta, file, kind) {
                Ok(()) => return Ok(meta),
                Err(Failure::Broken(why)) => last = why,
                Err(e) => return Err(e),
            }
        }
        Err(Failure::Fatal(format!(
            "the transfer of {file} broke off {} times (last at byte {have}: {last})",
            RETRIES + 1
        )))
    }

    /// Streams an answer's body into `out` from byte `*have`, within the limits.
    fn body(
        &mut self,
        rx: Receiver<Msg>,
        out: &mut File,
        have: &mut u64,
        meta: &Meta,
        file: &str,
        kind: Kind,
    ) -> Result<(), Failure> {
        let mut watch = Watch::new(self.limits.stall);
        let total = meta.size.unwrap_or(0) as usize;
        loop {
            match self.next(&rx, &mut watch, file)? {
                Msg::Chunk(c) => {
                    *have += c.len() as u64;
                    if let Some(size) = meta.size.filter(|&s| *have > s) {
                        return Err(Failure::Fatal(format!(
                            "{file} is longer than the {size} bytes the hub declared"
                        )));
                    }
                    if kind == Kind::Small && *have > self.limits.max_small {
                        return Err(too_big(file, &self.limits));
                    }
                    out.write_all(&c)
                        .map_err(|e| Failure::Fatal(format!("could not write {file}: {e}")))?;
                    self.progress.update(*have as usize, total, file);
                }
                Msg::End => {
                    return match meta.size {
                        Some(size) if *have < size => Err(Failure::Broken(format!(
                            "the connection ended at {have} of {size} bytes"
                        ))),
                        _ => Ok(()),
                    }
                }
                Msg::Failed(e) => return Err(Failure::Broken(e)),
                Msg::Head(_) => return Err(Failure::Broken("a second answer".into())),
            }
        }
    }

    /// Asks for `url` from byte `offset`, following redirects, and returns the answer that has
    /// the bytes, with what the hops said about the file.
    fn open(&mut self, start: &Url, offset: u64, file: &str) -> Result<Opened, Failure> {
        let mut url = start.clone();
        let mut linked: Option<(String, Option<String>)> = None;
        for _ in 0..=MAX_REDIRECTS {
            let rx = self.request(&url, offset);
            let mut watch = Watch::new(self.limits.stall);
            let head = match self.next(&rx, &mut watch, file)? {
                Msg::Head(h) => h,
                Msg::Failed(e) => {
                    return Err(Failure::Fatal(format!(
                        "could not reach {}: {e}",
                        origin(&url)
                    )))
                }
                _ => return Err(Failure::Fatal(format!("{} sent no answer", origin(&url)))),
            };
            if linked.is_none() {
                if let Some(etag) = head.get("x-linked-etag") {
                    let size = head.get("x-linked-size").map(str::to_string);
                    linked = Some((etag.to_string(), size));
                }
            }
            match head.status {
                304 => {
                    return Err(Failure::Fatal(format!(
                        "{} answered 304 (not modified) for {file}, though nothing was cached",
                        origin(&url)
                    )))
                }
                300..=399 => url = redirect_target(&url, &head, file)?,
                200 | 206 => return opened(rx, &head, linked, offset, file),
                code => return Err(status_failure(code, &head, &self.endpoint)),
            }
        }
        Err(Failure::Fatal(format!(
            "more than {MAX_REDIRECTS} redirects for {file}"
        )))
    }

    /// Starts one GET on its own thread; the answer comes over the returned channel.
    fn request(&mut self, url: &Url, offset: u64) -> Receiver<Msg> {
        let mut req = self.agent.request_url("GET", url);
        if offset > 0 {
            req = req.set("Range", &format!("bytes={offset}-"));
        }
        if let Some(token) = self.token.clone() {
            match token_allowed(url, &self.endpoint) {
                Ok(()) => req = req.set("Authorization", &format!("Bearer {token}")),
                Err(why) => {
                    let note = format!(
                        "the Hugging Face token was not sent to {} ({why})",
                        origin(url)
                    );
                    if !self.notes.contains(&note) {
                        self.notes.push(note);
                    }
                }
            }
        }
        let (tx, rx) = sync_channel(16);
        let spawned = std::thread::Builder::new().name("download".into()).spawn({
            let tx = tx.clone();
            move || transfer(req, tx)
        });
        if let Err(e) = spawned {
            let _ = tx.send(Msg::Failed(format!("could not start a thread: {e}")));
        }
        rx
    }

    /// The next message, waiting in slices so that cancel and stalls are seen.
    fn next(&mut self, rx: &Receiver<Msg>, watch: &mut Watch, file: &str) -> Result<Msg, Failure> {
        loop {
            if self.progress.cancelled() {
                return Err(Failure::Cancelled);
            }
            match rx.recv_timeout(POLL) {
                Ok(m) => {
                    if let Msg::Chunk(c) = &m {
                        watch.got(c.len() as u64);
                    }
                    watch.check(file)?;
                    return Ok(m);
                }
                Err(RecvTimeoutError::Timeout) => watch.check(file)?,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Failure::Broken("the connection ended".into()))
                }
            }
        }
    }
}

/// The request thread: the answer's head, then its body in chunks, until the caller hangs up.
fn transfer(req: ureq::Request, tx: std::sync::mpsc::SyncSender<Msg>) {
    let resp = match req.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => {
            let _ = tx.send(Msg::Failed(t.to_string()));
            return;
        }
    };
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| {
            let v = resp.header(&n)?.to_string();
            Some((n.to_ascii_lowercase(), v))
        })
        .collect();
    let head = Head {
        status: resp.status(),
        headers,
    };
    if tx.send(Msg::Head(head)).is_err() {
        return;
    }
    let mut body = resp.into_reader();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let msg = match body.read(&mut buf) {
            Ok(0) => Msg::End,
            Ok(n) => Msg::Chunk(buf[..n].to_vec()),
            Err(e) => Msg::Failed(e.to_string()),
        };
        let last = !matches!(msg, Msg::Chunk(_));
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}

/// Watches that at least [`STALL_BYTES`] arrive in every window of `stall`.
struct Watch {
    stall: Duration,
    since: Instant,
    bytes: u64,
}

impl Watch {
    fn new(stall: Duration) -> Self {
        Self {
            stall,
            since: Instant::now(),
            bytes: 0,
        }
    }

    fn got(&mut self, n: u64) {
        self.bytes += n;
    }

    fn check(&mut self, file: &str) -> Result<(), Failure> {
        if self.since.elapsed() < self.stall {
            return Ok(());
        }
        if self.bytes < STALL_BYTES {
            return Err(Failure::Fatal(format!(
                "the transfer of {file} stalled: less than 1 kB arrived in {} s",
                self.stall.as_secs_f64()
            )));
        }
        *self = Watch::new(self.stall);
        Ok(())
    }
}

/// An empty file to receive `file`'s bytes.
fn create(dest: &Path, file: &str) -> Result<File, Failure> {
    File::create(dest).map_err(|e| {
        Failure::Fatal(format!(
            "could not write {file} into {}: {e}",
            dest.parent().unwrap_or(dest).display()
        ))
    })
}

fn too_big(file: &str, limits: &Limits) -> Failure {
    Failure::Fatal(format!(
        "{file} is over {} MB, too big for a config file; refused",
        limits.max_small / 1_000_000
    ))
}

fn check_declared(meta: &Meta, kind: Kind, file: &str, limits: &Limits) -> Result<(), Failure> {
    match (kind, meta.size) {
        (Kind::Small, Some(s)) if s > limits.max_small => Err(too_big(file, limits)),
        (Kind::Weights, None) => Err(Failure::Fatal(format!(
            "the hub declared no size for {file}"
        ))),
        _ => Ok(()),
    }
}

/// Where a 3xx answer sends us: a relative or absolute http(s) URL.
fn redirect_target(url: &Url, head: &Head, file: &str) -> Result<Url, Failure> {
    let Some(loc) = head.get("location") else {
        return Err(Failure::Fatal(format!(
            "{} answered {} (a redirect) for {file} without saying where to",
            origin(url),
            head.status
        )));
    };
    let next = url
        .join(loc)
        .map_err(|_| Failure::Fatal(format!("redirected to `{loc}`, which is not a URL")))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(Failure::Fatal(format!(
            "redirected to a {}: address for {file}; only http and https are followed",
            next.scheme()
        )));
    }
    Ok(next)
}

/// The answer with the bytes, and what every hop said about them.
fn opened(
    rx: Receiver<Msg>,
    head: &Head,
    linked: Option<(String, Option<String>)>,
    offset: u64,
    file: &str,
) -> Result<Opened, Failure> {
    let number = |name: &str, v: &str| {
        v.trim().parse::<u64>().map_err(|_| {
            Failure::Fatal(format!(
                "the hub's {name} for {file} is not a number: `{v}`"
            ))
        })
    };
    let range = match (head.status, head.get("content-range")) {
        (206, Some(r)) => Some(parse_content_range(r).ok_or_else(|| {
            Failure::Fatal(format!(
                "the hub's Content-Range for {file} is malformed: `{r}`"
            ))
        })?),
        (206, None) => {
            return Err(Failure::Fatal(format!(
                "the hub sent part of {file} without saying which part"
            )))
        }
        _ => None,
    };
    let length = head
        .get("content-length")
        .map(|v| number("Content-Length", v))
        .transpose()?;
    let (expected, linked_size) = match linked {
        Some((etag, size)) => {
            let hash = hex_tag(&etag, 64).ok_or_else(|| {
                Failure::Fatal(format!(
                    "the hub's X-Linked-Etag for {file} is not a sha256: `{etag}`"
                ))
            })?;
            let size = size.map(|s| number("X-Linked-Size", &s)).transpose()?;
            (Some(Expected::Sha256(hash)), size)
        }
        None => (
            head.get("etag")
                .and_then(|e| hex_tag(e, 40))
                .map(Expected::GitSha1),
            None,
        ),
    };
    let size = linked_size.or(range.map(|r| r.1)).or(length.map(|l| {
        if head.status == 206 {
            offset + l
        } else {
            l
        }
    }));
    Ok(Opened {
        rx,
        status: head.status,
        meta: Meta { size, expected },
        range_start: range.map(|r| r.0),
    })
}

/// `bytes A-B/TOTAL` → `(A, TOTAL)`.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let (a, b, total) = (a.parse().ok()?, b.parse::<u64>().ok()?, total.parse().ok()?);
    (a <= b && b < total).then_some((a, total))
}

/// An ETag's value as lower-case hex of `len` digits (quotes and a weak `W/` dropped), if it
/// is one.
fn hex_tag(tag: &str, len: usize) -> Option<String> {
    let t = tag.trim().trim_start_matches("W/").trim_matches('"');
    (t.len() == len && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| t.to_ascii_lowercase())
}

fn status_failure(code: u16, head: &Head, endpoint: &Url) -> Failure {
    match (code, head.get("x-error-code")) {
        (401 | 403 | 404, Some("RepositoryNotFound")) => Failure::Fatal(format!(
            "no such repo on {} (or it is private)",
            origin(endpoint)
        )),
        (404, Some("RevisionNotFound")) => Failure::Fatal("the repo has no `main` branch".into()),
        (404, _) => Failure::NotFound,
        (401 | 403, _) => Failure::Fatal(format!(
            "the hub refused access (HTTP {code}): the repo may be private or gated (a token in \
             HF_TOKEN or HF_HOME/token may help)"
        )),
        (code, _) => Failure::Fatal(format!("the hub answered HTTP {code}")),
    }
}

/// May the token go to `url`? Only to the endpoint's own origin (scheme, host and port), and
/// over plain http only to this machine.
pub fn token_allowed(url: &Url, endpoint: &Url) -> Result<(), &'static str> {
    if url.origin() != endpoint.origin() {
        return Err("another origin than HF_ENDPOINT's");
    }
    if url.scheme() != "https" && !is_loopback(url) {
        return Err("plain http to another machine");
    }
    Ok(())
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// `scheme://host:port`, for messages.
pub fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn the_token_goes_only_to_the_endpoints_origin() {
        let hf = u("https://huggingface.co");
        assert!(token_allowed(&u("https://huggingface.co/a/b/resolve/main/x"), &hf).is_ok());
        assert!(token_allowed(&u("https://huggingface.co:443/x"), &hf).is_ok());
        for other in [
            "https://cdn.example.com/x",
            "http://huggingface.co/x",
            "https://huggingface.co:8443/x",
            "https://huggingface.co.evil.com/x",
        ] {
            assert!(token_allowed(&u(other), &hf).is_err(), "{other}");
        }
        let plain = u("http://mirror.example.com");
        assert_eq!(
            token_allowed(&u("http://mirror.example.com/x"), &plain),
            Err("plain http to another machine")
        );
        let local = u("http://127.0.0.1:8080");
        assert!(token_allowed(&u("http://127.0.0.1:8080/x"), &local).is_ok());
        assert!(token_allowed(&u("http://127.0.0.1:8081/x"), &local).is_err());
        assert!(token_allowed(&u("http://localhost:8080/x"), &u("http://localhost:8080")).is_ok());
    }

    #[test]
    fn hashes_are_read_only_from_well_formed_tags() {
        let sha = "a".repeat(64);
        assert_eq!(hex_tag(&format!("\"{sha}\""), 64), Some(sha.clone()));
        assert_eq!(
            hex_tag(&format!("W/\"{}\"", "B".repeat(40)), 40),
            Some("b".repeat(40))
        );
        for bad in [
            "/etc/passwd",
            "../../../x",
            "\"\"",
            &"g".repeat(64),
            &"a".repeat(63),
        ] {
            assert_eq!(hex_tag(bad, 64), None, "{bad}");
        }
    }

    #[test]
    fn content_ranges_are_parsed_strictly() {
        assert_eq!(parse_content_range("bytes 0-0/10"), Some((0, 10)));
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 10)));
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes */10",
            "items 0-1/2",
            "bytes 0-1",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}

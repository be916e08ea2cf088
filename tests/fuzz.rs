//! Mutation fuzzing of every reader a user's file reaches: safetensors and PyTorch checkpoints
//! (bit flips, truncations, header and offset edits, pickle opcode edits, zip member edits),
//! configs beside them, and images in every format the app reads. Each case must end in `Ok` or
//! a clean error: a panic fails the test (and names the case), an allocation over 1 GB fails it
//! (the allocator below refuses it, which aborts the process after naming the case), and a case
//! that runs more than 30 s fails it (a watchdog aborts, naming the case).
//!
//! `cargo test --release --test fuzz` runs `FUZZ_CASES` cases (default 5,000, what CI runs);
//! `FUZZ_CASES=200000 cargo test --release --test fuzz -- --nocapture` is the long run the
//! README reports. `FUZZ_SEED` picks the seed (default 1); a failing case is named by seed and
//! number, so `FUZZ_SEED=s FUZZ_FROM=n FUZZ_CASES=1` replays it.
mod common;
use candle_core::{DType, Device, Tensor};
use common::fixture;
use convnext_explorer::io::checkpoint::Checkpoint;
use convnext_explorer::io::preprocess::{decode_image, prepare, PreprocessConfig};
use convnext_explorer::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MAX_ALLOC: usize = 1 << 30;
static CASE: AtomicU64 = AtomicU64::new(u64::MAX);
static CASE_STARTED_MS: AtomicU64 = AtomicU64::new(0);

/// Refuses (and reports) any single allocation over [`MAX_ALLOC`].
struct Guard;

fn report(what: &[u8]) {
    // No allocation here: the message is assembled on the stack.
    let mut buf = [0u8; 96];
    let mut n = 0;
    for &b in what.iter().chain(b" in fuzz case ") {
        buf[n] = b;
        n += 1;
    }
    n += write_digits(CASE.load(Ordering::SeqCst), &mut buf[n..]);
    buf[n] = b'\n';
    let _ = std::io::stderr().write_all(&buf[..n + 1]);
}

/// Decimal digits of `v` into `out`, without allocating; how many.
fn write_digits(mut v: u64, out: &mut [u8]) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = 0;
    loop {
        tmp[i] = b'0' + (v % 10) as u8;
        i += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for k in 0..i {
        out[k] = tmp[i - 1 - k];
    }
    i
}

// SAFETY: forwards to the system allocator, refusing only sizes over the limit (a null return
// is the allocator API's "no memory", which the standard library turns into an abort).
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > MAX_ALLOC {
            report(b"allocation over 1 GB");
            return std::ptr::null_mut();
        }
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.size() > MAX_ALLOC {
            report(b"allocation over 1 GB");
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > MAX_ALLOC {
            report(b"reallocation over 1 GB");
            return std::ptr::null_mut();
        }
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GUARD: Guard = Guard;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Aborts the process, naming the case, when one case runs over 30 s.
fn watchdog() {
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(500));
        let started = CASE_STARTED_MS.load(Ordering::SeqCst);
        if started > 0 && now_ms().saturating_sub(started) > 30_000 {
            report(b"hang (over 30 s)");
            std::process::abort();
        }
    });
}

// ---- mutators ------------------------------------------------------------------------------

const INTERESTING: [u64; 9] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 40,
    1 << 62,
    u64::MAX,
];

fn mutate_bytes(rng: &mut StdRng, d: &mut Vec<u8>) {
    if d.is_empty() {
        d.push(rng.random());
        return;
    }
    let at = rng.random_range(0..d.len());
    match rng.random_range(0..7) {
        0 => {
            for _ in 0..rng.random_range(1..=8) {
                let i = rng.random_range(0..d.len());
                d[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => d[at] = [0u8, 0xff, 0x7f, 0x80][rng.random_range(0..4)],
        2 => d.truncate(at),
        3 => {
            let end = (at + rng.random_range(1..64)).min(d.len());
            d.drain(at..end);
        }
        4 => {
            let end = (at + rng.random_range(1..256)).min(d.len());
            let copy = d[at..end].to_vec();
            let to = rng.random_range(0..=d.len());
            d.splice(to..to, copy);
        }
        5 => {
            let n = rng.random_range(1..32);
            let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            d.splice(at..at, junk);
        }
        _ => {
            let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
            let bytes = if rng.random_bool(0.5) {
                v.to_le_bytes().to_vec()
            } else {
                (v as u32).to_le_bytes().to_vec()
            };
            for (k, b) in bytes.into_iter().enumerate() {
                if at + k < d.len() {
                    d[at + k] = b;
                }
            }
        }
    }
}

/// Replaces one number in a JSON text (a safetensors header, a config) by an extreme one.
fn mutate_json_number(rng: &mut StdRng, text: &str) -> String {
    let spans: Vec<(usize, usize)> = {
        let b = text.as_bytes();
        let mut v = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() {
                let s = i;
                while i < b.len()
                    && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'e' || b[i] == b'-')
                {
                    i += 1;
                }
                v.push((s, i));
            } else {
                i += 1;
            }
        }
        v
    };
    if spans.is_empty() {
        return text.to_string();
    }
    let (s, e) = spans[rng.random_range(0..spans.len())];
    let new = [
        "0",
        "-1",
        "1e400",
        "18446744073709551615",
        "4294967296",
        "1099511627776",
        "0.0000001",
        "NaN",
        "1.5",
    ][rng.random_range(0..9)];
    format!("{}{}{}", &text[..s], new, &text[e..])
}

/// Positions of the opcodes of a protocol-2 pickle as `torch.save` writes it.
fn opcodes(p: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 2;
    while i < p.len() {
        out.push(i);
        let arg = match p[i] {
            b'K' | b'q' | b'h' => 1,
            b'M' => 2,
            b'J' | b'r' | b'j' => 4,
            b'X' => p.get(i + 1..i + 5).map_or(0, |b| {
                4 + u32::from_le_bytes(b.try_into().unwrap()) as usize
            }),
            0x8a => p.get(i + 1).map_or(0, |&n| 1 + n as usize),
            b'c' => p[i + 1..]
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .nth(1)
                .map_or(0, |(k, _)| k + 1),
            _ => 0,
        };
        i += 1 + arg;
    }
    out
}

fn mutate_pickle(rng: &mut StdRng, p: &mut Vec<u8>) {
    let ops = opcodes(p);
    if ops.is_empty() || rng.random_bool(0.3) {
        return mutate_bytes(rng, p);
    }
    let at = ops[rng.random_range(0..ops.len())];
    const OPS: &[u8] = b"(.)tlde}]usaRbQqrhjKMJXNc0120\x85\x86\x87\x88\x89\x8a\x8b\x8c\x93\x94\x95";
    match rng.random_range(0..4) {
        0 => p[at] = OPS[rng.random_range(0..OPS.len())],
        1 => {
            p.insert(at, OPS[rng.random_range(0..OPS.len())]);
        }
        2 => {
            let end = ops.iter().find(|&&o| o > at).copied().unwrap_or(p.len());
            let op = p[at..end].to_vec();
            let n = rng.random_range(1..4);
            for _ in 0..n {
                p.splice(at..at, op.iter().copied());
            }
        }
        _ => {
            if at + 1 < p.len() {
                p[at + 1] = [0u8, 1, 0x7f, 0xff][rng.random_range(0..4)];
            }
        }
    }
}

type Members = Vec<(String, Vec<u8>, bool)>;

fn unzip(path: &Path) -> Members {
    let f = std::fs::File::open(path).unwrap();
    let mut z = zip::ZipArchive::new(f).unwrap();
    (0..z.len())
        .map(|i| {
            let mut m = z.by_index(i).unwrap();
            let mut v = Vec::new();
            m.read_to_end(&mut v).unwrap();
            (m.name().unwrap().to_string(), v, false)
        })
        .collect()
}

fn mutate_members(rng: &mut StdRng, m: &mut Members) {
    let pkl = m
        .iter()
        .position(|(n, _, _)| n.ends_with("data.pkl"))
        .unwrap_or(0);
    let i = rng.random_range(0..m.len());
    match rng.random_range(0..9) {
        0..=3 => mutate_pickle(rng, &mut m[pkl].1),
        4 => mutate_bytes(rng, &mut m[i].1),
        5 => {
            m[i].0 = [
                "archive/data.pkl",
                "x/data.pkl",
                "archive/data/0",
                "archive/byteorder",
                "archive/data/999",
            ][rng.random_range(0..5)]
            .to_string()
        }
        6 => {
            let copy = m[i].clone();
            m.push(copy);
        }
        7 => {
            m.remove(i);
        }
        _ => {
            // Deflate everything, one member inflating far beyond its file share.
            for e in m.iter_mut() {
                e.2 = true;
            }
            let n = rng.random_range(1..8) << 20;
            m[i].1.resize(n, 0);
        }
    }
}

// ---- targets -------------------------------------------------------------------------------

/// Cases whose input was accepted all the way (the rest were refused cleanly).
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// Opening and, where that works, running the checkpoint: any `Ok`/`Err` is fine.
fn try_checkpoint(path: &Path) {
    if let Ok(ck) = Checkpoint::open(path) {
        if let Ok(e) = Engine::from_checkpoint(ck, &Device::Cpu, DType::F32) {
            let x = Tensor::ones((1, 3, 32, 64), DType::F32, &Device::Cpu).unwrap();
            if e.forward(&x).is_ok() {
                ACCEPTED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn try_image(bytes: &[u8]) {
    if let Ok(img) = decode_image(bytes, "fuzzed") {
        if prepare(&img, &PreprocessConfig::default(), &Device::Cpu).is_ok() {
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn images() -> Vec<Vec<u8>> {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 32, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 7) as u8, ((x ^ y) * 9) as u8])
    }));
    use image::ImageFormat::*;
    [Png, Jpeg, Gif, Bmp, Tiff, WebP]
        .into_iter()
        .map(|f| {
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, f).unwrap();
            out.into_inner()
        })
        .collect()
}

#[test]
fn every_reader_survives_mutated_input() {
    let cases = env("FUZZ_CASES", 5_000);
    let seed = env("FUZZ_SEED", 1);
    let from = env("FUZZ_FROM", 0);
    watchdog();
    let dir = tempfile::tempdir().unwrap();
    let safetensors = std::fs::read(fixture("checkpoints/timm_v2.safetensors")).unwrap();
    let pths: Vec<Members> = ["checkpoints/timm_v1.pth", "checkpoints/fb_v2.pth"]
        .iter()
        .map(|p| unzip(&fixture(p)))
        .collect();
    let hf = fixture("checkpoints/hf_v1");
    let hf_config = std::fs::read_to_string(hf.join("config.json")).unwrap();
    let hf_weights = std::fs::read(hf.join("model.safetensors")).unwrap();
    let imgs = images();
    let t0 = Instant::now();
    let mut kinds = [0u64; 5];
    for case in from..from + cases {
        CASE.store(case, Ordering::SeqCst);
        CASE_STARTED_MS.store(now_ms(), Ordering::SeqCst);
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ case);
        let kind = rng.random_range(0..5);
        kinds[kind] += 1;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_case(
                kind,
                &mut rng,
                dir.path(),
                &safetensors,
                &pths,
                (&hf_config, &hf_weights),
                &imgs,
            )
        }));
        if let Err(p) = run {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("fuzz case {case} (seed {seed}, kind {kind}) panicked: {msg}");
        }
    }
    CASE_STARTED_MS.store(0, Ordering::SeqCst);
    eprintln!(
        "{cases} fuzz cases (seed {seed}; safetensors {}, pth {}, pth members {}, configs {}, images {}; {} accepted, the rest refused) in {:.1} s: no panic, no allocation over 1 GB, no hang",
        kinds[0], kinds[1], kinds[2], kinds[3], kinds[4],
        ACCEPTED.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64()
    );
}

fn run_case(
    kind: usize,
    rng: &mut StdRng,
    dir: &Path,
    safetensors: &[u8],
    pths: &[Members],
    (hf_config, hf_weights): (&str, &[u8]),
    imgs: &[Vec<u8>],
) {
    match kind {
        0 => {
            let mut d = safetensors.to_vec();
            if rng.random_bool(0.5) {
                let n = u64::from_le_bytes(d[..8].try_into().unwrap()) as usize;
                let header = String::from_utf8_lossy(&d[8..8 + n]).into_owned();
                let h = mutate_json_number(rng, &header);
                let mut out = (h.len() as u64).to_le_bytes().to_vec();
                out.extend(h.as_bytes());
                out.extend(&d[8 + n..]);
                d = out;
            }
            for _ in 0..rng.random_range(0..3) {
                mutate_bytes(rng, &mut d);
            }
            let p = dir.join("case.safetensors");
            std::fs::write(&p, &d).unwrap();
            try_checkpoint(&p);
        }
        1 | 2 => {
            let p = dir.join("case.pth");
            let mut m = pths[rng.random_range(0..pths.len())].clone();
            if kind == 1 {
                mutate_pickle(
                    rng,
                    &mut m.iter_mut().find(|e| e.0.ends_with("data.pkl")).unwrap().1,
                );
            } else {
                for _ in 0..rng.random_range(1..3) {
                    mutate_members(rng, &mut m);
                }
            }
            common::pth::zip(&p, &m);
            if rng.random_bool(0.2) {
                let mut d = std::fs::read(&p).unwrap();
                mutate_bytes(rng, &mut d);
                std::fs::write(&p, &d).unwrap();
            }
            try_checkpoint(&p);
        }
        3 => {
            let folder = dir.join("hf");
            std::fs::create_dir_all(&folder).unwrap();
            let mut cfg = mutate_json_number(rng, hf_config);
            if rng.random_bool(0.3) {
                let mut b = cfg.into_bytes();
                mutate_bytes(rng, &mut b);
                cfg = String::from_utf8_lossy(&b).into_owned();
            }
            std::fs::write(folder.join("config.json"), cfg).unwrap();
            let pre = mutate_json_number(
                rng,
                r#"{"crop_pct": 0.875, "size": {"shortest_edge": 64}, "resample": 3, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}"#,
            );
            std::fs::write(folder.join("preprocessor_config.json"), pre).unwrap();
            std::fs::write(folder.join("model.safetensors"), hf_weights).unwrap();
            try_checkpoint(&folder);
        }
        _ => {
            let mut d = imgs[rng.random_range(0..imgs.len())].clone();
            for _ in 0..rng.random_range(1..4) {
                mutate_bytes(rng, &mut d);
            }
            try_image(&d);
        }
    }
}

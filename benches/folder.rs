//! `cargo bench --bench folder`: a folder run's throughput and peak memory on the shipped model,
//! for folders of 1,000, 5,000 and 10,000 images (the Fashion-MNIST test images as PNGs), with
//! predictions only and with everything the app computes (top images of every stage and block,
//! feature collapse). Each run is its own process, so each peak is its own; rounds are
//! interleaved and each figure is the median of `BENCH_ROUNDS` (default 5) with its range.
use convnext_explorer::analysis::folder_run::{run_folder, FolderOptions};
use convnext_explorer::base::progress::Silent;
use convnext_explorer::model::layer_id::LayerId;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const SIZES: [usize; 3] = [1000, 5000, 10_000];

/// One run: images per second, and peak memory (MB) above the loaded model.
type Measure = (f64, f64);

fn rss_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `DIR/<class>/<i>.png` for `n` images, cycling through the test set.
fn make_folder(dir: &Path, n: usize) {
    use convnext_explorer::train::{fashion_mnist, FASHION_DIR};
    let installed = Path::new(FASHION_DIR);
    let src = if installed.join("t10k-images-idx3-ubyte.gz").exists() {
        installed.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion")
    };
    let ds = fashion_mnist(&src, "t10k").expect("Fashion-MNIST test images");
    for i in 0..n {
        let j = i % ds.labels.len();
        let d = dir.join(format!("{}", ds.labels[j]));
        std::fs::create_dir_all(&d).unwrap();
        let img = image::GrayImage::from_raw(ds.cols as u32, ds.rows as u32, ds.image(j).to_vec())
            .unwrap();
        img.save(d.join(format!("{i:05}.png"))).unwrap();
    }
}

/// In a child process: one run, printed as `images seconds peak_kb model_kb`.
fn child(dir: &Path, n: usize, full: bool) {
    let weights = convnext_explorer::io::engine::default_weights().expect("shipped model");
    let engine = convnext_explorer::Engine::load(
        &weights,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let model_kb = rss_kb("VmRSS:");
    let opts = FolderOptions {
        limit: Some(n),
        batch: 32,
        top: full.then(|| {
            let f: convnext_explorer::analysis::top_images::LayerFilter =
                Box::new(|id| matches!(id, LayerId::Stem | LayerId::Stage(_) | LayerId::Block(..)));
            (9, f)
        }),
        collapse: full,
    };
    let t = Instant::now();
    let run = run_folder(&engine, dir, opts, &mut Silent).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} {secs} {} {model_kb}",
        run.eval.images.len(),
        rss_kb("VmHWM:")
    );
}

fn median_range(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!("{:.0} ({:.0}–{:.0})", v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    // As `main` runs the program: candle's elementwise ops on the calling thread.
    convnext_explorer::base::pool::candle_ops_inline();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let dir = PathBuf::from(&args[i + 1]);
        child(&dir, args[i + 2].parse().unwrap(), args[i + 3] == "full");
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path(), *SIZES.iter().max().unwrap());
    let exe = std::env::current_exe().unwrap();
    let mut results: Vec<((usize, bool), Vec<Measure>)> = Vec::new();
    for _ in 0..rounds {
        for full in [false, true] {
            for n in SIZES {
                let out = Command::new(&exe)
                    .args(["--child", dir.path().to_str().unwrap(), &n.to_string()])
                    .arg(if full { "full" } else { "predictions" })
                    .output()
                    .unwrap();
                let s = String::from_utf8_lossy(&out.stdout);
                let v: Vec<f64> = s
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                assert_eq!(
                    v.len(),
                    4,
                    "child failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let entry = (v[0] / v[1], (v[2] - v[3]) / 1024.0);
                match results.iter_mut().find(|r| r.0 == (n, full)) {
                    Some(r) => r.1.push(entry),
                    None => results.push(((n, full), vec![entry])),
                }
            }
        }
    }
    println!(
        "shipped model (64×64), batch 32, {} thread(s), {rounds} interleaved rounds\n",
        rayon::current_num_threads()
    );
    println!("| images | computed | images/s | peak memory above the loaded model (MB) |");
    println!("| --- | --- | --- | --- |");
    for ((n, full), v) in &results {
        let mut speed: Vec<f64> = v.iter().map(|e| e.0).collect();
        let mut mem: Vec<f64> = v.iter().map(|e| e.1).collect();
        let what = if *full {
            "predictions + top images (stem, stages, blocks) + collapse"
        } else {
            "predictions"
        };
        println!(
            "| {n} | {what} | {} | {} |",
            median_range(&mut speed),
            median_range(&mut mem)
        );
    }
}

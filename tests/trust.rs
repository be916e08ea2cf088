//! No file, however hostile, may crash, hang or fool the explorer: every input here is built by
//! the test itself, and each must be refused with a message that names the file and the
//! problem, quickly and without a large allocation.
mod common;
use candle_core::{DType, Device, Tensor as CTensor};
use common::fixture;
use common::pth::{self, Pickle, Tensor};
use convnext_explorer::io::checkpoint::{Checkpoint, CheckpointInfo};
use convnext_explorer::io::preprocess::{decode_image, load_image};
use convnext_explorer::{Engine, Error};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn load(p: &Path) -> Result<Engine, Error> {
    Engine::load(p, &Device::Cpu, DType::F32)
}

/// The error of loading `p`, which must come within two seconds and name the file.
fn refused(p: &Path) -> String {
    let t = Instant::now();
    let e = load(p).err().expect("must be refused").to_string();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}: {e}",
        t.elapsed()
    );
    assert!(
        e.contains(p.to_str().unwrap()),
        "error does not name the file: {e}"
    );
    e
}

/// The timm V1 fixture as PyTorch-checkpoint tensors.
fn timm_v1() -> Vec<Tensor> {
    pth::from_safetensors(&fixture("checkpoints/timm_v1.safetensors"))
}

fn write_pth(dir: &Path, name: &str, tensors: &[Tensor]) -> PathBuf {
    let p = dir.join(name);
    pth::write(&p, tensors, None);
    p
}

#[test]
fn a_checkpoint_built_here_loads_and_matches_the_safetensors_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_pth(dir.path(), "ok.pth", &timm_v1());
    let a = load(&p).unwrap();
    let b = load(&fixture("checkpoints/timm_v1.safetensors")).unwrap();
    let x = CTensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap();
    let (ya, yb) = (a.forward(&x).unwrap(), b.forward(&x).unwrap());
    assert_eq!(common::rel_err(&ya, &yb), 0.0);
}

#[test]
fn a_huge_declared_shape_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = timm_v1();
    // 4 TB of f32 declared, 4 bytes present.
    let i = t.iter().position(|t| t.name == "head.fc.bias").unwrap();
    t[i].numel = 1 << 40;
    t[i].shape = vec![1 << 40];
    t[i].stride = vec![1];
    let e = refused(&write_pth(dir.path(), "huge.pth", &t));
    assert!(e.contains("head.fc.bias") && e.contains("bytes"), "{e}");
}

#[test]
fn a_tensor_past_its_storage_or_storages_that_disagree_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = timm_v1();
    let i = t.iter().position(|t| t.name == "stem.0.bias").unwrap();
    t[i].offset = 3;
    let e = refused(&write_pth(dir.path(), "past.pth", &t));
    assert!(
        e.contains("stem.0.bias") && e.contains("reaches past its storage"),
        "{e}"
    );

    let mut t = timm_v1();
    let j = t.iter().position(|t| t.name == "stem.1.bias").unwrap();
    // stem.1.bias points at stem.0.bias's storage, declaring another size.
    t[j].key = t[i].key.clone();
    t[j].numel += 1;
    let e = refused(&write_pth(dir.path(), "disagree.pth", &t));
    assert!(
        e.contains("describe storage") && e.contains("stem.1.bias"),
        "{e}"
    );
}

#[test]
fn a_memo_that_would_be_copied_costs_nothing() {
    // A list memoised, then lists of it nested 40 deep, each holding the one below twice: a
    // reader that copies memo entries builds 2^40 elements.
    let mut p = Pickle::new();
    p.op(b"]q\x00");
    for i in 0..40u8 {
        p.op(&[b']', b'(', b'h', i, b'h', i, b'e', b'q', i + 1]);
    }
    let bytes = p.stop();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memo.pth");
    pth::zip(&path, &pth::members(bytes, &[]));
    let e = refused(&path);
    assert!(e.contains("no dict of tensors"), "{e}");
}

#[test]
fn deep_nesting_cannot_overflow_the_stack() {
    let mut p = Pickle::new();
    for _ in 0..1_000_000 {
        p.op(b"(");
    }
    for _ in 0..1_000_000 {
        p.op(b"l");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.pth");
    pth::zip(&path, &pth::members(p.stop(), &[]));
    // On a thread with a small stack, as the app's worker has: no recursion anywhere.
    let e = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || refused(&path))
        .unwrap()
        .join()
        .unwrap();
    assert!(e.contains("no dict of tensors"), "{e}");
}

#[test]
fn code_in_a_pickle_is_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let mut p = Pickle::new();
    p.global("os", "system")
        .str(&format!("touch {}", marker.display()));
    p.op(&[0x85]).op(b"R");
    let path = dir.path().join("evil.pth");
    pth::zip(&path, &pth::members(p.stop(), &[]));
    let e = refused(&path);
    assert!(e.contains("no dict of tensors"), "{e}");
    assert!(!marker.exists(), "the pickle's command ran");
}

#[test]
fn malformed_tensor_rebuilds_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    // _rebuild_tensor_v2 given a string where the storage belongs.
    let mut p = Pickle::new();
    p.op(b"}(")
        .str("stem.0.weight")
        .global("torch._utils", "_rebuild_tensor_v2");
    p.op(b"(")
        .str("not a storage")
        .int(0)
        .ints(&[1])
        .ints(&[1])
        .op(b"tRu");
    let path = dir.path().join("rebuild.pth");
    pth::zip(&path, &pth::members(p.stop(), &[]));
    let e = refused(&path);
    assert!(e.contains("malformed _rebuild_tensor_v2"), "{e}");
    // A shape and stride of different lengths.
    let mut t = timm_v1();
    t[0].stride.pop();
    let e = refused(&write_pth(dir.path(), "stride.pth", &t));
    assert!(e.contains("disagree"), "{e}");
}

#[test]
fn zip_bombs_and_oversized_members_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let t = timm_v1();
    // A data.pkl that inflates past the pickle limit (zeros compress a thousandfold).
    let mut m = pth::members(pth::state_dict_pickle(&t, None), &t);
    m[0].1.resize(64 << 20, 0);
    m[0].2 = true;
    let path = dir.path().join("bomb_pkl.pth");
    pth::zip(&path, &m);
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
    let e = refused(&path);
    assert!(e.contains("data.pkl") && e.contains("limit"), "{e}");

    // A storage that inflates to 32 MB from a small file: past the inflation budget.
    let mut t = timm_v1();
    let i = t.iter().position(|t| t.name == "head.fc.weight").unwrap();
    let n = 8usize << 20;
    t[i].numel = n as u64;
    t[i].data = vec![0; n * 4];
    let mut m = pth::members(pth::state_dict_pickle(&t, None), &t);
    for e in &mut m {
        e.2 = true;
    }
    let path = dir.path().join("bomb_storage.pth");
    pth::zip(&path, &m);
    let e = refused(&path);
    assert!(e.contains("limit"), "{e}");
}

#[test]
fn two_data_pkl_or_a_member_twice_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = timm_v1();
    let mut m = pth::members(pth::state_dict_pickle(&t, None), &t);
    m.push((
        "other/data.pkl".into(),
        pth::state_dict_pickle(&t[..1], None),
        false,
    ));
    let path = dir.path().join("two.pth");
    pth::zip(&path, &m);
    let e = refused(&path);
    assert!(
        e.contains("2 data.pkl") && e.contains("other/data.pkl"),
        "{e}"
    );

    let mut m = pth::members(pth::state_dict_pickle(&t, None), &t);
    let again = m[2].clone();
    m.push(again);
    let path = dir.path().join("member_twice.pth");
    pth::zip(&path, &m);
    assert!(refused(&path).contains("twice"));

    let mut order = pth::members(pth::state_dict_pickle(&t, None), &t);
    order[1].1 = b"big".to_vec();
    let path = dir.path().join("bigendian.pth");
    pth::zip(&path, &order);
    assert!(refused(&path).contains("big-endian"));
}

#[test]
fn extra_and_integer_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = timm_v1();
    let mut extra = Tensor::f32("stages.0.blocks.0.num_batches_tracked", 999, &[1], &[0.0]);
    extra.kind = "LongStorage".into();
    extra.data = vec![0; 8];
    t.push(extra);
    let e = refused(&write_pth(dir.path(), "extra.pth", &t));
    assert!(e.contains("stages.0.blocks.0.num_batches_tracked"), "{e}");

    let mut t = timm_v1();
    let i = t.iter().position(|t| t.name == "stem.0.bias").unwrap();
    t[i].kind = "IntStorage".into();
    let e = refused(&write_pth(dir.path(), "int.pth", &t));
    assert!(
        e.contains("stem.0.bias") && e.contains("I32") && e.contains("not a float"),
        "{e}"
    );
}

#[test]
fn two_names_for_one_tensor_are_refused_not_picked_at_random() {
    let dir = tempfile::tempdir().unwrap();
    // V2 in timm naming with both the new and the legacy GRN name.
    let mut t = pth::from_safetensors(&fixture("checkpoints/timm_v2.safetensors"));
    let grn = t
        .iter()
        .find(|t| t.name.ends_with("mlp.grn.weight"))
        .unwrap()
        .clone();
    let mut alias = grn.clone();
    alias.name = grn.name.replace("grn.weight", "grn.gamma");
    alias.key = "alias".into();
    t.push(alias);
    let e = refused(&write_pth(dir.path(), "alias.pth", &t));
    assert!(
        e.contains("grn.weight") && e.contains("grn.gamma") && e.contains("ambiguous"),
        "{e}"
    );

    // Hugging Face V1 with a second copy of a tensor under the `convnextv2.` prefix.
    let hf = fixture("checkpoints/hf_v1/model.safetensors");
    let mut map = candle_core::safetensors::load(&hf, &Device::Cpu).unwrap();
    let k = map
        .keys()
        .find(|k| k.starts_with("convnext."))
        .unwrap()
        .clone();
    let v = map[&k].clone();
    map.insert(k.replacen("convnext.", "convnextv2.", 1), v);
    let folder = dir.path().join("hf");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        fixture("checkpoints/hf_v1/config.json"),
        folder.join("config.json"),
    )
    .unwrap();
    candle_core::safetensors::save(&map, folder.join("model.safetensors")).unwrap();
    let e = load(&folder).err().unwrap().to_string();
    assert!(e.contains("ambiguous") && e.contains("convnextv2."), "{e}");

    // A state dict that sets one name twice.
    let t = timm_v1();
    let mut p = Pickle::new();
    p.op(b"}(");
    for x in t.iter().chain(std::iter::once(&t[0])) {
        p.str(&x.name).tensor(x);
    }
    p.op(b"u");
    let path = dir.path().join("twice.pth");
    pth::zip(&path, &pth::members(p.stop(), &t));
    let e = refused(&path);
    assert!(e.contains("twice") && e.contains(&t[0].name), "{e}");
}

#[test]
fn safetensors_headers_that_lie_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("checkpoints/timm_v1.safetensors")).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + n]).unwrap().to_string();
    let with_header = |h: String| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend(h.as_bytes());
        b.extend(&good[8 + n..]);
        b
    };
    // The first entry listed twice.
    let first_end = header.find("},").unwrap() + 2;
    let dup = format!("{{{}{}", &header[1..first_end], &header[1..]);
    let p = dir.path().join("dup.safetensors");
    std::fs::write(&p, with_header(dup)).unwrap();
    assert!(refused(&p).contains("listed twice"));
    // A declared header longer than the limit.
    let mut b = good.clone();
    b[..8].copy_from_slice(&(17u64 << 20).to_le_bytes());
    b.resize(18 << 20, b' ');
    let p = dir.path().join("long.safetensors");
    std::fs::write(&p, &b).unwrap();
    assert!(refused(&p).contains("limit"));
    // Trailing bytes after the last tensor.
    let mut b = good.clone();
    b.extend([0u8; 16]);
    let p = dir.path().join("trailing.safetensors");
    std::fs::write(&p, &b).unwrap();
    assert!(refused(&p).contains("after the last tensor"));
}

fn shipped_copy(dir: &Path, json: Option<&str>) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let p = dir.join("m.safetensors");
    std::fs::copy(root.join("convnext_fashion.safetensors"), &p).unwrap();
    match json {
        Some(j) => std::fs::write(dir.join("m.json"), j).unwrap(),
        None => {
            std::fs::copy(root.join("convnext_fashion.json"), dir.join("m.json")).unwrap();
        }
    }
    p
}

fn config_error(json: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = shipped_copy(dir.path(), Some(json));
    let e = load(&p).err().expect("must be refused").to_string();
    assert!(e.contains("m.json"), "does not name the config: {e}");
    e
}

#[test]
fn every_config_field_is_validated() {
    for (json, want) in [
        (r#"{"pretrained_cfg": {"crop_pct": 0}}"#, "crop_pct"),
        (r#"{"pretrained_cfg": {"crop_pct": 1e-9}}"#, "crop_pct"),
        (
            r#"{"pretrained_cfg": {"input_size": [3, 1000000, 32]}}"#,
            "input_size",
        ),
        (
            r#"{"pretrained_cfg": {"input_size": [1, 32, 32]}}"#,
            "input_size",
        ),
        (r#"{"pretrained_cfg": {"std": [0, 1, 1]}}"#, "std"),
        (r#"{"pretrained_cfg": {"mean": [0, "x", 1]}}"#, "mean"),
        (
            r#"{"pretrained_cfg": {"interpolation": "random"}}"#,
            "interpolation",
        ),
        (r#"{"layer_norm_eps": -1e-6}"#, "layer_norm_eps"),
        (r#"{"model_args": {"norm_eps": 1e400}}"#, "not valid JSON"),
        (r#"{"label_names": ["a", "b"]}"#, "label_names"),
        (r#"{"id2label": {"12": "x"}}"#, "id2label"),
        (
            "{\n  \"pretrained_cfg\": {\n    \"crop_pct\": 0.9,,\n  }\n}",
            "line 3",
        ),
    ] {
        let e = config_error(json);
        assert!(e.contains(want), "{json}: {e}");
    }
    // A Hugging Face preprocessor config asking for a 100000-px input.
    let dir = tempfile::tempdir().unwrap();
    let p = shipped_copy(dir.path(), None);
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"size": {"shortest_edge": 100000}}"#,
    )
    .unwrap();
    let e = load(&p).err().unwrap().to_string();
    assert!(
        e.contains("preprocessor_config.json") && e.contains("shortest_edge"),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn only_regular_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.json");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(ok.success());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let w = dir.path().join("model.safetensors");
    std::fs::copy(root.join("convnext_fashion.safetensors"), &w).unwrap();
    let t = Instant::now();
    let e = load(&w).err().unwrap().to_string();
    assert!(
        e.contains("config.json") && e.contains("not a regular file"),
        "{e}"
    );
    std::fs::remove_file(&fifo).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &fifo).unwrap();
    let e = load(&w).err().unwrap().to_string();
    assert!(
        e.contains("config.json") && e.contains("not a regular file"),
        "{e}"
    );

    // Images and weights themselves.
    let img = dir.path().join("image.png");
    std::os::unix::fs::symlink("/dev/zero", &img).unwrap();
    let e = load_image(&img).err().unwrap().to_string();
    assert!(
        e.contains("image.png") && e.contains("not a regular file"),
        "{e}"
    );
    let fifo_img = dir.path().join("pipe.jpg");
    std::process::Command::new("mkfifo")
        .arg(&fifo_img)
        .status()
        .unwrap();
    assert!(load_image(&fifo_img).is_err_and(|e| e.to_string().contains("pipe.jpg")));
    let fifo_w = dir.path().join("pipe.safetensors");
    std::process::Command::new("mkfifo")
        .arg(&fifo_w)
        .status()
        .unwrap();
    assert!(refused(&fifo_w).contains("not a regular file"));
    assert!(t.elapsed() < Duration::from_secs(2));
}

fn encoded(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn images_that_decode_only_partly_are_errors() {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
    }));
    use image::ImageFormat::*;
    for format in [Png, Jpeg, Gif, Bmp, Tiff, WebP] {
        let bytes = encoded(&img, format);
        assert!(decode_image(&bytes, "whole").is_ok(), "{format:?}");
        // Cuts inside the pixel data (a PNG cut inside its closing IEND chunk still has every
        // pixel, as PIL agrees); for JPEG also inside the end-of-image marker.
        let mut cuts = vec![bytes.len() / 2, bytes.len() * 9 / 10];
        if format == Jpeg {
            cuts.push(bytes.len() - 1);
        }
        for cut in cuts {
            let r = decode_image(&bytes[..cut], "cut.img");
            let e = r
                .err()
                .unwrap_or_else(|| panic!("{format:?} cut at {cut} of {} decoded", bytes.len()));
            assert!(e.to_string().contains("cut.img"), "{e}");
        }
    }
}

#[test]
fn a_resize_beyond_the_budget_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("line.png");
    image::GrayImage::new(16384, 1).save(&p).unwrap();
    assert!(std::fs::metadata(&p).unwrap().len() < 1000);
    let e = Engine::random("atto", 10, 0, &Device::Cpu, DType::F32).unwrap();
    let t = Instant::now();
    let err = e.prepare_file(&p).err().unwrap().to_string();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        err.contains("line.png") && err.contains("Mpx limit"),
        "{err}"
    );
}

#[test]
fn a_non_finite_forward_names_the_first_bad_layer() {
    let dir = tempfile::tempdir().unwrap();
    let mut map: HashMap<String, CTensor> =
        candle_core::safetensors::load(fixture("checkpoints/timm_v1.safetensors"), &Device::Cpu)
            .unwrap();
    let k = "stages.1.blocks.0.mlp.fc1.weight";
    let nan = (map[k].ones_like().unwrap() * f64::NAN).unwrap();
    map.insert(k.into(), nan);
    let p = dir.path().join("nan.safetensors");
    candle_core::safetensors::save(&map, &p).unwrap();
    let e = load(&p).unwrap();
    let x = CTensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap();
    let err = e.forward(&x).err().unwrap();
    assert!(matches!(err, Error::NonFinite(_)), "{err}");
    assert!(
        err.to_string().contains("stages.1.blocks.0.mlp.fc1"),
        "{err}"
    );

    // The CLI says so and fails.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convnext-explorer"))
        .args(["classify", "--json", "--weights"])
        .arg(&p)
        .arg(fixture("chelsea.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("stages.1.blocks.0.mlp.fc1") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no result printed for a NaN forward");
}

#[test]
fn options_are_range_checked_with_the_limit_in_the_message() {
    for (args, want) in [
        (
            vec!["inspect", "--variant", "atto", "--threads", "100000"],
            "four per core",
        ),
        (
            vec!["inspect", "--variant", "atto", "--size", "1099511627776"],
            "16384",
        ),
        (
            vec!["inspect", "--variant", "atto", "--batch", "100000000"],
            "65536",
        ),
        (
            vec!["bench", "--variant", "atto", "--batch", "100000"],
            "65536",
        ),
        (
            vec!["bench", "--variant", "atto", "--size", "100000"],
            "16384",
        ),
        (
            vec![
                "bench",
                "--variant",
                "atto",
                "--batch",
                "60000",
                "--size",
                "16384",
                "--iters",
                "1",
            ],
            "free",
        ),
        (
            vec!["bench", "--variant", "atto", "--classes", "0"],
            "classes",
        ),
    ] {
        let t = Instant::now();
        let (ok, _, err) = common::cli(&args);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{args:?} took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn the_weights_list_reads_tables_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = timm_v1();
    let i = t.iter().position(|t| t.name == "head.fc.weight").unwrap();
    t[i].numel = 1 << 40;
    t[i].shape = vec![1 << 20, 1 << 20];
    t[i].stride = vec![1 << 20, 1];
    write_pth(dir.path(), "huge.pth", &t);
    std::fs::copy(
        fixture("checkpoints/timm_v1.safetensors"),
        dir.path().join("ok.safetensors"),
    )
    .unwrap();
    let info = CheckpointInfo::read(dir.path().join("ok.safetensors")).unwrap();
    assert_eq!(info.config.num_classes, 7);
    let e = CheckpointInfo::read(dir.path().join("huge.pth"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("head.fc.weight"), "{e}");
    // Opening reads the same tables and then the data.
    assert!(Checkpoint::open(dir.path().join("ok.safetensors")).is_ok());
}

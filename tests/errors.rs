//! Bad input of every kind gives a clear error naming the file and the problem, never a panic.
mod common;
use candle_core::{DType, Device, Tensor};
use common::fixture;
use convnext_explorer::io::preprocess::{decode_image, load_image, prepare, PreprocessConfig};
use convnext_explorer::{Engine, Error};
use std::collections::HashMap;
use std::path::Path;

fn load(p: &Path) -> Result<Engine, Error> {
    Engine::load(p, &Device::Cpu, DType::F32)
}

fn timm_v1() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("checkpoints/timm_v1.safetensors"), &Device::Cpu)
        .unwrap()
}

fn write(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> std::path::PathBuf {
    let p = dir.join(name);
    candle_core::safetensors::save(tensors, &p).unwrap();
    p
}

#[test]
fn empty_truncated_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let e = load(&empty).err().unwrap().to_string();
    assert!(
        e.contains("empty.safetensors") && e.contains("empty"),
        "{e}"
    );

    for src in ["checkpoints/timm_v1.safetensors", "checkpoints/timm_v1.pth"] {
        let bytes = std::fs::read(fixture(src)).unwrap();
        let cut = dir.path().join(Path::new(src).file_name().unwrap());
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = load(&cut).err().unwrap().to_string();
        assert!(e.contains(cut.to_str().unwrap()), "{e}");
    }

    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "these are not weights\n").unwrap();
    let e = load(&text).err().unwrap().to_string();
    assert!(
        e.contains("neither a safetensors file nor a PyTorch"),
        "{e}"
    );

    let mut other = HashMap::new();
    other.insert(
        "encoder.layer.0.weight".to_string(),
        Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    let p = write(dir.path(), "bert.safetensors", &other);
    let e = load(&p).err().unwrap();
    assert!(matches!(e, Error::NotConvNext { .. }), "{e}");
    assert!(e.to_string().contains("bert.safetensors"));

    assert!(load(&dir.path().join("nope.safetensors"))
        .err()
        .unwrap()
        .to_string()
        .contains("no such file"));
}

#[test]
fn missing_extra_and_misshaped_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = timm_v1();
    t.remove("stages.1.blocks.0.gamma");
    let e = load(&write(dir.path(), "missing.safetensors", &t))
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::MissingTensor { ref name, .. } if name == "stages.1.blocks.0.gamma"),
        "{e}"
    );

    let mut t = timm_v1();
    t.insert(
        "stages.2.blocks.1.mlp.fc1.weight".into(),
        Tensor::zeros((128, 31), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = load(&write(dir.path(), "shape.safetensors", &t))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("stages.2.blocks.1.mlp.fc1.weight")
            && e.contains("[128, 31]")
            && e.contains("[128, 32]"),
        "{e}"
    );

    let mut t = timm_v1();
    t.insert(
        "stages.0.blocks.0.extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let e = load(&write(dir.path(), "extra.safetensors", &t))
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::ExtraTensor { ref name, .. } if name == "stages.0.blocks.0.extra.weight"),
        "{e}"
    );

    let mut t = timm_v1();
    t.remove("head.fc.weight");
    t.remove("head.fc.bias");
    let e = load(&write(dir.path(), "nohead.safetensors", &t))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("head.fc.weight"), "{e}");
}

#[test]
fn bad_images() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PreprocessConfig::default();

    let corrupt = dir.path().join("corrupt.png");
    let mut png = std::fs::read(fixture("chelsea.png")).unwrap();
    png.truncate(200);
    std::fs::write(&corrupt, &png).unwrap();
    let e = load_image(&corrupt).err().unwrap().to_string();
    assert!(e.contains("corrupt.png"), "{e}");

    let text = dir.path().join("readme.jpg");
    std::fs::write(&text, "hello").unwrap();
    assert!(load_image(&text)
        .err()
        .unwrap()
        .to_string()
        .contains("readme.jpg"));
    let e = decode_image(&[], "dropped.png").err().unwrap().to_string();
    assert!(e.contains("dropped.png") && e.contains("empty"), "{e}");

    // 1×1 is a valid image: it must classify, not crash.
    let one = image::DynamicImage::new_rgb8(1, 1);
    let p = prepare(&one, &cfg, &Device::Cpu).unwrap();
    assert_eq!(p.tensor.dims(), &[1, 3, 224, 224]);

    // Grey and RGBA become RGB.
    let grey = image::DynamicImage::new_luma8(40, 30);
    assert_eq!(
        prepare(&grey, &cfg, &Device::Cpu).unwrap().tensor.dims(),
        &[1, 3, 224, 224]
    );

    // A huge image is refused by the decoding limits before its pixels are allocated.
    let huge = dir.path().join("huge.png");
    image::GrayImage::new(20_000, 2).save(&huge).unwrap();
    let e = load_image(&huge).err().unwrap().to_string();
    assert!(
        e.contains("huge.png") && e.to_lowercase().contains("limit"),
        "{e}"
    );
}

#[test]
fn unknown_variant_device_dtype_and_input_size() {
    let e = Engine::random("convnext_gigantic", 1000, 0, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("convnext_gigantic") && e.contains("convnext_tiny"),
        "{e}"
    );
    #[cfg(not(feature = "cuda"))]
    assert!(convnext_explorer::base::device::parse_device("cuda")
        .err()
        .unwrap()
        .to_string()
        .contains("--features cuda"));
    #[cfg(not(feature = "metal"))]
    assert!(convnext_explorer::base::device::parse_device("metal")
        .err()
        .unwrap()
        .to_string()
        .contains("--features metal"));
    let e = convnext_explorer::base::device::parse_device("tpu")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tpu") && e.contains("expected cpu"), "{e}");
    let e = convnext_explorer::base::device::parse_dtype("f8")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("f8") && e.contains("bf16"), "{e}");

    let e = Engine::random("atto", 10, 0, &Device::Cpu, DType::F32).unwrap();
    let x = Tensor::zeros((1, 3, 50, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(e
        .forward(&x)
        .err()
        .unwrap()
        .to_string()
        .contains("multiple of 32"));
    let x = Tensor::zeros((1, 1, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let err = e.forward(&x).err().unwrap().to_string();
    assert!(
        err.contains("[N, 3, H, W]") && err.contains("[1, 1, 64, 64]"),
        "{err}"
    );
}

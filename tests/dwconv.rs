//! The fast depthwise kernel against candle's generic ops (and the reference path), forward and
//! backward, over many shapes.
mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::{dwconv_problem, rel_err as max_rel, DWCONV_SHAPES};
use convnext_explorer::kernels::{depthwise_conv_nhwc, depthwise_conv_nhwc_reference};

/// candle's own grouped conv2d (NCHW), the independent reference.
fn candle_grouped(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let (k, _, c) = w.dims3().unwrap();
    let x = x.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
    let wt = w
        .permute((2, 0, 1))
        .unwrap()
        .reshape((c, 1, k, k))
        .unwrap()
        .contiguous()
        .unwrap();
    let y = x.conv2d(&wt, k / 2, 1, 1, c).unwrap();
    y.broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap()
}

#[test]
fn fast_kernel_equals_candle_grouped_conv() {
    for &shape in DWCONV_SHAPES {
        let [x, wt, b] = dwconv_problem(shape);
        let fast = depthwise_conv_nhwc(&x, &wt, &b).unwrap();
        let slow = candle_grouped(&x, &wt, &b);
        let e = max_rel(&fast, &slow);
        assert!(e < 1e-5, "{shape:?}: rel err {e}");
        let r = depthwise_conv_nhwc_reference(&x, &wt, &b).unwrap();
        assert!(max_rel(&r, &slow) < 1e-5);
    }
}

#[test]
fn non_contiguous_and_half_inputs() {
    let dev = Device::Cpu;
    // A channels-last view of an NCHW tensor: strided, not contiguous.
    let nchw = Tensor::randn(0f32, 1., (2, 24, 10, 11), &dev).unwrap();
    let x = nchw.permute((0, 2, 3, 1)).unwrap();
    assert!(!x.is_contiguous());
    let wt = Tensor::randn(0f32, 1., (7, 7, 24), &dev).unwrap();
    let b = Tensor::randn(0f32, 1., 24, &dev).unwrap();
    let fast = depthwise_conv_nhwc(&x, &wt, &b).unwrap();
    assert!(max_rel(&fast, &candle_grouped(&x, &wt, &b)) < 1e-5);
    let xb = x.to_dtype(DType::BF16).unwrap();
    let half = depthwise_conv_nhwc(
        &xb,
        &wt.to_dtype(DType::BF16).unwrap(),
        &b.to_dtype(DType::BF16).unwrap(),
    )
    .unwrap();
    assert_eq!(half.dtype(), DType::BF16);
    assert!(max_rel(&half.to_dtype(DType::F32).unwrap(), &fast) < 2e-2);
}

#[test]
fn bad_shapes_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 4, 8), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((7, 7, 9), DType::F32, &dev).unwrap();
    let b = Tensor::zeros(8, DType::F32, &dev).unwrap();
    let e = depthwise_conv_nhwc(&x, &w, &b).err().unwrap().to_string();
    assert!(e.contains("[7, 7, 9]") && e.contains("do not fit"), "{e}");
    let w = Tensor::zeros((6, 6, 8), DType::F32, &dev).unwrap();
    let e = depthwise_conv_nhwc(&x, &w, &b).err().unwrap().to_string();
    assert!(e.contains("[6, 6, 8]") && e.contains("odd K"), "{e}");
}

#[test]
fn gradients_match_the_differentiable_reference() {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1., (2, 9, 6, 20), &dev).unwrap();
    let w = Var::randn(0f32, 1., (7, 7, 20), &dev).unwrap();
    let b = Var::randn(0f32, 1., 20, &dev).unwrap();
    let probe = Tensor::randn(0f32, 1., (2, 9, 6, 20), &dev).unwrap();
    let loss = |y: Tensor| (y * &probe).unwrap().sum_all().unwrap();
    let g1 = loss(depthwise_conv_nhwc(&x, &w, &b).unwrap())
        .backward()
        .unwrap();
    let g2 = loss(depthwise_conv_nhwc_reference(&x, &w, &b).unwrap())
        .backward()
        .unwrap();
    for (name, v) in [
        ("x", x.as_tensor()),
        ("w", w.as_tensor()),
        ("b", b.as_tensor()),
    ] {
        let a = g1.get(v).unwrap_or_else(|| panic!("no grad for {name}"));
        let r = g2.get(v).unwrap();
        assert!(max_rel(a, r) < 1e-4, "grad {name}");
    }
}

/// The CUDA / Metal kernel against the CPU kernel, forward in every dtype and backward, where the
/// build has the feature. Without a device on the machine there is nothing to compare: the test
/// says so and passes (`gpu_kernels_on_host.rs` runs the same kernel source on the host).
#[cfg(any(feature = "cuda", feature = "metal"))]
#[test]
fn gpu_kernel_equals_the_cpu_kernel() {
    let gpu = if cfg!(feature = "cuda") {
        Device::new_cuda(0)
    } else {
        Device::new_metal(0)
    };
    let gpu = match gpu {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no GPU on this machine ({e}); the device kernel was not run");
            return;
        }
    };
    let cpu = Device::Cpu;
    for &shape in DWCONV_SHAPES {
        let [x, wt, b] = dwconv_problem(shape);
        let want = depthwise_conv_nhwc(&x, &wt, &b).unwrap();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 2e-2), (DType::BF16, 2e-2)] {
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
            let got = depthwise_conv_nhwc(&on(&x), &on(&wt), &on(&b)).unwrap();
            assert_eq!(got.dtype(), dtype);
            let got = got.to_device(&cpu).unwrap();
            let e = max_rel(&got, &want);
            assert!(e < tol, "{dtype:?} {shape:?}: rel err {e}");
        }
    }
    // Backward on the device (input grad through the kernel, weight grad composed) vs the CPU.
    let grads = |dev: &Device| {
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 2. * 9. * 6. * 20., &cpu)
                .unwrap()
                .reshape((2, 9, 6, 20))
                .unwrap()
                .sin()
                .unwrap()
                .to_device(dev)
                .unwrap(),
        )
        .unwrap();
        let w = Var::from_tensor(
            &Tensor::arange(0f32, 7. * 7. * 20., &cpu)
                .unwrap()
                .reshape((7, 7, 20))
                .unwrap()
                .cos()
                .unwrap()
                .to_device(dev)
                .unwrap(),
        )
        .unwrap();
        let b = Var::zeros(20, DType::F32, dev).unwrap();
        let y = depthwise_conv_nhwc(&x, &w, &b).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        [x.as_tensor(), w.as_tensor(), b.as_tensor()]
            .map(|v| g.get(v).unwrap().to_device(&cpu).unwrap())
    };
    for (a, r) in grads(&gpu).iter().zip(grads(&cpu).iter()) {
        assert!(max_rel(a, r) < 1e-4);
    }
}

/// The fused conv + LayerNorm (inference) against candle's grouped conv and candle's own
/// LayerNorm, over every shape; and refused where a gradient is wanted.
#[test]
fn fused_conv_and_norm_equal_candles_ops() {
    use convnext_explorer::kernels::dwconv::depthwise_conv_layer_norm;
    use std::sync::Arc;
    for &shape in DWCONV_SHAPES {
        let [x, wt, b] = dwconv_problem(shape);
        let c = shape.3;
        let lw = Tensor::randn(1f32, 0.2, c, &Device::Cpu).unwrap();
        let lb = Tensor::randn(0f32, 0.2, c, &Device::Cpu).unwrap();
        let (vw, vb) = (
            Arc::new(lw.to_vec1::<f32>().unwrap()),
            Arc::new(lb.to_vec1::<f32>().unwrap()),
        );
        let fused = depthwise_conv_layer_norm(&x, &wt, &b, (&vw, &vb, 1e-6), false)
            .unwrap()
            .expect("f32 on the CPU, no gradient: fused");
        // The bf16 output is the f32 one rounded (ties to even), value for value.
        let in_bf16 = depthwise_conv_layer_norm(&x, &wt, &b, (&vw, &vb, 1e-6), true)
            .unwrap()
            .expect("fused");
        assert_eq!(in_bf16.dtype(), DType::BF16);
        let rounded = fused.to_dtype(DType::BF16).unwrap();
        let bits = |t: &Tensor| -> Vec<u16> {
            let v: Vec<half::bf16> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|h| h.to_bits()).collect()
        };
        assert_eq!(bits(&in_bf16), bits(&rounded), "{shape:?}: bf16 output");
        let conv = candle_grouped(&x, &wt, &b).contiguous().unwrap();
        let want = candle_nn::ops::layer_norm(&conv, &lw, &lb, 1e-6).unwrap();
        let e = max_rel(&fused, &want);
        assert!(e < 1e-4, "{shape:?}: rel err {e}");
        let tracked = Var::from_tensor(&x).unwrap();
        let refused =
            depthwise_conv_layer_norm(tracked.as_tensor(), &wt, &b, (&vw, &vb, 1e-6), false);
        assert!(
            refused.unwrap().is_none(),
            "a tracked input takes the ops with gradients"
        );
    }
}

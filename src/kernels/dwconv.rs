//! Depthwise K×K convolution ("same" padding, stride 1) on channels-last (NHWC) tensors.
//!
//! candle runs a grouped convolution as one convolution per channel, which made the 7×7
//! depthwise conv 63% of a ConvNeXt forward. Channels-last lets the kernel vectorise along the
//! contiguous channel axis: for each output pixel and a 32-channel slice, all K×K taps are
//! accumulated in registers before one store.
//!
//! Layouts: input `[N, H, W, C]`, weight `[K, K, C]`, bias `[C]`, output `[N, H, W, C]`.
use crate::simd_dispatch;
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Depthwise conv with a kernel of ours on the CPU, on CUDA (`cuda` feature) and on Metal
/// (`metal` feature), and the composed device-generic path elsewhere. Gradients flow through all.
pub fn depthwise_conv_nhwc(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_shapes(x, w, b)?;
    if has_kernel(x.device()) {
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        let b = b.contiguous()?;
        x.apply_op3(&w, &b, DwConv)
    } else {
        depthwise_conv_nhwc_reference(x, w, b)
    }
}

/// The same convolution from candle's own ops: K×K shifted views of the padded input, each
/// scaled per channel and summed. Slow on the CPU but runs on every device and backpropagates;
/// it is also the reference the fast kernel is tested against.
pub fn depthwise_conv_nhwc_reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_shapes(x, w, b)?;
    let k = w.dim(0)?;
    let mut acc = b
        .reshape((1, 1, 1, ()))?
        .broadcast_as(x.shape())?
        .contiguous()?;
    for (t, tap) in shifted_views(x, k)?.iter().enumerate() {
        let wij = w.get(t / k)?.get(t % k)?.reshape((1, 1, 1, ()))?;
        acc = (acc + tap.broadcast_mul(&wij)?)?;
    }
    Ok(acc)
}

/// The depthwise conv and the LayerNorm after it in one pass over memory (`norm(conv(x))`,
/// each output row normalised as soon as it is made), where no gradient is wanted: inference
/// on the CPU in f32; `None` elsewhere. `ln` is the norm's weight, bias and eps.
///
/// `bf16_out`: hand the result back rounded to bf16 (for a Linear in native bf16 to read as it
/// is), each row rounded while in the cache, with no f32 copy of the output.
pub fn depthwise_conv_layer_norm(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    ln: (&std::sync::Arc<Vec<f32>>, &std::sync::Arc<Vec<f32>>, f32),
    bf16_out: bool,
) -> Result<Option<Tensor>> {
    check_shapes(x, w, b)?;
    let c = x.dim(3)?;
    let cpu_f32 = [x, w, b]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if !cpu_f32 || x.track_op() || ln.0.len() != c || ln.1.len() != c {
        return Ok(None);
    }
    let op = DwConvLayerNorm {
        weight: ln.0.clone(),
        bias: ln.1.clone(),
        eps: ln.2,
        bf16_out,
    };
    Ok(Some(x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        op,
    )?))
}

/// [`depthwise_conv_layer_norm`]'s op (no backward: it is only taken where none is wanted).
struct DwConvLayerNorm {
    weight: std::sync::Arc<Vec<f32>>,
    bias: std::sync::Arc<Vec<f32>>,
    eps: f32,
    bf16_out: bool,
}

impl CustomOp3 for DwConvLayerNorm {
    fn name(&self) -> &'static str {
        "depthwise-conv-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (lw, lb, eps) = (&self.weight[..], &self.bias[..], self.eps);
        let norm = move |row: &mut [f32]| super::layer_norm::normalise_rows(row, lw, lb, eps);
        if !self.bf16_out {
            return forward_cpu_then(s1, l1, s2, l2, s3, l3, &norm);
        }
        let (n, h, w, c) = l1.shape().dims4()?;
        let k = l2.shape().dims()[0];
        let (x, wt, b) = (f32_data(s1, l1)?, f32_data(s2, l2)?, f32_data(s3, l3)?);
        let len = n * h * w * c;
        let mut out: Vec<half::bf16> = Vec::with_capacity(len);
        let dst = super::gemm::SendPtr16(out.as_mut_ptr().cast());
        let emit = |i: usize, row: &mut [f32]| {
            norm(row);
            // SAFETY: row `i` of the `n·h` rows of `w·c` values lies inside `out`'s capacity,
            // and each row is emitted once, by one thread.
            let d = unsafe { std::slice::from_raw_parts_mut(dst.at(i * row.len()), row.len()) };
            super::gemm::to_bf16(d, row);
        };
        dwconv_rows(&x, &wt, Some(&b), (n, h, w, c, k), &emit);
        // SAFETY: `dwconv_rows` has emitted every row, so all `len` values are written.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::BF16(out), l1.shape().clone()))
    }
}

/// Whether [`DwConv`] has a forward kernel for this device in this build.
fn has_kernel(device: &candle_core::Device) -> bool {
    device.is_cpu()
        || (cfg!(feature = "cuda") && device.is_cuda())
        || (cfg!(feature = "metal") && device.is_metal())
}

fn check_shapes(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<()> {
    let (_, _, _, c) = x.dims4()?;
    let (k1, k2, wc) = w.dims3()?;
    let bc = b.dims1()?;
    if k1 != k2 || k1 % 2 == 0 || wc != c || bc != c {
        candle_core::bail!(
            "depthwise conv: input {:?}, weight {:?}, bias {:?} do not fit (want [N,H,W,C], [K,K,C] odd K, [C])",
            x.dims(),
            w.dims(),
            b.dims()
        )
    }
    Ok(())
}

/// The forward kernel; its backward pass is two more passes of the same loops.
struct DwConv;

fn f32_data<'a>(s: &'a CpuStorage, l: &Layout) -> Result<std::borrow::Cow<'a, [f32]>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("depthwise conv: input not contiguous".into()))?;
    Ok(match s {
        CpuStorage::F32(v) => std::borrow::Cow::Borrowed(&v[start..end]),
        CpuStorage::BF16(v) => v[start..end].iter().map(|x| x.to_f32()).collect(),
        CpuStorage::F16(v) => v[start..end].iter().map(|x| x.to_f32()).collect(),
        CpuStorage::F64(v) => v[start..end].iter().map(|&x| x as f32).collect(),
        _ => candle_core::bail!("depthwise conv: unsupported dtype {:?}", s.dtype()),
    })
}

fn to_storage(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect()),
        DType::F64 => CpuStorage::F64(v.into_iter().map(f64::from).collect()),
        d => candle_core::bail!("depthwise conv: unsupported dtype {d:?}"),
    })
}

fn forward_cpu(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
) -> Result<(CpuStorage, Shape)> {
    forward_cpu_then(s1, l1, s2, l2, s3, l3, &|_: &mut [f32]| {})
}

/// [`forward_cpu`], then `then` on each finished output row ([`dwconv_f32_then`]).
#[allow(clippy::too_many_arguments)]
fn forward_cpu_then(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
    then: &(dyn Fn(&mut [f32]) + Sync),
) -> Result<(CpuStorage, Shape)> {
    let (n, h, w, c) = l1.shape().dims4()?;
    let k = l2.shape().dims()[0];
    let x = f32_data(s1, l1)?;
    let wt = f32_data(s2, l2)?;
    let b = f32_data(s3, l3)?;
    // NaN, not zero: an element the kernel fails to write shows up in every test.
    let mut out = vec![f32::NAN; n * h * w * c];
    dwconv_f32_then(&x, &wt, Some(&b), &mut out, (n, h, w, c, k), then);
    Ok((to_storage(out, s1.dtype())?, l1.shape().clone()))
}

impl CustomOp3 for DwConv {
    fn name(&self) -> &'static str {
        "depthwise-conv-nhwc"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        forward_cpu(s1, l1, s2, l2, s3, l3)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::dwconv_cuda::forward(s1, l1, s2, l2, s3, l3)
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
        s3: &candle_core::MetalStorage,
        l3: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        super::dwconv_metal::forward(s1, l1, s2, l2, s3, l3)
    }

    /// Gradients for what is tracked: the weight's and bias's only when they are (training),
    /// not when a gradient is asked of a fixed network (attribution).
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // d/dx of a "same" correlation is the correlation of the gradient with the kernel
        // flipped in both spatial axes.
        let k = w.dim(0)?;
        let idx = Tensor::new((0..k as u32).rev().collect::<Vec<_>>(), w.device())?;
        let w_flip = w
            .index_select(&idx, 0)?
            .index_select(&idx, 1)?
            .contiguous()?;
        let zero = w.get(0)?.get(0)?.zeros_like()?;
        let gx = x
            .track_op()
            .then(|| grad.apply_op3_no_bwd(&w_flip, &zero, &DwConv))
            .transpose()?;
        let gw = match (w.track_op(), x.device().is_cpu()) {
            (false, _) => None,
            (true, true) => Some(x.apply_op2_no_bwd(&grad, &DwConvWeightGrad { k })?),
            (true, false) => Some(weight_grad_composed(x, &grad, k)?),
        };
        let gb = b
            .track_op()
            .then(|| super::reduce::sum_to_channels(&grad))
            .transpose()?;
        Ok((gx, gw, gb))
    }
}

/// The weight gradient from candle's own ops, for devices without a kernel of ours: one product
/// of the gradient with a shifted view of the padded input per tap, summed over N, H, W.
fn weight_grad_composed(x: &Tensor, grad: &Tensor, k: usize) -> Result<Tensor> {
    let taps = shifted_views(x, k)?
        .iter()
        .map(|tap| (tap * grad)?.sum((0, 1, 2)))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&taps, 0)?.reshape((k, k, ()))
}

/// The K×K views of the zero-padded input that tap `(i, j)` reads, in row-major tap order: view
/// `i·K + j` is `x[n, h+i-p, w+j-p, c]` over the output grid.
fn shifted_views(x: &Tensor, k: usize) -> Result<Vec<Tensor>> {
    let (_, h, wd, _) = x.dims4()?;
    let p = k / 2;
    let xp = x.pad_with_zeros(1, p, p)?.pad_with_zeros(2, p, p)?;
    let mut views = Vec::with_capacity(k * k);
    for i in 0..k {
        let rows = xp.narrow(1, i, h)?;
        for j in 0..k {
            views.push(rows.narrow(2, j, wd)?);
        }
    }
    Ok(views)
}

/// dL/dw for the depthwise conv: `gw[i,j,c] = Σ g[n,h,w,c] · x[n,h+i-p,w+j-p,c]`.
struct DwConvWeightGrad {
    k: usize,
}

impl CustomOp2 for DwConvWeightGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv-nhwc-weight-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = l1.shape().dims4()?;
        let k = self.k;
        let x = f32_data(s1, l1)?;
        let g = f32_data(s2, l2)?;
        let row = w * c;
        let gw = (0..n * h)
            .into_par_iter()
            .fold(
                || vec![0f32; k * k * c],
                |mut acc, nh| {
                    let (ni, oh) = (nh / h, nh % h);
                    let plane = &x[ni * h * row..(ni + 1) * h * row];
                    weight_grad_row(
                        &mut acc,
                        &g[nh * row..(nh + 1) * row],
                        plane,
                        oh,
                        h,
                        w,
                        c,
                        k,
                    );
                    acc
                },
            )
            .reduce(
                || vec![0f32; k * k * c],
                |mut a, b| {
                    super::reduce::add_rows(&mut a, &b);
                    a
                },
            );
        Ok((to_storage(gw, s1.dtype())?, Shape::from((k, k, c))))
    }
}

/// Adds output row `oh`'s share of the weight gradient to `acc` (`[k, k, c]`): for each tap,
/// the gradient row times the input row it read, summed over columns. `x` is the image's plane.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn weight_grad_row_generic(
    acc: &mut [f32],
    grow: &[f32],
    x: &[f32],
    oh: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
) {
    let (p, row) = (k / 2, w * c);
    for i in 0..k {
        let ih = oh as isize + i as isize - p as isize;
        if ih < 0 || ih >= h as isize {
            continue;
        }
        let xrow = &x[ih as usize * row..][..row];
        for j in 0..k {
            let (lo, hi) = valid_cols(w, j, p);
            let a = &mut acc[(i * k + j) * c..][..c];
            for ow in lo..hi {
                let iw = ow + j - p;
                crate::kernels::simd::fma_slices_generic(
                    a,
                    &grow[ow * c..][..c],
                    &xrow[iw * c..][..c],
                );
            }
        }
    }
}

simd_dispatch!(fn weight_grad_row => weight_grad_row_generic(
    acc: &mut [f32], grow: &[f32], x: &[f32], oh: usize, h: usize, w: usize, c: usize, k: usize,
));

/// Output columns `ow` whose input column `ow + j - p` lies inside `[0, w)`.
#[inline(always)]
fn valid_cols(w: usize, j: usize, p: usize) -> (usize, usize) {
    let lo = p.saturating_sub(j);
    let hi = (w + p).saturating_sub(j).min(w);
    (lo, hi.max(lo))
}

/// The forward kernel on plain slices, parallel over output rows.
#[allow(clippy::too_many_arguments)]
pub fn dwconv_f32(
    x: &[f32],
    wt: &[f32],
    b: Option<&[f32]>,
    out: &mut [f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
) {
    dwconv_f32_then(x, wt, b, out, (n, h, w, c, k), &|_: &mut [f32]| {});
}

/// [`dwconv_f32`], then `then` on each finished output row (`w × c` values) while it is in
/// the cache: the block's LayerNorm, fused ([`depthwise_conv_layer_norm`]).
pub fn dwconv_f32_then(
    x: &[f32],
    wt: &[f32],
    b: Option<&[f32]>,
    out: &mut [f32],
    (n, h, w, c, k): (usize, usize, usize, usize, usize),
    then: &(dyn Fn(&mut [f32]) + Sync),
) {
    let row = w * c;
    let plane = h * row;
    if row == 0 || n == 0 {
        return;
    }
    let work = |(nh, orow): (usize, &mut [f32])| {
        let (ni, oh) = (nh / h, nh % h);
        dw_row(
            orow,
            &x[ni * plane..(ni + 1) * plane],
            wt,
            b,
            oh,
            h,
            w,
            c,
            k,
        );
        then(orow);
    };
    // Small layers are not worth waking the thread pool for.
    if n * h * w * c * k * k < 1 << 16 {
        out.chunks_mut(row).enumerate().for_each(work);
    } else {
        out.par_chunks_mut(row).enumerate().for_each(work);
    }
}

/// The conv, each output row made in a scratch row of its thread and handed to `emit` with its
/// index (of `n·h`): for outputs kept in another form (bf16) than the f32 the kernel computes.
fn dwconv_rows(
    x: &[f32],
    wt: &[f32],
    b: Option<&[f32]>,
    (n, h, w, c, k): (usize, usize, usize, usize, usize),
    emit: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let plane = h * w * c;
    (0..n * h).into_par_iter().for_each_init(
        || vec![0f32; w * c],
        |row, nh| {
            let (ni, oh) = (nh / h, nh % h);
            let x = &x[ni * plane..(ni + 1) * plane];
            dw_row(row, x, wt, b, oh, h, w, c, k);
            emit(nh, row);
        },
    );
}

/// One output row, with the widest register blocking this CPU has room for: AVX-512, four
/// neighbouring pixels × 32 channels (8 of 32 registers of accumulators); AVX2, four × 8
/// for K = 7 (with the tap row's weights in 7 more registers) and four × 16 otherwise (8 of
/// 16); elsewhere one pixel × 32. Blocking pixels gives each weight load four uses and
/// the adds four independent chains, where one pixel's 49 taps were one chain of dependent
/// adds. Every output is summed in the same order whatever the blocking (bias, then the taps
/// row by row), so the results do not depend on the CPU.
#[allow(clippy::too_many_arguments)]
fn dw_row(
    out: &mut [f32],
    x: &[f32],
    wt: &[f32],
    b: Option<&[f32]>,
    oh: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
) {
    let r = Row {
        x,
        wt,
        b,
        oh,
        h,
        w,
        c,
        k,
    };
    dw_row_at(crate::kernels::simd::level(), out, &r)
}

/// [`dw_row`] with the blocks of `level`, or of this CPU's level where that is lower: the
/// tests run every level this CPU has, not only its best.
fn dw_row_at(level: crate::kernels::simd::Level, out: &mut [f32], r: &Row) {
    // The SIMD blocks index without bounds checks: the slices must be whole (the public
    // entry points have checked the shapes, so this holds unless they have a bug).
    assert!(
        r.fits(out),
        "depthwise conv: a row's slices are shorter than its shape"
    );
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// Only on a CPU with AVX-512F, AVX2 and FMA; `r.fits(out)`.
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn w512(out: &mut [f32], r: &Row) {
            let tail: Tail = match r.c % 32 {
                1..=16 => (x86::tail512::<4, 1>, x86::tail512::<1, 1>),
                _ => (x86::tail512::<4, 2>, x86::tail512::<1, 2>),
            };
            let blocks = match (r.k, r.w) {
                (7, 4..) => Blocks::Clipped(x86::block512_k7::<4>),
                _ => Blocks::Interior(x86::block512::<4>),
            };
            dw_row_impl::<4, 32>(out, r, Some(blocks), Some(tail))
        }
        /// # Safety
        /// Only on a CPU with AVX2 and FMA; `r.fits(out)`.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn w256(out: &mut [f32], r: &Row) {
            match (r.k, r.w) {
                // 16 channels a block where C is a multiple of 16 (all but ConvNeXt-atto's
                // first stage, 40), else 8: no ConvNeXt has a tail (its widths are multiples
                // of 8).
                (7, 4..) if r.c.is_multiple_of(16) => {
                    let blocks = Blocks::Clipped(x86::block256_k7::<4, 2>);
                    dw_row_impl::<4, 16>(out, r, Some(blocks), None)
                }
                (7, 4..) => {
                    let blocks = Blocks::Clipped(x86::block256_k7::<4, 1>);
                    dw_row_impl::<4, 8>(out, r, Some(blocks), None)
                }
                _ => {
                    let blocks = Blocks::Interior(x86::block256::<4>);
                    dw_row_impl::<4, 16>(out, r, Some(blocks), None)
                }
            }
        }
        use crate::kernels::simd::Level;
        match level.min(crate::kernels::simd::level()) {
            // SAFETY: this CPU has the level (capped by the detected one just above).
            Level::Avx512 => return unsafe { w512(out, r) },
            // SAFETY: as above.
            Level::Avx2 => return unsafe { w256(out, r) },
            Level::Baseline => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    // SAFETY: no SIMD block is given.
    unsafe { dw_row_impl::<1, 32>(out, r, None, None) }
}

/// One output row's inputs: the image's plane, the `[K, K, C]` weight, the bias, the output
/// row `oh`, and the plane's height, width and channels and the kernel size.
struct Row<'a> {
    x: &'a [f32],
    wt: &'a [f32],
    b: Option<&'a [f32]>,
    oh: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
}

impl Row<'_> {
    /// Whether the slices hold what the shape says: the plane `h × w × c`, the weight
    /// `k × k × c`, the bias `c`, the output row `w × c`, and `oh` is a row of the plane.
    fn fits(&self, out: &[f32]) -> bool {
        let (h, w, c, k) = (self.h, self.w, self.c, self.k);
        self.x.len() >= h * w * c
            && self.wt.len() >= k * k * c
            && self.b.is_none_or(|b| b.len() >= c)
            && out.len() >= w * c
            && self.oh < h
    }
}

/// A block of `PW` pixels from `ow` × channels `c0..c0 + CB`, written with one CPU's vector
/// instructions.
///
/// # Safety
/// The CPU must have the block's instructions; the row as [`dw_row_impl`] calls it.
type Block = unsafe fn(&mut [f32], &Row, std::ops::Range<usize>, (usize, usize));

/// Where a row's [`Block`] may run.
enum Blocks {
    /// Only where all the pixels' taps lie inside the row (the interior); the edge pixels go
    /// one at a time.
    Interior(Block),
    /// Anywhere in a row of at least `PW` pixels: the block skips the taps that fall outside.
    Clipped(Block),
}

/// Blocks for the last `n < CB` channels, `(ow, c0, n)`: `PW` interior pixels, and one pixel
/// with its taps clipped to the row, with masked loads and stores.
///
/// # Safety
/// As for [`Block`].
type Tail = (
    unsafe fn(&mut [f32], &Row, std::ops::Range<usize>, (usize, usize, usize)),
    unsafe fn(&mut [f32], &Row, std::ops::Range<usize>, (usize, usize, usize)),
);

/// Output row `oh`: `CB` channels at a time (the remainder after), and within a slice `PW`
/// pixels at a time with `blocks` where they may run ([`Blocks`]), one at a time elsewhere.
///
/// # Safety
/// The blocks must run on this CPU, and take `PW` pixels × `CB` channels; `r.fits(out)`; a
/// [`Blocks::Clipped`] row is at least `PW` pixels wide.
#[inline(always)]
unsafe fn dw_row_impl<const PW: usize, const CB: usize>(
    out: &mut [f32],
    r: &Row,
    blocks: Option<Blocks>,
    tail: Option<Tail>,
) {
    let (w, c, k, p) = (r.w, r.c, r.k, r.k / 2);
    let rows = (p.saturating_sub(r.oh))..((r.h + p - r.oh).min(k));
    // Channel slices outside, pixels inside: a slice's K×K weights stay in L1 along the row.
    let full = c / CB * CB;
    let (block, first) = match blocks {
        Some(Blocks::Clipped(block)) => {
            for c0 in (0..full).step_by(CB) {
                // The last block is moved left to end at the row's end: the pixels it shares
                // with the one before are computed twice, to the same bits.
                for ow in (0..w).step_by(PW) {
                    // SAFETY: pixels ow.min(w − PW)..+PW < w (w ≥ PW, the caller vouches),
                    // the block clips their taps to the row; as for the interior blocks below.
                    block(out, r, rows.clone(), (ow.min(w - PW), c0));
                }
            }
            (None, full)
        }
        Some(Blocks::Interior(block)) => (Some(block), 0),
        None => (None, 0),
    };
    for c0 in (first..full).step_by(CB) {
        let mut ow = 0;
        while ow < w {
            match block {
                Some(block) if PW > 1 && ow >= p && ow + PW - 1 + p < w => {
                    // SAFETY: the pixels ow..ow+PW and their taps' columns lie inside the row
                    // (checked just above), the tap rows inside the plane (`rows`), channels
                    // c0..c0+CB inside c; the caller vouches for the CPU and `Row::fits`.
                    block(out, r, rows.clone(), (ow, c0));
                    ow += PW;
                }
                _ => {
                    dw_pixel::<CB>(out, r, rows.clone(), (ow, c0, CB));
                    ow += 1;
                }
            }
        }
    }
    // The last channels (8 of atto's 40): with a run-time count the portable pixel runs scalar.
    let n = c - full;
    let mut ow = 0;
    while n > 0 && ow < w {
        match tail {
            Some((block, _)) if PW > 1 && ow >= p && ow + PW - 1 + p < w => {
                // SAFETY: as for the blocks above, with channels full..c.
                block(out, r, rows.clone(), (ow, full, n));
                ow += PW;
            }
            Some((_, pixel)) => {
                // SAFETY: pixel ow < w, its taps clipped to the row; as above otherwise.
                pixel(out, r, rows.clone(), (ow, full, n));
                ow += 1;
            }
            None => {
                dw_pixel::<CB>(out, r, rows.clone(), (ow, full, n));
                ow += 1;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Row;
    use std::arch::x86_64::*;

    /// The SIMD blocks, one per instruction set: written with intrinsics because the compiler
    /// left the portable block's 4 × 32 accumulators on the stack and ran it scalar. Each
    /// output is summed as [`super::dw_pixel`] sums it (bias, then `acc + x·w` tap by tap, the
    /// product rounded before the add), so the blocking does not change a bit.
    macro_rules! dw_block_simd {
        ($name:ident, $feature:literal, $lanes:literal,
         $load:ident, $store:ident, $add:ident, $mul:ident, $zero:ident) => {
            /// `PW` interior pixels from `ow` × `2 × lanes` channels from `c0`.
            ///
            /// # Safety
            /// The CPU must have the instructions of `$feature`; every tap of the pixels must
            /// lie inside the row's plane, the channels inside `c`, and the row's slices must
            /// be whole ([`Row::fits`]).
            #[target_feature(enable = $feature)]
            pub unsafe fn $name<const PW: usize>(
                out: &mut [f32],
                g: &Row,
                taps: std::ops::Range<usize>,
                (ow, c0): (usize, usize),
            ) {
                let (c, k, p, row) = (g.c, g.k, g.k / 2, g.w * g.c);
                let mut acc = [[$zero(); 2]; PW];
                if let Some(b) = g.b {
                    let bp = b.as_ptr().add(c0);
                    acc = [[$load(bp), $load(bp.add($lanes))]; PW];
                }
                for i in taps {
                    let xrow = g.x.as_ptr().add((g.oh + i - p) * row);
                    for j in 0..k {
                        let wp = g.wt.as_ptr().add((i * k + j) * c + c0);
                        let w = [$load(wp), $load(wp.add($lanes))];
                        for (q, a) in acc.iter_mut().enumerate() {
                            let xp = xrow.add((ow + q + j - p) * c + c0);
                            a[0] = $add(a[0], $mul($load(xp), w[0]));
                            a[1] = $add(a[1], $mul($load(xp.add($lanes)), w[1]));
                        }
                    }
                }
                for (q, a) in acc.iter().enumerate() {
                    let op = out.as_mut_ptr().add((ow + q) * c + c0);
                    $store(op, a[0]);
                    $store(op.add($lanes), a[1]);
                }
            }
        };
    }

    /// [`block512`] for K = 7 (every ConvNeXt), with a tap row's seven weights held in 14
    /// registers and each input column loaded once for all the pixels that read it: PW + 6
    /// column loads a tap row instead of 7·PW, which halves the loads at PW = 4. Columns
    /// outside the row are skipped, so the block also runs at the edges, where single pixels
    /// were one chain of dependent adds (all of a 7×7 map's pixels are edge pixels). Summed
    /// as [`super::dw_pixel`] sums: for each pixel, the columns reach it with its taps in
    /// ascending order, the clipped ones left out.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `g.k` must be 7, the pixels `ow..ow + PW` inside the row,
    /// the tap rows inside the plane, the channels inside `c`, and the row's slices whole
    /// ([`Row::fits`]).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block512_k7<const PW: usize>(
        out: &mut [f32],
        g: &Row,
        taps: std::ops::Range<usize>,
        (ow, c0): (usize, usize),
    ) {
        const K: usize = 7;
        const P: usize = K / 2;
        let (c, row) = (g.c, g.w * g.c);
        // Window column t is the row's column ow + t − P; those outside [0, w) are padding.
        let inside = P.saturating_sub(ow)..(g.w + P - ow).min(PW + K - 1);
        let load = |ptr: *const f32| [_mm512_loadu_ps(ptr), _mm512_loadu_ps(ptr.add(16))];
        let mut acc = [[_mm512_setzero_ps(); 2]; PW];
        if let Some(b) = g.b {
            acc = [load(b.as_ptr().add(c0)); PW];
        }
        for i in taps {
            let wrow = g.wt.as_ptr().add(i * K * c + c0);
            let w: [[__m512; 2]; K] = std::array::from_fn(|j| load(wrow.add(j * c)));
            let xrow = g.x.as_ptr().add((g.oh + i - P) * row + c0);
            // Column t of the window feeds pixel q through tap j = t − q.
            for t in 0..PW + K - 1 {
                if !inside.contains(&t) {
                    continue;
                }
                let x = load(xrow.add((ow + t - P) * c));
                for (q, a) in acc.iter_mut().enumerate() {
                    if (q..q + K).contains(&t) {
                        let wj = w[t - q];
                        a[0] = _mm512_add_ps(a[0], _mm512_mul_ps(x[0], wj[0]));
                        a[1] = _mm512_add_ps(a[1], _mm512_mul_ps(x[1], wj[1]));
                    }
                }
            }
        }
        for (q, a) in acc.iter().enumerate() {
            let op = out.as_mut_ptr().add((ow + q) * c + c0);
            _mm512_storeu_ps(op, a[0]);
            _mm512_storeu_ps(op.add(16), a[1]);
        }
    }

    dw_block_simd!(
        block512,
        "avx512f",
        16,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_add_ps,
        _mm512_mul_ps,
        _mm512_setzero_ps
    );
    /// `PW` interior pixels (`PW` > 1), or one pixel with its taps clipped to the row
    /// (`PW` = 1), from `ow` × the `n < 32` channels from `c0`, in `V` masked vectors (masked
    /// lanes are neither read nor written; `V` = 1 where `n ≤ 16`: ConvNeXt-atto's 40 and 80
    /// channels leave 8 and 16, and a second, empty vector had doubled the tail's work).
    /// Summed as [`super::dw_pixel`] sums.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; as for the blocks above, with channels `c0..c0 + n`, and
    /// `n ≤ 16·V`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tail512<const PW: usize, const V: usize>(
        out: &mut [f32],
        g: &Row,
        taps: std::ops::Range<usize>,
        (ow, c0, n): (usize, usize, usize),
    ) {
        let (c, k, p, row) = (g.c, g.k, g.k / 2, g.w * g.c);
        let masks: [__mmask16; V] = std::array::from_fn(|v| {
            let m = n.saturating_sub(16 * v).min(16);
            ((1u32 << m) - 1) as __mmask16
        });
        let load = |ptr: *const f32| -> [__m512; V] {
            std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], ptr.add(16 * v)))
        };
        let cols = match PW {
            1 => p.saturating_sub(ow)..(g.w + p - ow).min(k),
            _ => 0..k,
        };
        let mut acc = [[_mm512_setzero_ps(); V]; PW];
        if let Some(b) = g.b {
            acc = [load(b.as_ptr().add(c0)); PW];
        }
        for i in taps {
            let xrow = g.x.as_ptr().add((g.oh + i - p) * row);
            for j in cols.clone() {
                let w = load(g.wt.as_ptr().add((i * k + j) * c + c0));
                for (q, a) in acc.iter_mut().enumerate() {
                    let x = load(xrow.add((ow + q + j - p) * c + c0));
                    for v in 0..V {
                        a[v] = _mm512_add_ps(a[v], _mm512_mul_ps(x[v], w[v]));
                    }
                }
            }
        }
        for (q, a) in acc.iter().enumerate() {
            let op = out.as_mut_ptr().add((ow + q) * c + c0);
            for v in 0..V {
                _mm512_mask_storeu_ps(op.add(16 * v), masks[v], a[v]);
            }
        }
    }

    /// [`block512_k7`] with AVX2: `PW` pixels × `V` vectors of 8 channels. Each input column is
    /// loaded once for the pixels that read it, and the block also runs at the edges, where
    /// [`super::dw_pixel`] ran each pixel as one chain of dependent adds (every pixel of a 7×7
    /// map). With one vector, a tap row's seven weights, the `PW` accumulators and an input
    /// column fit the 16 registers. Two vectors (16 channels) read whole 64-byte lines of
    /// the input, each from L2 once per block rather than twice (a stage-0 plane is beyond
    /// L1), and give the adds twice the independent chains; the 14 weights then come from L1,
    /// not from registers. Summed as [`super::dw_pixel`] sums.
    ///
    /// # Safety
    /// The CPU must have AVX2; `g.k` must be 7, the pixels `ow..ow + PW` inside the row, the
    /// tap rows inside the plane, the channels `c0..c0 + 8·V` inside `c`, and the row's slices
    /// whole ([`Row::fits`]).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block256_k7<const PW: usize, const V: usize>(
        out: &mut [f32],
        g: &Row,
        taps: std::ops::Range<usize>,
        (ow, c0): (usize, usize),
    ) {
        const K: usize = 7;
        const P: usize = K / 2;
        let (c, row) = (g.c, g.w * g.c);
        // Window column t is the row's column ow + t − P; those outside [0, w) are padding.
        let inside = P.saturating_sub(ow)..(g.w + P - ow).min(PW + K - 1);
        let mut acc = [[_mm256_setzero_ps(); V]; PW];
        if let Some(b) = g.b {
            let bias: [__m256; V] =
                std::array::from_fn(|v| _mm256_loadu_ps(b.as_ptr().add(c0 + 8 * v)));
            acc = [bias; PW];
        }
        for i in taps {
            let wrow = g.wt.as_ptr().add(i * K * c + c0);
            let xrow = g.x.as_ptr().add((g.oh + i - P) * row + c0);
            // Column t of the window feeds pixel q through tap j = t − q.
            for t in 0..PW + K - 1 {
                if !inside.contains(&t) {
                    continue;
                }
                for v in 0..V {
                    let x = _mm256_loadu_ps(xrow.add((ow + t - P) * c + 8 * v));
                    for (q, a) in acc.iter_mut().enumerate() {
                        if (q..q + K).contains(&t) {
                            let w = _mm256_loadu_ps(wrow.add((t - q) * c + 8 * v));
                            a[v] = _mm256_add_ps(a[v], _mm256_mul_ps(x, w));
                        }
                    }
                }
            }
        }
        for (q, a) in acc.iter().enumerate() {
            let op = out.as_mut_ptr().add((ow + q) * c + c0);
            for (v, a) in a.iter().enumerate() {
                _mm256_storeu_ps(op.add(8 * v), *a);
            }
        }
    }

    dw_block_simd!(
        block256,
        "avx2,fma",
        8,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_add_ps,
        _mm256_mul_ps,
        _mm256_setzero_ps
    );
}

/// One pixel `ow`, channels `c0..c0 + n` (`n ≤ CB`), the taps clipped to the row.
#[inline(always)]
fn dw_pixel<const CB: usize>(
    out: &mut [f32],
    g: &Row,
    taps: std::ops::Range<usize>,
    (ow, c0, n): (usize, usize, usize),
) {
    // A whole slice with `n` a constant, so that the compiler keeps the accumulators in
    // vector registers: with `n` known only at run time the loop ran scalar through the stack,
    // and the edge pixels (every pixel of a 7×7 map) took most of the conv's time.
    if n == CB {
        dw_pixel_n::<CB>(out, g, taps, (ow, c0, CB))
    } else {
        dw_pixel_n::<CB>(out, g, taps, (ow, c0, n))
    }
}

/// [`dw_pixel`]'s body, inlined into both of its calls.
#[inline(always)]
fn dw_pixel_n<const CB: usize>(
    out: &mut [f32],
    g: &Row,
    taps: std::ops::Range<usize>,
    (ow, c0, n): (usize, usize, usize),
) {
    let (x, wt, b) = (g.x, g.wt, g.b);
    let (c, k, p, row) = (g.c, g.k, g.k / 2, g.w * g.c);
    let cols = p.saturating_sub(ow)..(g.w + p - ow).min(k);
    let mut acc = [0f32; CB];
    if let Some(b) = b {
        acc[..n].copy_from_slice(&b[c0..c0 + n]);
    }
    for i in taps {
        let xrow = &x[(g.oh + i - p) * row..][..row];
        for j in cols.clone() {
            let xs = &xrow[(ow + j - p) * c + c0..][..n];
            let ws = &wt[(i * k + j) * c + c0..][..n];
            for t in 0..n {
                acc[t] += xs[t] * ws[t];
            }
        }
    }
    out[ow * c + c0..][..n].copy_from_slice(&acc[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GPUs' composed weight gradient equals the CPU kernel's.
    #[test]
    fn composed_weight_grad_equals_the_kernel() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 9, 6, 20), &dev).unwrap();
        let g = Tensor::randn(0f32, 1., (2, 9, 6, 20), &dev).unwrap();
        for k in [3, 7] {
            let kernel = x.apply_op2_no_bwd(&g, &DwConvWeightGrad { k }).unwrap();
            let composed = weight_grad_composed(&x, &g, k).unwrap();
            assert_eq!(kernel.dims(), &[k, k, 20]);
            let diff: f32 = (kernel - &composed)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let scale: f32 = composed
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff / scale < 1e-5, "k={k}: {diff} vs {scale}");
        }
    }

    /// The blocked row of every SIMD level this CPU has gives the same bits as the portable
    /// one-pixel row, on maps with interior blocks, edges only (7 wide), rows narrower than a
    /// block, ragged channel counts and a bias or none.
    #[test]
    fn blocked_rows_equal_the_one_pixel_rows() {
        use crate::kernels::simd::{level, Level};
        let levels = [Level::Baseline, Level::Avx2, Level::Avx512];
        let levels: Vec<_> = levels.into_iter().filter(|&l| l <= level()).collect();
        let mut seed = 7u32;
        let mut rand = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        for (h, w, c, k) in [
            (9, 23, 72, 7),
            (7, 7, 64, 7),
            (5, 12, 40, 3),
            (6, 10, 16, 5),
            // A tail of 24 channels: two masked vectors (8 and 16 above: one).
            (5, 9, 56, 7),
            // AVX2's K = 7 block takes 16 channels where C is a multiple of 16 (64 and 16
            // here), else 8: 44 leaves 4 over; and a row of 3 pixels.
            (6, 11, 44, 7),
            (4, 3, 24, 7),
            // Rows of 4 and 5 pixels: one K = 7 block, most of its taps clipped.
            (3, 4, 16, 7),
            (5, 5, 8, 7),
        ] {
            let (x, wt, b) = (rand(h * w * c), rand(k * k * c), rand(c));
            for bias in [Some(&b[..]), None] {
                for oh in 0..h {
                    let r = Row {
                        x: &x,
                        wt: &wt,
                        b: bias,
                        oh,
                        h,
                        w,
                        c,
                        k,
                    };
                    let mut plain = vec![0f32; w * c];
                    // SAFETY: no SIMD block; the slices have the shape's sizes.
                    unsafe { dw_row_impl::<1, 32>(&mut plain, &r, None, None) };
                    for &l in &levels {
                        let mut fast = vec![0f32; w * c];
                        dw_row_at(l, &mut fast, &r);
                        let same = fast
                            .iter()
                            .zip(&plain)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{l:?}: {h}×{w}×{c}, k {k}, row {oh}, bias {}",
                            bias.is_some()
                        );
                    }
                }
            }
        }
    }
}

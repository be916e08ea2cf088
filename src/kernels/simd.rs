//! Runtime CPU-feature dispatch. Release builds target baseline x86-64 (SSE2) so the binary runs
//! anywhere; the hot loops are compiled a second time with AVX2+FMA / AVX-512 and picked at run
//! time, letting the compiler vectorise them at full width.

/// `acc[k] += a[k] * b[k]` over whole slices (all the same length).
#[inline(always)]
pub fn fma_slices_generic(acc: &mut [f32], a: &[f32], b: &[f32]) {
    let n = acc.len().min(a.len()).min(b.len());
    let (acc, a, b) = (&mut acc[..n], &a[..n], &b[..n]);
    for k in 0..n {
        acc[k] = a[k].mul_add(b[k], acc[k]);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Baseline,
    Avx2,
    Avx512,
}

pub fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let found = if std::is_x86_feature_detected!("avx512f") {
                Level::Avx512
            } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            {
                Level::Avx2
            } else {
                Level::Baseline
            };
            // `CONVNEXT_SIMD=avx2|baseline` caps the level (never raises it): to run another
            // machine's code path here, in tests and benchmarks.
            let cap = match std::env::var("CONVNEXT_SIMD").as_deref() {
                Ok("baseline") => Level::Baseline,
                Ok("avx2") => Level::Avx2,
                _ => Level::Avx512,
            };
            found.min(cap)
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Level::Baseline
    }
}

/// Defines `pub fn $name(args)` that calls the `#[inline(always)]` function `$imp` compiled for
/// the best instruction set this CPU has (the body is generated again inside each wrapper).
#[macro_export]
macro_rules! simd_dispatch {
    ($vis:vis fn $name:ident => $imp:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// Only on a CPU with AVX-512F, AVX2 and FMA.
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn w512($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                /// # Safety
                /// Only on a CPU with AVX2 and FMA.
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn w256($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                match $crate::kernels::simd::level() {
                    // SAFETY: the level was detected on this CPU.
                    $crate::kernels::simd::Level::Avx512 => unsafe { w512($($arg),*) },
                    $crate::kernels::simd::Level::Avx2 => unsafe { w256($($arg),*) },
                    $crate::kernels::simd::Level::Baseline => $imp($($arg),*),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                $imp($($arg),*)
            }
        }
    };
}

//! How the C allocator treats the big, short-lived buffers of a forward or training step.
//!
//! glibc serves blocks above its mmap threshold (128 KiB at first) with fresh `mmap`s and
//! returns them to the system on `free`, and trims the heap top above 128 KiB. A ConvNeXt step
//! allocates and frees its activations every time, so each step paid for page faults on
//! memory the previous step had just given back: a training step at 64×64 spent 40% of its
//! time in the kernel (measured: 1.4 s → 0.9 s a step with the settings below).
//! Other platforms' allocators are left as they are.
use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks up to 32 MiB (glibc's largest accepted threshold) come from the heap, and freed
/// memory stays with the process up to 1 GiB above the heap top, so the next step reuses pages
/// that are already mapped. `main` calls it first thing.
pub fn keep_freed_memory() {
    set_thresholds(32 << 20, 1 << 30);
}

/// glibc's initial thresholds (128 KiB each), fixed: the reference `train --bench` compares
/// against.
pub fn glibc_initial() {
    set_thresholds(128 << 10, 128 << 10);
}

#[allow(unused_variables)]
fn set_thresholds(mmap: i32, trim: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation parameters, under the allocator's own
    // lock; the values are in the ranges glibc accepts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
    }
}

/// An allocator for the program's binaries (`main.rs`, the benchmarks; a library cannot pick
/// one for the programs that use it): the system's, except that blocks of at least 4 KiB start on a
/// 64-byte boundary (a cache line, and one AVX-512 register). glibc aligns to 16 bytes, so
/// every 64-byte load of a packed GEMM panel and every 64-byte store of an output tile
/// straddled two cache lines: measured on the GEMM's ConvNeXt-T shapes, `cargo bench --bench
/// gemm`.
pub struct CacheLineAligned;

const BIG: usize = 4096;
const LINE: usize = 64;

/// The layout a block is really allocated with: a function of size and alignment alone, so
/// that `dealloc` and `realloc` find the one `alloc` used.
fn adjusted(l: Layout) -> Layout {
    if l.size() >= BIG && l.align() < LINE {
        // SAFETY: LINE is a power of two and a size that fitted its alignment fits a larger
        // one up to isize::MAX less the rounding, which a block this small cannot reach.
        unsafe { Layout::from_size_align_unchecked(l.size(), LINE) }
    } else {
        l
    }
}

// SAFETY: every call forwards to `System` with the layout `adjusted` gives, the same for the
// allocation and its release; `realloc` across the threshold allocates, copies the smaller
// size and frees with the old adjusted layout.
unsafe impl GlobalAlloc for CacheLineAligned {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        System.alloc(adjusted(l))
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        System.alloc_zeroed(adjusted(l))
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, adjusted(l))
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let old = adjusted(l);
        let new = adjusted(Layout::from_size_align_unchecked(new_size, l.align()));
        if old.align() == new.align() {
            return System.realloc(p, old, new_size);
        }
        let q = System.alloc(new);
        if !q.is_null() {
            std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
            System.dealloc(p, old);
        }
        q
    }
}

#[cfg(test)]
mod tests {
    #[global_allocator]
    static ALLOCATOR: super::CacheLineAligned = super::CacheLineAligned;

    #[test]
    fn big_blocks_start_on_a_cache_line() {
        for n in [1024usize, 5000, 1 << 20, 40 << 20] {
            let v = vec![1f32; n];
            assert_eq!(v.as_ptr() as usize % 64, 0, "{n}");
            let mut w: Vec<f32> = Vec::with_capacity(10);
            w.extend(std::iter::repeat_n(2.0, n));
            assert_eq!(w.as_ptr() as usize % 64, 0, "grown to {n}");
            assert!(w.iter().all(|&x| x == 2.0) && v.iter().all(|&x| x == 1.0));
        }
    }
}

//! How the C allocator treats the big, short-lived buffers of a forward or training step.
//!
//! glibc serves blocks above its mmap threshold (128 KiB at first) with fresh `mmap`s and
//! returns them to the system on `free`, and trims the heap top above 128 KiB. A ConvNeXt step
//! allocates and frees its activations every time, so each step paid for page faults on
//! memory the previous step had just given back: a training step at 64×64 spent 40% of its
//! time in the kernel (measured: 1.4 s → 0.9 s a step with the settings below).
//! Other platforms' allocators are left as they are.

/// Blocks up to 32 MiB (glibc's largest accepted threshold) come from the heap, and freed
/// memory stays with the process up to 1 GiB above the heap top, so the next step reuses pages
/// that are already mapped. Larger blocks (stage 0's MLP at batch 8 is 38 MB) come from the
/// heap too: from `mmap` each paid its page faults on every call. One arena for all threads:
/// the forward runs on a pool worker (`base::pool`), and each thread's own arena kept its own
/// freed memory (Grad-CAM's peak went from 425 to 626 MB). `main` calls it first thing.
pub fn keep_freed_memory() {
    set_thresholds(32 << 20, 1 << 30, 0);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as in `set_thresholds`; 1 arena is a value glibc accepts (it then shares the
    // main arena between threads, under its lock).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// glibc's initial thresholds (128 KiB each), fixed: the reference `train --bench` compares
/// against.
pub fn glibc_initial() {
    set_thresholds(128 << 10, 128 << 10, 65536);
}

#[allow(unused_variables)]
fn set_thresholds(mmap: i32, trim: i32, mmap_max: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation parameters, under the allocator's own
    // lock; the values are in the ranges glibc accepts (M_MMAP_MAX 0: no mmap'd blocks; 65536
    // is glibc's default).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        libc::mallopt(libc::M_MMAP_MAX, mmap_max);
    }
}

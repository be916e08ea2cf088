//! Running a forward pass on rayon's pool with its workers kept awake.
//!
//! A forward runs a few parallel kernels per block, each a fraction of a millisecond on a small
//! model. Called from a thread outside the pool, every kernel is injected into the pool and the
//! caller sleeps until it is done: two context switches per kernel, a fifth of ConvNeXt-atto's
//! time on one thread (`perf`: `LockLatch::wait_and_reset`). Between kernels the other workers
//! fall asleep too, and waking them costs a futex call each time. [`run_awake`] runs the whole
//! forward on one worker and keeps the others spinning for work meanwhile, as OpenMP runtimes do.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a kept-awake worker spins without finding work before it goes back to rayon's own
/// idling: long enough to bridge the serial parts of a forward between two kernels, short
/// enough that a worker is not held long if a caller forgets to stop (a panic).
const IDLE_SPIN: Duration = Duration::from_millis(2);

/// Runs `f` on a worker of rayon's global pool while the other workers spin for work, and
/// returns its result. Called from a worker already (a forward inside a parallel job), it just
/// runs `f`: the pool is busy anyway, and spinning workers would take time from the others.
pub fn run_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let done = &AtomicBool::new(false);
    rayon::scope(|s| {
        let home = rayon::current_thread_index();
        // No more spinners than other cores: with more threads than cores, a spinning worker
        // would take a core's time from one with work.
        for _ in 1..rayon::current_num_threads().min(cores()) {
            s.spawn(move |_| spin(done, home));
        }
        // Set even if `f` panics, so that the scope's wait for the spinners ends.
        let _stop = Stop(done);
        f()
    })
}

/// Has candle run its elementwise ops on the calling thread, with no threads of its own.
///
/// candle (0.11) splits an elementwise op of 64 Ki elements or more (a residual add at
/// ConvNeXt's stage 0, much of a training step) over a pool of its own, beside rayon's, with a
/// thread fewer than rayon has. Our forwards run on rayon's pool with its other workers kept
/// spinning ([`run_awake`]), so candle's worker had no free core: the caller did its half, then
/// spun until the scheduler gave the worker a time slice. On 2 cores, ConvNeXt-atto's stage-0
/// residual adds took 0.8 ms each in the timing forward instead of 0.04 ms (in 3 runs of 4).
/// Our own kernels spread the work that is worth spreading over rayon's pool.
///
/// Call it first thing in `main`, before any other thread exists (it sets an environment
/// variable) and before candle's first elementwise op (candle reads the variable once). A
/// user's own `CANDLE_NUM_THREADS` is kept.
pub fn candle_ops_inline() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // Made now, with the variable as set here: `set_threads` later changes RAYON_NUM_THREADS,
    // which candle would read instead if this one were absent.
    let _ = candle_core::utils::barrier_pool();
}

/// The cores this process may use, read once: `available_parallelism` reads the cgroup's
/// quota files on Linux, too much for every forward.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Takes work from the pool until `done`; returns at once on the worker that runs the forward
/// (it reaches a spinner only when it waits, and must not be kept from its own work).
fn spin(done: &AtomicBool, home: Option<usize>) {
    if rayon::current_thread_index() == home {
        return;
    }
    let mut idle_since = Instant::now();
    let mut idle_rounds = 0u32;
    while !done.load(Ordering::Acquire) {
        if let Some(rayon::Yield::Executed) = rayon::yield_now() {
            idle_rounds = 0;
            continue;
        }
        // The clock only every 64 idle rounds: reading it cost as much as a round.
        idle_rounds += 1;
        if idle_rounds == 1 {
            idle_since = Instant::now();
        } else if idle_rounds.is_multiple_of(64) && idle_since.elapsed() > IDLE_SPIN {
            return;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn runs_on_a_worker_and_gives_the_same_result() {
        let v: Vec<u64> = (0..100_000).collect();
        let expected: u64 = v.iter().map(|x| x * x).sum();
        let (sum, worker) = run_awake(|| {
            let s: u64 = v.par_iter().map(|x| x * x).sum();
            (s, rayon::current_thread_index())
        });
        assert_eq!(sum, expected);
        assert!(worker.is_some(), "the body ran outside the pool");
    }

    #[test]
    fn nested_calls_and_panics_end() {
        let inner = run_awake(|| run_awake(|| 7));
        assert_eq!(inner, 7);
        let r = std::panic::catch_unwind(|| run_awake(|| panic!("boom")));
        assert!(r.is_err());
        // The pool still works after the panic.
        assert_eq!(run_awake(|| (0..10).into_par_iter().sum::<i32>()), 45);
    }
}

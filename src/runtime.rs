//! Process-wide tuning for training and inference on CPU. Call [`tune_for_cpu_training`]
//! once at the start of `main`, before any tensor is created.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Measured on MiniLM-L6 full fine-tuning with 2 cores (`examples/train_speed`, 128
/// examples, release build): default settings 6.9 samples/s with 18.7 s of user CPU;
/// element-wise pool off 12.8 samples/s with 8.9 s. candle runs element-wise ops on a
/// spinning barrier pool and matmuls on a separate rayon pool; with few cores the two
/// pools' threads spin against each other, so on such machines element-wise ops run on
/// the calling thread and the cores go to the matmuls.
const MAX_CORES_FOR_SERIAL_ELEMENTWISE: usize = 4;

pub fn tune_for_cpu_training() {
    keep_freed_memory_for_reuse();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() && cores <= MAX_CORES_FOR_SERIAL_ELEMENTWISE
    {
        // Read once by candle when its pool is first used; nothing has run yet.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // candle asks for its matmul thread count on every matmul; unset, the answer comes
        // from `num_cpus::get_physical`, which reads /proc/cpuinfo each time (1.3 % of a
        // MiniLM training step, profiled with perf). Set, it is a parse of this string.
        // The same count candle would compute: one thread per physical core.
        let physical = num_cpus::get_physical().max(1);
        std::env::set_var("RAYON_NUM_THREADS", physical.to_string());
    }
    if std::env::var_os("OPENBLAS_NUM_THREADS").is_none() {
        // Read by OpenBLAS when it is loaded (`zoo::cpu::blas`): one thread, so that it
        // does not start a pool of its own beside rayon's, which splits the products.
        std::env::set_var("OPENBLAS_NUM_THREADS", "1");
    }
}

/// Runs `work` as a task of a rayon pool of its own, one thread per core, so that the
/// thread driving the step is itself one of the threads its matmuls and kernels split over.
///
/// Driven from an outside thread, every parallel matmul parks the driver and wakes the
/// pool's threads, which then spin, yield and sleep while the driver runs the serial parts
/// of the step: one thread more than there are cores, trading places all step long.
/// Profiled on SmolLM2 LoRA SFT (2 cores): 8 % of the training window went to the
/// scheduler and `sched_yield`; on a pool of its own the same job trained 190.6 and 198.5
/// tokens/s against 183.2 and 176.4 (`bench/sft.py --limit 96`, alternating runs), while
/// MiniLM classification kept its pace. A pool that cannot be built leaves `work` on this
/// thread.
pub fn on_own_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("temper-pool-{i}"))
        .build()
    {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
}

/// Runs `work` on this thread while the other threads of the current rayon pool stay awake,
/// polling the pool for work, instead of going to sleep between its parallel products.
///
/// A training step alternates split matrix products with serial stretches (the graph walk,
/// element-wise candle ops), and an idle rayon worker sleeps after a few dozen microseconds;
/// waking it again can take as long as a product. On this project's 2-core VMs one SmolLM2
/// MLP product (216 × 576 · 576 × 1536, `examples/gemm_speed`) took a median 2.1–2.3 ms back
/// to back, but 2.9–3.5 ms after 0.2–1 ms of serial work with the pool asleep, and 2.2–2.5 ms
/// with it polling (the machine is noisy: one run in four reversed it). Over whole LoRA SFT
/// steps (`examples/sft_speed`, alternated) polling won 8 pairs of 8, median steps 838–1076 ms
/// against 985–1257. So for the length of a step the other threads poll with
/// [`rayon::yield_now`], which runs any job the driver splits off at once. Outside a pool,
/// or with one thread, `work` just runs. The price is a busy core while the step's serial
/// parts run, for the step's length only. One pool polls at a time: two training jobs
/// sharing the cores (`--devices cpu,cpu`) would otherwise spin against each other's drivers.
pub fn keep_pool_awake<R>(work: impl FnOnce() -> R) -> R {
    static POLLING_POOLS: AtomicUsize = AtomicUsize::new(0);
    match claim_polling(&POLLING_POOLS) {
        Some(_claim) => keep_awake_counting(work, &Pollers::default(), POLL_IDLE_LIMIT),
        None => work(),
    }
}

/// The right to poll, when no other pool holds it (`pools` counts the holders); given back
/// when the claim drops, however the step ends.
fn claim_polling(pools: &AtomicUsize) -> Option<ReleaseOnDrop<'_>> {
    if pools.fetch_add(1, Ordering::SeqCst) > 0 {
        pools.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    Some(ReleaseOnDrop(pools))
}

struct ReleaseOnDrop<'a>(&'a AtomicUsize);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long a polling thread finds no job to run before it stops polling: longer than the
/// serial stretches between a step's products (0.2–1 ms in training, tens of microseconds
/// in a decoding step).
const POLL_IDLE_LIMIT: Duration = Duration::from_millis(2);

/// The threads inside [`keep_awake_counting`]'s polling loop now, and all that entered it.
#[derive(Default)]
struct Pollers {
    inside: AtomicUsize,
    entered: AtomicUsize,
}

/// [`keep_pool_awake`], counting the polling threads in `pollers`, each leaving after
/// `idle_limit` without a job.
fn keep_awake_counting<R>(work: impl FnOnce() -> R, pollers: &Pollers, idle_limit: Duration) -> R {
    let Some(driver) = rayon::current_thread_index() else {
        return work();
    };
    if rayon::current_num_threads() < 2 {
        return work();
    }
    let done = AtomicBool::new(false);
    rayon::in_place_scope(|scope| {
        // Set however `work` ends, a panic included, so the pollers always stop and the
        // scope can close.
        let _stop = StopOnDrop(&done);
        scope.spawn_broadcast(|_, context| {
            if context.index() == driver {
                return;
            }
            pollers.entered.fetch_add(1, Ordering::SeqCst);
            pollers.inside.fetch_add(1, Ordering::SeqCst);
            let mut idle_since: Option<Instant> = None;
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    idle_since = None;
                    continue;
                }
                // A thread can take this job while it waits inside a join of the work's
                // (it stole a part of a parallel loop just before the job was queued): the
                // join's other half may be done, but the thread only sees that when this
                // loop returns, and the work may be waiting for the part beneath it. So a
                // poller that finds nothing to run for `POLL_IDLE_LIMIT` leaves; the work
                // then goes on with a thread that sleeps between products as usual. That
                // wait hung a server in the soak test (`tests/e2e/generation_limits.rs`)
                // once the engine polled for its sampling right after its step.
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > idle_limit {
                    break;
                }
                std::hint::spin_loop();
            }
            pollers.inside.fetch_sub(1, Ordering::SeqCst);
        });
        work()
    })
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Every training step allocates (and frees) tensors of tens of megabytes: gradients of the
/// embedding matrix, optimizer outputs, activations. glibc serves blocks above its mmap
/// threshold with fresh `mmap`s and returns them with `munmap`, so each step pays for page
/// faults and kernel zeroing of memory it just gave back. Measured on MiniLM-L6 full
/// fine-tuning (2 cores): 4–6 s of system time per 8 steps, and 20–40 % lower throughput.
/// Raising the mmap threshold to its maximum and never trimming keeps freed blocks in the
/// heap for the next step. The price is a heap that never shrinks by itself, which the
/// server cannot afford after generations (the KV caches of 50 abandoned ones stayed
/// resident): whoever frees a lot for good calls [`release_free_memory`], as the
/// generation engine does when sequences end. Measured with the soak test
/// (`tests/e2e/generation_limits.rs`) and `examples/train_speed`: training keeps its
/// speed, RSS returns to its baseline. A no-op on other platforms.
fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(glibc::M_MMAP_THRESHOLD, glibc::MMAP_THRESHOLD_MAX);
        keep_heap_tops();
    }
}

/// Values from glibc's malloc.h; the libc crate does not export them all.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    pub const M_TRIM_THRESHOLD: libc::c_int = -1;
    pub const M_TOP_PAD: libc::c_int = -2;
    pub const M_MMAP_THRESHOLD: libc::c_int = -3;
    pub const MMAP_THRESHOLD_MAX: libc::c_int = 32 * 1024 * 1024;
    /// glibc's default trim threshold.
    pub const DEFAULT_TRIM_THRESHOLD: libc::c_int = 128 * 1024;
    /// Above the trim threshold and `M_TOP_PAD`'s 0, below the mmap threshold: a block
    /// served from (and freed back into) the calling thread's heap.
    pub const TRIM_PROBE_BYTES: usize = 256 * 1024;
}

/// The tuning of [`keep_freed_memory_for_reuse`] that stops glibc from shrinking heaps.
///
/// # Safety
/// Only changes allocator parameters (always sound); `unsafe` as the FFI call is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe fn keep_heap_tops() {
    libc::mallopt(glibc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    libc::mallopt(glibc::M_TOP_PAD, 512 * 1024 * 1024);
}

/// Hands the free memory of the malloc arenas back to the OS. [`keep_freed_memory_for_reuse`]
/// stops glibc from trimming on its own (training reuses freed blocks every step), so code
/// that frees large amounts for good, a generation engine whose sequences ended, calls this
/// on the thread that freed them; without it the pages of abandoned generations stayed
/// resident for the life of the process.
///
/// Two steps, because `malloc_trim(0)` alone misses the largest block: it releases the free
/// pages inside every arena and the top of the main heap, but the top of a thread's own
/// arena (where that thread's KV caches lived) shrinks only in `free`, when it exceeds
/// `M_TRIM_THRESHOLD`, which the training tuning keeps at its maximum. Seen in the soak
/// test (`tests/e2e/generation_limits.rs`) on a loaded machine: 15–51 MiB stayed resident
/// in secondary arenas after every generation had ended, in half the runs. So the
/// thresholds drop to glibc's defaults for one malloc and free on this thread, which trims
/// its arena's top, and are set back. A free on another thread in that instant
/// may trim its heap too, which costs it a few page faults, never correctness.
/// A no-op on other platforms.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS and locks each arena itself;
    // mallopt only changes parameters; the probe block is freed right after its malloc
    // (a null one is a no-op for free).
    unsafe {
        libc::malloc_trim(0);
        libc::mallopt(glibc::M_TRIM_THRESHOLD, glibc::DEFAULT_TRIM_THRESHOLD);
        libc::mallopt(glibc::M_TOP_PAD, 0);
        let probe = libc::malloc(glibc::TRIM_PROBE_BYTES);
        // Written so the allocation is not optimised away.
        if !probe.is_null() {
            probe.cast::<u8>().write_volatile(1);
        }
        libc::free(probe);
        keep_heap_tops();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::time::Duration;

    use super::{claim_polling, keep_awake_counting, keep_pool_awake, Pollers, POLL_IDLE_LIMIT};

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// Waits, yielding, for `polling` to reach `n`; a bounded number of tries, not a time.
    fn reaches(polling: &AtomicUsize, n: usize) -> bool {
        (0..10_000_000).any(|_| {
            std::thread::yield_now();
            polling.load(Ordering::SeqCst) == n
        })
    }

    #[test]
    fn the_other_threads_poll_while_the_work_runs_and_stop_after() {
        let pollers = Pollers::default();
        let polling = &pollers.inside;
        // An idle limit no scheduling delay reaches: both pollers are in at once.
        let long = Duration::from_secs(3600);
        let seen = pool(3).install(|| keep_awake_counting(|| reaches(polling, 2), &pollers, long));
        assert!(
            seen,
            "both other threads of the pool poll while the work runs"
        );
        assert_eq!(polling.load(Ordering::SeqCst), 0, "and none after it");
    }

    #[test]
    fn a_poller_with_nothing_to_run_leaves_before_the_work_ends() {
        // The work waits for the poller to have come, then for it to leave on its own (it
        // finds no job for `POLL_IDLE_LIMIT`): a poller stuck over a join of the work's
        // would otherwise hold the work up for good.
        let pollers = Pollers::default();
        let left = pool(2).install(|| {
            let work = || reaches(&pollers.entered, 1) && reaches(&pollers.inside, 0);
            keep_awake_counting(work, &pollers, POLL_IDLE_LIMIT)
        });
        assert!(
            left,
            "the other thread polled, then stopped while the work still ran"
        );
    }

    #[test]
    fn a_panic_in_the_work_stops_the_pollers_and_reaches_the_caller() {
        let pollers = Pollers::default();
        let polling = &pollers.inside;
        let outcome = pool(2).install(|| {
            std::panic::catch_unwind(|| {
                keep_awake_counting(
                    || {
                        reaches(polling, 1);
                        panic!("step failed")
                    },
                    &pollers,
                    Duration::from_secs(3600),
                )
            })
        });
        assert!(outcome.is_err());
        assert_eq!(polling.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn outside_a_pool_or_alone_the_work_just_runs() {
        assert_eq!(keep_pool_awake(|| 7), 7);
        assert_eq!(pool(1).install(|| keep_pool_awake(|| 8)), 8);
        let joined = pool(2).install(|| keep_pool_awake(|| rayon::join(|| 1, || 2)));
        assert_eq!(joined, (1, 2));
    }

    #[test]
    fn one_pool_polls_at_a_time() {
        let pools = AtomicUsize::new(0);
        let first = claim_polling(&pools);
        assert!(first.is_some());
        assert!(
            claim_polling(&pools).is_none(),
            "a second pool runs its step unpolled"
        );
        drop(first);
        assert!(claim_polling(&pools).is_some(), "the claim is given back");
        assert_eq!(pools.load(Ordering::SeqCst), 0);
    }
}

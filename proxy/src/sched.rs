//! The scheduling policy of the broker's runtime threads (and of its audit
//! exporters' threads, which send in batches): `SCHED_BATCH`.
//!
//! A broker shares its machine with the agents that call it and, often, the
//! upstreams it calls. Under the default policy each reply the broker writes
//! wakes the agent, which then preempts the broker at once, reads that one
//! reply and sleeps again: a switch or two per request for every process.
//! Under `SCHED_BATCH` a woken broker thread does not preempt, and what the
//! broker wakes finds several replies waiting when it runs. The broker's
//! share of the CPU and its nice value are unchanged; a thread of an idle
//! machine runs at once as before. With two runtimes per core (`run.rs`)
//! it gives about a sixth more brokered requests per second on a loaded
//! two-core machine (bench/broker.sh).
#![allow(unsafe_code)]

/// Puts the calling thread under `SCHED_BATCH`, keeping its nice value.
/// Best effort: where the system refuses (or is not Linux), the thread
/// goes on as it was.
pub(crate) fn batch_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: the call reads `param`, a live, initialised struct on this
        // stack, and changes the policy of the calling thread only (pid 0);
        // no memory is kept or written by the kernel. Its result is not
        // needed: a refusal leaves the thread under its policy.
        unsafe {
            libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        }
    }
}

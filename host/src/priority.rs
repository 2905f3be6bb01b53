//! Thread priorities for background work, so it does not take a core from
//! the event path (Linux; elsewhere these do nothing).

/// Lowers the calling thread's priority (Linux niceness 10), for background
/// work that should not take a core from the event path: compiling a new
/// rule module takes tens of milliseconds of CPU. (It does not remove the
/// whole hot-swap stall: `just bench` still sees a few milliseconds when the
/// new module must be compiled, and under one when its compiled artefact is
/// cached, e.g. by `vigil check` with the daemon's config.)
pub fn background() {
    #[cfg(target_os = "linux")]
    {
        // A niceness, not SCHED_IDLE ([`idle`]): an idle-class thread gets
        // almost no CPU while the workers are busy, and nothing here waits
        // for a reload, so under sustained load a new rule would never go
        // live. Nice 10 still gets about a tenth of a
        // core against a busy worker.
        // SAFETY: gettid has no preconditions; setpriority on our own
        // thread id only changes this thread's niceness.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
        }
    }
}

/// Puts the calling thread in Linux's idle scheduling class: it runs only
/// on CPU time no other thread of normal priority wants, and any of them
/// waking takes its core at once. For background work whose queue is
/// bounded, so that under sustained load the work waiting for it stops
/// its producer and it then gets the CPU. Falls back to [`background`]
/// when the class is refused.
pub fn idle() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; the call only changes its
        // scheduling policy.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot move a thread to idle priority");
            background();
        }
    }
}

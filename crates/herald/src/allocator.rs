//! The global allocator.
//!
//! With the `mimalloc` feature (the default) the binary allocates with
//! mimalloc: events are allocated on one thread and freed on another, which
//! glibc's allocator handles worst (publishing a third faster, replay a
//! quarter; docs/operations.md, "The allocator"). Two of mimalloc's defaults
//! are changed:
//!
//! - it is built without its request for transparent huge pages (the
//!   `no_thp` feature in the workspace manifest): every huge page it
//!   touched counted whole in resident memory, 1.5 KB more per idle
//!   connection;
//! - it gives freed memory back to the system after `PURGE_DELAY_MS`
//!   (100 ms) instead of its own 1 s, which it applies only when the owning
//!   thread allocates again: after a burst an idle gateway stayed at its
//!   peak (48 MB of events through a client that did not read left
//!   35–39 MB resident).

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Milliseconds mimalloc keeps freed memory before giving it back to the
/// system. 0 gives it back at once but cost a tenth to a sixth of
/// publishing and replay throughput (every page freed is then a system
/// call); 100 kept the slow-consumer test's growth at 13 MB with throughput
/// within noise of mimalloc's own 1,000.
#[cfg(feature = "mimalloc")]
pub(crate) const PURGE_DELAY_MS: std::os::raw::c_long = 100;

/// `mi_option_purge_delay`: its place in `mi_option_e` of mimalloc 3's
/// `mimalloc.h` (the sys crate has no constant for it; the test below
/// checks that this option holds mimalloc's default purge delay).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Set the allocator's options; the first thing `main` does. An operator's
/// `MIMALLOC_PURGE_DELAY` in the environment wins.
pub(crate) fn configure() {
    #[cfg(feature = "mimalloc")]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // The workspace forbids unsafe code; this crate denies it and allows
        // it here alone. SAFETY: `mi_option_set` stores a number in
        // mimalloc's table of options (no pointer crosses); mimalloc reads
        // the purge delay each time it schedules a purge, so setting it after
        // start-up applies to everything freed from here on.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reading an option passes no pointer.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc 3's default purge delay (1,000 ms) is what this option
        // holds before `configure`: no neighbouring option defaults to it.
        assert_eq!(get(), 1000, "option {MI_OPTION_PURGE_DELAY} is not mimalloc's purge delay");
        configure();
        assert_eq!(get(), PURGE_DELAY_MS);
    }
}

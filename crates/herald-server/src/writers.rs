//! The runtime the connections' writer tasks run on, apart from the one
//! that reads what clients send.
//!
//! Why two: one event to a thousand subscribers wakes a thousand writer
//! tasks. On one runtime, the task reading the next `publish` (or an ack,
//! or a `subscribe`) then waits in the run queue behind all of them, and
//! under load that wait was most of an event's trip into the log (in the
//! shared bench's S1, publish to commit p50 2.7 ms, p90 9.7 ms). With the
//! writers on threads of their own, the kernel's scheduler shares the
//! cores between reading and writing, and a reader woken by the network
//! runs at once. The sockets stay registered with the main runtime's I/O
//! driver; a write that would block waits for readiness from there.

use std::sync::OnceLock;
use tokio::runtime::{Builder, Handle, Runtime};

static WRITERS: OnceLock<Option<Runtime>> = OnceLock::new();

/// Where writer tasks are spawned: the writers' runtime, started on first
/// use (it lives as long as the process; its threads idle when there is
/// nothing to write). A gateway run on a current-thread runtime (the
/// in-process tests, whose paused clock must see every task) keeps its
/// writers there, as it does if the writers' runtime cannot be started.
pub(crate) fn handle() -> Handle {
    let current = Handle::current();
    if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        return current;
    }
    let rt = WRITERS.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        match Builder::new_multi_thread().worker_threads(threads).thread_name("herald-write").enable_all().build() {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot start the writers' runtime; writers share the main one.");
                None
            }
        }
    });
    match rt {
        Some(rt) => rt.handle().clone(),
        None => current,
    }
}

//! Log -> fan-out: committed batches, in id order, to the subscribers'
//! outboxes, from where the work costs least for the load of the moment.
//!
//! One event to a thousand subscribers wakes a thousand writer tasks, and
//! where those wakes come from decides what they cost:
//!
//! - **Idle writers: on a writer thread.** When every writer thread is
//!   parked (the gateway is not saturated), the `herald-fanout` thread has
//!   a task on the writers' runtime ([`crate::writers`]) dispatch the
//!   batch, and waits for it. The task's wakes go to its own thread's run
//!   queue: no lock on the runtime's shared queue per writer, the other
//!   writer thread steals half, and the writers run while the dispatch
//!   goes on. In the shared bench's S4 (1,000 subscribers, 20 events a
//!   second) this cut the server's CPU per delivery by about a tenth and
//!   the last subscriber's wait by about 0.7 ms.
//! - **Busy writers: on the `herald-fanout` thread.** When a writer
//!   thread is at work, the thread dispatches the batch itself, and its
//!   wakes go through the runtime's shared queue in order. Woken from a
//!   writer thread instead, the new wakes would run first (a thread
//!   prefers its own queue) and the writers still owed an earlier event
//!   would wait behind them (S2, 100 events a second on a saturated
//!   machine: p99 up by about a quarter); and under full load (S1) a task
//!   per batch costs a thread hand-off each time.
//!
//! Batches keep their order: the thread waits for a writer thread's
//! dispatch before it takes the next batch. `[server] fanout_dispatch`
//! (`auto`, `writer`, `thread`) can pin either.

use crate::config::FanoutDispatch;
use crate::metrics::DispatchOn;
use crate::state::AppState;
use herald_core::{Event, FanOut};
use herald_log::CommittedBatch;
use std::sync::Arc;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::mpsc;

/// At most this many events of consecutive committed batches are merged
/// into one dispatch (a single bigger batch is dispatched whole), so each
/// subscriber's writer is woken once for all of them; the bound keeps the
/// fan-out lock's hold and a writer's wait for its first frame short.
const MERGE_EVENTS: usize = 1024;

/// Start the `herald-fanout` thread: it reads `committed` and dispatches
/// each batch itself, or, while the writers are idle, has a task on a
/// writer thread dispatch it and waits until that is done (so batches stay
/// in order). Catch-ups of subscribers that fell behind are spawned on the
/// current (main) runtime.
pub(crate) fn start(
    state: AppState,
    fanout: Arc<FanOut>,
    mut committed: mpsc::Receiver<CommittedBatch>,
) -> std::io::Result<()> {
    let mode = state.get().config.server.fanout_dispatch;
    let main = Handle::current();
    let writers = crate::writers::handle();
    // A gateway on a current-thread runtime (the in-process tests) has no
    // writer threads to dispatch from.
    let threaded = writers.runtime_flavor() == RuntimeFlavor::MultiThread;
    let counted = |on| state.get().metrics.dispatches.get_or_create(&DispatchOn { on }).clone();
    let (on_thread, on_writer) = (counted("thread"), counted("writer"));
    std::thread::Builder::new().name("herald-fanout".into()).spawn(move || {
        let _runtime = main.enter();
        let mut batches: Vec<CommittedBatch> = Vec::new();
        let mut events = Vec::new();
        while let Some(first) = committed.blocking_recv() {
            let mut n = first.len();
            batches.push(first);
            while n < MERGE_EVENTS {
                match committed.try_recv() {
                    Ok(more) => {
                        n += more.len();
                        batches.push(more);
                    }
                    Err(_) => break,
                }
            }
            let on_writers = threaded
                && match mode {
                    FanoutDispatch::Writer => true,
                    FanoutDispatch::Thread => false,
                    FanoutDispatch::Auto => writers_idle(&writers),
                };
            if !on_writers {
                dispatch(&state, &fanout, &main, &batches, &mut events);
                batches.clear();
                on_thread.inc();
                continue;
            }
            let (done, wait) = std::sync::mpsc::sync_channel::<()>(1);
            let job = (state.clone(), fanout.clone(), main.clone(), std::mem::take(&mut batches));
            writers.spawn(async move {
                let (state, fanout, main, batches) = job;
                dispatch(&state, &fanout, &main, &batches, &mut Vec::new());
                let _ = done.send(());
            });
            // Until it is done: the next batch must not overtake this one.
            // An error means the task ended without saying so: the runtime
            // is shutting down, or the dispatch panicked, which ends the
            // fan-out as a panic on this thread would.
            if wait.recv().is_err() {
                tracing::debug!("A dispatch on a writer thread did not finish; the fan-out stops.");
                return;
            }
            on_writer.inc();
        }
    })?;
    Ok(())
}

/// Whether every writer thread is parked: no writer is at work, so a
/// dispatch from a writer thread wakes no writer ahead of one still owed
/// an earlier event.
fn writers_idle(writers: &Handle) -> bool {
    let metrics = writers.metrics();
    // An odd count means parked.
    (0..metrics.num_workers()).all(|w| !metrics.worker_park_unpark_count(w).is_multiple_of(2))
}

/// Dispatch `batches` (merged into one run when there are several) and
/// start a catch-up for every subscription that overflowed.
fn dispatch(
    state: &AppState,
    fanout: &FanOut,
    main: &Handle,
    batches: &[CommittedBatch],
    events: &mut Vec<Arc<Event>>,
) {
    let lagging = if let [one] = batches {
        fanout.dispatch(one)
    } else {
        for b in batches {
            events.extend(b.iter().cloned());
        }
        let lagging = fanout.dispatch(events);
        events.clear();
        lagging
    };
    if !lagging.is_empty() {
        let _main = main.enter();
        for entry in lagging {
            crate::subscription::spawn_catch_up(state.clone(), entry);
        }
    }
}

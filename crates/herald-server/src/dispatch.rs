//! Log -> fan-out: committed batches, in id order, to the subscribers'
//! outboxes, from where the work costs least for the load of the moment.
//!
//! One event to a thousand subscribers wakes a thousand writer tasks, and
//! where those wakes come from decides what they cost:
//!
//! - **Idle writers: on a writer thread.** When no writer thread is busy
//!   (the gateway is not saturated), the dispatch runs as a task on the
//!   writers' runtime ([`crate::writers`]). Its wakes go to that thread's
//!   own run queue: no lock on the runtime's shared queue per writer, the
//!   other writer thread steals half, and the writers run while the
//!   dispatch goes on. In the shared bench's S4 (1,000 subscribers, 20
//!   events a second) this cut the server's CPU per delivery by about a
//!   tenth and the last subscriber's wait by about 0.7 ms.
//! - **Busy writers: on a thread of its own.** When a writer thread is
//!   already running writers for earlier events, the batch goes to the
//!   `herald-fanout` thread, whose wakes go through the runtime's shared
//!   queue in order. Woken from a writer thread instead, the new wakes
//!   would run first (a thread prefers its own queue) and the writers
//!   still owed an earlier event would wait behind them: in S2 (100 events
//!   a second, machine saturated) that put the p99 up by about a quarter.
//!
//! Batches keep their order across the two: while the thread has batches
//! to dispatch, every new one goes to it too. `[server] fanout_dispatch`
//! (`auto`, `writer`, `thread`) can pin either.

use crate::config::FanoutDispatch;
use crate::metrics::DispatchOn;
use crate::state::AppState;
use herald_core::{Event, FanOut};
use herald_log::CommittedBatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// At most this many events of consecutive committed batches are merged
/// into one dispatch (a single bigger batch is dispatched whole), so each
/// subscriber's writer is woken once for all of them; the bound keeps the
/// fan-out lock's hold and a writer's wait for its first frame short.
const MERGE_EVENTS: usize = 1024;

/// Merged batches waiting for the fan-out thread before the dispatcher
/// waits (and, behind it, the log).
const THREAD_QUEUE: usize = 64;

/// Start the dispatcher: a task on the writers' runtime reading
/// `committed`, and the `herald-fanout` thread it hands batches to under
/// load. Catch-ups of subscribers that fell behind are spawned on the
/// current (main) runtime.
pub(crate) fn start(
    state: AppState,
    fanout: Arc<FanOut>,
    mut committed: mpsc::Receiver<CommittedBatch>,
) -> std::io::Result<()> {
    let mode = state.get().config.server.fanout_dispatch;
    let main = Handle::current();
    let writers = crate::writers::handle();
    let outstanding = Arc::new(AtomicUsize::new(0));
    let (to_thread, mut thread_rx) = mpsc::channel::<Vec<CommittedBatch>>(THREAD_QUEUE);
    {
        let (state, fanout, main, outstanding) = (state.clone(), fanout.clone(), main.clone(), outstanding.clone());
        std::thread::Builder::new().name("herald-fanout".into()).spawn(move || {
            let _runtime = main.enter();
            let mut events = Vec::new();
            let counted = state.get().metrics.dispatches.get_or_create(&DispatchOn { on: "thread" }).clone();
            while let Some(batches) = thread_rx.blocking_recv() {
                dispatch(&state, &fanout, &main, &batches, &mut events);
                counted.inc();
                outstanding.fetch_sub(1, Ordering::AcqRel);
            }
        })?;
    }
    writers.clone().spawn(async move {
        let counted = state.get().metrics.dispatches.get_or_create(&DispatchOn { on: "writer" }).clone();
        let mut events = Vec::new();
        while let Some(first) = committed.recv().await {
            let mut batches = vec![first];
            let mut n = batches[0].len();
            while n < MERGE_EVENTS {
                match committed.try_recv() {
                    Ok(more) => {
                        n += more.len();
                        batches.push(more);
                    }
                    Err(_) => break,
                }
            }
            let here = match mode {
                FanoutDispatch::Writer => true,
                FanoutDispatch::Thread => false,
                FanoutDispatch::Auto => !writers_busy(&writers),
            };
            if here && outstanding.load(Ordering::Acquire) == 0 {
                dispatch(&state, &fanout, &main, &batches, &mut events);
                counted.inc();
                continue;
            }
            outstanding.fetch_add(1, Ordering::AcqRel);
            if to_thread.send(batches).await.is_err() {
                // The thread is gone (it only ends when this task does).
                return;
            }
        }
    });
    Ok(())
}

/// Whether a writer thread other than this one is running (not parked):
/// writers woken for earlier events are still at work.
fn writers_busy(writers: &Handle) -> bool {
    let metrics = writers.metrics();
    // An odd count means parked; the thread running this task is not.
    let running = (0..metrics.num_workers()).filter(|&w| metrics.worker_park_unpark_count(w).is_multiple_of(2)).count();
    running > 1
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

//! Connectors ("peers", after tremor's Peers and Streams RFC): configured
//! endpoints that bring events into Herald.
//!
//! A connector implements [`Connector`]: `connect(attempt)` establishes the
//! upstream session, `run` moves events until the upstream fails or it is
//! told to drain, honouring [`Control::Pause`] meanwhile, and `close`
//! releases the upstream connection. The
//! framework ([`runner::supervise`]), not each connector, owns reconnects
//! (exponential backoff with jitter, forever), reports the peer `up` or
//! `down` through [`Host::status`], and counts `in`/`out`/`err`/`send`/`recv`.
//! Connectors hand events to [`Host::append`], which answers only once they
//! are durable, so a source acknowledges upstream only what the log holds.

pub mod amqp;
pub mod dynamic;
pub mod peer;
pub mod postgres;
pub mod runner;
pub mod sqs;

pub use dynamic::{DynamicBindings, DynamicError, DynamicLease};
pub use peer::{Codec, Interceptor, PeerConfig, PeerKind, PeerStats};
pub use runner::{supervise, Backoff};
pub use tokio::sync::watch;

use herald_core::NewEvent;
use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a connector can ask of the gateway.
pub trait Host: Send + Sync + 'static {
    /// Append events to the log; resolves with their ids once durable.
    fn append(&self, events: Vec<NewEvent>) -> BoxFuture<'_, anyhow::Result<Vec<u64>>>;
    /// The peer went up or down; subscribers it feeds are told.
    fn status(&self, peer: &str, up: bool, detail: &str);
    /// The highest origin sequence of this peer's events in the log (its
    /// upstream position), scanning the given exchanges newest first.
    fn last_origin_seq<'a>(
        &'a self,
        peer: &'a str,
        exchanges: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<Option<u64>>>;
}

/// What the framework asks of a running connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Move events.
    Run,
    /// Take nothing new from upstream (which buffers meanwhile); keep the session.
    Pause,
    /// Finish what is in hand, then return from `run`.
    Drain,
}

/// For connectors: wait while paused. Returns false when told to drain.
pub async fn runnable(control: &mut tokio::sync::watch::Receiver<Control>) -> bool {
    loop {
        let state = *control.borrow_and_update();
        match state {
            Control::Run => return true,
            Control::Drain => return false,
            Control::Pause => {
                if control.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// A connector's lifecycle, driven by [`supervise`].
pub trait Connector: Send + 'static {
    /// Establish the upstream session. `attempt` counts from 1 since the
    /// last success; an error is retried after a backoff.
    fn connect(&mut self, attempt: u32) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Move events until the upstream fails (an error) or `control` says
    /// [`Control::Drain`] (Ok, after storing what is in hand). While it says
    /// [`Control::Pause`], take nothing new from upstream.
    fn run<'a>(
        &'a mut self,
        host: &'a dyn Host,
        control: tokio::sync::watch::Receiver<Control>,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Release the upstream session (after `run`, whatever its outcome).
    fn close(&mut self) -> BoxFuture<'_, ()>;
}

//! [`Outbox`]: the bounded queue of frames waiting to be written to one client.
//!
//! Producers (the fan-out, replays, command replies) push without waiting;
//! one writer task drains. The queue is bounded in bytes: a push that would
//! exceed the bound closes the client as a slow consumer, drops what was
//! queued for it and tells it why. So one client that does not read costs at
//! most its bound, and never slows the fan-out for anyone else.
//!
//! Replays, which could produce far more than the bound, wait for space with
//! [`Outbox::wait_for_space`] instead of overflowing.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use tokio::sync::Notify;

/// One frame to write.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A text frame. The bytes are valid UTF-8 JSON.
    Text(Bytes),
    /// A WebSocket ping (heartbeat).
    Ping,
    /// Close the connection with this code and reason after the frames before it.
    Close(u16, String),
}

impl Frame {
    fn cost(&self) -> usize {
        match self {
            Frame::Text(b) => b.len(),
            Frame::Ping => 0,
            Frame::Close(_, r) => r.len(),
        }
    }
}

/// Returned when a push did not fit: the outbox is now closing as a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// This push overflowed the bound; the client is being closed.
    SlowConsumer,
    /// The outbox was already closed.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    /// Bytes queued or taken by the writer but not yet written.
    bytes: usize,
    closed: bool,
}

/// Bounded outbound queue for one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    space: Notify,
    max_bytes: usize,
    slow_consumer_frame: Bytes,
    slow_consumer_close: (u16, String),
}

impl Outbox {
    /// A new outbox holding at most `max_bytes`. `slow_consumer_frame` is the
    /// `error` frame sent when it overflows, before closing with `close`.
    pub fn new(max_bytes: usize, slow_consumer_frame: Bytes, close: (u16, String)) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            space: Notify::new(),
            max_bytes,
            slow_consumer_frame,
            slow_consumer_close: close,
        }
    }

    /// Queue a frame. Never waits.
    pub fn push(&self, frame: Frame) -> Result<(), Overflow> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Overflow::Closed);
        }
        let cost = frame.cost();
        if st.bytes + cost > self.max_bytes {
            // Drop what is queued: the client will never read it in time, and
            // keeping it would let one client hold memory without bound.
            let dropped: usize = st.frames.drain(..).map(|f| f.cost()).sum();
            st.bytes -= dropped;
            st.closed = true;
            st.frames
                .push_back(Frame::Text(self.slow_consumer_frame.clone()));
            st.frames.push_back(Frame::Close(
                self.slow_consumer_close.0,
                self.slow_consumer_close.1.clone(),
            ));
            drop(st);
            self.ready.notify_one();
            self.space.notify_waiters();
            return Err(Overflow::SlowConsumer);
        }
        st.bytes += cost;
        st.frames.push_back(frame);
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// Queue final frames and a close; later pushes are refused.
    pub fn close_with(&self, last: Option<Bytes>, code: u16, reason: &str) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        st.closed = true;
        if let Some(b) = last {
            st.frames.push_back(Frame::Text(b));
        }
        st.frames.push_back(Frame::Close(code, reason.to_string()));
        drop(st);
        self.ready.notify_one();
        self.space.notify_waiters();
    }

    /// Whether the outbox is closed (no more pushes are accepted).
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Move every queued frame into `out`. Their bytes stay counted until
    /// [`Outbox::written`] is called, so the bound covers frames in flight.
    pub fn take(&self, out: &mut Vec<Frame>) {
        let mut st = self.state.lock();
        out.extend(st.frames.drain(..));
    }

    /// Report frames written to the socket, freeing their bytes.
    pub fn written(&self, frames: &[Frame]) {
        let n: usize = frames.iter().map(Frame::cost).sum();
        let mut st = self.state.lock();
        st.bytes = st.bytes.saturating_sub(n);
        drop(st);
        self.space.notify_waiters();
    }

    /// Wait until something is queued (for the writer task).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Wait until fewer than `max_bytes / 2` bytes are queued, or the outbox
    /// closes; returns false if it is closed.
    pub async fn wait_for_space(&self) -> bool {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state.lock();
                if st.closed {
                    return false;
                }
                if st.bytes < self.max_bytes / 2 {
                    return true;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_and_drops() {
        let o = Outbox::new(
            10,
            Bytes::from_static(b"slow"),
            (4408, "slow consumer".into()),
        );
        assert!(o.push(Frame::Text(Bytes::from_static(b"12345"))).is_ok());
        assert_eq!(
            o.push(Frame::Text(Bytes::from_static(b"123456"))),
            Err(Overflow::SlowConsumer)
        );
        assert_eq!(
            o.push(Frame::Text(Bytes::from_static(b"1"))),
            Err(Overflow::Closed)
        );
        let mut out = Vec::new();
        o.take(&mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Frame::Text(b) if b.as_ref() == b"slow"));
        assert!(matches!(&out[1], Frame::Close(4408, _)));
    }

    #[test]
    fn bytes_are_freed_after_write() {
        let o = Outbox::new(10, Bytes::new(), (4408, String::new()));
        o.push(Frame::Text(Bytes::from_static(b"12345678")))
            .expect("fits");
        let mut out = Vec::new();
        o.take(&mut out);
        assert_eq!(o.queued_bytes(), 8);
        o.written(&out);
        assert_eq!(o.queued_bytes(), 0);
        o.push(Frame::Text(Bytes::from_static(b"12345678")))
            .expect("fits again");
    }
}

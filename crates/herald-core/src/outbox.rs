//! [`Outbox`]: the bounded queue of frames waiting to be written to one client.
//!
//! Producers never wait; one writer task drains. The queue is bounded in
//! bytes, with two rules:
//!
//! - **Events** are *offered* ([`Outbox::offer`]): one that does not fit
//!   under the bound is refused, and its subscription falls back to reading
//!   from the log at the client's own pace (see the fan-out). A burst larger
//!   than the bound therefore costs a healthy client nothing but a detour
//!   through the log.
//! - **Replies** are *pushed* ([`Outbox::push`]) and may use a second bound's
//!   worth of headroom; beyond that the client is closed as a slow consumer.
//!
//! A client that stops reading altogether is found by [`Outbox::stalled_for`]
//! (bytes queued and nothing written for a while) and closed as a slow
//! consumer by the sweeper. So one client costs at most twice its bound, and
//! never slows the fan-out for anyone else.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One frame to write.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A text frame. The bytes are valid UTF-8 JSON.
    Text(Bytes),
    /// A live event's text frame, with the event's commit time
    /// (microseconds since the epoch) for latency measurement.
    Event(Bytes, u64),
    /// A WebSocket ping (heartbeat).
    Ping,
    /// A WebSocket pong answering the client's ping, with its body.
    Pong(Bytes),
    /// Close the connection with this code and reason after the frames before it.
    Close(u16, String),
}

impl Frame {
    /// What the frame counts against its outbox's bound (its bytes).
    pub fn cost(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Event(b, _) | Frame::Pong(b) => b.len(),
            Frame::Ping => 0,
            Frame::Close(_, r) => r.len(),
        }
    }
}

/// Returned when a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// This push overflowed the hard bound; the client is being closed.
    SlowConsumer,
    /// An offered event did not fit under the bound; nothing changed.
    Full,
    /// The outbox was already closed.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    /// Bytes queued or taken by the writer but not yet written.
    bytes: usize,
    closed: bool,
    /// Since when bytes have been waiting without any being written.
    stalled_since: Option<Instant>,
    /// The writer was (or is about to be) woken for what is queued since it
    /// last took: a deferred offer owes no second wake-up.
    woken: bool,
    /// A producer waits in [`Outbox::wait_for_space`]: only then does a
    /// write owe the `space` notification (its lock is a cost on every
    /// write otherwise).
    space_wanted: bool,
}

/// Bounded outbound queue for one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    space: Notify,
    max_bytes: usize,
    slow_consumer_frame: Bytes,
    slow_consumer_close: (u16, &'static str),
}

impl Outbox {
    /// A new outbox holding at most `max_bytes`. `slow_consumer_frame` is the
    /// `error` frame sent when it overflows, before closing with `close`.
    pub fn new(max_bytes: usize, slow_consumer_frame: Bytes, close: (u16, &'static str)) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            space: Notify::new(),
            max_bytes,
            slow_consumer_frame,
            slow_consumer_close: close,
        }
    }

    /// Queue an event frame if it fits under the bound. Never waits.
    pub fn offer(&self, frame: Frame) -> Result<(), Overflow> {
        if self.offer_deferred(frame, Instant::now())? {
            self.wake();
        }
        Ok(())
    }

    /// [`Outbox::offer`] without waking the writer, for the fan-out, which
    /// queues a whole committed batch for every subscriber first and then
    /// wakes each writer once ([`Outbox::wake`]): the writer then takes the
    /// batch's frames in one go (one write, one batched frame) instead of
    /// racing the fan-out frame by frame on the other core. (A writer
    /// first owed a wake-up by the batch's last event is woken at once:
    /// nothing more is coming for it.) Returns whether
    /// the caller owes this outbox a wake-up (the first frame queued since
    /// the writer last took). `now` is the time the fan-out read once for
    /// the whole batch (when a stall would start), not a clock read per
    /// subscriber.
    pub fn offer_deferred(&self, frame: Frame, now: Instant) -> Result<bool, Overflow> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Overflow::Closed);
        }
        if st.bytes + frame.cost() > self.max_bytes && st.bytes > 0 {
            return Err(Overflow::Full);
        }
        if st.bytes == 0 {
            st.stalled_since = Some(now);
        }
        st.bytes += frame.cost();
        st.frames.push_back(frame);
        Ok(!std::mem::replace(&mut st.woken, true))
    }

    /// Wake the writer for frames queued by [`Outbox::offer_deferred`].
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Queue as many of `frames` as fit under the bound, in order, under one
    /// lock and with one wake-up of the writer; how many were queued (the
    /// first always is when nothing is waiting). Never waits.
    pub fn offer_many(&self, frames: &[Frame]) -> Result<usize, Overflow> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Overflow::Closed);
        }
        let mut n = 0;
        for frame in frames {
            if st.bytes + frame.cost() > self.max_bytes && st.bytes > 0 {
                break;
            }
            if st.bytes == 0 {
                st.stalled_since = Some(Instant::now());
            }
            st.bytes += frame.cost();
            st.frames.push_back(frame.clone());
            n += 1;
        }
        drop(st);
        if n > 0 {
            self.ready.notify_one();
        }
        Ok(n)
    }

    /// Queue a reply frame, using headroom above the bound; a client that
    /// exhausts that too is closed as a slow consumer. Never waits.
    pub fn push(&self, frame: Frame) -> Result<(), Overflow> {
        let st = self.state.lock();
        if st.closed {
            return Err(Overflow::Closed);
        }
        if st.bytes + frame.cost() > self.max_bytes.saturating_mul(2) {
            drop(st);
            self.close_slow();
            return Err(Overflow::SlowConsumer);
        }
        self.enqueue(st, frame);
        Ok(())
    }

    /// [`Outbox::push`] for several reply frames, in order, under one lock
    /// and with one wake-up of the writer (a publisher's batch of
    /// `published` answers). Past the headroom the client is closed as a
    /// slow consumer, as by `push`, and the rest is not queued.
    pub fn push_many(&self, frames: impl IntoIterator<Item = Frame>) -> Result<(), Overflow> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Overflow::Closed);
        }
        let mut queued = false;
        for frame in frames {
            if st.bytes + frame.cost() > self.max_bytes.saturating_mul(2) {
                drop(st);
                self.close_slow();
                return Err(Overflow::SlowConsumer);
            }
            if st.bytes == 0 {
                st.stalled_since = Some(Instant::now());
            }
            st.bytes += frame.cost();
            st.frames.push_back(frame);
            queued = true;
        }
        drop(st);
        if queued {
            self.ready.notify_one();
        }
        Ok(())
    }

    fn enqueue(&self, mut st: parking_lot::MutexGuard<'_, State>, frame: Frame) {
        if st.bytes == 0 {
            st.stalled_since = Some(Instant::now());
        }
        st.bytes += frame.cost();
        st.frames.push_back(frame);
        st.woken = true;
        drop(st);
        self.ready.notify_one();
    }

    /// Close as a slow consumer: drop what is queued (the client will never
    /// read it in time, and keeping it would hold memory), then send the
    /// `slow_consumer` error and the close frame. Returns how many frames
    /// were dropped, or `None` if it was already closed.
    pub fn close_slow(&self) -> Option<usize> {
        let mut st = self.state.lock();
        if st.closed {
            return None;
        }
        let frames = st.frames.len();
        let dropped: usize = st.frames.drain(..).map(|f| f.cost()).sum();
        st.bytes -= dropped;
        st.closed = true;
        st.frames.push_back(Frame::Text(self.slow_consumer_frame.clone()));
        st.frames.push_back(Frame::Close(self.slow_consumer_close.0, self.slow_consumer_close.1.to_string()));
        drop(st);
        self.ready.notify_one();
        self.space.notify_waiters();
        Some(frames)
    }

    /// How long bytes have been waiting with nothing written (zero when idle).
    pub fn stalled_for(&self, now: Instant) -> Duration {
        let st = self.state.lock();
        match st.stalled_since {
            Some(t) if st.bytes > 0 && !st.closed => now.saturating_duration_since(t),
            _ => Duration::ZERO,
        }
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
        st.woken = false;
        out.extend(st.frames.drain(..));
    }

    /// [`Outbox::take`] into a queue of the caller's: when `out` is empty
    /// the two queues are swapped (no frame is moved, and the caller's
    /// emptied buffer becomes the outbox's next one).
    pub fn take_all(&self, out: &mut VecDeque<Frame>) {
        let mut st = self.state.lock();
        st.woken = false;
        if out.is_empty() {
            std::mem::swap(&mut st.frames, out);
        } else {
            out.extend(st.frames.drain(..));
        }
    }

    /// Give back the queue's buffer if nothing is queued, so an idle
    /// connection holds none (the gateway's sweeper calls this; a writer
    /// goes idle after every batch, and would reallocate it each time).
    pub fn release_buffer(&self) {
        let mut st = self.state.lock();
        if st.frames.is_empty() && st.frames.capacity() > 0 {
            st.frames = VecDeque::new();
        }
    }

    /// Report frames written to the socket, freeing their bytes.
    pub fn written(&self, frames: &[Frame]) {
        self.written_bytes(frames.iter().map(Frame::cost).sum());
    }

    /// Report frames of [`Frame::cost`] `n` in all written to the socket.
    pub fn written_bytes(&self, n: usize) {
        let mut st = self.state.lock();
        let notify = Self::free(&mut st, n);
        drop(st);
        if notify {
            self.space.notify_waiters();
        }
    }

    /// [`Outbox::written_bytes`] and then [`Outbox::take_all`], under one
    /// lock: the writer's step after each write, when it looks for more.
    pub fn written_and_take(&self, n: usize, out: &mut VecDeque<Frame>) {
        let mut st = self.state.lock();
        let notify = Self::free(&mut st, n);
        st.woken = false;
        if out.is_empty() {
            std::mem::swap(&mut st.frames, out);
        } else {
            out.extend(st.frames.drain(..));
        }
        drop(st);
        if notify {
            self.space.notify_waiters();
        }
    }

    /// Free `n` written bytes; whether a producer waiting for space is owed
    /// a notification.
    fn free(st: &mut State, n: usize) -> bool {
        st.bytes = st.bytes.saturating_sub(n);
        // Progress: the stall clock restarts (or stops when nothing is left).
        st.stalled_since = (st.bytes > 0).then(Instant::now);
        std::mem::take(&mut st.space_wanted)
    }

    /// Wait until something is queued (for the writer task).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Wait until `need` more bytes fit under the bound (or the queue is
    /// empty), or the outbox closes; returns false if it is closed.
    pub async fn wait_for_space(&self, need: usize) -> bool {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock();
                if st.closed {
                    return false;
                }
                if st.bytes == 0 || st.bytes + need <= self.max_bytes {
                    return true;
                }
                // Checked and set under the lock that frees bytes: a write
                // after this line sees the flag and notifies.
                st.space_wanted = true;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn offers_are_refused_when_full_and_pushes_close_past_the_headroom() {
        let o = Outbox::new(10, Bytes::from_static(b"slow"), (4408, "slow consumer"));
        assert!(o.offer(Frame::Text(Bytes::from_static(b"12345"))).is_ok());
        assert_eq!(o.offer(Frame::Text(Bytes::from_static(b"123456"))), Err(Overflow::Full));
        assert!(!o.is_closed());
        assert!(o.push(Frame::Text(Bytes::from_static(b"123456"))).is_ok(), "replies use the headroom");
        assert!(o.stalled_for(Instant::now() + Duration::from_secs(1)) >= Duration::from_millis(999));
        assert_eq!(o.push(Frame::Text(Bytes::from_static(b"1234567890"))), Err(Overflow::SlowConsumer));
        assert_eq!(o.push(Frame::Text(Bytes::from_static(b"1"))), Err(Overflow::Closed));
        assert_eq!(o.stalled_for(Instant::now()), Duration::ZERO, "closed outboxes are not stalled");
        let mut out = Vec::new();
        o.take(&mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Frame::Text(b) if b.as_ref() == b"slow"));
        assert!(matches!(&out[1], Frame::Close(4408, _)));
    }

    #[test]
    fn offer_many_queues_what_fits_in_order() {
        let o = Outbox::new(10, Bytes::new(), (4408, ""));
        let frames: Vec<Frame> = ["1234", "5678", "90ab", "c"].iter().map(|s| Frame::Text(Bytes::from(*s))).collect();
        assert_eq!(o.offer_many(&frames), Ok(2), "the third would pass the bound");
        assert_eq!(o.offer_many(&frames[2..]), Ok(0), "nothing fits until written");
        let mut out = Vec::new();
        o.take(&mut out);
        o.written(&out);
        assert_eq!(o.offer_many(&frames[2..]), Ok(2));
        o.take(&mut out);
        let texts: Vec<&[u8]> = out.iter().map(|f| if let Frame::Text(b) = f { &b[..] } else { &[][..] }).collect();
        assert_eq!(texts, [&b"1234"[..], b"5678", b"90ab", b"c"]);
        o.close_with(None, 1000, "bye");
        assert_eq!(o.offer_many(&frames), Err(Overflow::Closed));
    }

    #[test]
    fn deferred_offers_owe_one_wake_up_until_the_writer_takes() {
        let o = Outbox::new(10, Bytes::new(), (4408, ""));
        let frame = |s: &'static str| Frame::Event(Bytes::from_static(s.as_bytes()), 0);
        assert_eq!(o.offer_deferred(frame("ab"), Instant::now()), Ok(true), "the first frame owes a wake-up");
        assert_eq!(o.offer_deferred(frame("cd"), Instant::now()), Ok(false), "one is owed already");
        assert_eq!(o.offer_deferred(frame("0123456"), Instant::now()), Err(Overflow::Full), "the bound holds");
        let mut out = Vec::new();
        o.take(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(o.offer_deferred(frame("ef"), Instant::now()), Ok(true), "taken: the next frame owes one again");
        o.push(Frame::Ping).expect("fits");
        o.take(&mut out);
        o.push(Frame::Ping).expect("fits");
        assert_eq!(o.offer_deferred(frame("gh"), Instant::now()), Ok(false), "a push woke the writer already");
        o.close_with(None, 1000, "bye");
        assert_eq!(o.offer_deferred(frame("ij"), Instant::now()), Err(Overflow::Closed));
    }

    #[tokio::test]
    async fn a_wake_up_after_deferred_offers_reaches_a_waiting_writer() {
        let o = Arc::new(Outbox::new(100, Bytes::new(), (4408, "")));
        let writer = {
            let o = o.clone();
            tokio::spawn(async move {
                o.ready().await;
                let mut out = Vec::new();
                o.take(&mut out);
                out.len()
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(o.offer_deferred(Frame::Event(Bytes::from_static(b"a"), 0), Instant::now()), Ok(true));
        assert_eq!(o.offer_deferred(Frame::Event(Bytes::from_static(b"b"), 0), Instant::now()), Ok(false));
        o.wake();
        let taken = tokio::time::timeout(Duration::from_secs(5), writer).await.expect("woken").expect("ran");
        assert_eq!(taken, 2, "both frames taken at one wake-up");
    }

    #[tokio::test]
    async fn a_write_wakes_a_producer_waiting_for_space_and_takes_what_came_meanwhile() {
        let o = Arc::new(Outbox::new(10, Bytes::new(), (4408, "")));
        o.push(Frame::Text(Bytes::from_static(b"12345678"))).expect("fits");
        let mut out = VecDeque::new();
        o.take_all(&mut out);
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.wait_for_space(5).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "8 + 5 bytes do not fit under 10");
        // A reply queued while the first frame is being written.
        o.push(Frame::Text(Bytes::from_static(b"ab"))).expect("fits");
        out.clear();
        o.written_and_take(8, &mut out);
        assert_eq!(out.len(), 1, "what came meanwhile is taken");
        assert_eq!(o.queued_bytes(), 2, "its bytes stay counted until written");
        let fits = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("ran");
        assert!(fits);
        // Nobody waits now: a write notifies no one, and a later waiter
        // still sees the space at once.
        o.written_and_take(2, &mut out);
        assert_eq!(o.queued_bytes(), 0);
        assert!(tokio::time::timeout(Duration::from_secs(5), o.wait_for_space(10)).await.expect("at once"));
    }

    #[test]
    fn push_many_queues_in_order_within_the_headroom() {
        let o = Outbox::new(4, Bytes::new(), (4408, ""));
        let frame = |s: &'static str| Frame::Text(Bytes::from_static(s.as_bytes()));
        // The bound is 4 bytes; replies may use twice that.
        o.push_many([frame("ab"), frame("cd"), frame("ef")]).expect("within the headroom");
        let mut out = Vec::new();
        o.take(&mut out);
        let texts: Vec<&[u8]> = out.iter().map(|f| if let Frame::Text(b) = f { &b[..] } else { &[][..] }).collect();
        assert_eq!(texts, [&b"ab"[..], b"cd", b"ef"]);
        o.written(&out);
        assert_eq!(o.push_many([frame("1234"), frame("5678"), frame("9")]), Err(Overflow::SlowConsumer));
        assert!(o.is_closed(), "closed as a slow consumer");
        assert_eq!(o.push_many([frame("x")]), Err(Overflow::Closed));
    }

    #[test]
    fn bytes_are_freed_after_write() {
        let o = Outbox::new(10, Bytes::new(), (4408, ""));
        o.push(Frame::Text(Bytes::from_static(b"12345678"))).expect("fits");
        let mut out = Vec::new();
        o.take(&mut out);
        assert_eq!(o.queued_bytes(), 8);
        o.written(&out);
        assert_eq!(o.queued_bytes(), 0);
        o.push(Frame::Text(Bytes::from_static(b"12345678"))).expect("fits again");
    }
}

//! Herald's durable, ordered event log.
//!
//! The [`EventLog`] trait is all the rest of Herald knows about the log: it
//! appends batches (answering only once they are durable), reads ranges by
//! id, optionally for a set of exchanges, finds the first id at a time, and
//! reports its bounds. [`EmbeddedLog`] implements it on local files; a
//! clustered engine can implement it later without touching anything else.
//!
//! # The embedded log on disk
//!
//! A data directory holds a `log/` folder of *segments*. A segment is named
//! for the id of its first event, zero-padded to 20 digits:
//! `log/00000000000000000001.seg`. Ids are dense: the *n*-th record of the
//! segment based at *b* has id *b + n*. Only the newest segment is written.
//!
//! Each segment starts with the 8-byte magic `HRLDSEG1`, then records:
//!
//! ```text
//! offset  size  field
//! 0       4     body length L, u32 little-endian
//! 4       4     CRC-32 (IEEE) of the body, u32 little-endian
//! 8       L     body:
//!                 0   8   id, u64 LE
//!                 8   8   time, microseconds since the Unix epoch, u64 LE
//!                 16  2   exchange length X, u16 LE
//!                 18  X   exchange, UTF-8
//!                 18+X    the rest, in one of two encodings (below)
//! ```
//!
//! The rest is *compact* when its first byte is `0x01` (what this version
//! writes, unless a routing key is longer than 65,535 bytes or a payload
//! than 4 GiB, which validation refuses long before; then JSON):
//!
//! ```text
//! size  field
//! 1     0x01
//! 2     routing key length K, u16 LE
//! K     routing key, UTF-8
//! 4     payload length P, u32 LE
//! P     payload, JSON text
//! 1     origin peer length O (0: no compact origin; the next three fields are absent)
//! O     origin peer, UTF-8
//! 8     origin stream, u64 LE
//! 8     origin sequence, u64 LE
//! ...   the rare fields, if any: JSON object {acl?, headers?, idempotency_key?}
//!       (and origin?, for a peer name that is empty or longer than 255 bytes); nothing when
//!       the event has none of them
//! ```
//!
//! or *JSON* when it starts with `{`: one object `{routing_key, payload,
//! acl?, headers?, origin?, idempotency_key?}`. Segments written before the
//! compact encoding hold JSON bodies and are read as they are; a clustered
//! log's messages are JSON bodies (see [`JetStreamLog`]) so that nodes of
//! two versions read each other's. Reading a compact body copies the key and
//! payload and checks that the payload is JSON (the CRC proves the bytes are
//! the ones written, not that Herald wrote them); a JSON body costs a JSON
//! parse of every field: 353 ns against 169 ns for an event of 100 bytes
//! published over WebSocket (`cargo bench -p herald-log`, `record/decode-*`).
//! A binary from before the compact encoding (commit cf08c8c) cannot read a
//! compact record: its reads of one fail with a corruption error naming
//! the file and offset (see `docs/operations.md` for what that does to its
//! start-up), and it removes nothing retention would not: downgrading past
//! it means restoring the data directory of that time.
//!
//! The exchange and time are outside the JSON so that the start-up scan can
//! rebuild the indexes without parsing payloads.
//!
//! **Writes and group commit.** One writer thread takes every pending append
//! request from its queue, assigns ids and times, writes all their records
//! with one `write`, calls `fdatasync` once, and only then answers each
//! publisher and hands the batch to the fan-out. Many concurrent publishers
//! therefore share one fsync. Times never decrease with ids (a clock that
//! steps back is clamped), so a time lookup is a binary search.
//!
//! **Failures.** The writer writes, syncs and truncates through [`LogIo`]
//! (tests inject faults with [`FaultyIo`]). A failed write is truncated away
//! and its publishers told; the next write is tried normally. A full disk
//! ([`LogError::Full`]) is the same, and reported as such
//! ([`WriteHealth::Full`]) until a write succeeds again. A failed sync is
//! never retried, since the kernel may have dropped the pages and cleared
//! the error: the log cuts the unacknowledged records (best effort) and
//! refuses every write ([`LogError::Failed`], [`WriteHealth::Failed`]) until
//! it is opened again, when the start-up scan checks what the files hold.
//!
//! **Crash safety.** At start every record of every segment is checked:
//! length, CRC and id. A bad record in the newest segment is a torn tail
//! from a crash during a write (it was never acknowledged, since
//! acknowledgement follows the fsync): the segment is cut at the last good
//! record and a warning logged. A bad record in an older, sealed segment is
//! corruption of acknowledged data: start-up fails with
//! [`LogError::Corrupt`] naming the file and offset, for an operator to act on.
//!
//! **Indexes** live in memory and are rebuilt at start: per segment the
//! offset of every record (8 bytes an event), and per exchange the list of
//! its ids (8 bytes an event), so a replay for one exchange decodes only that
//! exchange's records (those within 4 KiB of each other are read with one
//! read, the records between them skipped).
//!
//! **The idempotency window** is rebuilt at start from the records of its
//! span ([`EventLog::idempotency_keys`]): only records whose bytes name the
//! `"idempotency_key"` field are decoded.
//!
//! **Retention** removes whole segments, oldest first, never the one being
//! written: a segment goes when all its events are older than `max_age`,
//! when the events after it alone number at least `max_events`, or while the
//! log is larger than `max_bytes`. Segments roll at `segment_bytes`, so that
//! is the granularity of retention.

mod config;
mod embedded;
mod error;
mod io;
#[cfg(feature = "nats")]
mod nats;
mod record;
mod sessions;

pub use config::{duration, opt_duration, LogConfig};
pub use embedded::{EmbeddedLog, RETENTION_INTERVAL};
pub use error::LogError;
pub use io::{FaultyIo, LogIo, RealIo};
// Cluster mode; off only in builds that need the embedded log alone (the
// fuzz targets, which then build without NATS's client and its TLS stack).
#[cfg(feature = "nats")]
pub use nats::{
    connect as connect_nats, open_bucket, subject, ClusterConfig, JetStreamLog, KvSessionStore, MIN_SERVER,
};
pub use sessions::{DiskSessionStore, SESSIONS_FILE};

/// What one record at the start of `buf` holds, as the log's start-up scan
/// and reads see it: `Ok(Some((length, event)))` for a valid record,
/// `Ok(None)` when the bytes end before the record does (a torn tail), or
/// why the bytes are not a record. For fuzzing the decoder and for tools;
/// never panics on any input.
pub fn decode_record(buf: &[u8]) -> Result<Option<(usize, herald_core::Event)>, String> {
    match record::scan(buf) {
        record::Scan::Ok { len, body, .. } => record::decode(body).map(|e| Some((len, e))),
        record::Scan::Incomplete => Ok(None),
        record::Scan::Invalid(why) => Err(why),
    }
}

/// The record bytes of `event` (the inverse of [`decode_record`]).
pub fn encode_record(event: &herald_core::Event) -> Vec<u8> {
    let mut buf = Vec::new();
    record::encode(event, &mut buf);
    buf
}

use herald_core::{Event, NewEvent};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future (keeps [`EventLog`] usable as a trait object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A committed batch, in id order, as handed to the fan-out.
pub type CommittedBatch = Arc<[Arc<Event>]>;

/// A range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadQuery {
    /// Only these exchanges (`None` for all).
    pub exchanges: Option<Vec<String>>,
    /// Ids strictly greater than this.
    pub after: u64,
    /// Ids at most this.
    pub upto: u64,
    /// At most this many events.
    pub limit: usize,
    /// Newest first (to find the last N) instead of oldest first.
    pub newest_first: bool,
    /// Stop once this many record bytes are read (at least one event is
    /// returned): bounds the memory of one read whatever the payload sizes.
    /// A read cut short returns a prefix; read on from its last id.
    pub max_bytes: usize,
}

impl Default for ReadQuery {
    /// Everything, oldest first, without limits.
    fn default() -> Self {
        ReadQuery {
            exchanges: None,
            after: 0,
            upto: u64::MAX,
            limit: usize::MAX,
            newest_first: false,
            max_bytes: usize::MAX,
        }
    }
}

/// An idempotency key as the log holds it, with its event's id and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The event's id.
    pub id: u64,
    /// The event's commit time, microseconds since the Unix epoch.
    pub time_us: u64,
    /// The event's exchange (keys are unique per exchange).
    pub exchange: String,
    /// The publisher's key.
    pub key: String,
}

/// Whether the log stores what it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteHealth {
    /// Writes succeed.
    Ok,
    /// The last write found the disk full; the next one tries again.
    Full(String),
    /// A sync failed: writes are refused until the log is opened again.
    Failed(String),
    /// The cluster log cannot be reached (NATS is down or unreachable);
    /// publishes fail until it is back.
    Disconnected(String),
}

/// The ids the log holds: `first..=head` (empty when `first > head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Oldest retained id.
    pub first: u64,
    /// Newest id (0 when nothing was ever written).
    pub head: u64,
}

/// Counters and sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Retained events.
    pub events: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Write batches (fsyncs) since start.
    pub commits: u64,
    /// Events appended since start.
    pub appended: u64,
    /// Microseconds spent storing batches (write and fsync) since start
    /// (0 for a log that does not measure it).
    pub commit_micros: u64,
    /// Commits that took 100 ms or more since start.
    pub slow_commits: u64,
}

/// The durable ordered store of events; the single place that assigns ids.
pub trait EventLog: Send + Sync + 'static {
    /// Append events; resolves with the committed events (ids assigned) once durable.
    fn append(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Arc<Event>>, LogError>>;
    /// Read events in a range.
    fn read(&self, query: ReadQuery) -> BoxFuture<'_, Result<Vec<Arc<Event>>, LogError>>;
    /// The idempotency keys of the events in `(after, upto]`, oldest first,
    /// examining at most `limit` events (a log may examine fewer): the keys found and the last id
    /// examined (read on after it until it reaches `upto`). Used to rebuild
    /// the idempotency window at start; a log may skip decoding events that
    /// carry no key.
    fn idempotency_keys(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<(Vec<StoredKey>, u64), LogError>> {
        Box::pin(async move {
            // Whole events are read here: at most 1,024 at a time, so that
            // the memory of one step stays what a replay chunk takes.
            let query = ReadQuery { after, upto, limit: limit.min(1024), ..ReadQuery::default() };
            let events = self.read(query).await?;
            let last = events.last().map_or(upto.max(after), |e| e.id);
            let keys = events
                .iter()
                .filter_map(|e| {
                    let key = e.idempotency_key.clone()?;
                    Some(StoredKey { id: e.id, time_us: e.time_us, exchange: e.exchange.clone(), key })
                })
                .collect();
            Ok((keys, last))
        })
    }
    /// The first retained id whose time is at or after `time_us` (`head + 1` if none).
    fn first_at_or_after(&self, time_us: u64) -> BoxFuture<'_, Result<u64, LogError>>;
    /// Time of the oldest retained event, if any.
    fn first_time(&self) -> BoxFuture<'_, Result<Option<u64>, LogError>>;
    /// Retained ids.
    fn bounds(&self) -> Bounds;
    /// Whether writes succeed now.
    fn write_health(&self) -> WriteHealth {
        WriteHealth::Ok
    }
    /// Sizes and counters.
    fn stats(&self) -> LogStats;
    /// Apply retention now (also applied after every write).
    fn enforce_retention(&self);
    /// Flush and stop the writer; later appends fail with [`LogError::Closed`].
    fn close(&self) -> BoxFuture<'_, ()>;
}

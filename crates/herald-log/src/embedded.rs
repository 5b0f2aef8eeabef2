//! [`EmbeddedLog`]: the segment-file implementation of [`EventLog`].

use crate::config::LogConfig;
use crate::error::LogError;
use crate::io::{LogIo, RealIo};
use crate::record::{self, Scan, HEADER, MAGIC};
use crate::{Bounds, BoxFuture, CommittedBatch, EventLog, LogStats, ReadQuery, StoredKey, WriteHealth};
use herald_core::event::now_us;
use herald_core::{Event, NewEvent};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

/// One segment file as the index knows it.
#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Offset of each record, plus the end offset: `offsets.len() == count + 1`.
    offsets: Vec<u64>,
    first_time: u64,
    last_time: u64,
}

impl Segment {
    fn count(&self) -> u64 {
        (self.offsets.len() - 1) as u64
    }

    fn bytes(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(MAGIC.len() as u64)
    }

    fn last_id(&self) -> u64 {
        self.base + self.count() - 1
    }
}

#[derive(Debug, Default)]
struct Index {
    segments: VecDeque<Segment>,
    by_exchange: HashMap<Arc<str>, VecDeque<u64>>,
    head: u64,
    last_time: u64,
    events: u64,
    bytes: u64,
}

impl Index {
    fn first(&self) -> u64 {
        self.segments.front().map(|s| s.base).unwrap_or(self.head + 1)
    }

    fn segment_of(&self, id: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.base <= id);
        let seg = self.segments.get(i.checked_sub(1)?)?;
        (id < seg.base + seg.count()).then_some(seg)
    }

    fn push(&mut self, exchange: &str, id: u64) {
        match self.by_exchange.get_mut(exchange) {
            Some(ids) => ids.push_back(id),
            None => {
                self.by_exchange.insert(Arc::from(exchange), VecDeque::from([id]));
            }
        }
    }
}

struct Shared {
    config: LogConfig,
    /// Whether writes succeed (read by `/readyz`).
    health: Mutex<WriteHealth>,
    index: RwLock<Index>,
    commits: AtomicU64,
    appended: AtomicU64,
    /// Microseconds spent writing and syncing batches, since start.
    commit_micros: AtomicU64,
    /// Commits that took at least [`SLOW_COMMIT`].
    slow_commits: AtomicU64,
}

/// A commit (write and fsync) this long is reported: every publish and every
/// delivery of the batch waited for it, so it is what a latency tail shows.
const SLOW_COMMIT: Duration = Duration::from_millis(100);
/// At most one warning about slow commits per this interval (a sick disk
/// would otherwise log one per batch).
const SLOW_COMMIT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Where the writer answers one append request.
type AppendReply = oneshot::Sender<Result<Vec<Arc<Event>>, LogError>>;

enum WriterMsg {
    Append(Vec<NewEvent>, AppendReply),
    Retention,
    Close(oneshot::Sender<()>),
}

/// The embedded, file-backed event log.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    tx: mpsc::Sender<WriterMsg>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog").field("dir", &self.shared.config.dir).finish()
    }
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| LogError::io(dir, e))
}

impl EmbeddedLog {
    /// Open (or create) the log in `config.dir`, recovering from a torn tail.
    ///
    /// Returns the log and the receiver of committed batches, in id order,
    /// for the fan-out.
    pub fn open(config: LogConfig) -> Result<(Arc<EmbeddedLog>, mpsc::Receiver<CommittedBatch>), LogError> {
        EmbeddedLog::open_with_io(config, Arc::new(RealIo))
    }

    /// [`EmbeddedLog::open`] writing through `io` (tests inject faults with
    /// [`crate::FaultyIo`]).
    pub fn open_with_io(
        config: LogConfig,
        io: Arc<dyn LogIo>,
    ) -> Result<(Arc<EmbeddedLog>, mpsc::Receiver<CommittedBatch>), LogError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(LogError::Config(problems.join("; ")));
        }
        std::fs::create_dir_all(&config.dir).map_err(|e| LogError::io(&config.dir, e))?;
        let index = recover(&config.dir)?;
        let (active_file, active_pos) = open_active(&config.dir, &index)?;
        let index = match index {
            Some(i) => i,
            None => {
                let mut i = Index::default();
                let path = segment_path(&config.dir, 1);
                let file = File::open(&path).map_err(|e| LogError::io(&path, e))?;
                i.segments.push_back(Segment {
                    base: 1,
                    path,
                    file: Arc::new(file),
                    offsets: vec![MAGIC.len() as u64],
                    first_time: 0,
                    last_time: 0,
                });
                i.bytes = MAGIC.len() as u64;
                i
            }
        };
        info!(dir = %config.dir.display(), head = index.head, first = index.first(), events = index.events, "Event log opened.");
        let shared = Arc::new(Shared {
            config,
            health: Mutex::new(WriteHealth::Ok),
            index: RwLock::new(index),
            commits: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
            slow_commits: AtomicU64::new(0),
            appended: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(1024);
        let (committed_tx, committed_rx) = mpsc::channel(256);
        let writer = Writer {
            shared: shared.clone(),
            io,
            file: active_file,
            pos: active_pos,
            committed: committed_tx,
            failed: None,
            slow_warned: None,
            slow_unwarned: 0,
        };
        let thread = std::thread::Builder::new()
            .name("herald-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LogError::io("herald-log-writer thread", e))?;
        let log = Arc::new(EmbeddedLog { shared, tx, thread: Mutex::new(Some(thread)) });
        log.enforce_retention();
        Ok((log, committed_rx))
    }

    fn time_of(&self, id: u64) -> Result<Option<u64>, LogError> {
        let located = {
            let index = self.shared.index.read();
            index.segment_of(id).map(|seg| (seg.file.clone(), seg.path.clone(), seg.offsets[(id - seg.base) as usize]))
        };
        let Some((file, path, start)) = located else {
            return Ok(None);
        };
        let mut buf = [0u8; HEADER + 16];
        file.read_exact_at(&mut buf, start).map_err(|e| LogError::io(&path, e))?;
        let mut t = [0u8; 8];
        t.copy_from_slice(&buf[HEADER + 8..HEADER + 16]);
        Ok(Some(u64::from_le_bytes(t)))
    }

    fn first_at_or_after_sync(&self, time_us: u64) -> Result<u64, LogError> {
        let (mut lo, mut hi) = {
            let index = self.shared.index.read();
            // Narrow to one segment by its time range, then binary search in it.
            let Some(seg) = index.segments.iter().find(|s| s.count() > 0 && s.last_time >= time_us) else {
                return Ok(index.head + 1);
            };
            if seg.first_time >= time_us {
                return Ok(seg.base);
            }
            (seg.base, seg.last_id())
        };
        // Invariant: time(lo) < time_us <= time(hi).
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match self.time_of(mid)? {
                Some(t) if t >= time_us => hi = mid,
                Some(_) => lo = mid,
                None => return Ok(self.shared.index.read().first()),
            }
        }
        Ok(hi)
    }
}

impl Shared {
    fn read_sync(&self, q: &ReadQuery) -> Result<Vec<Arc<Event>>, LogError> {
        let upto = q.upto.min(self.index.read().head);
        if q.limit == 0 || upto <= q.after {
            return Ok(Vec::new());
        }
        let ids: Option<Vec<u64>> =
            q.exchanges.as_ref().map(|xs| self.exchange_ids(xs, q.after, upto, q.limit, q.newest_first));
        match ids {
            Some(ids) => self.read_ids(&ids, q.max_bytes),
            None => {
                let (lo, hi) = if q.newest_first {
                    (upto.saturating_sub(q.limit as u64 - 1).max(q.after + 1), upto)
                } else {
                    (q.after + 1, upto.min(q.after.saturating_add(q.limit as u64)))
                };
                if q.newest_first {
                    // Newest first, so that a byte budget keeps the newest.
                    let ids: Vec<u64> = (lo.max(self.index.read().first())..=hi).rev().collect();
                    return self.read_ids(&ids, q.max_bytes);
                }
                self.read_range(lo, hi, q.max_bytes)
            }
        }
    }

    /// Ids of the given exchanges in `(after, upto]`, merged, at most `limit`.
    fn exchange_ids(&self, exchanges: &[String], after: u64, upto: u64, limit: usize, newest_first: bool) -> Vec<u64> {
        let index = self.index.read();
        let mut ids: Vec<u64> = Vec::new();
        for x in exchanges {
            let Some(list) = index.by_exchange.get(x.as_str()) else {
                continue;
            };
            let lo = list.partition_point(|&id| id <= after);
            let hi = list.partition_point(|&id| id <= upto);
            if newest_first {
                ids.extend(list.range(hi.saturating_sub(limit).max(lo)..hi));
            } else {
                ids.extend(list.range(lo..hi.min(lo + limit)));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        if newest_first {
            ids.reverse();
        }
        ids.truncate(limit);
        ids
    }

    /// Read the contiguous ids `lo..=hi` (those still retained), stopping
    /// once `max_bytes` of records are read.
    fn read_range(&self, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<Arc<Event>>, LogError> {
        let mut out = Vec::new();
        self.each_in_range(lo, hi, max_bytes, |path, offset, body| {
            out.push(Arc::new(decode_at(path, offset, body)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Hand the record bodies of ids `lo..=hi` (those still retained) to
    /// `f` in id order, one read per segment, stopping once `max_bytes` of
    /// records are read (at least one record is). Returns the last id read
    /// (`lo - 1` if none was).
    fn each_in_range(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: usize,
        mut f: impl FnMut(&Path, u64, &[u8]) -> Result<(), LogError>,
    ) -> Result<u64, LogError> {
        let mut budget = max_bytes;
        let mut id = lo.max(self.index.read().first());
        let mut done = lo.saturating_sub(1);
        let mut first = true;
        while id <= hi && (budget > 0 || first) {
            first = false;
            let (file, path, start, end, last) = {
                let index = self.index.read();
                let Some(seg) = index.segment_of(id) else {
                    break;
                };
                let at = |id: u64| seg.offsets[(id - seg.base) as usize];
                let start = at(id);
                let mut last = seg.last_id().min(hi);
                if (at(last + 1) - start) as usize > budget {
                    // The last id whose record ends within the budget (at least `id`).
                    let (mut a, mut b) = (id, last);
                    while a < b {
                        let mid = a + (b - a).div_ceil(2);
                        if (at(mid + 1) - start) as usize <= budget {
                            a = mid;
                        } else {
                            b = mid - 1;
                        }
                    }
                    last = a;
                }
                (seg.file.clone(), seg.path.clone(), start, at(last + 1), last)
            };
            each_record(&file, &path, start, end, &mut f)?;
            budget = budget.saturating_sub((end - start) as usize);
            debug!(from = id, to = last, "Read segment range.");
            done = last;
            id = last + 1;
        }
        Ok(done)
    }

    /// The idempotency keys in ids `(after, upto]`, examining at most
    /// `limit` records: only records whose bytes mention the key's field
    /// are decoded, so a window of unkeyed events costs a scan, not a parse.
    fn idempotency_keys_sync(&self, after: u64, upto: u64, limit: usize) -> Result<(Vec<StoredKey>, u64), LogError> {
        let upto = upto.min(self.index.read().head);
        if limit == 0 || upto <= after {
            return Ok((Vec::new(), upto.max(after)));
        }
        let hi = upto.min(after.saturating_add(limit as u64));
        let mut keys = Vec::new();
        let last = self.each_in_range(after + 1, hi, KEY_SCAN_BYTES, |path, offset, body| {
            if record::may_have_key(body) {
                let e = decode_at(path, offset, body)?;
                if let Some(key) = e.idempotency_key {
                    keys.push(StoredKey { id: e.id, time_us: e.time_us, exchange: e.exchange, key });
                }
            }
            Ok(())
        })?;
        // Nothing retained in the range (retention raced the scan): done with it.
        Ok((keys, if last <= after { hi } else { last }))
    }

    /// Read individual ids (ascending or descending, as given), stopping
    /// once `max_bytes` of the file are read (at least one event is).
    ///
    /// Ids close together in a segment are read with one read that spans
    /// the records between them (skipped, not decoded): a replay of one
    /// exchange among many would otherwise cost a system call per event.
    fn read_ids(&self, ids: &[u64], max_bytes: usize) -> Result<Vec<Arc<Event>>, LogError> {
        let descending = ids.len() > 1 && ids[0] > ids[1];
        let mut out = Vec::with_capacity(ids.len());
        let mut budget = max_bytes;
        let mut wanted: Vec<(u64, u64)> = Vec::new();
        let mut i = 0;
        while i < ids.len() && (budget > 0 || out.is_empty()) {
            // A run: ids[i..j] in one segment, each within MAX_GAP bytes of
            // the span so far, the span within the budget.
            wanted.clear();
            let located = {
                let index = self.index.read();
                index.segment_of(ids[i]).map(|seg| {
                    let at = |id: u64| seg.offsets[(id - seg.base) as usize];
                    let (mut lo, mut hi) = (at(ids[i]), at(ids[i] + 1));
                    wanted.push((lo, hi));
                    let mut j = i + 1;
                    while j < ids.len() {
                        let id = ids[j];
                        if id < seg.base || id > seg.last_id() {
                            break;
                        }
                        let (start, end) = (at(id), at(id + 1));
                        let gap = if descending { lo.saturating_sub(end) } else { start.saturating_sub(hi) };
                        let (nlo, nhi) = (lo.min(start), hi.max(end));
                        if gap > MAX_GAP || (nhi - nlo) as usize > budget {
                            break;
                        }
                        wanted.push((start, end));
                        (lo, hi) = (nlo, nhi);
                        j += 1;
                    }
                    (seg.file.clone(), seg.path.clone(), lo, hi, j)
                })
            };
            // Retention may have removed it since the ids were collected.
            let Some((file, path, lo, hi, j)) = located else {
                i += 1;
                continue;
            };
            let mut buf = vec![0u8; (hi - lo) as usize];
            file.read_exact_at(&mut buf, lo).map_err(|e| LogError::io(&path, e))?;
            for &(start, end) in &wanted {
                let bytes = &buf[(start - lo) as usize..(end - lo) as usize];
                match record::scan(bytes) {
                    Scan::Ok { body, .. } => out.push(Arc::new(decode_at(&path, start, body)?)),
                    Scan::Incomplete | Scan::Invalid(_) => {
                        return Err(LogError::Corrupt { path, offset: start, reason: "unreadable record".into() })
                    }
                }
            }
            budget = budget.saturating_sub((hi - lo) as usize);
            i = j;
        }
        Ok(out)
    }
}

/// Most bytes of other records one read of [`Shared::read_ids`] skips over
/// between two it wants (copying them costs less than another read).
const MAX_GAP: u64 = 4096;

/// Bytes of records one idempotency-key scan step reads, at most.
const KEY_SCAN_BYTES: usize = 8 << 20;

/// Read the records in `start..end` of a segment file with one read and
/// hand each body to `f` with the path and its record's offset.
fn each_record(
    file: &File,
    path: &Path,
    start: u64,
    end: u64,
    mut f: impl FnMut(&Path, u64, &[u8]) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let mut buf = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut buf, start).map_err(|e| LogError::io(path, e))?;
    let mut at = 0usize;
    while at < buf.len() {
        match record::scan(&buf[at..]) {
            Scan::Ok { len, body, .. } => {
                f(path, start + at as u64, body)?;
                at += len;
            }
            Scan::Incomplete | Scan::Invalid(_) => {
                return Err(LogError::Corrupt {
                    path: path.to_path_buf(),
                    offset: start + at as u64,
                    reason: "unreadable record".into(),
                })
            }
        }
    }
    Ok(())
}

/// Decode a verified record body read from `path` at `offset`.
fn decode_at(path: &Path, offset: u64, body: &[u8]) -> Result<Event, LogError> {
    record::decode(body).map_err(|reason| LogError::Corrupt { path: path.to_path_buf(), offset, reason })
}

/// Scan every segment, cut a torn tail, and rebuild the index.
/// Returns `None` for an empty directory.
fn recover(dir: &Path) -> Result<Option<Index>, LogError> {
    let mut bases: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = name.strip_suffix(".seg").and_then(|b| b.parse::<u64>().ok()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    if bases.is_empty() {
        return Ok(None);
    }
    let mut index = Index::default();
    let count = bases.len();
    for (n, base) in bases.into_iter().enumerate() {
        let newest = n + 1 == count;
        let path = segment_path(dir, base);
        let data = std::fs::read(&path).map_err(|e| LogError::io(&path, e))?;
        if index.head != 0 && base != index.head + 1 {
            return Err(LogError::Corrupt {
                path,
                offset: 0,
                reason: format!("segment starts at id {base}, expected {}", index.head + 1),
            });
        }
        let mut good_len = MAGIC.len();
        let mut offsets = vec![MAGIC.len() as u64];
        let (mut first_time, mut last_time) = (0, 0);
        let mut damage: Option<String> = None;
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            damage = Some("missing segment header".to_string());
            good_len = 0;
            offsets.clear();
        } else {
            let mut expected = base;
            while good_len < data.len() {
                match record::scan(&data[good_len..]) {
                    Scan::Ok { len, meta, .. } => {
                        if meta.id != expected {
                            damage = Some(format!("record id {} where {} was expected", meta.id, expected));
                            break;
                        }
                        if offsets.len() == 1 {
                            first_time = meta.time_us;
                        }
                        last_time = meta.time_us;
                        index.push(meta.exchange, meta.id);
                        expected += 1;
                        good_len += len;
                        offsets.push(good_len as u64);
                    }
                    Scan::Incomplete => {
                        damage = Some("incomplete record".to_string());
                        break;
                    }
                    Scan::Invalid(reason) => {
                        damage = Some(reason);
                        break;
                    }
                }
            }
        }
        if let Some(reason) = damage {
            if !newest {
                return Err(LogError::Corrupt { path, offset: good_len as u64, reason });
            }
            warn!(
                path = %path.display(),
                offset = good_len,
                cut_bytes = data.len() - good_len,
                %reason,
                "Torn tail found in the newest segment (a write interrupted by a crash, never acknowledged); cutting it."
            );
            let f = OpenOptions::new().write(true).open(&path).map_err(|e| LogError::io(&path, e))?;
            if good_len == 0 {
                f.set_len(0).map_err(|e| LogError::io(&path, e))?;
                (&f).write_all(MAGIC).map_err(|e| LogError::io(&path, e))?;
                good_len = MAGIC.len();
                offsets = vec![good_len as u64];
            } else {
                f.set_len(good_len as u64).map_err(|e| LogError::io(&path, e))?;
            }
            f.sync_all().map_err(|e| LogError::io(&path, e))?;
        }
        let file = File::open(&path).map_err(|e| LogError::io(&path, e))?;
        let seg = Segment { base, path, file: Arc::new(file), offsets, first_time, last_time };
        index.head = base + seg.count() - 1;
        index.last_time = index.last_time.max(last_time);
        index.events += seg.count();
        index.bytes += seg.bytes();
        index.segments.push_back(seg);
    }
    Ok(Some(index))
}

/// Open the newest segment for appending (creating the first one if needed).
fn open_active(dir: &Path, index: &Option<Index>) -> Result<(File, u64), LogError> {
    match index.as_ref().and_then(|i| i.segments.back()) {
        Some(seg) => {
            let f = OpenOptions::new().write(true).open(&seg.path).map_err(|e| LogError::io(&seg.path, e))?;
            Ok((f, seg.bytes()))
        }
        None => create_segment(dir, 1),
    }
}

fn create_segment(dir: &Path, base: u64) -> Result<(File, u64), LogError> {
    let path = segment_path(dir, base);
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).open(&path).map_err(|e| LogError::io(&path, e))?;
    f.write_all(MAGIC).map_err(|e| LogError::io(&path, e))?;
    f.sync_all().map_err(|e| LogError::io(&path, e))?;
    sync_dir(dir)?;
    Ok((f, MAGIC.len() as u64))
}

struct Writer {
    shared: Arc<Shared>,
    io: Arc<dyn LogIo>,
    file: File,
    pos: u64,
    committed: mpsc::Sender<CommittedBatch>,
    failed: Option<String>,
    /// When slow commits were last warned about, and how many came since.
    slow_warned: Option<std::time::Instant>,
    slow_unwarned: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        let mut pending: Vec<(Vec<NewEvent>, AppendReply)> = Vec::new();
        while let Some(msg) = rx.blocking_recv() {
            let mut close = None;
            let mut retention = false;
            let mut bytes = 0usize;
            let mut next = Some(msg);
            // Group commit: take everything already queued, up to the batch size.
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Append(events, reply) => {
                        bytes += events.iter().map(|e| e.payload.get().len() + e.exchange.len() + 64).sum::<usize>();
                        pending.push((events, reply));
                    }
                    WriterMsg::Retention => retention = true,
                    WriterMsg::Close(done) => {
                        close = Some(done);
                        break;
                    }
                }
                if bytes < self.shared.config.max_batch_bytes {
                    next = rx.try_recv().ok();
                }
            }
            if !pending.is_empty() {
                self.commit(&mut pending);
                retention = true;
            }
            if retention {
                self.retention();
            }
            if let Some(done) = close {
                if let Err(e) = self.io.sync(&self.file, true) {
                    error!(error = %e, "Final log sync failed.");
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// Count a commit's time, and warn (at most every
    /// [`SLOW_COMMIT_WARN_EVERY`]) when it was slow: the disk, not the
    /// gateway, is then what publishers and subscribers waited for.
    fn timed(&mut self, started: std::time::Instant, bytes: usize) {
        let took = started.elapsed();
        self.shared.commit_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if took < SLOW_COMMIT {
            return;
        }
        self.shared.slow_commits.fetch_add(1, Ordering::Relaxed);
        if self.slow_warned.is_some_and(|at| at.elapsed() < SLOW_COMMIT_WARN_EVERY) {
            self.slow_unwarned += 1;
            return;
        }
        warn!(
            took_ms = took.as_millis() as u64,
            bytes,
            fsync = self.shared.config.fsync,
            slow_since_last_warning = self.slow_unwarned,
            "A log commit (write and fsync) was slow; publishes and deliveries of its events waited for the disk."
        );
        self.slow_warned = Some(std::time::Instant::now());
        self.slow_unwarned = 0;
    }

    fn commit(&mut self, pending: &mut Vec<(Vec<NewEvent>, AppendReply)>) {
        if let Some(reason) = &self.failed {
            for (_, reply) in pending.drain(..) {
                let _ = reply.send(Err(LogError::Failed(reason.clone())));
            }
            return;
        }
        let (mut id, mut time) = {
            let index = self.shared.index.read();
            (index.head, index.last_time)
        };
        // Times never go backwards, so that time lookups can binary search.
        time = time.max(now_us());
        let mut buf = Vec::new();
        let mut groups: Vec<Vec<Arc<Event>>> = Vec::with_capacity(pending.len());
        let mut offsets: Vec<u64> = Vec::new();
        for (events, _) in pending.iter_mut() {
            let mut group = Vec::with_capacity(events.len());
            for e in events.drain(..) {
                id += 1;
                let event = Event::commit(id, time, e);
                record::encode(&event, &mut buf);
                offsets.push(self.pos + buf.len() as u64);
                group.push(Arc::new(event));
            }
            groups.push(group);
        }
        let started = std::time::Instant::now();
        if let Err(e) = self.io.write_at(&self.file, &buf, self.pos) {
            let full = crate::io::is_full(&e);
            let reason = e.to_string();
            if full {
                warn!(error = %reason, "The disk holding the log is full; refusing publishes until there is space.");
            } else {
                error!(error = %reason, "Log write failed; the events were not stored and their publishers are told so.");
            }
            // Undo the partial write so that the file stays a valid log; if even
            // that fails, refuse further writes rather than risk corruption.
            if let Err(e2) = self.io.truncate(&self.file, self.pos) {
                error!(error = %e2, "Could not undo a failed log write; refusing further writes.");
                self.fail(format!("a failed write could not be undone: {e2}"));
            } else {
                *self.shared.health.lock() = if full { WriteHealth::Full(reason.clone()) } else { WriteHealth::Ok };
            }
            for (_, reply) in pending.drain(..) {
                let err = if full {
                    LogError::Full(reason.clone())
                } else {
                    LogError::io(&self.shared.config.dir, std::io::Error::new(e.kind(), reason.clone()))
                };
                let _ = reply.send(Err(err));
            }
            return;
        }
        if self.shared.config.fsync {
            if let Err(e) = self.io.sync(&self.file, false) {
                // PostgreSQL's "fsyncgate": after a failed fsync the kernel may
                // have dropped the dirty pages and cleared the error, so a retry
                // would "succeed" without the data. Never retry: cut what was not
                // acknowledged (best effort) and refuse writes until a fresh open
                // has checked what the files really hold.
                let reason = format!("fsync failed: {e}");
                error!(error = %reason, "Log fsync failed; refusing writes until the gateway is restarted.");
                let _ = self.io.truncate(&self.file, self.pos);
                self.fail(reason.clone());
                for (_, reply) in pending.drain(..) {
                    let _ = reply.send(Err(LogError::Failed(reason.clone())));
                }
                return;
            }
        }
        self.timed(started, buf.len());
        if !matches!(*self.shared.health.lock(), WriteHealth::Ok) {
            info!("The log stores events again.");
            *self.shared.health.lock() = WriteHealth::Ok;
        }
        self.pos += buf.len() as u64;
        let all: Vec<Arc<Event>> = groups.iter().flatten().cloned().collect();
        {
            let mut index = self.shared.index.write();
            if let Some(seg) = index.segments.back_mut() {
                if seg.count() == 0 {
                    seg.first_time = time;
                }
                seg.offsets.extend_from_slice(&offsets);
                seg.last_time = time;
            }
            for e in &all {
                index.push(&e.exchange, e.id);
            }
            index.head = id;
            index.last_time = time;
            index.events += all.len() as u64;
            index.bytes += buf.len() as u64;
        }
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.shared.appended.fetch_add(all.len() as u64, Ordering::Relaxed);
        for ((_, reply), group) in pending.drain(..).zip(groups) {
            let _ = reply.send(Ok(group));
        }
        // Hand the batch to the fan-out; waiting here is the backpressure
        // that keeps a slow fan-out from queueing without bound.
        if self.committed.blocking_send(all.into()).is_err() {
            debug!("No fan-out is listening for committed events.");
        }
        if self.pos >= self.shared.config.segment_bytes {
            self.roll(id + 1);
        }
    }

    /// Refuse every write from now on (until the log is opened again).
    fn fail(&mut self, reason: String) {
        *self.shared.health.lock() = WriteHealth::Failed(reason.clone());
        self.failed = Some(reason);
    }

    fn roll(&mut self, base: u64) {
        let dir = self.shared.config.dir.clone();
        if let Err(e) = self.io.sync(&self.file, true) {
            // As for any failed sync: what the sealed segment holds is unknown.
            error!(error = %e, "Sealing a log segment failed; refusing writes until the gateway is restarted.");
            self.fail(format!("fsync of a sealed segment failed: {e}"));
            return;
        }
        match create_segment(&dir, base) {
            Ok((file, pos)) => {
                let path = segment_path(&dir, base);
                let read = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        error!(error = %e, path = %path.display(), "Cannot open the new segment for reading; staying on the old one.");
                        return;
                    }
                };
                self.file = file;
                self.pos = pos;
                let mut index = self.shared.index.write();
                index.bytes += pos;
                index.segments.push_back(Segment {
                    base,
                    path,
                    file: Arc::new(read),
                    offsets: vec![pos],
                    first_time: 0,
                    last_time: 0,
                });
                debug!(base, "Rolled to a new log segment.");
            }
            Err(e) => {
                error!(error = %e, "Cannot roll to a new log segment; continuing in the current one.")
            }
        }
    }

    fn retention(&mut self) {
        let cfg = &self.shared.config;
        let now = now_us();
        let max_age_us = cfg.max_age.map(|d| d.as_micros() as u64);
        let mut removed: Vec<PathBuf> = Vec::new();
        {
            let mut index = self.shared.index.write();
            while index.segments.len() > 1 {
                let Some(oldest) = index.segments.front() else {
                    break;
                };
                let too_old = max_age_us.is_some_and(|age| oldest.count() > 0 && oldest.last_time + age < now);
                let too_many = cfg.max_events.is_some_and(|max| index.events - oldest.count() >= max);
                let too_big = cfg.max_bytes.is_some_and(|max| index.bytes > max);
                if !(too_old || too_many || too_big) {
                    break;
                }
                let Some(seg) = index.segments.pop_front() else {
                    break;
                };
                index.events -= seg.count();
                index.bytes -= seg.bytes();
                let first = seg.base + seg.count();
                index.by_exchange.retain(|_, ids| {
                    let cut = ids.partition_point(|&id| id < first);
                    ids.drain(..cut);
                    !ids.is_empty()
                });
                removed.push(seg.path);
            }
        }
        for path in removed {
            match std::fs::remove_file(&path) {
                Ok(()) => info!(path = %path.display(), "Removed a log segment past retention."),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "Could not remove a log segment past retention.")
                }
            }
        }
    }
}

impl EventLog for EmbeddedLog {
    fn append(&self, events: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<Arc<Event>>, LogError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let (reply, rx) = oneshot::channel();
            self.tx.send(WriterMsg::Append(events, reply)).await.map_err(|_| LogError::Closed)?;
            rx.await.map_err(|_| LogError::Closed)?
        })
    }

    fn read(&self, query: ReadQuery) -> BoxFuture<'_, Result<Vec<Arc<Event>>, LogError>> {
        let shared = self.shared.clone();
        Box::pin(on_blocking_pool(move || shared.read_sync(&query)))
    }

    fn idempotency_keys(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<(Vec<StoredKey>, u64), LogError>> {
        let shared = self.shared.clone();
        Box::pin(on_blocking_pool(move || shared.idempotency_keys_sync(after, upto, limit)))
    }

    fn first_at_or_after(&self, time_us: u64) -> BoxFuture<'_, Result<u64, LogError>> {
        Box::pin(async move { blocking(|| self.first_at_or_after_sync(time_us)) })
    }

    fn first_time(&self) -> BoxFuture<'_, Result<Option<u64>, LogError>> {
        Box::pin(async move {
            let first = self.bounds().first;
            blocking(|| self.time_of(first))
        })
    }

    fn write_health(&self) -> WriteHealth {
        self.shared.health.lock().clone()
    }

    fn bounds(&self) -> Bounds {
        let index = self.shared.index.read();
        Bounds { first: index.first(), head: index.head }
    }

    fn stats(&self) -> LogStats {
        let index = self.shared.index.read();
        LogStats {
            events: index.events,
            bytes: index.bytes,
            segments: index.segments.len() as u64,
            commits: self.shared.commits.load(Ordering::Relaxed),
            appended: self.shared.appended.load(Ordering::Relaxed),
            commit_micros: self.shared.commit_micros.load(Ordering::Relaxed),
            slow_commits: self.shared.slow_commits.load(Ordering::Relaxed),
        }
    }

    fn enforce_retention(&self) {
        let _ = self.tx.try_send(WriterMsg::Retention);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (done, rx) = oneshot::channel();
            if self.tx.send(WriterMsg::Close(done)).await.is_ok() {
                let _ = rx.await;
            }
            let handle = self.thread.lock().take();
            if let Some(h) = handle {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
        })
    }
}

/// Run a read of many records on tokio's blocking pool (or here, outside a
/// runtime), so that the tasks serving live traffic keep running however
/// many replays read at once.
async fn on_blocking_pool<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| LogError::io("log reader task", std::io::Error::other(e.to_string())))?,
        Err(_) => read(),
    }
}

/// Run file reads without stalling other tasks on a multi-threaded runtime
/// (reads are short positional reads, mostly from the page cache).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// How long a retention pass may wait between runs when nothing is written.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(10);

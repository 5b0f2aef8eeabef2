//! [`LogIo`]: the seam between the log's writer and the filesystem.
//!
//! The writer appends, syncs and (to undo a failed append) truncates only
//! through this trait, so that tests can make any of them fail
//! ([`FaultyIo`]) and check what the log then promises: nothing that failed
//! is acknowledged, a failed sync is never retried (see
//! [`crate::EmbeddedLog`]), and a full disk is reported as such and
//! recovered from when space returns.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// File operations of the log's writer.
pub trait LogIo: Send + Sync + fmt::Debug {
    /// Write all of `buf` at `pos`.
    fn write_at(&self, file: &File, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Make the file's data durable (`fdatasync`, or `fsync` with `all`).
    fn sync(&self, file: &File, all: bool) -> io::Result<()>;
    /// Cut the file to `len` bytes.
    fn truncate(&self, file: &File, len: u64) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealIo;

impl LogIo for RealIo {
    fn write_at(&self, file: &File, buf: &[u8], pos: u64) -> io::Result<()> {
        file.write_all_at(buf, pos)
    }

    fn sync(&self, file: &File, all: bool) -> io::Result<()> {
        if all {
            file.sync_all()
        } else {
            file.sync_data()
        }
    }

    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }
}

/// The real filesystem, with failures on demand (for tests).
#[derive(Debug, Default)]
pub struct FaultyIo {
    fail_writes: AtomicU32,
    fail_syncs: AtomicU32,
    slow_syncs: AtomicU32,
    disk_full: AtomicBool,
}

/// `ENOSPC`.
const ENOSPC: i32 = 28;
/// `EIO`.
const EIO: i32 = 5;

impl FaultyIo {
    /// The next `n` writes fail with `EIO` (after writing half their bytes,
    /// as a torn write would).
    pub fn fail_next_writes(&self, n: u32) {
        self.fail_writes.store(n, Ordering::SeqCst);
    }

    /// The next `n` syncs fail with `EIO`.
    pub fn fail_next_syncs(&self, n: u32) {
        self.fail_syncs.store(n, Ordering::SeqCst);
    }

    /// The next `n` syncs succeed after 150 ms (a disk stalling, as a
    /// virtual machine's sometimes does).
    pub fn slow_next_syncs(&self, n: u32) {
        self.slow_syncs.store(n, Ordering::SeqCst);
    }

    /// While set, every write fails with `ENOSPC` (nothing written).
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

impl LogIo for FaultyIo {
    fn write_at(&self, file: &File, buf: &[u8], pos: u64) -> io::Result<()> {
        if self.disk_full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        if Self::take(&self.fail_writes) {
            file.write_all_at(&buf[..buf.len() / 2], pos)?;
            return Err(io::Error::from_raw_os_error(EIO));
        }
        file.write_all_at(buf, pos)
    }

    fn sync(&self, file: &File, all: bool) -> io::Result<()> {
        if Self::take(&self.fail_syncs) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        if Self::take(&self.slow_syncs) {
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        RealIo.sync(file, all)
    }

    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }
}

/// Whether an error means the filesystem is out of space (or quota).
pub(crate) fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(ENOSPC) | Some(122))
}

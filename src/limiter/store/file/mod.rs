//! The file store: a memory-mapped state file shared by the processes of one host.
//!
//! Every process that opens the same path shares every bucket in the file. Each operation
//! takes the file's exclusive lock (`flock` on Unix, `LockFileEx` on Windows, through
//! `fs4`), works on the shared mapping and releases the lock: one lock and unlock per call.
//! The operating system drops the lock of a process that dies, even by `kill -9`. On
//! Windows, which refuses to extend a file while any process maps it, the mapping is made
//! after taking the lock and dropped before releasing it; elsewhere it stays between calls.
//! Threads of one process share a [`FileStore`] through its mutex (a lock held by an open
//! file is not exclusive between threads that use that same open file); two `FileStore`s
//! opened on the same path in one process exclude each other like two processes.
//!
//! The rules of each bucket are those of the [module documentation](super) and live in
//! `model`; fairness comes from the shared FIFO queue of each bucket, which every process
//! sees, so a waiter of one process is never passed by a newcomer of another.
//!
//! # The lock's wait is bounded
//!
//! Any process that can open the file can lock it, and a process stopped (`SIGSTOP`, a
//! debugger) while it holds the lock holds it until it runs again. So an operation never
//! waits for the lock without end: it tries, tries again at once for 200 µs, then every
//! millisecond, for at most [`FileSettings::lock_timeout`] (the store URL's `timeout_ms=`,
//! [`DEFAULT_LOCK_TIMEOUT`] by default), the wait for this process's own mutex included.
//! Then it fails with [`StoreErrorKind::Unavailable`] ("the state file is locked by
//! another process"), which the limiter retries until the call's deadline
//! (`on_unavailable=wait`) or reports at once (`on_unavailable=fail`). An operation holds
//! the lock for microseconds (a sweep, below, for a few milliseconds), so the bound is
//! only reached by a holder that is stuck, or by a host so busy that the holder does not
//! run: raise `timeout_ms=` there.
//!
//! # Permissions
//!
//! The file holds the bucket keys (tenant and application ids), and anyone who can open it
//! can also lock it and so stall every user. A new file is therefore created with mode
//! `0600` (owner only) whatever the umask, or with the mode of the URL's `mode=` (at most
//! `0660`: a group of service accounts may share it; others never get access). The mode
//! applies when the file is created; an existing file keeps its own (and a warning is
//! logged when others may open it). The file's name must not be a symbolic link: it is
//! opened with `O_NOFOLLOW` and a link is refused ([`StoreErrorKind::Invalid`]). The
//! directories above it are followed, so they must not be writable by anyone the file is
//! not meant for: whoever may write the directory may replace the file or plant a link
//! in its place before it exists. On Windows the file inherits the directory's ACL
//! (`mode=` is ignored) and a link is refused by a check before opening.
//!
//! # Format (version 4, little-endian)
//!
//! - **Header** (bytes 0..512): magic `QGSTATE\0`, the format version (`u32`), a CRC-32 of
//!   bytes 16..264, then (`u64` each) the directory's offset, its capacity in slots and its
//!   count of buckets, `used` (the end of the allocated data), the generation (bumped
//!   whenever a bucket leaves the directory, so that other processes drop their index of
//!   keys), a random nonce chosen at creation (another file at the same path), and the
//!   heads of the free lists of the 25 size classes (256 bytes to 4 GiB). Byte 264 is the
//!   journal flag and bytes 272..280 the journal's offset; neither is covered by the CRC.
//! - **Directory**: an extent of a size class holding `capacity` slots of 288 bytes; slots
//!   `0..count` are the buckets: the record's offset and extent size (`u64`), the key's
//!   length (`u16`), a CRC-32 of the slot, then the key (at most [`MAX_KEY`] bytes of
//!   UTF-8).
//! - **Records**: per bucket, in an extent of a size class (a power of two from 256
//!   bytes): a CRC-32 and the length of the data (`u32` each), the longest window any
//!   caller used on the bucket and the instant from which it is idle (`u64` each), then
//!   the encoded bucket: a tag (`QGRUNS\0\x04`), its clock, pause and unit count, the
//!   largest `calls` and longest window used on it, then its runs (instant and count of
//!   units, the instants rising), queue and holds. A record grows with the calls still
//!   inside the longest window, not with their cost.
//! - **Free extents**: `QGFREEXT`, the next free extent of the class (`u64`, 0 ends the
//!   list), the class (`u32`) and a CRC-32 of the two.
//! - Beyond `used`: free space, where new extents and the journal go.
//!
//! A file that is shorter than `used`, whose magic, sizes or CRCs do not add up, is
//! refused with [`StoreErrorKind::Corrupt`]: a damaged file is never reset, since forgetting
//! admitted calls would over-admit. A record whose runs hold no units, go back in time or
//! count more units than were ever logged is damaged too. A file of version 3, whose
//! records hold a ring of one instant per unit, keeps working: opening it sets its version
//! to 4 (older builds then refuse it by name), a record without the tag is read as a ring
//! and turned into runs, and written as runs when its bucket next changes. Another format
//! version is refused like a damaged file (a file of an older version holds at most the
//! quota's recent use: delete it). An empty file (or one left all zeros by a crash while
//! it was being created) is initialised.
//!
//! The file's length is read under the lock on every operation: a file cut short while a
//! process has it mapped (an operator emptying it, say) is reported as damaged on that
//! process's next operation, rather than killing it with `SIGBUS` when it touches a page
//! that is gone. (A cut made *during* an operation can still fault it: foreign writers of
//! the file are out of scope.)
//!
//! # Space: idle buckets are reclaimed, free space is reused, the count is bounded
//!
//! A bucket is *idle* from the instant at which no unit it logged lies inside the longest
//! window any caller used on it, no hold is in flight, no pause runs and no waiter keeps a
//! place (each record stores that instant): it then reads exactly like a bucket that was
//! never used, and its record may go. A new bucket whose first operation leaves it idle
//! (a peek, a look at its usage) is never written at all.
//!
//! Records and directories live in power-of-two extents. A bucket that outgrows its extent
//! moves to a larger one, and the old one goes on its class's free list; a new extent is
//! taken from its class's free list before the end of the data. When the data would have
//! to outgrow the file, the directory is first *swept*: every idle bucket's record goes on
//! a free list and its slot leaves the directory (the slots behind it move up), in a
//! commit of its own. The file grows only when that leaves no extent of the class needed
//! (or freed fewer than an eighth of the buckets: it then doubles at once, so that sweeps,
//! which read every bucket's idle instant, stay rare), so its length follows the peak of
//! its live buckets (per size class) rather than every key ever used. At most
//! [`FileSettings::max_buckets`] buckets live in the file (`max_buckets=`,
//! [`DEFAULT_MAX_BUCKETS`] by default): a new key beyond that, once a sweep found none
//! idle, fails with [`StoreErrorKind::Invalid`].
//!
//! # Crash consistency: a redo journal
//!
//! A process may die at any instruction, and the stores it made to the shared mapping
//! survive it. Every change to live data is therefore made through a journal:
//!
//! 1. the new bytes of every changed range (a record, directory slots, a free extent's
//!    head, the header) are written, with a CRC, as a journal beyond `used` (never over
//!    live data);
//! 2. the journal's offset is stored in the header, then the journal flag is set (a single
//!    byte: the commit point);
//! 3. the ranges are copied to their places, then the flag is cleared.
//!
//! Only space that nothing live refers to is written directly, before the commit: beyond
//! `used`, a directory slot past the count, and a free extent past its 24-byte head (the
//! head, which the free list reads, changes through the journal). An extent freed by a
//! commit is reused only by a later one. Whoever takes the lock next and finds the flag set
//! replays the journal (replaying twice is harmless). A crash before the flag leaves the
//! old state, after it the new one. Compiler fences keep these steps in order; a process
//! that is killed has executed its earlier stores, so no hardware fence is needed. The
//! scheme protects against processes dying, not against the machine losing power: pages
//! are not flushed to disk on every call.
//!
//! # Clock
//!
//! The store's clock is the host's wall clock (nanoseconds since the Unix epoch), so that
//! processes never compare clocks of their own. Each bucket remembers the latest instant it
//! used and reads an earlier one as that instant: when the wall clock jumps back, the
//! bucket's time stands still (nothing leaves the windows) until the clock catches up.
//!
//! # Safety of the mapping
//!
//! Mapping a file is `unsafe` because another writer could change it under the mapping.
//! Here the file is only changed by `FileStore`s, and only while they hold its exclusive
//! lock; the mapping is only read or written under that lock, after the file's length was
//! read (and the file mapped again if it changed), and never past that length. Foreign
//! writers of the file are out of scope.

mod format;
mod journal;
mod open;
mod space;
#[cfg(test)]
mod tests;

use super::model::Bucket;
use super::{
    HoldLease, Place, Store, StoreError, StoreErrorKind, Usage, Verdict, Window, check_windows,
};
use crate::limiter::clock::Nanos;
use format::INITIAL_LEN;
use fs4::FileExt;
use memmap2::MmapMut;
use open::open_file;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest bucket key, in bytes.
pub const MAX_KEY: usize = 255;

/// The largest `calls` of a rate on a file store bucket: the limiter's [`MAX_CALLS`](crate::limiter::MAX_CALLS), as in every store.
pub const MAX_CALLS: u64 = crate::limiter::MAX_CALLS as u64;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 4;

/// The oldest format version this build reads: a file of it becomes one of
/// [`FORMAT_VERSION`] when opened, and each record is written in the new format when its
/// bucket next changes.
pub const OLDEST_FORMAT_VERSION: u32 = 3;

/// The mode of a new state file: read and write for its owner only.
pub const DEFAULT_MODE: u32 = 0o600;

/// The longest an operation waits for the file's lock, by default (`timeout_ms=`).
///
/// An operation holds the lock for microseconds, so a wait this long means a stuck
/// holder. The limiter then tries again until the call's deadline (`on_unavailable=wait`):
/// a bound well below the deadlines of calls lets it report the store's error by the
/// deadline instead of overrunning it and reporting a timeout.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_millis(250);

/// The most buckets a state file holds at once, by default (`max_buckets=`).
pub const DEFAULT_MAX_BUCKETS: u64 = 10_000;

/// The largest `max_buckets` there may be.
pub const MAX_MAX_BUCKETS: u64 = 1 << 20;

/// How a [`FileStore`] opens its file: the path and the settings of a `file://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSettings {
    /// The state file.
    pub path: PathBuf,
    /// The permissions of the file when this store creates it (`mode=`, octal in URLs):
    /// `0o600` (the default) to `0o660`. Unix only; an existing file keeps its own.
    pub mode: u32,
    /// The longest an operation waits for the file's lock (`timeout_ms=`).
    pub lock_timeout: Duration,
    /// The most buckets the file holds at once (`max_buckets=`); idle ones do not count.
    pub max_buckets: u64,
}

impl FileSettings {
    /// The default settings for the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            mode: DEFAULT_MODE,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            max_buckets: DEFAULT_MAX_BUCKETS,
        }
    }

    /// Fails with [`StoreErrorKind::Invalid`] on settings out of range.
    pub fn check(&self) -> Result<(), StoreError> {
        let invalid = |m: String| Err(StoreError::new(StoreErrorKind::Invalid, m));
        if !mode_is_allowed(self.mode) {
            return invalid(format!(
                "the mode of a state file is 0600 to 0660 (read and write for its owner, at \
                 most read and write for its group, nothing for others), not {:04o}",
                self.mode
            ));
        }
        if self.lock_timeout.is_zero() {
            return invalid("the state file's lock timeout must be above zero".into());
        }
        if !(1..=MAX_MAX_BUCKETS).contains(&self.max_buckets) {
            return invalid(format!(
                "max_buckets must be 1 to {MAX_MAX_BUCKETS}, not {}",
                self.max_buckets
            ));
        }
        Ok(())
    }
}

/// Whether `mode` may be a state file's: owner read and write, at most group read and
/// write, nothing else.
pub(crate) fn mode_is_allowed(mode: u32) -> bool {
    mode & 0o600 == 0o600 && mode & !0o660 == 0
}

/// How long a taken lock is tried for again at once before the tries sleep.
const LOCK_SPIN: Duration = Duration::from_micros(200);
/// The sleep between two tries of a taken lock, after [`LOCK_SPIN`].
const LOCK_PAUSE: Duration = Duration::from_millis(1);

fn wall_now() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A state file shared by the processes of one host.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    lock_timeout: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    map: Option<MmapMut>,
    max_buckets: u64,
    /// Directory index of every key seen so far, valid for the file's `ident`.
    keys: HashMap<String, u64>,
    /// Directory slots already read into `keys`.
    scanned: u64,
    /// The nonce and generation of the file that `keys` describes.
    ident: (u64, u64),
    /// The bucket being worked on (reused for its buffers).
    bucket: Bucket,
    /// Scratch space for encoded records.
    buf: Vec<u8>,
    /// Tests: stop a commit once its journal is valid, as a crash would.
    #[cfg(test)]
    crash_after_journal: bool,
}

/// A directory slot as read from the file.
#[derive(Debug, Clone, Copy)]
struct Entry {
    rec_off: u64,
    rec_cap: u64,
}

impl FileStore {
    /// Opens (creating if needed) the state file at `path` with the default settings.
    ///
    /// See [`open_with`](Self::open_with).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(&FileSettings::new(path))
    }

    /// Opens (creating if needed) the state file of `settings`.
    ///
    /// Fails with [`StoreErrorKind::Invalid`] on settings out of range, when the file
    /// cannot be opened for lack of permissions, or when its name is a symbolic link or
    /// not a regular file; [`StoreErrorKind::Corrupt`] when it is damaged or of another
    /// format; [`StoreErrorKind::Unavailable`] when its lock stays taken for the lock
    /// timeout, and on other I/O errors.
    pub fn open_with(settings: &FileSettings) -> Result<Self, StoreError> {
        settings.check()?;
        let file = open_file(settings)?;
        let mut inner = Inner {
            path: settings.path.clone(),
            file,
            map: None,
            max_buckets: settings.max_buckets,
            keys: HashMap::new(),
            scanned: 0,
            ident: (0, 0),
            bucket: Bucket::new(),
            buf: Vec::new(),
            #[cfg(test)]
            crash_after_journal: false,
        };
        let deadline = Instant::now() + settings.lock_timeout;
        inner.locked(deadline, settings.lock_timeout, Inner::init_or_check)?;
        Ok(Self {
            path: settings.path.clone(),
            lock_timeout: settings.lock_timeout,
            inner: Mutex::new(inner),
        })
    }

    /// Runs `op` on bucket `key` under the file lock and stores the bucket if it changed.
    /// `window` is the longest window of the caller's rates, if it passed any.
    fn with_bucket<R>(
        &self,
        key: &str,
        window: Option<Nanos>,
        op: impl FnOnce(&mut Bucket, Nanos) -> R,
    ) -> Result<R, StoreError> {
        if key.len() > MAX_KEY {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "bucket keys in the file store {} hold at most {MAX_KEY} bytes, not {}",
                    self.path.display(),
                    key.len()
                ),
            ));
        }
        // One bound for the whole wait: this process's other threads, then the file lock.
        let deadline = Instant::now() + self.lock_timeout;
        let Some(mut guard) = self.inner.try_lock_for(self.lock_timeout) else {
            return Err(locked_error(&self.path, self.lock_timeout));
        };
        let inner = &mut *guard;
        inner.locked(deadline, self.lock_timeout, |inner| {
            inner.run(key, window, op)
        })
    }
}

/// The error of a lock that stayed taken for `waited`.
fn locked_error(path: &Path, waited: Duration) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!(
            "the state file {} is locked by another process: its lock stayed taken for {} ms \
             (a process stopped or hung while it held the lock, or another program locks the \
             file)",
            path.display(),
            waited.as_millis()
        ),
    )
}

fn longest(windows: &[Window]) -> Nanos {
    windows.iter().map(|w| w.window_ns).max().unwrap_or(0)
}

impl Inner {
    /// Runs `f` under the file's exclusive lock, waiting for it until `deadline` at most.
    fn locked<R>(
        &mut self,
        deadline: Instant,
        bound: Duration,
        f: impl FnOnce(&mut Self) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.lock(deadline, bound)?;
        let result = f(self);
        // Windows refuses to extend a file that any process maps (ERROR_USER_MAPPED_FILE),
        // so there the mapping lives only while the lock is held: whoever grows the file
        // under the lock then finds no view of it open anywhere.
        #[cfg(windows)]
        {
            self.map = None;
        }
        let unlocked = FileExt::unlock(&self.file);
        let result = result?;
        unlocked.map_err(|e| self.io("unlock", e))?;
        Ok(result)
    }

    /// Takes the file's exclusive lock: tries, tries again while yielding the CPU for
    /// [`LOCK_SPIN`] (an operation holds the lock for microseconds), then sleeps
    /// [`LOCK_PAUSE`] between tries, until `deadline`. (Longer sleeps would let processes
    /// that hand the lock from thread to thread keep it for long: a poller only gets it
    /// if it tries while it is free.)
    fn lock(&self, deadline: Instant, bound: Duration) -> Result<(), StoreError> {
        let spin_end = Instant::now() + LOCK_SPIN;
        loop {
            match FileExt::try_lock(&self.file) {
                Ok(()) => return Ok(()),
                Err(fs4::TryLockError::WouldBlock) => {}
                Err(fs4::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                }
                Err(fs4::TryLockError::Error(e)) => return Err(self.io("lock", e)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(locked_error(&self.path, bound));
            }
            if now < spin_end {
                std::thread::yield_now();
                continue;
            }
            std::thread::sleep(LOCK_PAUSE.min(deadline - now));
        }
    }

    fn io(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::new(
            StoreErrorKind::Unavailable,
            format!("state file {}: cannot {what}: {e}", self.path.display()),
        )
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "the state file {} is damaged ({what}); move it away to start afresh",
                self.path.display()
            ),
        )
    }

    fn map(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    fn map_mut(&mut self) -> &mut [u8] {
        self.map.as_deref_mut().unwrap_or(&mut [])
    }

    fn mapped(&self) -> u64 {
        self.map().len() as u64
    }

    fn file_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| self.io("read the length of", e))?
            .len())
    }

    /// Maps the whole file again (after it grew, or was cut short).
    fn remap(&mut self) -> Result<(), StoreError> {
        let len = self.file_len()?;
        self.map = None;
        if len > 0 {
            // SAFETY: see the module documentation: the file is only changed by file
            // stores under its exclusive lock, which this process holds now, and the
            // mapping is only used under that lock, within the file's length.
            let map = unsafe { MmapMut::map_mut(&self.file) }.map_err(|e| self.io("map", e))?;
            self.map = Some(map);
        }
        Ok(())
    }

    /// Makes the file (and the mapping) at least `len` bytes long: by doubling it (data),
    /// or by the 64 KiB blocks that `len` needs (the journal).
    fn ensure_len(&mut self, len: u64, double: bool) -> Result<(), StoreError> {
        if self.mapped() >= len {
            return Ok(());
        }
        let on_disk = self.file_len()?;
        if on_disk < len {
            let grown = if double {
                len.max(on_disk.saturating_mul(2))
            } else {
                len
            };
            let grown = grown.max(INITIAL_LEN).div_ceil(INITIAL_LEN) * INITIAL_LEN;
            // Our own view too must be closed before Windows lets the file grow.
            #[cfg(windows)]
            {
                self.map = None;
            }
            self.file.set_len(grown).map_err(|e| self.io("extend", e))?;
        }
        self.remap()
    }

    /// One operation on bucket `key`, under the file lock.
    fn run<R>(
        &mut self,
        key: &str,
        window: Option<Nanos>,
        op: impl FnOnce(&mut Bucket, Nanos) -> R,
    ) -> Result<R, StoreError> {
        self.check()?;
        let found = self.find(key)?;
        let mut bucket = std::mem::replace(&mut self.bucket, Bucket::new());
        let mut stored_window = 0;
        let entry = match found {
            Some(i) => {
                let (entry, _) = self.entry(i)?;
                let (start, end, w) = self.record(key, &entry)?;
                if bucket.decode(&self.map()[start..end]).is_none() {
                    return Err(self.corrupt(format!("the record of {key:?} is damaged")));
                }
                bucket.keep_window_of(w);
                stored_window = w;
                Some((i, entry))
            }
            None => {
                bucket = Bucket::new();
                None
            }
        };
        let window = stored_window.max(window.unwrap_or(0));
        let result = op(&mut bucket, wall_now());
        let idle_at = bucket.idle_at(window);
        let stored = if entry.is_none() && idle_at <= bucket.last_now {
            // A new bucket that its operation left idle reads like no bucket at all.
            Ok(())
        } else if bucket.changed() || window > stored_window {
            // A longer window is stored even when nothing else changed: the bucket stays
            // live for as long as its longest caller's window holds its units.
            self.store(key, &bucket, window, idle_at, entry)
        } else {
            Ok(())
        };
        bucket.clear_changed();
        self.bucket = bucket;
        stored.map(|()| result)
    }

    /// Stores `bucket` (found at `entry`, or new) through the journal: in place while its
    /// record fits its extent, else in a new one.
    fn store(
        &mut self,
        key: &str,
        bucket: &Bucket,
        window: Nanos,
        idle_at: Nanos,
        entry: Option<(u64, Entry)>,
    ) -> Result<(), StoreError> {
        let mut record = std::mem::take(&mut self.buf);
        let result = self
            .encode_record(key, bucket, window, idle_at, &mut record)
            .and_then(|()| match &entry {
                Some((_, e)) if record.len() as u64 <= e.rec_cap => self.store_in_place(e, &record),
                _ => self.relocate(key, &record, entry),
            });
        self.buf = record;
        result
    }
}

impl Store for FileStore {
    fn poll(
        &self,
        key: &str,
        windows: &[Window],
        cost: u64,
        place: Place,
        hold: Option<HoldLease>,
    ) -> Result<Verdict, StoreError> {
        check_windows(&self.path.display(), windows, Some(cost))?;
        self.with_bucket(key, Some(longest(windows)), |b, now| {
            b.poll(now, windows, cost, place, hold)
        })
    }

    fn release(
        &self,
        key: &str,
        windows: &[Window],
        id: u64,
        ago: Duration,
    ) -> Result<(), StoreError> {
        self.with_bucket(key, Some(longest(windows)), |b, now| {
            b.release(now, id, ago)
        })
    }

    fn leave(&self, key: &str, id: u64) -> Result<(), StoreError> {
        self.with_bucket(key, None, |b, now| b.leave(now, id))
    }

    fn pause(&self, key: &str, duration: Duration) -> Result<(), StoreError> {
        self.with_bucket(key, None, |b, now| b.pause(now, duration))
    }

    fn usage(&self, key: &str, windows: &[Window]) -> Result<Usage, StoreError> {
        check_windows(&self.path.display(), windows, None)?;
        self.with_bucket(key, Some(longest(windows)), |b, now| b.usage(now, windows))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

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

use super::model::Bucket;
use super::{
    HoldLease, Place, Store, StoreError, StoreErrorKind, Usage, Verdict, Window, check_windows,
};
use crate::limiter::clock::Nanos;
use fs4::FileExt;
use memmap2::MmapMut;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{Ordering, compiler_fence};
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

const MAGIC: &[u8; 8] = b"QGSTATE\0";
const JOURNAL_MAGIC: &[u8; 8] = b"QGJOURNL";
const FREE_MAGIC: &[u8; 8] = b"QGFREEXT";
const HEADER_LEN: u64 = 512;
const ENTRY_LEN: u64 = 288;
/// The smallest size class: extents of 256 bytes.
const MIN_CLASS: u32 = 8;
/// The largest size class: extents of 4 GiB.
const MAX_CLASS: u32 = 32;
/// The first directory's class: 8 KiB, 28 slots.
const INITIAL_DIR_CLASS: u32 = 13;
const INITIAL_LEN: u64 = 64 * 1024;
/// How long a taken lock is tried for again at once before the tries sleep.
const LOCK_SPIN: Duration = Duration::from_micros(200);
/// The sleep between two tries of a taken lock, after [`LOCK_SPIN`].
const LOCK_PAUSE: Duration = Duration::from_millis(1);
/// A record's head: CRC, data length, longest window, idle instant.
const RECORD_HEAD: u64 = 24;
/// A free extent's head: magic, next, class, CRC.
const FREE_HEAD: usize = 24;

// Header fields.
const H_VERSION: usize = 8;
const H_CRC: usize = 12;
const H_DIR_OFF: usize = 16;
const H_DIR_CAP: usize = 24;
const H_DIR_COUNT: usize = 32;
const H_USED: usize = 40;
const H_GEN: usize = 48;
const H_NONCE: usize = 56;
const H_FREE: usize = 64;
const H_CRC_END: usize = H_FREE + 8 * (MAX_CLASS - MIN_CLASS + 1) as usize;
const H_FLAG: usize = H_CRC_END;
const H_JOURNAL: usize = H_CRC_END + 8;

/// CRC-32 (IEEE) of the concatenation of `parts`. crc32fast uses the CPU's carry-less
/// multiply where there is one: a bucket's record (up to 24 KiB for 1,500 runs) is
/// checked on every call, and a table-driven CRC made that most of the call's cost.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for part in parts {
        h.update(part);
    }
    h.finalize()
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn align8(v: u64) -> u64 {
    v.div_ceil(8) * 8
}

/// The size class of an extent that holds `len` bytes, if there is one.
fn class_for(len: u64) -> Option<u32> {
    let class = len
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_CLASS);
    (class <= MAX_CLASS).then_some(class)
}

/// The class of an extent of exactly `size` bytes, if that is a class's size.
fn class_of(size: u64) -> Option<u32> {
    let class = size.trailing_zeros();
    (size.is_power_of_two() && (MIN_CLASS..=MAX_CLASS).contains(&class)).then_some(class)
}

/// Where the head of class `class`'s free list is in the header.
fn head_at(class: u32) -> usize {
    H_FREE + 8 * (class - MIN_CLASS) as usize
}

/// The extent that a directory of `cap` slots occupies.
fn dir_extent(cap: u64) -> u64 {
    (cap * ENTRY_LEN).next_power_of_two().max(1 << MIN_CLASS)
}

/// The head of a free extent of `class` whose list goes on with `next`.
fn free_head(next: u64, class: u32) -> [u8; FREE_HEAD] {
    let mut h = [0u8; FREE_HEAD];
    h[..8].copy_from_slice(FREE_MAGIC);
    put_u64(&mut h, 8, next);
    put_u32(&mut h, 16, class);
    let crc = crc32(&[&h[8..20]]);
    put_u32(&mut h, 20, crc);
    h
}

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

/// What became of an attempt to give a record a new extent.
enum Placed {
    /// Stored.
    Done,
    /// The data would outgrow the file: sweep first.
    NeedsRoom,
    /// The directory holds `max_buckets` buckets already.
    Full,
}

/// An extent taken for a transaction: from a free list (whose head must then change
/// through the journal), or from beyond `used`.
#[derive(Debug, Clone, Copy)]
struct Taken {
    off: u64,
    from_list: bool,
}

fn open_error(path: &Path, e: &std::io::Error) -> StoreError {
    use std::io::ErrorKind::{IsADirectory, PermissionDenied};
    let kind = if matches!(e.kind(), PermissionDenied | IsADirectory) {
        StoreErrorKind::Invalid
    } else {
        StoreErrorKind::Unavailable
    };
    StoreError::new(
        kind,
        format!("cannot open the state file {}: {e}", path.display()),
    )
}

fn symlink_error(path: &Path) -> StoreError {
    StoreError::new(
        StoreErrorKind::Invalid,
        format!(
            "the state file {} is a symbolic link, which quotagate does not follow (another \
             user could point it anywhere): name the file itself",
            path.display()
        ),
    )
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Opens (creating with `settings.mode` if needed) the state file, never through a
/// symbolic link.
#[cfg(unix)]
fn open_file(settings: &FileSettings) -> Result<File, StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = &settings.path;
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW);
    // Create it if it is missing (O_EXCL: never through a link, never someone else's
    // file), else open what is there; a file removed in between is created again.
    let mut attempts = 0;
    let file = loop {
        attempts += 1;
        match options
            .clone()
            .create_new(true)
            .mode(settings.mode)
            .open(path)
        {
            Ok(file) => {
                // The umask may have taken bits away (or, at 000, none): the mode is the
                // one asked for, exactly.
                file.set_permissions(std::fs::Permissions::from_mode(settings.mode))
                    .map_err(|e| open_error(path, &e))?;
                break file;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(open_error(path, &e)),
        }
        match options.open(path) {
            Ok(file) => break file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {}
            Err(e) if is_symlink(path) => {
                let _ = e;
                return Err(symlink_error(path));
            }
            Err(e) => return Err(open_error(path, &e)),
        }
    };
    let meta = file.metadata().map_err(|e| open_error(path, &e))?;
    if !meta.file_type().is_file() {
        return Err(StoreError::new(
            StoreErrorKind::Invalid,
            format!("the state file {} is not a regular file", path.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        log::warn!(
            "the state file {} has mode {mode:04o}: every user of this host may open it, read \
             its keys and lock it; chmod o-rwx it",
            path.display()
        );
    }
    Ok(file)
}

/// Opens (creating if needed) the state file, never through a symbolic link.
#[cfg(not(unix))]
fn open_file(settings: &FileSettings) -> Result<File, StoreError> {
    let path = &settings.path;
    if is_symlink(path) {
        return Err(symlink_error(path));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| open_error(path, &e))
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

    /// Under the lock at open: initialises an empty file, or checks an existing one.
    fn init_or_check(&mut self) -> Result<(), StoreError> {
        self.remap()?;
        let fresh = self.map().iter().all(|&b| b == 0);
        if fresh {
            self.ensure_len(INITIAL_LEN, false)?;
            let nonce = fastrand::u64(1..);
            let m = self.map_mut();
            m[..HEADER_LEN as usize].fill(0);
            put_u32(m, H_VERSION, FORMAT_VERSION);
            put_u64(m, H_DIR_OFF, HEADER_LEN);
            put_u64(m, H_DIR_CAP, (1 << INITIAL_DIR_CLASS) / ENTRY_LEN);
            put_u64(m, H_DIR_COUNT, 0);
            put_u64(m, H_USED, HEADER_LEN + (1 << INITIAL_DIR_CLASS));
            put_u64(m, H_NONCE, nonce);
            let crc = crc32(&[&m[H_DIR_OFF..H_CRC_END]]);
            put_u32(m, H_CRC, crc);
            compiler_fence(Ordering::SeqCst);
            m[..8].copy_from_slice(MAGIC);
        }
        self.check()
    }

    /// Under the lock: follows the file's length, checks the header, replays a journal and
    /// drops the index of keys if buckets left the directory.
    fn check(&mut self) -> Result<(), StoreError> {
        // Another process may have grown the file, and someone may have cut it short: a
        // page of the mapping past the file's end would kill this process (SIGBUS).
        if self.file_len()? != self.mapped() {
            self.remap()?;
        }
        if self.mapped() < HEADER_LEN {
            return Err(self.corrupt(format!(
                "{} bytes, shorter than its header: it was emptied or cut short",
                self.mapped()
            )));
        }
        let m = self.map();
        if &m[..8] != MAGIC {
            return Err(self.corrupt("not a quotagate state file: bad magic bytes"));
        }
        let version = get_u32(m, H_VERSION);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "the state file {} has format version {version}, but this build of \
                     quotagate supports version {FORMAT_VERSION} (and reads {OLDEST_FORMAT_VERSION}){}",
                    self.path.display(),
                    if version < OLDEST_FORMAT_VERSION {
                        " (it holds only the quota's recent use: delete it to start afresh)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if get_u32(m, H_CRC) != crc32(&[&m[H_DIR_OFF..H_CRC_END]]) {
            return Err(self.corrupt("header checksum mismatch"));
        }
        if m[H_FLAG] != 0 {
            self.replay()?;
        }
        let m = self.map();
        let (dir_off, dir_cap, dir_count, used) = (
            get_u64(m, H_DIR_OFF),
            get_u64(m, H_DIR_CAP),
            get_u64(m, H_DIR_COUNT),
            get_u64(m, H_USED),
        );
        let dir_end = dir_cap
            .checked_mul(ENTRY_LEN)
            .filter(|&len| len <= 1 << MAX_CLASS)
            .and_then(|_| dir_off.checked_add(dir_extent(dir_cap)));
        if dir_off < HEADER_LEN
            || dir_cap == 0
            || dir_count > dir_cap
            || dir_end.is_none_or(|end| end > used)
        {
            return Err(self.corrupt("header sizes do not add up"));
        }
        if used > self.mapped() {
            return Err(self.corrupt(format!(
                "truncated: {} bytes, but its data ends at byte {used}",
                self.mapped()
            )));
        }
        if version < FORMAT_VERSION {
            // Its records read as they are; the header says the file may hold records of
            // the new format from now on, which older builds then refuse by name.
            self.commit(
                &[(H_VERSION as u64, FORMAT_VERSION.to_le_bytes().to_vec())],
                used,
            )?;
        }
        let m = self.map();
        let ident = (get_u64(m, H_NONCE), get_u64(m, H_GEN));
        if ident != self.ident || self.scanned > dir_count {
            self.keys.clear();
            self.scanned = 0;
            self.ident = ident;
        }
        Ok(())
    }

    /// Replays the journal that the header's flag says is valid.
    fn replay(&mut self) -> Result<(), StoreError> {
        let m = self.map();
        let off = get_u64(m, H_JOURNAL);
        let len = m.len() as u64;
        if off.checked_add(24).is_none_or(|end| end > len) {
            return Err(self.corrupt("the journal lies beyond the end of the file"));
        }
        let o = off as usize;
        let total = get_u64(m, o + 8);
        if &m[o..o + 8] != JOURNAL_MAGIC || off.checked_add(total).is_none_or(|end| end > len) {
            return Err(self.corrupt("the journal is damaged"));
        }
        let journal = &m[o..o + total as usize];
        if get_u32(journal, 16) != crc32(&[&journal[20..]]) {
            return Err(self.corrupt("journal checksum mismatch"));
        }
        let count = get_u32(journal, 20);
        let mut at = 24usize;
        let mut writes = Vec::with_capacity(count as usize);
        for _ in 0..count {
            if at + 16 > journal.len() {
                return Err(self.corrupt("the journal's sizes do not add up"));
            }
            let (dst, n) = (get_u64(journal, at), get_u64(journal, at + 8));
            let start = at + 16;
            let end = usize::try_from(n)
                .ok()
                .and_then(|n| start.checked_add(n))
                .filter(|&e| e <= journal.len());
            let Some(end) = end else {
                return Err(self.corrupt("the journal's sizes do not add up"));
            };
            if dst.checked_add(n).is_none_or(|e| e > len) {
                return Err(self.corrupt("the journal writes beyond the end of the file"));
            }
            writes.push((dst as usize, o + start, end - start));
            at = align8((end) as u64) as usize;
        }
        let m = self.map_mut();
        for (dst, src, n) in writes {
            m.copy_within(src..src + n, dst);
        }
        compiler_fence(Ordering::SeqCst);
        m[H_FLAG] = 0;
        Ok(())
    }

    /// Reads and checks directory slot `index` (below the count); returns its key too.
    fn entry(&self, index: u64) -> Result<(Entry, &[u8]), StoreError> {
        let m = self.map();
        let at = (get_u64(m, H_DIR_OFF) + index * ENTRY_LEN) as usize;
        let e = &m[at..at + ENTRY_LEN as usize];
        let key_len = usize::from(u16::from_le_bytes([e[16], e[17]]));
        if key_len > MAX_KEY {
            return Err(self.corrupt(format!("directory entry {index} is damaged")));
        }
        let key = &e[24..24 + key_len];
        if get_u32(e, 20) != crc32(&[&e[..20], key]) {
            return Err(self.corrupt(format!("directory entry {index}: checksum mismatch")));
        }
        let entry = Entry {
            rec_off: get_u64(e, 0),
            rec_cap: get_u64(e, 8),
        };
        let used = get_u64(m, H_USED);
        if class_of(entry.rec_cap).is_none()
            || entry.rec_off < HEADER_LEN
            || entry
                .rec_off
                .checked_add(entry.rec_cap)
                .is_none_or(|end| end > used)
        {
            return Err(self.corrupt(format!("directory entry {index}: sizes do not add up")));
        }
        Ok((entry, key))
    }

    /// The directory index of `key`, if the file has it.
    fn find(&mut self, key: &str) -> Result<Option<u64>, StoreError> {
        if let Some(&i) = self.keys.get(key) {
            // The generation says the index still holds; the key says so too (the caller
            // reads the slot, checksum and all, next).
            let m = self.map();
            let at = (get_u64(m, H_DIR_OFF) + i * ENTRY_LEN) as usize;
            let len = usize::from(u16::from_le_bytes([m[at + 16], m[at + 17]]));
            if m.get(at + 24..at + 24 + len) == Some(key.as_bytes()) {
                return Ok(Some(i));
            }
            self.keys.clear();
            self.scanned = 0;
        }
        let count = get_u64(self.map(), H_DIR_COUNT);
        while self.scanned < count {
            let i = self.scanned;
            let name = {
                let (_, k) = self.entry(i)?;
                String::from_utf8_lossy(k).into_owned()
            };
            self.keys.insert(name, i);
            self.scanned += 1;
        }
        Ok(self.keys.get(key).copied())
    }

    /// Encodes a directory entry.
    fn encode_entry(key: &[u8], rec_off: u64, rec_cap: u64) -> [u8; ENTRY_LEN as usize] {
        let mut e = [0u8; ENTRY_LEN as usize];
        put_u64(&mut e, 0, rec_off);
        put_u64(&mut e, 8, rec_cap);
        e[16..18].copy_from_slice(&(key.len() as u16).to_le_bytes());
        e[24..24 + key.len()].copy_from_slice(key);
        let crc = crc32(&[&e[..20], key]);
        put_u32(&mut e, 20, crc);
        e
    }

    /// Checks the record of `entry` and returns its data's range in the file and its
    /// longest window.
    fn record(&self, key: &str, entry: &Entry) -> Result<(usize, usize, Nanos), StoreError> {
        let m = self.map();
        let at = entry.rec_off as usize;
        let len = u64::from(get_u32(m, at + 4));
        if RECORD_HEAD + len > entry.rec_cap {
            return Err(self.corrupt(format!("the record of {key:?} is damaged")));
        }
        let end = at + (RECORD_HEAD + len) as usize;
        if get_u32(m, at) != crc32(&[&m[at + 4..end]]) {
            return Err(self.corrupt(format!("the record of {key:?}: checksum mismatch")));
        }
        Ok((at + RECORD_HEAD as usize, end, get_u64(m, at + 8)))
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

    /// Stores `bucket` (found at `entry`, or new) through the journal.
    fn store(
        &mut self,
        key: &str,
        bucket: &Bucket,
        window: Nanos,
        idle_at: Nanos,
        entry: Option<(u64, Entry)>,
    ) -> Result<(), StoreError> {
        let data_len = bucket.encoded_len() as u64;
        let rec_len = RECORD_HEAD + data_len;
        let Ok(data_len32) = u32::try_from(data_len) else {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "the bucket {key:?} of the state file {} outgrew what a record holds",
                    self.path.display()
                ),
            ));
        };
        let mut record = std::mem::take(&mut self.buf);
        record.clear();
        record.resize(rec_len as usize, 0);
        put_u32(&mut record, 4, data_len32);
        put_u64(&mut record, 8, window);
        put_u64(&mut record, 16, idle_at);
        bucket.encode(&mut record[RECORD_HEAD as usize..]);
        let crc = crc32(&[&record[4..]]);
        put_u32(&mut record, 0, crc);
        let result = (|| {
            if let Some((_, e)) = &entry
                && rec_len <= e.rec_cap
            {
                return self.store_in_place(e, &record);
            }
            let mut entry = entry;
            let mut swept = false;
            loop {
                match self.place(key, &record, entry, swept)? {
                    Placed::Done => return Ok(()),
                    Placed::Full if swept => {
                        return Err(StoreError::new(
                            StoreErrorKind::Invalid,
                            format!(
                                "the state file {} is full: its {} buckets are all in use \
                                 (max_buckets={}; a bucket leaves once it is idle for its \
                                 longest window): use fewer keys, or raise max_buckets= in \
                                 the store URL",
                                self.path.display(),
                                get_u64(self.map(), H_DIR_COUNT),
                                self.max_buckets
                            ),
                        ));
                    }
                    Placed::Full => {
                        self.sweep(None)?;
                    }
                    Placed::NeedsRoom => {
                        let live = get_u64(self.map(), H_DIR_COUNT);
                        let freed = self.sweep(entry.map(|(i, _)| i))?;
                        // Little to reuse: grow the file now (it doubles), so that the
                        // sweeps stay rare while the buckets are mostly live.
                        if freed * 8 < live {
                            let len = self.mapped() + 1;
                            self.ensure_len(len, true)?;
                        }
                    }
                }
                swept = true;
                // The sweep moved directory slots up.
                entry = match self.find(key)? {
                    Some(i) => Some((i, self.entry(i)?.0)),
                    None => None,
                };
            }
        })();
        self.buf = record;
        result
    }

    /// Rewrites the record at `e`, which has room, through the journal: only the 64-byte
    /// blocks that change, so that a call costs the units it logs rather than the whole log.
    fn store_in_place(&mut self, e: &Entry, record: &[u8]) -> Result<(), StoreError> {
        let old = &self.map()[e.rec_off as usize..e.rec_off as usize + record.len()];
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut span: Option<(usize, usize)> = None;
        for (i, (new, old)) in record.chunks(64).zip(old.chunks(64)).enumerate() {
            let (from, to) = (i * 64, i * 64 + new.len());
            if new == old {
                continue;
            }
            span = match span {
                Some((start, end)) if end == from => Some((start, to)),
                Some((start, end)) => {
                    writes.push((e.rec_off + start as u64, record[start..end].to_vec()));
                    Some((from, to))
                }
                None => Some((from, to)),
            };
        }
        if let Some((start, end)) = span {
            writes.push((e.rec_off + start as u64, record[start..end].to_vec()));
        }
        if writes.is_empty() {
            return Ok(());
        }
        let used = get_u64(self.map(), H_USED);
        self.commit(&writes, used)
    }

    /// Takes an extent of `class` for a transaction whose header is `hdr`: the head of
    /// the class's free list, or the space at `used` (which grows).
    fn take(&self, hdr: &mut [u8], class: u32) -> Result<Taken, StoreError> {
        let head = get_u64(hdr, head_at(class));
        let size = 1u64 << class;
        if head == 0 {
            let used = get_u64(hdr, H_USED);
            let off = align8(used);
            put_u64(hdr, H_USED, off + size);
            return Ok(Taken {
                off,
                from_list: false,
            });
        }
        let m = self.map();
        let ok = head >= HEADER_LEN
            && head % 8 == 0
            && head
                .checked_add(size)
                .is_some_and(|end| end <= get_u64(m, H_USED));
        if !ok {
            return Err(self.corrupt(format!("the free list of {size}-byte extents is damaged")));
        }
        let h = &m[head as usize..head as usize + FREE_HEAD];
        if &h[..8] != FREE_MAGIC || get_u32(h, 16) != class || get_u32(h, 20) != crc32(&[&h[8..20]])
        {
            return Err(self.corrupt(format!("a free {size}-byte extent is damaged")));
        }
        put_u64(hdr, head_at(class), get_u64(h, 8));
        Ok(Taken {
            off: head,
            from_list: true,
        })
    }

    /// Writes `bytes` to a fresh extent at `at`: directly, but for the head of an extent
    /// taken from a free list, which its list reads until the commit (journaled instead).
    fn write_fresh(&mut self, at: Taken, bytes: &[u8], writes: &mut Vec<(u64, Vec<u8>)>) {
        let direct = if at.from_list {
            let n = bytes.len().min(FREE_HEAD);
            writes.push((at.off, bytes[..n].to_vec()));
            n
        } else {
            0
        };
        let m = self.map_mut();
        let off = at.off as usize;
        m[off + direct..off + bytes.len()].copy_from_slice(&bytes[direct..]);
    }

    /// Gives `record` a new extent: a new bucket `key`, or the bucket at `entry` that
    /// outgrew its own. Only grows the file when `may_grow`; nothing is written unless it
    /// returns [`Placed::Done`].
    fn place(
        &mut self,
        key: &str,
        record: &[u8],
        entry: Option<(u64, Entry)>,
        may_grow: bool,
    ) -> Result<Placed, StoreError> {
        let mut hdr = [0u8; H_CRC_END];
        hdr.copy_from_slice(&self.map()[..H_CRC_END]);
        let (dir_off, dir_cap, count, used) = (
            get_u64(&hdr, H_DIR_OFF),
            get_u64(&hdr, H_DIR_CAP),
            get_u64(&hdr, H_DIR_COUNT),
            get_u64(&hdr, H_USED),
        );
        if entry.is_none() && count >= self.max_buckets {
            return Ok(Placed::Full);
        }
        let Some(class) = class_for(record.len() as u64) else {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "the bucket {key:?} of the state file {} outgrew what a record holds",
                    self.path.display()
                ),
            ));
        };
        // Plan every extent first: nothing is written unless all of them fit.
        let rec = self.take(&mut hdr, class)?;
        let grow_dir = entry.is_none() && count == dir_cap;
        let new_dir = if grow_dir {
            let class = dir_extent(dir_cap).trailing_zeros() + 1;
            if class > MAX_CLASS {
                return Ok(Placed::Full);
            }
            Some((self.take(&mut hdr, class)?, (1u64 << class) / ENTRY_LEN))
        } else {
            None
        };
        let new_used = get_u64(&hdr, H_USED);
        if new_used > self.mapped() {
            if !may_grow {
                return Ok(Placed::NeedsRoom);
            }
            self.ensure_len(new_used, true)?;
        }

        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut freed: Vec<u64> = Vec::new();
        self.write_fresh(rec, record, &mut writes);
        let rec_cap = 1u64 << class;
        let slot = Self::encode_entry(key.as_bytes(), rec.off, rec_cap);
        match entry {
            Some((index, old)) => {
                writes.push((dir_off + index * ENTRY_LEN, slot.to_vec()));
                freed.push(old.rec_off);
                freed.push(old.rec_cap);
            }
            None => {
                let mut at_dir = dir_off;
                if let Some((taken, new_cap)) = new_dir {
                    let n = (count * ENTRY_LEN) as usize;
                    let slots = self.map()[dir_off as usize..dir_off as usize + n].to_vec();
                    self.write_fresh(taken, &slots, &mut writes);
                    freed.push(dir_off);
                    freed.push(dir_extent(dir_cap));
                    put_u64(&mut hdr, H_DIR_OFF, taken.off);
                    put_u64(&mut hdr, H_DIR_CAP, new_cap);
                    at_dir = taken.off;
                }
                // A slot past the count is not live yet.
                let at = at_dir + count * ENTRY_LEN;
                let fresh = Taken {
                    off: at,
                    from_list: new_dir.is_some_and(|(t, _)| t.from_list) && count == 0,
                };
                self.write_fresh(fresh, &slot, &mut writes);
                put_u64(&mut hdr, H_DIR_COUNT, count + 1);
            }
        }
        // The extents left behind go on their free lists (reused by later commits).
        for pair in freed.chunks(2) {
            let (off, size) = (pair[0], pair[1]);
            let class = class_of(size).unwrap_or(MIN_CLASS);
            let next = get_u64(&hdr, head_at(class));
            writes.push((off, free_head(next, class).to_vec()));
            put_u64(&mut hdr, head_at(class), off);
        }
        let crc = crc32(&[&hdr[H_DIR_OFF..H_CRC_END]]);
        put_u32(&mut hdr, H_CRC, crc);
        writes.push((0, hdr.to_vec()));
        self.commit(&writes, new_used.max(used))?;
        if entry.is_none() {
            self.keys.insert(key.to_owned(), count);
            if self.scanned == count {
                self.scanned += 1;
            }
        }
        Ok(Placed::Done)
    }

    /// Reclaims every idle bucket but the one at `keep`: its record goes on a free list
    /// and its slot leaves the directory. Returns how many went.
    fn sweep(&mut self, keep: Option<u64>) -> Result<u64, StoreError> {
        let now = wall_now();
        let m = self.map();
        let (dir_off, count) = (get_u64(m, H_DIR_OFF), get_u64(m, H_DIR_COUNT));
        let mut idle = Vec::new();
        for i in 0..count {
            if Some(i) == keep {
                continue;
            }
            let (entry, key) = self.entry(i)?;
            let idle_at = get_u64(self.map(), entry.rec_off as usize + 16);
            if now < idle_at {
                continue;
            }
            // Never reclaim on the word of a damaged record.
            let key = String::from_utf8_lossy(key).into_owned();
            self.record(&key, &entry)?;
            idle.push((i, entry));
        }
        let Some(&(first, _)) = idle.first() else {
            return Ok(0);
        };
        let mut hdr = [0u8; H_CRC_END];
        hdr.copy_from_slice(&self.map()[..H_CRC_END]);
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        // The slots behind the first idle one move up, in order.
        let mut slots = Vec::new();
        let mut gone = idle.iter().map(|(i, _)| *i).peekable();
        for i in first..count {
            if gone.peek() == Some(&i) {
                gone.next();
                continue;
            }
            let at = (dir_off + i * ENTRY_LEN) as usize;
            slots.extend_from_slice(&self.map()[at..at + ENTRY_LEN as usize]);
        }
        if !slots.is_empty() {
            writes.push((dir_off + first * ENTRY_LEN, slots));
        }
        for (_, e) in &idle {
            let class = class_of(e.rec_cap).unwrap_or(MIN_CLASS);
            let next = get_u64(&hdr, head_at(class));
            writes.push((e.rec_off, free_head(next, class).to_vec()));
            put_u64(&mut hdr, head_at(class), e.rec_off);
        }
        let freed = idle.len() as u64;
        put_u64(&mut hdr, H_DIR_COUNT, count - freed);
        let generation = get_u64(&hdr, H_GEN).wrapping_add(1);
        put_u64(&mut hdr, H_GEN, generation);
        let crc = crc32(&[&hdr[H_DIR_OFF..H_CRC_END]]);
        put_u32(&mut hdr, H_CRC, crc);
        writes.push((0, hdr.to_vec()));
        let used = get_u64(&hdr, H_USED);
        self.commit(&writes, used)?;
        // Indices moved: this process's index of keys starts again too.
        self.keys.clear();
        self.scanned = 0;
        self.ident = (get_u64(&hdr, H_NONCE), get_u64(&hdr, H_GEN));
        log::debug!(
            "state file {}: reclaimed {freed} idle buckets",
            self.path.display()
        );
        Ok(freed)
    }

    /// Makes `writes` happen all or not at all: journal, flag, apply, clear.
    fn commit(&mut self, writes: &[(u64, Vec<u8>)], used: u64) -> Result<(), StoreError> {
        let body: u64 = writes
            .iter()
            .map(|(_, b)| 16 + align8(b.len() as u64))
            .sum();
        let total = 24 + body;
        let at = align8(used);
        self.ensure_len(at + total, false)?;
        #[cfg(test)]
        let crash = self.crash_after_journal;
        #[cfg(not(test))]
        let crash = false;
        let m = self.map_mut();
        let j = &mut m[at as usize..(at + total) as usize];
        j[..8].copy_from_slice(JOURNAL_MAGIC);
        put_u64(j, 8, total);
        put_u32(j, 20, writes.len() as u32);
        let mut o = 24;
        for (dst, bytes) in writes {
            put_u64(j, o, *dst);
            put_u64(j, o + 8, bytes.len() as u64);
            j[o + 16..o + 16 + bytes.len()].copy_from_slice(bytes);
            o += 16 + align8(bytes.len() as u64) as usize;
        }
        let crc = crc32(&[&j[20..]]);
        put_u32(j, 16, crc);
        put_u64(m, H_JOURNAL, at);
        compiler_fence(Ordering::SeqCst);
        m[H_FLAG] = 1;
        compiler_fence(Ordering::SeqCst);
        if crash {
            return Ok(());
        }
        for (dst, bytes) in writes {
            m[*dst as usize..*dst as usize + bytes.len()].copy_from_slice(bytes);
        }
        compiler_fence(Ordering::SeqCst);
        m[H_FLAG] = 0;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    const MS: u64 = 1_000_000;

    /// A fresh directory under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "quotagate-file-{name}-{}-{}-{}",
                std::process::id(),
                wall_now(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join("state.q")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn win(calls: u64, ms: u64) -> Window {
        Window {
            calls,
            window_ns: ms * MS,
        }
    }

    fn corrupt_message(path: &Path) -> String {
        let e = FileStore::open(path).and_then(|s| {
            s.poll("k", &[win(1, 1000)], 1, Place::Try, None)?;
            Ok(())
        });
        let e = e.expect_err("a damaged file must be refused");
        assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
        e.message
    }

    fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).unwrap();
        f(&mut bytes);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn two_instances_share_a_bucket() {
        let dir = TempDir::new("share");
        let a = FileStore::open(&dir.file()).unwrap();
        let b = FileStore::open(&dir.file()).unwrap();
        let w = [win(2, 60_000)];
        assert_eq!(
            a.poll("t", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        assert_eq!(
            b.poll("t", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        assert!(matches!(
            a.poll("t", &w, 1, Place::Try, None).unwrap(),
            Verdict::Wait(_)
        ));
        assert!(
            matches!(b.poll("t", &w, 1, Place::Peek, None).unwrap(), Verdict::Wait(d) if d > Duration::ZERO)
        );
        assert_eq!(b.usage("t", &w).unwrap().used, vec![2]);
        // Other keys are other buckets; a waiter of one instance is seen by the other.
        assert_eq!(
            b.poll("u", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        assert!(matches!(
            a.poll("t", &w, 1, Place::Queue { id: 5 }, None).unwrap(),
            Verdict::Wait(_)
        ));
        assert_eq!(b.usage("t", &w).unwrap().queued, 1);
        a.leave("t", 5).unwrap();
        assert_eq!(b.usage("t", &w).unwrap().queued, 0);
        b.pause("u", Duration::from_secs(30)).unwrap();
        assert!(a.usage("u", &w).unwrap().paused_for > Duration::from_secs(29));
        assert_eq!(a.location(), dir.file().display().to_string());
    }

    #[test]
    fn many_buckets_and_large_rings_grow_the_file() {
        let dir = TempDir::new("grow");
        let a = FileStore::open(&dir.file()).unwrap();
        let b = FileStore::open(&dir.file()).unwrap();
        for i in 0..100 {
            let key = format!("bucket-{i}");
            assert_eq!(
                a.poll(&key, &[win(1 + i, 60_000)], 1, Place::Try, None)
                    .unwrap(),
                Verdict::Admitted
            );
        }
        let big = [win(2000, 60_000)];
        for _ in 0..300 {
            assert_eq!(
                b.poll("big", &big, 1, Place::Try, None).unwrap(),
                Verdict::Admitted
            );
        }
        for i in 0..100 {
            let key = format!("bucket-{i}");
            assert_eq!(b.usage(&key, &[win(1 + i, 60_000)]).unwrap().used, vec![1]);
        }
        assert_eq!(a.usage("big", &big).unwrap().used, vec![300]);
        let long = "k".repeat(MAX_KEY + 1);
        assert_eq!(
            a.poll(&long, &big, 1, Place::Try, None).unwrap_err().kind,
            StoreErrorKind::Invalid
        );
        assert_eq!(
            a.poll("x", &[win(1, 10)], 2, Place::Try, None)
                .unwrap_err()
                .kind,
            StoreErrorKind::Invalid
        );
    }

    #[test]
    fn reopening_keeps_the_log() {
        let dir = TempDir::new("reopen");
        let w = [win(3, 60_000)];
        {
            let s = FileStore::open(&dir.file()).unwrap();
            for _ in 0..3 {
                assert_eq!(
                    s.poll("k", &w, 1, Place::Try, None).unwrap(),
                    Verdict::Admitted
                );
            }
        }
        let s = FileStore::open(&dir.file()).unwrap();
        assert_eq!(s.usage("k", &w).unwrap().used, vec![3]);
        assert!(matches!(
            s.poll("k", &w, 1, Place::Try, None).unwrap(),
            Verdict::Wait(_)
        ));
    }

    #[test]
    fn an_empty_file_is_initialised() {
        let dir = TempDir::new("empty");
        File::create(dir.file()).unwrap();
        let s = FileStore::open(&dir.file()).unwrap();
        assert_eq!(
            s.poll("k", &[win(1, 10)], 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
    }

    /// The file's bytes as the store sees them (on Windows the store maps the file only
    /// while it holds the lock, so this maps it again).
    fn snapshot(s: &FileStore) -> Vec<u8> {
        let mut inner = s.inner.lock();
        inner.remap().unwrap();
        inner.map().to_vec()
    }

    fn file_with_a_bucket(dir: &TempDir) -> u64 {
        let s = FileStore::open(&dir.file()).unwrap();
        s.poll("k", &[win(5, 60_000)], 1, Place::Try, None).unwrap();
        get_u64(&snapshot(&s), H_USED)
    }

    #[test]
    fn a_truncated_file_is_corrupt() {
        let dir = TempDir::new("trunc");
        let used = file_with_a_bucket(&dir);
        let f = OpenOptions::new().write(true).open(dir.file()).unwrap();
        f.set_len(used - 8).unwrap();
        drop(f);
        assert!(corrupt_message(&dir.file()).contains("truncated"));
        let f = OpenOptions::new().write(true).open(dir.file()).unwrap();
        f.set_len(20).unwrap();
        drop(f);
        assert!(corrupt_message(&dir.file()).contains("header"));
    }

    #[test]
    fn flipped_bytes_are_corrupt() {
        let dir = TempDir::new("flip");
        file_with_a_bucket(&dir);
        let clean = std::fs::read(dir.file()).unwrap();
        // The header.
        edit(&dir.file(), |b| b[H_DIR_CAP] ^= 0x40);
        assert!(corrupt_message(&dir.file()).contains("checksum"));
        // The magic bytes.
        std::fs::write(dir.file(), &clean).unwrap();
        edit(&dir.file(), |b| b[1] ^= 1);
        assert!(corrupt_message(&dir.file()).contains("magic"));
        // The bucket's record (its first unit's instant).
        std::fs::write(dir.file(), &clean).unwrap();
        let rec = get_u64(&clean, HEADER_LEN as usize) as usize;
        edit(&dir.file(), |b| b[rec + RECORD_HEAD as usize + 40] ^= 0x01);
        assert!(corrupt_message(&dir.file()).contains("checksum"));
        // The directory entry.
        std::fs::write(dir.file(), &clean).unwrap();
        edit(&dir.file(), |b| b[HEADER_LEN as usize + 24] ^= 0x20);
        assert!(corrupt_message(&dir.file()).contains("checksum"));
        // The clean file still works.
        std::fs::write(dir.file(), &clean).unwrap();
        let s = FileStore::open(&dir.file()).unwrap();
        assert_eq!(s.usage("k", &[win(5, 60_000)]).unwrap().used, vec![1]);
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let dir = TempDir::new("version");
        file_with_a_bucket(&dir);
        edit(&dir.file(), |b| put_u32(b, H_VERSION, 7));
        let m = corrupt_message(&dir.file());
        assert!(m.contains("version 7"), "{m}");
        assert!(m.contains(&format!("version {FORMAT_VERSION}")), "{m}");
        assert!(m.contains(&dir.file().display().to_string()), "{m}");
    }

    #[test]
    fn a_format_3_file_keeps_working_and_its_records_become_runs() {
        let dir = TempDir::new("format3");
        file_with_a_bucket(&dir);
        // The same bucket as format 3 wrote it: its unit in a ring of 5 instants.
        edit(&dir.file(), |b| {
            put_u32(b, H_VERSION, 3);
            let rec = get_u64(b, HEADER_LEN as usize) as usize;
            let data = rec + RECORD_HEAD as usize;
            let (now, unit) = (get_u64(b, data + 8), get_u64(b, data + 72));
            let ring = [now, 0, 1, 5, 0, 0, unit, 0, 0, 0, 0];
            for (i, v) in ring.iter().enumerate() {
                put_u64(b, data + 8 * i, *v);
            }
            put_u32(b, rec + 4, 8 * ring.len() as u32);
            let crc = crc32(&[&b[rec + 4..data + 8 * ring.len()]]);
            put_u32(b, rec, crc);
        });
        let s = FileStore::open(&dir.file()).unwrap();
        assert_eq!(get_u32(&snapshot(&s), H_VERSION), FORMAT_VERSION);
        let w = [win(5, 60_000)];
        assert_eq!(s.usage("k", &w).unwrap().used, vec![1]);
        for _ in 0..4 {
            assert_eq!(
                s.poll("k", &w, 1, Place::Try, None).unwrap(),
                Verdict::Admitted
            );
        }
        assert!(matches!(
            s.poll("k", &w, 1, Place::Try, None).unwrap(),
            Verdict::Wait(_)
        ));
        let m = snapshot(&s);
        let rec = get_u64(&m, HEADER_LEN as usize) as usize;
        assert_eq!(
            get_u64(&m, rec + RECORD_HEAD as usize),
            super::super::model::RUNS_TAG
        );
        drop(s);
        // A version older than that is refused by name.
        edit(&dir.file(), |b| put_u32(b, H_VERSION, 2));
        let m = corrupt_message(&dir.file());
        assert!(m.contains("version 2") && m.contains("delete it"), "{m}");
    }

    #[test]
    fn a_valid_journal_left_by_a_crash_is_replayed() {
        let dir = TempDir::new("journal");
        let w = [win(5, 60_000)];
        let s = FileStore::open(&dir.file()).unwrap();
        assert_eq!(
            s.poll("k", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        s.inner.lock().crash_after_journal = true;
        assert_eq!(
            s.poll("k", &w, 2, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        let copy = dir.0.join("copy.q");
        {
            let bytes = snapshot(&s);
            assert_eq!(bytes[H_FLAG], 1, "the journal is valid, not applied");
            std::fs::write(&copy, bytes).unwrap();
        }
        drop(s);
        // The record itself still holds the old state; the journal the new one.
        let other = FileStore::open(&copy).unwrap();
        assert_eq!(other.usage("k", &w).unwrap().used, vec![3]);
        assert_eq!(snapshot(&other)[H_FLAG], 0);
        let again = FileStore::open(&copy).unwrap();
        assert_eq!(again.usage("k", &w).unwrap().used, vec![3]);
        // A damaged journal is refused, never skipped.
        let dir2 = TempDir::new("journal-bad");
        let s = FileStore::open(&dir2.file()).unwrap();
        s.poll("k", &w, 1, Place::Try, None).unwrap();
        s.inner.lock().crash_after_journal = true;
        s.poll("k", &w, 1, Place::Try, None).unwrap();
        let bytes = snapshot(&s);
        drop(s);
        let j = get_u64(&bytes, H_JOURNAL) as usize;
        let mut bytes = bytes;
        bytes[j + 30] ^= 0xFF;
        std::fs::write(dir2.file(), bytes).unwrap();
        assert!(corrupt_message(&dir2.file()).contains("journal"));
    }

    #[test]
    fn threads_of_two_instances_never_exceed_a_window() {
        let dir = TempDir::new("threads");
        let stores = [
            Arc::new(FileStore::open(&dir.file()).unwrap()),
            Arc::new(FileStore::open(&dir.file()).unwrap()),
        ];
        let w = [win(5, 100)];
        let run = Duration::from_millis(600);
        let start = std::time::Instant::now();
        let admitted = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for i in 0..6 {
            let s = Arc::clone(&stores[i % 2]);
            let admitted = Arc::clone(&admitted);
            threads.push(std::thread::spawn(move || {
                while start.elapsed() < run {
                    let place = if i % 3 == 0 {
                        Place::Queue { id: i as u64 + 1 }
                    } else {
                        Place::Try
                    };
                    match s.poll("shared", &w, 1, place, None).unwrap() {
                        Verdict::Admitted => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            let used = s.usage("shared", &w).unwrap().used[0];
                            assert!(used <= 5, "{used} units in one window");
                        }
                        Verdict::Wait(d) => std::thread::sleep(d.min(Duration::from_millis(2))),
                    }
                }
                s.leave("shared", i as u64 + 1).unwrap();
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        let elapsed = start.elapsed().as_millis() as u64;
        let n = admitted.load(Ordering::Relaxed);
        // At most `calls` per window started, plus the window open at the start.
        let bound = 5 * (elapsed / 100 + 1);
        assert!(n <= bound, "{n} admitted in {elapsed} ms, bound {bound}");
        assert!(n >= 5 * (600 / 100) / 2, "only {n} admitted");
    }

    fn open_with(dir: &TempDir, f: impl FnOnce(&mut FileSettings)) -> FileStore {
        let mut settings = FileSettings::new(dir.file());
        f(&mut settings);
        FileStore::open_with(&settings).unwrap()
    }

    fn file_len(dir: &TempDir) -> u64 {
        std::fs::metadata(dir.file()).unwrap().len()
    }

    /// Runs `f` on the store's state under its lock, as an operation does.
    fn under_lock<R>(
        s: &FileStore,
        f: impl FnOnce(&mut Inner) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut inner = s.inner.lock();
        let deadline = Instant::now() + s.lock_timeout;
        inner.locked(deadline, s.lock_timeout, |i| {
            i.check()?;
            f(i)
        })
    }

    fn sweep_now(s: &FileStore) -> u64 {
        under_lock(s, |i| i.sweep(None)).unwrap()
    }

    /// The keys of the directory, in order.
    fn keys_of(s: &FileStore) -> Vec<String> {
        under_lock(s, |i| {
            let count = get_u64(i.map(), H_DIR_COUNT);
            (0..count)
                .map(|n| Ok(String::from_utf8_lossy(i.entry(n)?.1).into_owned()))
                .collect()
        })
        .unwrap()
    }

    /// Checks the whole layout: every record (with its checksum), the directory and every
    /// free extent lie within `used`, and no two overlap. Returns the free extents.
    fn check_layout(s: &FileStore) -> Vec<(u64, u64)> {
        under_lock(s, |i| {
            let m = i.map();
            let used = get_u64(m, H_USED);
            let (dir_off, dir_cap) = (get_u64(m, H_DIR_OFF), get_u64(m, H_DIR_CAP));
            let mut extents = vec![(dir_off, dir_extent(dir_cap))];
            for n in 0..get_u64(m, H_DIR_COUNT) {
                let (e, key) = i.entry(n)?;
                let key = String::from_utf8_lossy(key).into_owned();
                i.record(&key, &e)?;
                extents.push((e.rec_off, e.rec_cap));
            }
            let mut free = Vec::new();
            for class in MIN_CLASS..=MAX_CLASS {
                let mut hdr = [0u8; H_CRC_END];
                hdr.copy_from_slice(&m[..H_CRC_END]);
                while get_u64(&hdr, head_at(class)) != 0 {
                    let t = i.take(&mut hdr, class)?;
                    assert!(t.from_list);
                    free.push((t.off, 1u64 << class));
                }
            }
            extents.extend(&free);
            extents.sort_unstable();
            for pair in extents.windows(2) {
                assert!(pair[0].0 + pair[0].1 <= pair[1].0, "overlap: {pair:?}");
            }
            for (off, size) in &extents {
                assert!(
                    *off >= HEADER_LEN && off + size <= used,
                    "{off}+{size} > {used}"
                );
            }
            Ok(free)
        })
        .unwrap()
    }

    #[test]
    fn idle_is_when_nothing_counts_any_more() {
        let w = [win(2, 100)];
        let mut b = Bucket::new();
        assert_eq!(b.idle_at(100 * MS), 0, "a new bucket is idle");
        b.poll(10 * MS, &w, 1, Place::Try, None);
        assert_eq!(b.idle_at(100 * MS), 110 * MS);
        // A longer window keeps it longer.
        assert_eq!(b.idle_at(500 * MS), 510 * MS);
        b.pause(20 * MS, Duration::from_millis(300));
        assert_eq!(b.idle_at(100 * MS), 320 * MS);
        // A hold counts until its lease's end and a window after.
        b.poll(
            330 * MS,
            &w,
            1,
            Place::Try,
            Some(HoldLease {
                id: 1,
                duration: Duration::from_millis(50),
            }),
        );
        assert_eq!(b.idle_at(100 * MS), 480 * MS);
        b.release(340 * MS, 1, Duration::ZERO);
        assert_eq!(b.idle_at(100 * MS), 440 * MS);
        // A waiter keeps its place until its lease's end.
        b.poll(340 * MS, &w, 2, Place::Queue { id: 9 }, None);
        let lease_end = b.queue[0].expiry;
        assert_eq!(b.idle_at(100 * MS), lease_end + 1);
        b.leave(340 * MS, 9);
        assert_eq!(b.idle_at(100 * MS), 440 * MS);
    }

    #[test]
    fn a_new_bucket_left_idle_is_never_written() {
        let dir = TempDir::new("unwritten");
        let s = FileStore::open(&dir.file()).unwrap();
        let before = snapshot(&s);
        let w = [win(5, 60_000)];
        for i in 0..50 {
            let key = format!("look-{i}");
            assert_eq!(s.usage(&key, &w).unwrap().used, vec![0]);
            assert_eq!(
                s.poll(&key, &w, 1, Place::Peek, None).unwrap(),
                Verdict::Wait(Duration::ZERO)
            );
            s.leave(&key, 7).unwrap();
            s.release(&key, &w, 7, Duration::ZERO).unwrap();
            s.pause(&key, Duration::ZERO).unwrap();
        }
        assert_eq!(
            snapshot(&s)[..HEADER_LEN as usize],
            before[..HEADER_LEN as usize]
        );
        assert!(keys_of(&s).is_empty());
    }

    #[test]
    fn idle_buckets_are_reclaimed_and_their_space_reused() {
        let dir = TempDir::new("reclaim");
        let s = FileStore::open(&dir.file()).unwrap();
        let short = [win(5, 30)];
        let long = [win(5, 60_000)];
        let round = |r: usize, w: &[Window]| {
            for i in 0..200 {
                assert_eq!(
                    s.poll(&format!("r{r}-k{i}"), w, 1, Place::Try, None)
                        .unwrap(),
                    Verdict::Admitted
                );
            }
        };
        round(0, &short);
        let first = file_len(&dir);
        for r in 1..10 {
            std::thread::sleep(Duration::from_millis(40));
            round(r, if r == 9 { &long } else { &short });
            check_layout(&s);
        }
        // Ten rounds of keys that each went idle: the file did not grow past the first
        // round's, and the directory holds the live keys and at most two rounds more.
        assert!(file_len(&dir) <= first, "{} > {first}", file_len(&dir));
        let keys = keys_of(&s);
        assert!(keys.len() <= 600, "{} buckets", keys.len());
        assert!(keys.iter().filter(|k| k.starts_with("r9-")).count() == 200);
        assert!(!keys.iter().any(|k| k.starts_with("r0-")));
        // The reused extents hold the live buckets, as another process sees them.
        drop(s);
        let again = FileStore::open(&dir.file()).unwrap();
        check_layout(&again);
        for i in 0..200 {
            let key = format!("r9-k{i}");
            assert_eq!(again.usage(&key, &long).unwrap().used, vec![1], "{key}");
        }
        // A reclaimed bucket reads like a new one.
        assert_eq!(again.usage("r0-k0", &short).unwrap().used, vec![0]);
    }

    #[test]
    fn churn_in_two_instances_never_reclaims_a_live_bucket() {
        let dir = TempDir::new("churn");
        // The threads keep the lock busy all the time: a generous bound for its wait.
        let open = || {
            Arc::new(open_with(&dir, |o| {
                o.lock_timeout = Duration::from_secs(10);
            }))
        };
        let stores = [open(), open()];
        let shared = [win(3, 200)];
        let run = Duration::from_millis(600);
        let start = Instant::now();
        let mut threads = Vec::new();
        for t in 0..4u64 {
            let s = Arc::clone(&stores[t as usize % 2]);
            threads.push(std::thread::spawn(move || {
                let mut admitted = Vec::new();
                let mut kept = Vec::new();
                let mut n = 0u64;
                while start.elapsed() < run {
                    // Keys that go idle after 5 ms, in a stream (sweeps, reuse, records of
                    // several classes), and now and then one that stays.
                    n += 1;
                    let key = format!("t{t}-{n}");
                    let ms = if n % 50 == 0 { 60_000 } else { 5 };
                    let w = [win(1 + n % 40, ms)];
                    assert_eq!(
                        s.poll(&key, &w, 1, Place::Try, None).unwrap(),
                        Verdict::Admitted
                    );
                    if ms > 5 {
                        kept.push((key, w));
                    }
                    if n % 10 == 0
                        && s.poll("shared", &shared, 1, Place::Try, None).unwrap()
                            == Verdict::Admitted
                    {
                        admitted.push(start.elapsed());
                    }
                }
                // The buckets that stay are all there, whole.
                for (key, w) in &kept {
                    assert_eq!(s.usage(key, w).unwrap().used, vec![1], "{key}");
                }
                (admitted, kept)
            }));
        }
        let mut all: Vec<Duration> = Vec::new();
        let mut kept: Vec<String> = Vec::new();
        for t in threads {
            let (admitted, keys) = t.join().unwrap();
            all.extend(admitted);
            kept.extend(keys.into_iter().map(|(k, _)| k));
        }
        all.sort_unstable();
        // The shared bucket was never forgotten: at most 3 admissions in any 200 ms (less
        // a little for the time between admission and reading the clock).
        for (i, t) in all.iter().enumerate() {
            let inside = all[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_millis(190))
                .count();
            assert!(inside <= 3, "{inside} admissions within 200 ms");
        }
        assert!(all.len() >= 6, "only {} admitted", all.len());
        check_layout(&stores[0]);
        // Once the short keys are idle, a sweep leaves exactly the keys that stay.
        std::thread::sleep(Duration::from_millis(10));
        sweep_now(&stores[1]);
        let mut left = keys_of(&stores[0]);
        left.retain(|k| k != "shared");
        left.sort_unstable();
        kept.sort_unstable();
        assert_eq!(left, kept);
    }

    #[test]
    fn a_bucket_stays_while_anything_in_it_counts() {
        let dir = TempDir::new("live");
        let s = FileStore::open(&dir.file()).unwrap();
        let w = [win(1, 20)];
        s.poll("idle", &w, 1, Place::Try, None).unwrap();
        s.pause("paused", Duration::from_millis(200)).unwrap();
        let lease = HoldLease {
            id: 3,
            duration: Duration::from_millis(200),
        };
        assert_eq!(
            s.poll("held", &w, 1, Place::Try, Some(lease)).unwrap(),
            Verdict::Admitted
        );
        s.poll("queued", &w, 1, Place::Try, None).unwrap();
        assert!(matches!(
            s.poll("queued", &w, 1, Place::Queue { id: 4 }, None)
                .unwrap(),
            Verdict::Wait(_)
        ));
        // Another caller's longer window keeps the units it sees.
        s.poll("long", &w, 1, Place::Try, None).unwrap();
        s.usage("long", &[win(1, 10_000)]).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(sweep_now(&s), 1);
        assert_eq!(keys_of(&s), ["paused", "held", "queued", "long"]);
        std::thread::sleep(Duration::from_millis(200));
        // The pause is over, and the hold's lease ran out at 200 ms; it counts until 220.
        s.leave("queued", 4).unwrap();
        assert_eq!(sweep_now(&s), 3);
        assert_eq!(keys_of(&s), ["long"]);
        assert_eq!(s.usage("long", &[win(1, 10_000)]).unwrap().used, vec![1]);
        check_layout(&s);
    }

    #[test]
    fn a_full_file_of_live_buckets_is_a_clear_error() {
        let dir = TempDir::new("full");
        let s = open_with(&dir, |o| o.max_buckets = 4);
        let long = [win(5, 60_000)];
        for i in 0..4 {
            assert_eq!(
                s.poll(&format!("k{i}"), &long, 1, Place::Try, None)
                    .unwrap(),
                Verdict::Admitted
            );
        }
        let e = s.poll("k4", &long, 1, Place::Try, None).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        assert!(e.message.contains("full"), "{e}");
        assert!(e.message.contains("max_buckets=4"), "{e}");
        assert!(e.message.contains(&dir.file().display().to_string()), "{e}");
        // Looking takes no place, and the buckets there go on.
        assert_eq!(s.usage("k5", &long).unwrap().used, vec![0]);
        assert_eq!(
            s.poll("k0", &long, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        assert_eq!(s.usage("k0", &long).unwrap().used, vec![2]);
        // Once a bucket is idle, a new key takes its place.
        let dir = TempDir::new("full-idle");
        let s = open_with(&dir, |o| o.max_buckets = 2);
        let short = [win(5, 20)];
        s.poll("a", &short, 1, Place::Try, None).unwrap();
        s.poll("b", &long, 1, Place::Try, None).unwrap();
        assert_eq!(
            s.poll("c", &long, 1, Place::Try, None).unwrap_err().kind,
            StoreErrorKind::Invalid
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            s.poll("c", &long, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        assert_eq!(keys_of(&s), ["b", "c"]);
        check_layout(&s);
    }

    #[test]
    fn a_record_that_outgrows_its_extent_moves_and_frees_it() {
        let dir = TempDir::new("move");
        let s = FileStore::open(&dir.file()).unwrap();
        let small = [win(1, 60_000)];
        let big = [win(100, 60_000)];
        s.poll("k", &small, 1, Place::Try, None).unwrap();
        let old = under_lock(&s, |i| Ok(i.entry(0)?.0)).unwrap();
        assert_eq!(old.rec_cap, 256);
        for _ in 0..50 {
            s.poll("k", &big, 1, Place::Try, None).unwrap();
        }
        let moved = under_lock(&s, |i| Ok(i.entry(0)?.0)).unwrap();
        assert_eq!(moved.rec_cap, 1024);
        // A run a call: the record grew through 512 bytes, and both extents are free.
        let sizes = |s: &FileStore| {
            let mut free: Vec<u64> = check_layout(s).iter().map(|f| f.1).collect();
            free.sort_unstable();
            free
        };
        assert!(check_layout(&s).contains(&(old.rec_off, 256)));
        assert_eq!(sizes(&s), [256, 512]);
        // The next small record takes the freed extent.
        s.poll("j", &small, 1, Place::Try, None).unwrap();
        let j = under_lock(&s, |i| Ok(i.entry(1)?.0)).unwrap();
        assert_eq!(j.rec_off, old.rec_off);
        assert_eq!(sizes(&s), [512]);
        drop(s);
        let again = FileStore::open(&dir.file()).unwrap();
        assert_eq!(again.usage("k", &big).unwrap().used, vec![51]);
        assert_eq!(again.usage("j", &small).unwrap().used, vec![1]);
    }

    #[test]
    fn the_directory_grows_into_a_larger_extent_and_frees_the_old_one() {
        let dir = TempDir::new("dir");
        let s = FileStore::open(&dir.file()).unwrap();
        let w = [win(1, 60_000)];
        let first_cap = (1 << INITIAL_DIR_CLASS) / ENTRY_LEN;
        for i in 0..=first_cap {
            s.poll(&format!("k{i}"), &w, 1, Place::Try, None).unwrap();
        }
        assert_eq!(
            check_layout(&s),
            [(HEADER_LEN, 1 << INITIAL_DIR_CLASS)],
            "the first directory's extent is free"
        );
        let other = FileStore::open(&dir.file()).unwrap();
        for i in 0..=first_cap {
            assert_eq!(other.usage(&format!("k{i}"), &w).unwrap().used, vec![1]);
        }
    }

    #[test]
    fn a_sweep_or_a_reuse_cut_short_by_a_crash_leaves_the_old_or_the_new_state() {
        let dir = TempDir::new("crash-sweep");
        let s = FileStore::open(&dir.file()).unwrap();
        let short = [win(1, 10)];
        let long = [win(1, 60_000)];
        for k in ["a", "b", "c"] {
            s.poll(k, &short, 1, Place::Try, None).unwrap();
        }
        s.poll("live", &long, 1, Place::Try, None).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.inner.lock().crash_after_journal = true;
        assert_eq!(sweep_now(&s), 3);
        let bytes = snapshot(&s);
        assert_eq!(bytes[H_FLAG], 1);
        // Killed after the commit point: the next process finishes the sweep.
        let after = dir.0.join("after.q");
        std::fs::write(&after, &bytes).unwrap();
        let other = FileStore::open(&after).unwrap();
        assert_eq!(keys_of(&other), ["live"]);
        assert_eq!(check_layout(&other).len(), 3);
        assert_eq!(other.usage("live", &long).unwrap().used, vec![1]);
        // Killed just before it: nothing happened.
        let before = dir.0.join("before.q");
        let mut old = bytes.clone();
        old[H_FLAG] = 0;
        std::fs::write(&before, &old).unwrap();
        let other = FileStore::open(&before).unwrap();
        assert_eq!(keys_of(&other), ["a", "b", "c", "live"]);
        assert!(check_layout(&other).is_empty());
        drop(other);

        // A new record written into a reused extent, killed before the commit point: the
        // free list is intact (its head changes through the journal only).
        let s = FileStore::open(&after).unwrap();
        s.inner.lock().crash_after_journal = true;
        s.poll("new", &long, 1, Place::Try, None).unwrap();
        let mut bytes = snapshot(&s);
        drop(s);
        bytes[H_FLAG] = 0;
        std::fs::write(&before, &bytes).unwrap();
        let other = FileStore::open(&before).unwrap();
        assert_eq!(check_layout(&other).len(), 3);
        assert_eq!(
            other.poll("new", &long, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        assert_eq!(check_layout(&other).len(), 2);
        assert_eq!(keys_of(&other), ["live", "new"]);
    }

    #[test]
    fn a_held_lock_fails_the_operation_after_the_timeout_then_frees_it() {
        let dir = TempDir::new("locked");
        let s = open_with(&dir, |o| o.lock_timeout = Duration::from_millis(200));
        let w = [win(5, 60_000)];
        s.poll("k", &w, 1, Place::Try, None).unwrap();
        // Another open file description: its lock excludes ours even in this process.
        let other = File::open(dir.file()).unwrap();
        FileExt::lock(&other).unwrap();
        let started = Instant::now();
        let e = s.poll("k", &w, 1, Place::Try, None).unwrap_err();
        let waited = started.elapsed();
        assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
        assert!(e.message.contains("locked by another process"), "{e}");
        assert!(e.message.contains(&dir.file().display().to_string()), "{e}");
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_millis(1000), "{waited:?}");
        // Opening waits the same bound.
        let e = FileStore::open_with(&FileSettings {
            lock_timeout: Duration::from_millis(100),
            ..FileSettings::new(dir.file())
        })
        .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
        FileExt::unlock(&other).unwrap();
        assert_eq!(
            s.poll("k", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        // A lock released within the bound is waited for.
        FileExt::lock(&other).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            FileExt::unlock(&other).unwrap();
        });
        assert_eq!(s.usage("k", &w).unwrap().used, vec![2]);
        t.join().unwrap();
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let dir = TempDir::new("settings");
        for settings in [
            FileSettings {
                mode: 0o644,
                ..FileSettings::new(dir.file())
            },
            FileSettings {
                mode: 0o400,
                ..FileSettings::new(dir.file())
            },
            FileSettings {
                max_buckets: 0,
                ..FileSettings::new(dir.file())
            },
            FileSettings {
                lock_timeout: Duration::ZERO,
                ..FileSettings::new(dir.file())
            },
        ] {
            let e = FileStore::open_with(&settings).unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        }
        assert!(!dir.file().exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_new_file_is_private_or_group_shared_and_never_opened_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = TempDir::new("mode");
        FileStore::open(&dir.file()).unwrap();
        assert_eq!(mode(&dir.file()), 0o600);
        let shared = dir.0.join("shared.q");
        FileStore::open_with(&FileSettings {
            mode: 0o660,
            ..FileSettings::new(&shared)
        })
        .unwrap();
        assert_eq!(mode(&shared), 0o660);
        // An existing file keeps its mode.
        FileStore::open(&shared).unwrap();
        assert_eq!(mode(&shared), 0o660);
        // A link to a state file, and a link to nowhere, are refused and never followed.
        let link = dir.0.join("link.q");
        std::os::unix::fs::symlink(dir.file(), &link).unwrap();
        let dangling = dir.0.join("dangling.q");
        let target = dir.0.join("target.q");
        std::os::unix::fs::symlink(&target, &dangling).unwrap();
        for path in [&link, &dangling] {
            let e = FileStore::open(path).unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
            assert!(e.message.contains("symbolic link"), "{e}");
            assert!(e.message.contains(&path.display().to_string()), "{e}");
        }
        assert!(!target.exists());
        // So are a directory and other files that are not regular.
        let e = FileStore::open(&dir.0).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
    }
}

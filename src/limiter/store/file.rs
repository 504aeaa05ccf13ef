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
//! # Format (version 2, little-endian)
//!
//! - **Header** (bytes 0..128): magic `QGSTATE\0`, the format version (`u32`), a CRC-32 of
//!   bytes 16..56, then the directory's offset, its capacity and its entry count, and
//!   `used`, the end of the allocated data (`u64` each). Byte 56 is the journal flag and
//!   bytes 64..72 the journal's offset; neither is covered by the CRC.
//! - **Directory**: `capacity` entries of 288 bytes: the bucket record's offset and
//!   capacity (`u64`), the key's length (`u16`), a CRC-32 of the entry, then the key (at
//!   most [`MAX_KEY`] bytes of UTF-8).
//! - **Records**: per bucket, a CRC-32 and the length of the data (`u32` each), then the
//!   encoded bucket: its clock, pause, unit count, ring, queue and holds.
//! - Beyond `used`: free space, where new records, directories and the journal go.
//!
//! A file that is shorter than `used`, whose magic, sizes or CRCs do not add up, is
//! refused with [`StoreErrorKind::Corrupt`]: a damaged file is never reset, since forgetting
//! admitted calls would over-admit. Another format version is refused the same way (a file
//! of version 1, which had no holds, holds at most the last window's use: delete it). An
//! empty file (or one left all zeros by a crash while it was being created) is initialised.
//!
//! Buckets are added, and records outgrow their space, by writing the new record or
//! directory beyond `used` (the file grows under the lock as needed) and then switching the
//! pointers to it. Space left behind by a moved record is not reused. Other processes notice
//! a longer `used` under the lock and map the file again.
//!
//! # Crash consistency: a redo journal
//!
//! A process may die at any instruction, and the stores it made to the shared mapping
//! survive it. Every change to live data is therefore made through a journal:
//!
//! 1. the new bytes of every changed range (a record, a directory entry, the header) are
//!    written, with a CRC, as a journal beyond `used` (never over live data);
//! 2. the journal's offset is stored in the header, then the journal flag is set (a single
//!    byte: the commit point);
//! 3. the ranges are copied to their places, then the flag is cleared.
//!
//! Whoever takes the lock next and finds the flag set replays the journal (replaying twice
//! is harmless). A crash before the flag leaves the old state, after it the new one. Compiler
//! fences keep these steps in order; a process that is killed has executed its earlier
//! stores, so no hardware fence is needed. The scheme protects against processes dying, not
//! against the machine losing power: pages are not flushed to disk on every call.
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
//! lock; the mapping is only read or written under that lock, and never past the file's
//! length (which only grows). Foreign writers of the file are out of scope.

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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest bucket key, in bytes.
pub const MAX_KEY: usize = 255;

/// The largest `calls` of a rate on a file store bucket (each unit costs 8 bytes of
/// ring): the limiter's [`MAX_CALLS`](crate::limiter::MAX_CALLS), as in every store.
pub const MAX_CALLS: u64 = crate::limiter::MAX_CALLS as u64;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;

const MAGIC: &[u8; 8] = b"QGSTATE\0";
const JOURNAL_MAGIC: &[u8; 8] = b"QGJOURNL";
const HEADER_LEN: u64 = 128;
const ENTRY_LEN: u64 = 288;
const INITIAL_ENTRIES: u64 = 16;
const INITIAL_LEN: u64 = 64 * 1024;
const RECORD_HEAD: u64 = 8;

// Header fields.
const H_VERSION: usize = 8;
const H_CRC: usize = 12;
const H_DIR_OFF: usize = 16;
const H_DIR_CAP: usize = 24;
const H_DIR_COUNT: usize = 32;
const H_USED: usize = 40;
const H_CRC_END: usize = 56;
const H_FLAG: usize = 56;
const H_JOURNAL: usize = 64;

/// CRC-32 (IEEE) of the concatenation of `parts`. crc32fast uses the CPU's carry-less
/// multiply where there is one: a bucket's record (16 KiB for a ring of 1,500 units) is
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
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    map: Option<MmapMut>,
    /// Directory index of every key seen so far.
    keys: HashMap<String, u64>,
    /// Directory entries already read into `keys`.
    scanned: u64,
    /// The bucket being worked on (reused for its buffers).
    bucket: Bucket,
    /// Scratch space for encoded records and the journal.
    buf: Vec<u8>,
    /// Tests: stop a commit once its journal is valid, as a crash would.
    #[cfg(test)]
    crash_after_journal: bool,
}

/// A directory entry as read from the file.
struct Entry {
    rec_off: u64,
    rec_cap: u64,
}

impl FileStore {
    /// Opens (creating if needed) the state file at `path`.
    ///
    /// Fails with [`StoreErrorKind::Invalid`] when the file cannot be opened for lack of
    /// permissions, [`StoreErrorKind::Corrupt`] when it is damaged or of a newer format, and
    /// [`StoreErrorKind::Unavailable`] on other I/O errors.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    StoreErrorKind::Invalid
                } else {
                    StoreErrorKind::Unavailable
                };
                StoreError::new(
                    kind,
                    format!("cannot open the state file {}: {e}", path.display()),
                )
            })?;
        let mut inner = Inner {
            path: path.to_path_buf(),
            file,
            map: None,
            keys: HashMap::new(),
            scanned: 0,
            bucket: Bucket::new(1),
            buf: Vec::new(),
            #[cfg(test)]
            crash_after_journal: false,
        };
        inner.locked(Inner::init_or_check)?;
        Ok(Self {
            path: path.to_path_buf(),
            inner: Mutex::new(inner),
        })
    }

    /// Runs `op` on bucket `key` under the file lock and stores the bucket if it changed.
    fn with_bucket<R>(
        &self,
        key: &str,
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
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        inner.locked(|inner| inner.run(key, op))
    }
}

impl Inner {
    /// Runs `f` under the file's exclusive lock.
    fn locked<R>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        FileExt::lock(&self.file).map_err(|e| self.io("lock", e))?;
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

    /// Maps the whole file again (after it grew).
    fn remap(&mut self) -> Result<(), StoreError> {
        let len = self
            .file
            .metadata()
            .map_err(|e| self.io("read the length of", e))?
            .len();
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

    /// Makes the file (and the mapping) at least `len` bytes long.
    fn ensure_len(&mut self, len: u64) -> Result<(), StoreError> {
        if self.mapped() >= len {
            return Ok(());
        }
        let on_disk = self
            .file
            .metadata()
            .map_err(|e| self.io("read the length of", e))?
            .len();
        if on_disk < len {
            let grown = len.max(on_disk.saturating_mul(2)).max(INITIAL_LEN);
            let grown = grown.div_ceil(INITIAL_LEN) * INITIAL_LEN;
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
            self.ensure_len(INITIAL_LEN)?;
            let m = self.map_mut();
            m[..HEADER_LEN as usize].fill(0);
            put_u32(m, H_VERSION, FORMAT_VERSION);
            put_u64(m, H_DIR_OFF, HEADER_LEN);
            put_u64(m, H_DIR_CAP, INITIAL_ENTRIES);
            put_u64(m, H_DIR_COUNT, 0);
            put_u64(m, H_USED, HEADER_LEN + INITIAL_ENTRIES * ENTRY_LEN);
            let crc = crc32(&[&m[H_DIR_OFF..H_CRC_END]]);
            put_u32(m, H_CRC, crc);
            compiler_fence(Ordering::SeqCst);
            m[..8].copy_from_slice(MAGIC);
        }
        self.check()
    }

    /// Under the lock: checks the header, maps what others added, replays a journal.
    fn check(&mut self) -> Result<(), StoreError> {
        if self.mapped() < HEADER_LEN {
            self.remap()?;
            if self.mapped() < HEADER_LEN {
                return Err(
                    self.corrupt(format!("{} bytes, shorter than its header", self.mapped()))
                );
            }
        }
        let m = self.map();
        if &m[..8] != MAGIC {
            return Err(self.corrupt("not a quotagate state file: bad magic bytes"));
        }
        let version = get_u32(m, H_VERSION);
        if version != FORMAT_VERSION {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                format!(
                    "the state file {} has format version {version}, but this build of \
                     quotagate supports version {FORMAT_VERSION} only{}",
                    self.path.display(),
                    if version < FORMAT_VERSION {
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
            .and_then(|l| l.checked_add(dir_off));
        if dir_off < HEADER_LEN
            || dir_count > dir_cap
            || dir_end.is_none_or(|end| end > used)
            || used < HEADER_LEN
        {
            return Err(self.corrupt("header sizes do not add up"));
        }
        if used > self.mapped() {
            self.remap()?;
            if used > self.mapped() {
                return Err(self.corrupt(format!(
                    "truncated: {} bytes, but its data ends at byte {used}",
                    self.mapped()
                )));
            }
        }
        Ok(())
    }

    /// Replays the journal that the header's flag says is valid.
    fn replay(&mut self) -> Result<(), StoreError> {
        let off = get_u64(self.map(), H_JOURNAL);
        if off.checked_add(24).is_none_or(|end| end > self.mapped()) {
            self.remap()?;
        }
        let m = self.map();
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

    /// Reads and checks directory entry `index`; returns its key too.
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
        if entry.rec_cap < RECORD_HEAD
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
            return Ok(Some(i));
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
    fn encode_entry(key: &str, rec_off: u64, rec_cap: u64) -> [u8; ENTRY_LEN as usize] {
        let mut e = [0u8; ENTRY_LEN as usize];
        put_u64(&mut e, 0, rec_off);
        put_u64(&mut e, 8, rec_cap);
        e[16..18].copy_from_slice(&(key.len() as u16).to_le_bytes());
        e[24..24 + key.len()].copy_from_slice(key.as_bytes());
        let crc = crc32(&[&e[..20], key.as_bytes()]);
        put_u32(&mut e, 20, crc);
        e
    }

    /// One operation on bucket `key`, under the file lock.
    fn run<R>(
        &mut self,
        key: &str,
        op: impl FnOnce(&mut Bucket, Nanos) -> R,
    ) -> Result<R, StoreError> {
        self.check()?;
        let found = self.find(key)?;
        let mut bucket = std::mem::replace(&mut self.bucket, Bucket::new(1));
        let entry = match found {
            Some(i) => {
                let (entry, _) = self.entry(i)?;
                let m = self.map();
                let at = entry.rec_off as usize;
                let len = u64::from(get_u32(m, at + 4));
                if RECORD_HEAD + len > entry.rec_cap {
                    return Err(self.corrupt(format!("the record of {key:?} is damaged")));
                }
                let data = &m[at + 8..at + 8 + len as usize];
                if get_u32(m, at) != crc32(&[&m[at + 4..at + 8], data]) {
                    return Err(self.corrupt(format!("the record of {key:?}: checksum mismatch")));
                }
                if bucket.decode(data).is_none() {
                    return Err(self.corrupt(format!("the record of {key:?} is damaged")));
                }
                Some((i, entry))
            }
            None => {
                bucket = Bucket::new(1);
                None
            }
        };
        let result = op(&mut bucket, wall_now());
        let stored = if bucket.changed() {
            self.store(key, &bucket, entry)
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
        entry: Option<(u64, Entry)>,
    ) -> Result<(), StoreError> {
        let data_len = bucket.encoded_len() as u64;
        let rec_len = RECORD_HEAD + data_len;
        let mut record = std::mem::take(&mut self.buf);
        record.clear();
        record.resize(rec_len as usize, 0);
        put_u32(&mut record, 4, data_len as u32);
        bucket.encode(&mut record[8..]);
        let crc = crc32(&[&record[4..]]);
        put_u32(&mut record, 0, crc);

        let m = self.map();
        let (dir_off, dir_cap, dir_count, used) = (
            get_u64(m, H_DIR_OFF),
            get_u64(m, H_DIR_CAP),
            get_u64(m, H_DIR_COUNT),
            get_u64(m, H_USED),
        );
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        let result = (|| {
            if let Some((_, e)) = &entry
                && rec_len <= e.rec_cap
            {
                // In place, through the journal: only the 64-byte blocks that change, so
                // that a call costs the units it logs rather than the whole ring.
                let old = &self.map()[e.rec_off as usize..(e.rec_off + rec_len) as usize];
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
                return self.commit(&writes, used);
            }
            // A new place: beyond `used`, written directly (nothing live is there).
            let rec_cap = align8(rec_len.max(256) * 2);
            let rec_off = align8(used);
            let mut new_used = rec_off + rec_cap;
            let (mut new_dir_off, mut new_dir_cap, mut new_count) = (dir_off, dir_cap, dir_count);
            let index = match &entry {
                Some((i, _)) => *i,
                None => {
                    if dir_count == dir_cap {
                        new_dir_cap = dir_cap * 2;
                        new_dir_off = new_used;
                        new_used += new_dir_cap * ENTRY_LEN;
                    }
                    new_count += 1;
                    dir_count
                }
            };
            self.ensure_len(align8(new_used) + 4096 + rec_len * 2)?;
            let entry_bytes = Self::encode_entry(key, rec_off, rec_cap);
            let m = self.map_mut();
            m[rec_off as usize..(rec_off + rec_len) as usize].copy_from_slice(&record);
            if new_dir_off != dir_off {
                let (from, n) = (dir_off as usize, (dir_count * ENTRY_LEN) as usize);
                m.copy_within(from..from + n, new_dir_off as usize);
            }
            let entry_at = new_dir_off + index * ENTRY_LEN;
            if entry.is_some() {
                writes.push((entry_at, entry_bytes.to_vec()));
            } else {
                // A slot past the entry count is not live yet.
                m[entry_at as usize..(entry_at + ENTRY_LEN) as usize].copy_from_slice(&entry_bytes);
            }
            let mut header = [0u8; H_CRC_END];
            header[..H_DIR_OFF].copy_from_slice(&m[..H_DIR_OFF]);
            put_u64(&mut header, H_DIR_OFF, new_dir_off);
            put_u64(&mut header, H_DIR_CAP, new_dir_cap);
            put_u64(&mut header, H_DIR_COUNT, new_count);
            put_u64(&mut header, H_USED, new_used);
            let crc = crc32(&[&header[H_DIR_OFF..H_CRC_END]]);
            put_u32(&mut header, H_CRC, crc);
            writes.push((0, header.to_vec()));
            self.commit(&writes, new_used)?;
            if entry.is_none() {
                self.keys.insert(key.to_owned(), index);
                if self.scanned == index {
                    self.scanned += 1;
                }
            }
            Ok(())
        })();
        self.buf = record;
        result
    }

    /// Makes `writes` happen all or not at all: journal, flag, apply, clear.
    fn commit(&mut self, writes: &[(u64, Vec<u8>)], used: u64) -> Result<(), StoreError> {
        let body: u64 = writes
            .iter()
            .map(|(_, b)| 16 + align8(b.len() as u64))
            .sum();
        let total = 24 + body;
        let at = align8(used);
        self.ensure_len(at + total)?;
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
        self.with_bucket(key, |b, now| b.poll(now, windows, cost, place, hold))
    }

    fn release(
        &self,
        key: &str,
        _windows: &[Window],
        id: u64,
        ago: Duration,
    ) -> Result<(), StoreError> {
        self.with_bucket(key, |b, now| b.release(now, id, ago))
    }

    fn leave(&self, key: &str, id: u64) -> Result<(), StoreError> {
        self.with_bucket(key, |b, now| b.leave(now, id))
    }

    fn pause(&self, key: &str, duration: Duration) -> Result<(), StoreError> {
        self.with_bucket(key, |b, now| b.pause(now, duration))
    }

    fn usage(&self, key: &str, windows: &[Window]) -> Result<Usage, StoreError> {
        check_windows(&self.path.display(), windows, None)?;
        self.with_bucket(key, |b, now| b.usage(now, windows))
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
        edit(&dir.file(), |b| b[rec + 8 + 40] ^= 0x01);
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
}

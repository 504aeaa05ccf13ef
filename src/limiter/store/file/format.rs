//! The state file's format: the header, the directory's slots, the records and the free
//! extents' heads, with their checksums (the layout is in the [parent module](super)).

use super::super::model::Bucket;
use super::super::{StoreError, StoreErrorKind};
use super::{Entry, FORMAT_VERSION, Inner, MAX_KEY, OLDEST_FORMAT_VERSION};
use crate::limiter::clock::Nanos;
use std::sync::atomic::{Ordering, compiler_fence};

pub(super) const MAGIC: &[u8; 8] = b"QGSTATE\0";
pub(super) const JOURNAL_MAGIC: &[u8; 8] = b"QGJOURNL";
pub(super) const FREE_MAGIC: &[u8; 8] = b"QGFREEXT";
pub(super) const HEADER_LEN: u64 = 512;
pub(super) const ENTRY_LEN: u64 = 288;
/// The smallest size class: extents of 256 bytes.
pub(super) const MIN_CLASS: u32 = 8;
/// The largest size class: extents of 4 GiB.
pub(super) const MAX_CLASS: u32 = 32;
/// The first directory's class: 8 KiB, 28 slots.
pub(super) const INITIAL_DIR_CLASS: u32 = 13;
pub(super) const INITIAL_LEN: u64 = 64 * 1024;
/// A record's head: CRC, data length, longest window, idle instant.
pub(super) const RECORD_HEAD: u64 = 24;
/// A free extent's head: magic, next, class, CRC.
pub(super) const FREE_HEAD: usize = 24;

// Header fields.
pub(super) const H_VERSION: usize = 8;
pub(super) const H_CRC: usize = 12;
pub(super) const H_DIR_OFF: usize = 16;
pub(super) const H_DIR_CAP: usize = 24;
pub(super) const H_DIR_COUNT: usize = 32;
pub(super) const H_USED: usize = 40;
pub(super) const H_GEN: usize = 48;
pub(super) const H_NONCE: usize = 56;
pub(super) const H_FREE: usize = 64;
pub(super) const H_CRC_END: usize = H_FREE + 8 * (MAX_CLASS - MIN_CLASS + 1) as usize;
pub(super) const H_FLAG: usize = H_CRC_END;
pub(super) const H_JOURNAL: usize = H_CRC_END + 8;

/// CRC-32 (IEEE) of the concatenation of `parts`. crc32fast uses the CPU's carry-less
/// multiply where there is one: a bucket's record (up to 24 KiB for 1,500 runs) is
/// checked on every call, and a table-driven CRC made that most of the call's cost.
pub(super) fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for part in parts {
        h.update(part);
    }
    h.finalize()
}

pub(super) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

pub(super) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

pub(super) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn align8(v: u64) -> u64 {
    v.div_ceil(8) * 8
}

/// The size class of an extent that holds `len` bytes, if there is one.
pub(super) fn class_for(len: u64) -> Option<u32> {
    let class = len
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_CLASS);
    (class <= MAX_CLASS).then_some(class)
}

/// The class of an extent of exactly `size` bytes, if that is a class's size.
pub(super) fn class_of(size: u64) -> Option<u32> {
    let class = size.trailing_zeros();
    (size.is_power_of_two() && (MIN_CLASS..=MAX_CLASS).contains(&class)).then_some(class)
}

/// Where the head of class `class`'s free list is in the header.
pub(super) fn head_at(class: u32) -> usize {
    H_FREE + 8 * (class - MIN_CLASS) as usize
}

/// The extent that a directory of `cap` slots occupies.
pub(super) fn dir_extent(cap: u64) -> u64 {
    (cap * ENTRY_LEN).next_power_of_two().max(1 << MIN_CLASS)
}

/// The head of a free extent of `class` whose list goes on with `next`.
pub(super) fn free_head(next: u64, class: u32) -> [u8; FREE_HEAD] {
    let mut h = [0u8; FREE_HEAD];
    h[..8].copy_from_slice(FREE_MAGIC);
    put_u64(&mut h, 8, next);
    put_u32(&mut h, 16, class);
    let crc = crc32(&[&h[8..20]]);
    put_u32(&mut h, 20, crc);
    h
}

impl Inner {
    /// Under the lock at open: initialises an empty file, or checks an existing one.
    pub(super) fn init_or_check(&mut self) -> Result<(), StoreError> {
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
    pub(super) fn check(&mut self) -> Result<(), StoreError> {
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
        let version = self.check_header()?;
        let m = self.map();
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

    /// Checks the header's magic, version and checksum (the mapping holds the header);
    /// returns the version.
    fn check_header(&self) -> Result<u32, StoreError> {
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
                     quotagate supports version {FORMAT_VERSION} (and reads \
                     {OLDEST_FORMAT_VERSION}){}",
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
        Ok(version)
    }

    /// Reads and checks directory slot `index` (below the count); returns its key too.
    pub(super) fn entry(&self, index: u64) -> Result<(Entry, &[u8]), StoreError> {
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
    pub(super) fn find(&mut self, key: &str) -> Result<Option<u64>, StoreError> {
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
    pub(super) fn encode_entry(key: &[u8], rec_off: u64, rec_cap: u64) -> [u8; ENTRY_LEN as usize] {
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
    pub(super) fn record(
        &self,
        key: &str,
        entry: &Entry,
    ) -> Result<(usize, usize, Nanos), StoreError> {
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

    /// Writes the record of `bucket` into `record`: its head (checksum, data length,
    /// longest window, idle instant) and the encoded bucket.
    pub(super) fn encode_record(
        &self,
        key: &str,
        bucket: &Bucket,
        window: Nanos,
        idle_at: Nanos,
        record: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let data_len = bucket.encoded_len() as u64;
        let Ok(data_len32) = u32::try_from(data_len) else {
            return Err(StoreError::new(
                StoreErrorKind::Invalid,
                format!(
                    "the bucket {key:?} of the state file {} outgrew what a record holds",
                    self.path.display()
                ),
            ));
        };
        record.clear();
        record.resize((RECORD_HEAD + data_len) as usize, 0);
        put_u32(record, 4, data_len32);
        put_u64(record, 8, window);
        put_u64(record, 16, idle_at);
        bucket.encode(&mut record[RECORD_HEAD as usize..]);
        let crc = crc32(&[&record[4..]]);
        put_u32(record, 0, crc);
        Ok(())
    }
}

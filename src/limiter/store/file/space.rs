//! Space in the state file: records rewritten in place, new extents taken from the free
//! lists or from the end of the data, and idle buckets swept (see the [parent
//! module](super)).

use super::super::{StoreError, StoreErrorKind};
use super::format::*;
use super::{Entry, Inner, wall_now};

/// What became of an attempt to give a record a new extent.
pub(super) enum Placed {
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
pub(super) struct Taken {
    pub(super) off: u64,
    pub(super) from_list: bool,
}

impl Inner {
    /// Rewrites the record at `e`, which has room, through the journal: only the 64-byte
    /// blocks that change, so that a call costs the units it logs rather than the whole log.
    pub(super) fn store_in_place(&mut self, e: &Entry, record: &[u8]) -> Result<(), StoreError> {
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
    pub(super) fn take(&self, hdr: &mut [u8], class: u32) -> Result<Taken, StoreError> {
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
    pub(super) fn write_fresh(
        &mut self,
        at: Taken,
        bytes: &[u8],
        writes: &mut Vec<(u64, Vec<u8>)>,
    ) {
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
    /// (It plans every extent of one transaction before it writes any, which keeps the
    /// plan and the writes in one place: hence its length.)
    pub(super) fn place(
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
            None => self.add_slot(&mut hdr, &slot, new_dir, &mut writes, &mut freed),
        }
        // The extents left behind go on their free lists (reused by later commits).
        for pair in freed.chunks(2) {
            free_extent(&mut hdr, pair[0], pair[1], &mut writes);
        }
        seal_header(&mut hdr, &mut writes);
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
    /// (One transaction, read and written under one look at the directory: hence its
    /// length.)
    pub(super) fn sweep(&mut self, keep: Option<u64>) -> Result<u64, StoreError> {
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
            free_extent(&mut hdr, e.rec_off, e.rec_cap, &mut writes);
        }
        let freed = idle.len() as u64;
        put_u64(&mut hdr, H_DIR_COUNT, count - freed);
        let generation = get_u64(&hdr, H_GEN).wrapping_add(1);
        put_u64(&mut hdr, H_GEN, generation);
        seal_header(&mut hdr, &mut writes);
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

    /// Gives `record` a new extent (see [`place`](Self::place)): sweeping idle buckets
    /// first when there is no room, then growing the file.
    pub(super) fn relocate(
        &mut self,
        key: &str,
        record: &[u8],
        mut entry: Option<(u64, Entry)>,
    ) -> Result<(), StoreError> {
        let mut swept = false;
        loop {
            match self.place(key, record, entry, swept)? {
                Placed::Done => return Ok(()),
                Placed::Full if swept => return Err(self.full_error()),
                Placed::Full => {
                    self.sweep(None)?;
                }
                Placed::NeedsRoom => {
                    let live = get_u64(self.map(), H_DIR_COUNT);
                    let freed = self.sweep(entry.map(|(i, _)| i))?;
                    // Little to reuse: grow the file now (it doubles), so that the sweeps
                    // stay rare while the buckets are mostly live.
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
    }

    /// The error of a file whose buckets are all live and `max_buckets` many.
    pub(super) fn full_error(&self) -> StoreError {
        StoreError::new(
            StoreErrorKind::Invalid,
            format!(
                "the state file {} is full: its {} buckets are all in use (max_buckets={}; a \
                 bucket leaves once it is idle for its longest window): use fewer keys, or \
                 raise max_buckets= in the store URL",
                self.path.display(),
                get_u64(self.map(), H_DIR_COUNT),
                self.max_buckets
            ),
        )
    }

    /// Adds `slot` to the directory of the transaction's header `hdr`, in `new_dir` (a
    /// larger extent and its capacity, the old one then freed) when the directory is full.
    fn add_slot(
        &mut self,
        hdr: &mut [u8],
        slot: &[u8],
        new_dir: Option<(Taken, u64)>,
        writes: &mut Vec<(u64, Vec<u8>)>,
        freed: &mut Vec<u64>,
    ) {
        let (dir_off, dir_cap, count) = (
            get_u64(hdr, H_DIR_OFF),
            get_u64(hdr, H_DIR_CAP),
            get_u64(hdr, H_DIR_COUNT),
        );
        let mut at_dir = dir_off;
        if let Some((taken, new_cap)) = new_dir {
            let n = (count * ENTRY_LEN) as usize;
            let slots = self.map()[dir_off as usize..dir_off as usize + n].to_vec();
            self.write_fresh(taken, &slots, writes);
            freed.push(dir_off);
            freed.push(dir_extent(dir_cap));
            put_u64(hdr, H_DIR_OFF, taken.off);
            put_u64(hdr, H_DIR_CAP, new_cap);
            at_dir = taken.off;
        }
        // A slot past the count is not live yet.
        let fresh = Taken {
            off: at_dir + count * ENTRY_LEN,
            from_list: new_dir.is_some_and(|(t, _)| t.from_list) && count == 0,
        };
        self.write_fresh(fresh, slot, writes);
        put_u64(hdr, H_DIR_COUNT, count + 1);
    }
}

/// Puts the extent of `size` bytes at `off` on its class's free list in the transaction's
/// header `hdr`; the extent's new head is written through the journal.
fn free_extent(hdr: &mut [u8], off: u64, size: u64, writes: &mut Vec<(u64, Vec<u8>)>) {
    let class = class_of(size).unwrap_or(MIN_CLASS);
    let next = get_u64(hdr, head_at(class));
    writes.push((off, free_head(next, class).to_vec()));
    put_u64(hdr, head_at(class), off);
}

/// Checksums the transaction's header `hdr` and writes it, last, through the journal.
fn seal_header(hdr: &mut [u8], writes: &mut Vec<(u64, Vec<u8>)>) {
    let crc = crc32(&[&hdr[H_DIR_OFF..H_CRC_END]]);
    put_u32(hdr, H_CRC, crc);
    writes.push((0, hdr.to_vec()));
}

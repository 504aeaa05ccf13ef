//! The journalled commit: every change to live data is written as a journal first, then
//! applied, so that a process that dies at any instruction leaves the old state or the new
//! one (see the [parent module](super)).

use super::super::StoreError;
use super::Inner;
use super::format::{
    H_FLAG, H_JOURNAL, JOURNAL_MAGIC, align8, crc32, get_u32, get_u64, put_u32, put_u64,
};
use std::sync::atomic::{Ordering, compiler_fence};

impl Inner {
    /// Replays the journal that the header's flag says is valid.
    pub(super) fn replay(&mut self) -> Result<(), StoreError> {
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

    /// Makes `writes` happen all or not at all: journal, flag, apply, clear.
    pub(super) fn commit(
        &mut self,
        writes: &[(u64, Vec<u8>)],
        used: u64,
    ) -> Result<(), StoreError> {
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

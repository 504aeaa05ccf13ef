//! Buckets by key, with a bounded number of them and incremental eviction of idle ones.
//!
//! A full map makes room for a new key by dropping one evictable entry (idle, not
//! referenced, no rates of its own: the caller decides). The entries are visited in a
//! clock order: a queue of keys whose front is the hand; an entry that cannot go is moved
//! to the back. Each insertion into a full map examines at most [`SWEEP_STEP`] entries;
//! only when those hold none that can go does it sweep the whole map, and then only once
//! the insertions since the last full sweep have paid for it (`SWEEP_STEP` each), so the
//! cost per insertion stays bounded whatever the number of buckets. The price: just after
//! a full sweep found nothing, a new key may be refused while an entry that became idle
//! meanwhile waits further back in the queue; the sweep reaches it within a bounded
//! number of insertions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Entries an insertion into a full map examines before it considers a full sweep.
pub(crate) const SWEEP_STEP: usize = 16;

/// Values by key, at most a given number of them (see the module's documentation).
pub(crate) struct KeyMap<V> {
    /// foldhash rather than SipHash: the key is hashed on every call, and foldhash is
    /// several times faster on short keys while still seeded per process.
    map: HashMap<Arc<str>, Arc<V>, foldhash::fast::RandomState>,
    /// Every key of `map` exactly once, in the order the sweep visits them.
    order: VecDeque<Arc<str>>,
    /// Entries the insertions into a full map have paid for since the last full sweep.
    credit: usize,
    /// Entries examined by sweeps so far, for the tests of their cost.
    pub(crate) examined: u64,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        Self {
            map: HashMap::default(),
            order: VecDeque::new(),
            credit: usize::MAX,
            examined: 0,
        }
    }
}

impl<V> KeyMap<V> {
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<&Arc<V>> {
        self.map.get(key)
    }

    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(|k| &**k)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Arc<V>> {
        self.map.values()
    }

    /// The value of `key`, or a new one from `make` once there is room: when the map holds
    /// `max` entries, one for which `evictable` holds is dropped first. `None` when none
    /// was found (see the module's documentation for how far it looks).
    pub(crate) fn get_or_insert(
        &mut self,
        key: &str,
        max: usize,
        mut evictable: impl FnMut(&Arc<V>) -> bool,
        make: impl FnOnce() -> Arc<V>,
    ) -> Option<Arc<V>> {
        if let Some(v) = self.map.get(key) {
            return Some(v.clone());
        }
        if self.map.len() >= max && !self.evict_one(&mut evictable) {
            return None;
        }
        let v = make();
        let key: Arc<str> = key.into();
        self.order.push_back(key.clone());
        self.map.insert(key, v.clone());
        Some(v)
    }

    /// Drops one evictable entry, within the bounded work described above.
    fn evict_one(&mut self, evictable: &mut impl FnMut(&Arc<V>) -> bool) -> bool {
        let n = self.order.len();
        let step = SWEEP_STEP.min(n);
        self.credit = self.credit.saturating_add(step);
        if self.sweep(step, evictable) {
            return true;
        }
        if self.credit < n {
            return false;
        }
        self.credit = 0;
        self.sweep(n - step, evictable)
    }

    /// Visits up to `count` entries from the hand: drops the first evictable one, moves
    /// the others to the back.
    fn sweep(&mut self, count: usize, evictable: &mut impl FnMut(&Arc<V>) -> bool) -> bool {
        for _ in 0..count {
            let Some(key) = self.order.pop_front() else {
                return false;
            };
            self.examined += 1;
            let Some(v) = self.map.get(&key) else {
                continue;
            };
            if evictable(v) {
                self.map.remove(&key);
                return true;
            }
            self.order.push_back(key);
        }
        false
    }

    /// Drops every evictable entry; returns how many.
    pub(crate) fn purge(&mut self, mut evictable: impl FnMut(&Arc<V>) -> bool) -> usize {
        let before = self.map.len();
        self.map.retain(|_, v| !evictable(v));
        let map = &self.map;
        self.order.retain(|k| map.contains_key(k));
        before - self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map of `n` entries `0..n`; the value says whether the entry may go.
    fn full(n: usize, idle: impl Fn(usize) -> bool) -> KeyMap<bool> {
        let mut m = KeyMap::default();
        for i in 0..n {
            m.get_or_insert(&i.to_string(), n, |_| false, || Arc::new(idle(i)))
                .unwrap();
        }
        m
    }

    fn may_go(v: &Arc<bool>) -> bool {
        **v && Arc::strong_count(v) == 1
    }

    #[test]
    fn a_full_map_drops_one_idle_entry_per_new_key_oldest_first() {
        let mut m = full(1000, |_| true);
        m.get_or_insert("new", 1000, may_go, || Arc::new(false))
            .unwrap();
        assert_eq!(m.len(), 1000, "one entry made room, the others stay");
        assert!(!m.contains_key("0") && m.contains_key("1") && m.contains_key("new"));
        assert_eq!(m.examined, 1);
    }

    #[test]
    fn busy_entries_are_kept_and_the_cost_per_insertion_stays_bounded() {
        let n = 4096;
        // Only the last entry may go, far behind the hand.
        let mut m = full(n, |i| i == n - 1);
        m.get_or_insert("a", n, may_go, || Arc::new(false))
            .expect("a full sweep finds the one idle entry");
        assert!(!m.contains_key(&(n - 1).to_string()));
        let before = m.examined;
        let attempts = 10 * n;
        for i in 0..attempts {
            assert!(
                m.get_or_insert(&format!("b{i}"), n, may_go, || Arc::new(false))
                    .is_none()
            );
        }
        assert_eq!(m.len(), n);
        let per_insertion = (m.examined - before) as f64 / attempts as f64;
        println!("entries examined per refused insertion: {per_insertion:.1}");
        assert!(
            per_insertion <= 2.0 * SWEEP_STEP as f64,
            "{per_insertion} entries per insertion"
        );
    }

    #[test]
    fn an_entry_that_becomes_idle_is_found_by_the_sweep() {
        let n = 256;
        let mut m = full(n, |_| false);
        let held: Vec<_> = (0..n)
            .map(|i| m.get(&i.to_string()).unwrap().clone())
            .collect();
        assert!(
            m.get_or_insert("x", n, |_| false, || Arc::new(false))
                .is_none()
        );
        // Entry 200 becomes idle: within a bounded number of insertions it makes room.
        let tries = (0..2 * n / SWEEP_STEP + 2)
            .position(|i| {
                m.get_or_insert(
                    &format!("y{i}"),
                    n,
                    |v| Arc::ptr_eq(v, &held[200]),
                    || Arc::new(false),
                )
                .is_some()
            })
            .expect("the sweep reaches the idle entry");
        assert!(!m.contains_key("200"), "found after {tries} refusals");
    }

    #[test]
    fn purge_keeps_the_sweep_order_in_step_with_the_map() {
        let mut m = full(100, |i| i % 2 == 0);
        assert_eq!(m.purge(may_go), 50);
        assert_eq!(m.order.len(), 50);
        m.get_or_insert("0", 100, may_go, || Arc::new(true))
            .unwrap();
        assert_eq!(m.order.len(), 51);
        assert_eq!(m.keys().count(), 51);
    }
}

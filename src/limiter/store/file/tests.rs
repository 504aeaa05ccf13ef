//! The file store's tests.

use super::format::*;
use super::*;
use std::fs::OpenOptions;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

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
                    && s.poll("shared", &shared, 1, Place::Try, None).unwrap() == Verdict::Admitted
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

//! The Redis store: buckets shared by many hosts.
//!
//! Every operation on a bucket is one Lua script (`redis.lua`, sent with `EVALSHA`, and
//! loaded on `NOSCRIPT`) that applies the shared-bucket rules of the
//! [store module](super) atomically on the server; processes and hosts never hold a lock
//! across a round trip, and one poll costs one round trip.
//!
//! # Data model
//!
//! A bucket `b` under the key prefix `p` (`prefix=` of the store URL) is two keys that share
//! the hash tag `{p:b}`, so that they live in one cluster slot:
//!
//! - `{p:b}:s`, a hash: `v` (the format, 4); `n`, the bucket's numbers packed as ten
//!   little-endian doubles: `next` (units ever logged: the sequence number of the next
//!   unit), `cap` (ring entries), `from` and `runs` (the numbers of the oldest run the ring
//!   holds and of the next run), `base` (the sequence number of the oldest unit it holds),
//!   `last` (the latest instant the bucket used), `pause` (paused until), `win` and `calls`
//!   (the largest window and `calls` any caller used) and `exp` (the instant up to which
//!   both keys live); `queue`, the FIFO of waiters as `id,cost,lease_expiry;` entries (ids
//!   as decimal strings: Lua numbers are doubles, ids are 64-bit); and `held`, the holds in
//!   flight as `id,cost,admitted,lease_expiry;` entries.
//! - `{p:b}:r`, the ring of **runs**: a string of `cap` entries of 16 bytes, two
//!   little-endian doubles: the instant of a run of units logged at one instant and the
//!   sequence number just past its last unit; run `r` is at entry `r % cap`. A call of any
//!   cost adds one run or extends the newest, so neither the ring nor the script's work
//!   grows with the cost (a call of cost 2^20 wrote 8 MiB in format 2, one entry per unit).
//!
//! The k-th newest unit (what a window asks: has it left?) is found by a search on the
//! runs' sequence numbers: it starts where the unit would be if every run held one unit,
//! which is exact for calls of cost 1, and gallops towards the newest, so it costs one
//! `GETRANGE` in the common case and O(log runs) at worst; `usage` counts a window's units
//! the same way. Runs are dropped from the old end when no window counts them any more:
//! the ring keeps the newest `max(calls, 64)` units that lie inside the largest window
//! seen, and always the newest 64 (so that a longer new rate still counts them), when the
//! ring is full: it starts with 64 entries, doubles when dropping leaves it more than half
//! full (but not past the `max(calls, 64)` units the windows may count, one run each at
//! worst: 2^20 runs, 16 MiB) and halves when it leaves it a quarter full, so that a drop
//! (one search) comes at most once per half a ring of runs, and a resize (one `GET` and
//! one `SET` of the ring) is paid for by the runs that filled or emptied it. The rewrite
//! of a format-2 ring takes time in its units, once (3.5 s for 2^20 units, each at an
//! instant of its own, on a loaded 2-core machine). Formats 1 and 2
//! (a ring of one instant per unit; 1 without holds) are rewritten as runs the first time
//! a script touches them; formats 1 to 3 kept each number in a field of its own (format 3
//! had no `exp`): they are read from there and written as format 4; any other format is [`Corrupt`](StoreErrorKind::Corrupt).
//!
//! A poll reads the hash, `TIME` and, per window and queued call it simulates, the run
//! entries of that search; with `n` waiters queued it costs O(n × (n + windows)) searches,
//! all inside one script run, whatever the costs.
//!
//! Each command a script calls costs about as much as a whole `INCR`, so a call sends only
//! what it needs: a permitted poll of cost 1 on a bucket without waiters or holds is the
//! hash's read (`v`, `n`, `queue`, `held`), `TIME`, the read of one ring entry per window
//! whose unit the ring still holds, and the write of one ring entry and of `n`. The newest
//! run is read only when a unit may join it (at an instant not after the bucket's `last`).
//! Both keys need a time to live of the largest window, pause or lease ahead plus
//! [`LEASE`] and a second, so that idle buckets vanish on their own; it is set only when
//! `exp` falls short of that, and then a quarter more (at most a minute more), so a busy
//! bucket sets it about once a minute.
//!
//! # The clock
//!
//! The script reads the server's `TIME` (allowed in scripts since Redis 5 replicates their
//! effects) in **microseconds**: about 2^51 today, exact in Lua's doubles, unlike
//! nanoseconds. The instant is clamped to the bucket's `last`, so a bucket's clock never
//! goes back (a server whose clock is set back, a replica promoted with a slower clock).
//! Windows are passed in microseconds rounded up, so rounding never admits more; waits come
//! back in microseconds. The script also takes an explicit instant (a last argument after
//! the rates) that only the tests pass, to run it beside the Rust model (`model.rs`) on one
//! clock and compare every answer; it is clamped the same way.
//!
//! # Connections
//!
//! The store keeps up to `pool=` idle [`redis::Connection`]s (a mutex around a vector) and
//! opens another one when all are in use. Connects, reads and writes time out after
//! `timeout_ms=`. A connection that failed is dropped, never returned. When a pooled
//! connection turns out to be dead (the server restarted or closed it while idle), the
//! operation is retried once on a fresh connection: at worst a script that ran but whose
//! reply was lost runs twice, which logs units twice but never admits more than the rates.
//! [`RedisStore::open`] connects, authenticates and loads the script once, so that a bad
//! URL or password fails early.
//!
//! # Redis Cluster
//!
//! A `redis+cluster://` (or `rediss+cluster://`) URL names one or more nodes of a Redis
//! Cluster; the pooled connections are then [`redis::cluster::ClusterConnection`]s, which
//! learn the slot map from those nodes, keep a connection per node and send each command to
//! the node that owns its keys' hash slot. Both keys of a bucket carry the tag `{p:b}`, so
//! they hash to one slot: the script runs on one node, with its `TIME`, exactly as on one
//! server. `SCRIPT LOAD` and `PING` at open go to every node; when the cluster connection
//! reaches no node, each is asked as one server, so that a wrong password is
//! [`Invalid`](StoreErrorKind::Invalid) at open as on one server (the cluster connection
//! reports it as I/O). A redirection (`MOVED`,
//! `ASK`), `TRYAGAIN`, `CLUSTERDOWN` or a refused node is retried by the cluster connection
//! up to 3 times and is then [`Unavailable`](StoreErrorKind::Unavailable), so that the
//! limiter's `on_unavailable=` decides how long a call waits. A node that restarts keeps
//! its buckets only with the persistence described under Restarts; while it is down, the
//! buckets of its slots are unavailable (and with `cluster-require-full-coverage yes`, the
//! default, so is every bucket once the other nodes mark it failed).
//!
//! # Errors
//!
//! - [`Unavailable`](StoreErrorKind::Unavailable): connection refused, timeouts, I/O,
//!   `LOADING`, `BUSY`, `MASTERDOWN`, `READONLY`, `OOM` and cluster redirections: retrying
//!   may help.
//! - [`Invalid`](StoreErrorKind::Invalid): a URL the `redis` crate rejects, a wrong user or
//!   password (`WRONGPASS`, `NOAUTH`), missing permissions (`NOPERM`), `protocol=resp3`
//!   against a server without RESP3, a poll without windows or with a cost above a
//!   window's `calls`, and a rate of more than [`MAX_CALLS`](crate::limiter::MAX_CALLS)
//!   calls (poll, release and usage): all refused before any script runs.
//! - [`Corrupt`](StoreErrorKind::Corrupt): the script found the bucket's keys damaged or of
//!   another format (or of another type), or the reply made no sense.
//!
//! Messages name the server with its password redacted ([`redact`]), and
//! any trace of the password is scrubbed from the `redis` crate's text as well; `Debug`
//! shows no password either.
//!
//! # Restarts
//!
//! A Redis restart keeps the quota only if the server persists every write: AOF with
//! `appendonly yes` and `appendfsync always`. With `everysec` a crash may lose the last
//! second of admissions, and without persistence a restarted server forgets the log, so
//! the processes may admit a whole window's quota again at once.

use super::url::{RedisSettings, redact};
use super::{
    HoldLease, LEASE, Place, Store, StoreError, StoreErrorKind, Usage, Verdict, Window,
    check_windows,
};

use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{Connection, ConnectionLike, ErrorKind, RedisError, ServerErrorKind};
use std::fmt;
use std::time::Duration;

/// The script behind every operation.
const SCRIPT: &str = include_str!("redis.lua");

/// The largest number passed to the script: integers up to 2^53 are exact in Lua.
const LUA_MAX: u64 = 1 << 52;

/// How many times a cluster connection follows a redirection (`MOVED`, `ASK`) or retries
/// `TRYAGAIN`, `CLUSTERDOWN` or a refused node before the operation is
/// [`Unavailable`](StoreErrorKind::Unavailable): enough for a slot that moved, few enough
/// that the limiter's own waiting (`on_unavailable=`) decides how long a call waits.
const CLUSTER_RETRIES: u32 = 3;

/// Where the store's connections go: one server, or a Redis Cluster.
enum Client {
    One(redis::Client),
    Cluster(ClusterClient),
}

/// A connection to one server, or to a cluster (one connection per node, each command sent
/// to the node that owns its keys' hash slot).
enum Conn {
    One(Connection),
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::One(c) => c,
            Conn::Cluster(c) => &mut **c,
        }
    }
}

/// Buckets in a Redis server, or a Redis Cluster, shared by many hosts.
pub struct RedisStore {
    client: Client,
    idle: Mutex<Vec<Conn>>,
    pool: usize,
    timeout: Duration,
    prefix: String,
    /// The URL without its password, for messages.
    location: String,
    /// The password (raw and decoded), scrubbed from every message.
    secrets: Vec<String>,
    script: redis::Script,
    /// The instant (µs) the script uses instead of the server's `TIME` when not zero, so
    /// that tests run it beside the model on one clock.
    #[cfg(test)]
    now_us: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("location", &self.location)
            .field("prefix", &self.prefix)
            .field("pool", &self.pool)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The password of `url` as written and percent-decoded, if it has one.
fn secrets(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return Vec::new();
    };
    let userinfo = &authority[..at];
    let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    if password.is_empty() {
        return Vec::new();
    }
    let mut out = vec![password.to_string()];
    let mut decoded = Vec::new();
    let bytes = password.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match password
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    if let Ok(d) = String::from_utf8(decoded)
        && d != password
        && !d.is_empty()
    {
        out.push(d);
    }
    out
}

/// How a failure of the `redis` crate or the server maps to a store error kind.
fn kind_of(e: &RedisError) -> StoreErrorKind {
    use StoreErrorKind::*;
    if e.is_io_error() || e.is_timeout() || e.is_connection_refusal() || e.is_connection_dropped() {
        return Unavailable;
    }
    if e.code() == Some("QGCORRUPT") {
        return Corrupt;
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed
        | ErrorKind::InvalidClientConfig
        | ErrorKind::RESP3NotSupported => Invalid,
        ErrorKind::Server(ServerErrorKind::NoPerm) => Invalid,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask
            | ServerErrorKind::CrossSlot,
        ) => Unavailable,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => Corrupt,
        // Lua errors on damaged data (wrong key types, bad entries) come back as ERR.
        ErrorKind::Server(ServerErrorKind::ResponseError) => {
            if e.detail()
                .is_some_and(|d| d.contains("max number of clients"))
            {
                Unavailable
            } else {
                Corrupt
            }
        }
        _ => match e.code() {
            Some("NOAUTH" | "WRONGPASS") => Invalid,
            Some("WRONGTYPE") => Corrupt,
            Some("BUSY" | "OOM" | "LOADING" | "MISCONF" | "NOREPLICAS") => Unavailable,
            _ => Unavailable,
        },
    }
}

impl RedisStore {
    /// Opens the Redis server of `settings`: connects once, authenticates and loads the
    /// script, so that a bad URL or password fails here ([`StoreErrorKind::Invalid`]); a
    /// server that cannot be reached now is [`StoreErrorKind::Unavailable`].
    pub fn open(settings: &RedisSettings) -> Result<Self, StoreError> {
        let location = redact(&settings.url);
        let secrets = secrets(&settings.url);
        let client = if settings.cluster_nodes.is_empty() {
            redis::Client::open(settings.url.as_str()).map(Client::One)
        } else {
            ClusterClient::builder(settings.cluster_nodes.iter().map(String::as_str))
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                .retries(CLUSTER_RETRIES)
                .build()
                .map(Client::Cluster)
        }
        .map_err(|e| {
            let mut message = format!("a bad Redis store URL {location}: {e}");
            for s in &secrets {
                message = message.replace(s.as_str(), "***");
            }
            StoreError::new(StoreErrorKind::Invalid, message)
        })?;
        let store = Self {
            client,
            idle: Mutex::new(Vec::new()),
            pool: settings.pool.max(1),
            timeout: settings.timeout,
            prefix: settings.prefix.clone(),
            location,
            secrets,
            script: redis::Script::new(SCRIPT),
            #[cfg(test)]
            now_us: std::sync::atomic::AtomicU64::new(0),
        };
        let mut con = store
            .connect()
            .map_err(|e| store.diagnose_cluster(settings, e))?;
        // On a cluster both go to every node: the script is then cached wherever a bucket
        // lives (a node that forgot it gets it again on `NOSCRIPT`).
        redis::cmd("PING")
            .query::<()>(con.like())
            .and_then(|()| store.script.load(con.like()).map(drop))
            .map_err(|e| store.error("cannot use", &e))?;
        store.idle.lock().push(con);
        Ok(store)
    }

    /// A cluster connection that reached no node says why only in its text (a wrong
    /// password looks like an I/O error there): ask the nodes one by one as single servers,
    /// and report the first refusal that is [`Invalid`](StoreErrorKind::Invalid) (a wrong
    /// password, missing permissions) as such, so that it fails at open rather than make
    /// every call wait. Otherwise `e` stands.
    fn diagnose_cluster(&self, settings: &RedisSettings, e: StoreError) -> StoreError {
        if e.kind != StoreErrorKind::Unavailable {
            return e;
        }
        settings
            .cluster_nodes
            .iter()
            .find_map(|node| {
                let refused = redis::Client::open(node.as_str())
                    .and_then(|c| c.get_connection_with_timeout(self.timeout))
                    .err()?;
                let refused = self.error("cannot connect", &refused);
                (refused.kind == StoreErrorKind::Invalid).then_some(refused)
            })
            .unwrap_or(e)
    }

    fn error(&self, what: &str, e: &RedisError) -> StoreError {
        let mut message = format!("the Redis store {}: {what}: {e}", self.location);
        for s in &self.secrets {
            message = message.replace(s.as_str(), "***");
        }
        StoreError::new(kind_of(e), message)
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        match &self.client {
            Client::One(client) => {
                let con = client
                    .get_connection_with_timeout(self.timeout)
                    .map_err(|e| self.error("cannot connect", &e))?;
                con.set_read_timeout(Some(self.timeout))
                    .and_then(|()| con.set_write_timeout(Some(self.timeout)))
                    .map_err(|e| self.error("cannot set timeouts", &e))?;
                Ok(Conn::One(con))
            }
            // The client's connect and response timeouts apply to every node.
            Client::Cluster(client) => client
                .get_connection()
                .map(|c| Conn::Cluster(Box::new(c)))
                .map_err(|e| self.error("cannot connect", &e)),
        }
    }

    /// Runs `f` on a pooled (or new) connection; a pooled connection found dead is replaced
    /// by a new one once.
    fn with_connection<T>(
        &self,
        what: &str,
        f: impl Fn(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().pop();
        let (mut con, from_pool) = match pooled {
            Some(c) => (c, true),
            None => (self.connect()?, false),
        };
        let result = match f(con.like()) {
            // A timeout is no sign of a dead connection: the script may still be running.
            Err(e) if from_pool && !e.is_timeout() && e.is_connection_dropped() => {
                con = self.connect()?;
                f(con.like())
            }
            other => other,
        };
        match result {
            Ok(v) => {
                let mut idle = self.idle.lock();
                if idle.len() < self.pool {
                    idle.push(con);
                }
                Ok(v)
            }
            Err(e) => Err(self.error(what, &e)),
        }
    }

    /// Runs the script for `op` on bucket `key`.
    fn run(
        &self,
        what: &str,
        key: &str,
        op: Op<'_>,
        windows: &[Window],
    ) -> Result<Vec<i64>, StoreError> {
        let Op {
            name: op,
            cost,
            id,
            extra,
        } = op;
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // The command is written once, straight into its buffer, and sent again as it is
        // after loading the script on `NOSCRIPT`.
        let tag = format!("{{{}:{}}}", self.prefix, key);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(2)
            .arg(format!("{tag}:s"))
            .arg(format!("{tag}:r"))
            .arg(op)
            .arg(cost.min(LUA_MAX))
            .arg(id)
            .arg(micros(LEASE))
            .arg(micros(extra).min(LUA_MAX));
        for w in windows {
            cmd.arg(w.calls.min(LUA_MAX))
                .arg(w.window_ns.div_ceil(1000).min(LUA_MAX));
        }
        #[cfg(test)]
        match self.now_us.load(std::sync::atomic::Ordering::Relaxed) {
            0 => {}
            now => {
                cmd.arg(now);
            }
        }
        self.with_connection(what, |con| match cmd.query::<Vec<i64>>(con) {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load(con)?;
                cmd.query(con)
            }
            other => other,
        })
    }

    fn corrupt(&self, key: &str, reply: &[i64]) -> StoreError {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "the Redis store {}: bucket {key:?}: an unexpected reply {reply:?}",
                self.location
            ),
        )
    }
}

/// One operation of the script: its name, the call's cost, the waiter's or hold's id (0
/// for none) and a duration (the pause to set, a hold's lease, how long ago a hold ended).
#[derive(Clone, Copy)]
struct Op<'a> {
    name: &'a str,
    cost: u64,
    id: u64,
    extra: Duration,
}

impl<'a> Op<'a> {
    fn new(name: &'a str) -> Self {
        Op {
            name,
            cost: 0,
            id: 0,
            extra: Duration::ZERO,
        }
    }
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

impl Store for RedisStore {
    fn poll(
        &self,
        key: &str,
        windows: &[Window],
        cost: u64,
        place: Place,
        hold: Option<HoldLease>,
    ) -> Result<Verdict, StoreError> {
        check_windows(&self.location, windows, Some(cost))?;
        let (op, id) = match (place, hold) {
            (Place::Try, None) => ("try", 0),
            (Place::Try, Some(h)) => ("try_hold", h.id),
            (Place::Peek, _) => ("peek", 0),
            (Place::Queue { id }, None) => ("queue", id),
            // The queue knows the waiter by its id, the hold by the same id.
            (Place::Queue { id }, Some(_)) => ("queue_hold", id),
        };
        let reply = self.run(
            "cannot poll",
            key,
            Op {
                cost,
                id,
                extra: hold.map_or(Duration::ZERO, |h| h.duration),
                ..Op::new(op)
            },
            windows,
        )?;
        match reply[..] {
            [1] if place != Place::Peek => Ok(Verdict::Admitted),
            [0, wait] if wait >= 0 => Ok(Verdict::Wait(micros(wait))),
            _ => Err(self.corrupt(key, &reply)),
        }
    }

    fn leave(&self, key: &str, id: u64) -> Result<(), StoreError> {
        self.run(
            "cannot leave",
            key,
            Op {
                id,
                ..Op::new("leave")
            },
            &[],
        )
        .map(drop)
    }

    fn release(
        &self,
        key: &str,
        windows: &[Window],
        id: u64,
        ago: Duration,
    ) -> Result<(), StoreError> {
        check_windows(&self.location, windows, None)?;
        self.run(
            "cannot release",
            key,
            Op {
                id,
                extra: ago,
                ..Op::new("release")
            },
            windows,
        )
        .map(drop)
    }

    fn pause(&self, key: &str, duration: Duration) -> Result<(), StoreError> {
        self.run(
            "cannot pause",
            key,
            Op {
                extra: duration,
                ..Op::new("pause")
            },
            &[],
        )
        .map(drop)
    }

    fn usage(&self, key: &str, windows: &[Window]) -> Result<Usage, StoreError> {
        if !windows.is_empty() {
            check_windows(&self.location, windows, None)?;
        }
        let reply = self.run("cannot read", key, Op::new("usage"), windows)?;
        match reply[..] {
            [paused, queued, in_flight, ref used @ ..]
                if used.len() == windows.len() && paused >= 0 && queued >= 0 && in_flight >= 0 =>
            {
                Ok(Usage {
                    used: used.iter().map(|&u| u.max(0) as u64).collect(),
                    paused_for: micros(paused),
                    queued: queued as u64,
                    in_flight: in_flight as u64,
                })
            }
            _ => Err(self.corrupt(key, &reply)),
        }
    }

    fn location(&self) -> String {
        self.location.clone()
    }
}

#[cfg(test)]
mod model_test;

#[cfg(test)]
mod tests {
    use super::super::{StoreConfig, StoreKind};
    use super::*;
    use std::collections::HashMap;
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    const MS: u64 = 1_000_000;

    /// The test server's URL, or `None` (with a visible line) when there is none; CI must
    /// run these tests.
    pub(super) fn server_url() -> Option<String> {
        match std::env::var("QUOTAGATE_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("CI must run the Redis store tests: set QUOTAGATE_TEST_REDIS_URL");
                }
                println!("skipped: QUOTAGATE_TEST_REDIS_URL not set");
                None
            }
        }
    }

    /// The test cluster's URL (`redis+cluster://`), or `None` (with a visible line) when
    /// there is none; CI must run these tests.
    pub(super) fn cluster_url() -> Option<String> {
        match std::env::var("QUOTAGATE_TEST_REDIS_CLUSTER_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "CI must run the Redis Cluster tests: set QUOTAGATE_TEST_REDIS_CLUSTER_URL"
                    );
                }
                println!("skipped: QUOTAGATE_TEST_REDIS_CLUSTER_URL not set");
                None
            }
        }
    }

    /// A prefix no other test (or earlier run) uses.
    pub(super) fn unique(name: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!(
            "qgtest-{name}-{}-{t}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The settings of a `redis://` or `redis+cluster://` URL, with `prefix`, a pool of 4
    /// and `timeout_ms`.
    fn settings(url: &str, prefix: &str, timeout_ms: u64) -> RedisSettings {
        let StoreKind::Redis(s) = StoreConfig::parse(url).unwrap().kind else {
            panic!("{url} is no Redis URL")
        };
        RedisSettings {
            prefix: prefix.to_string(),
            pool: 4,
            timeout: Duration::from_millis(timeout_ms),
            ..s
        }
    }

    fn open(url: &str, prefix: &str) -> RedisStore {
        RedisStore::open(&settings(url, prefix, 2000)).unwrap()
    }

    fn rate(calls: u64, ms: u64) -> Window {
        Window {
            calls,
            window_ns: ms * MS,
        }
    }

    fn wait_of(v: Verdict) -> Duration {
        match v {
            Verdict::Wait(d) => d,
            Verdict::Admitted => panic!("admitted, expected a wait"),
        }
    }

    fn near(d: Duration, ms: u64, slack_ms: u64) -> bool {
        let d = d.as_millis() as u64;
        d + slack_ms >= ms && d <= ms + 5
    }

    /// The format and the numbers of bucket `key` (the hash's field `n`, ten little-endian
    /// doubles) by name, read straight from Redis; none for a bucket that does not exist.
    fn numbers(url: &str, prefix: &str, key: &str) -> (u64, HashMap<&'static str, u64>) {
        let mut con = open(url, "raw").connect().unwrap();
        let (v, n): (Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(format!("{{{prefix}:{key}}}:s"))
            .arg(&["v", "n"])
            .query(con.like())
            .unwrap();
        let n = n.unwrap_or_default();
        assert!(n.is_empty() || n.len() == 80, "{} bytes", n.len());
        let names = [
            "next", "cap", "from", "runs", "base", "last", "pause", "win", "calls", "exp",
        ];
        let numbers = names
            .into_iter()
            .zip(n.chunks(8))
            .map(|(name, b)| (name, f64::from_le_bytes(b.try_into().unwrap()) as u64))
            .collect();
        (v.unwrap_or_default(), numbers)
    }

    /// The instants (µs) of the units the ring of runs holds for `key`, oldest first, read
    /// straight from Redis.
    fn logged(url: &str, prefix: &str, key: &str) -> Vec<f64> {
        let (_, n) = numbers(url, prefix, key);
        let [cap, from, runs, mut start] =
            ["cap", "from", "runs", "base"].map(|name| n.get(name).copied().unwrap_or_default());
        let mut con = open(url, "raw").connect().unwrap();
        let con = con.like();
        let tag = format!("{{{prefix}:{key}}}");
        let ring: Vec<u8> = redis::cmd("GET")
            .arg(format!("{tag}:r"))
            .query::<Option<Vec<u8>>>(&mut *con)
            .unwrap()
            .unwrap_or_default();
        let mut units = Vec::new();
        for r in from..runs {
            let i = ((r % cap) * 16) as usize;
            let word = |j: usize| f64::from_le_bytes(ring[j..j + 8].try_into().unwrap());
            let (t, stop) = (word(i), word(i + 8) as u64);
            units.extend(std::iter::repeat_n(t, (stop - start) as usize));
            start = stop;
        }
        units
    }

    /// A redis-server of the test's own, in `dir`, on `port`.
    struct Server {
        port: u16,
    }

    impl Server {
        fn start(port: u16, dir: &Path, extra: &[&str]) -> Server {
            let status = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--daemonize",
                    "yes",
                    "--save",
                    "",
                ])
                .arg("--dir")
                .arg(dir)
                .args(extra)
                .stdout(Stdio::null())
                .status()
                .expect("redis-server runs");
            assert!(status.success());
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            Server { port }
        }

        fn stop(&self, auth: &[&str]) {
            let _ = Command::new("redis-cli")
                .args(["-p", &self.port.to_string()])
                .args(auth)
                .arg("shutdown")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(Instant::now() < deadline, "redis-server did not stop");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(unique(name));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_window_holds_across_threads_and_instances() {
        if let Some(url) = server_url() {
            window_holds_across_threads_and_instances(&url);
        }
    }

    #[test]
    fn the_window_holds_across_threads_and_instances_on_a_cluster() {
        if let Some(url) = cluster_url() {
            window_holds_across_threads_and_instances(&url);
        }
    }

    /// Eight threads on two store instances poll one bucket of `url` as fast as it admits:
    /// no window ever held more than its calls.
    fn window_holds_across_threads_and_instances(url: &str) {
        let url = url.to_string();
        let prefix = unique("window");
        let stores = [Arc::new(open(&url, &prefix)), Arc::new(open(&url, &prefix))];
        let windows = [rate(5, 300), rate(8, 1000)];
        let admitted = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + Duration::from_millis(1300);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let store = stores[i % 2].clone();
                let admitted = admitted.clone();
                std::thread::spawn(move || {
                    while Instant::now() < end {
                        let cost = 1 + (i as u64 % 2);
                        match store.poll("b", &windows, cost, Place::Try, None).unwrap() {
                            Verdict::Admitted => {
                                admitted.fetch_add(cost, Ordering::Relaxed);
                            }
                            Verdict::Wait(d) => std::thread::sleep(d.min(Duration::from_millis(3))),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let log = logged(&url, &prefix, "b");
        let total = admitted.load(Ordering::Relaxed);
        assert_eq!(log.len() as u64, total, "every admitted unit is logged");
        assert!(total >= 8, "the rates admitted {total} units only");
        for w in windows {
            let calls = w.calls as usize;
            let us = (w.window_ns / 1000) as f64;
            for i in calls..log.len() {
                assert!(
                    log[i] - log[i - calls] >= us,
                    "{} units within {} µs: {:?}",
                    calls + 1,
                    us,
                    &log[i - calls..=i]
                );
            }
        }
        let usage = stores[0].usage("b", &windows).unwrap();
        assert!(usage.used[0] <= 5 && usage.used[1] <= 8, "{usage:?}");
    }

    fn hold(id: u64, ms: u64) -> Option<HoldLease> {
        Some(HoldLease {
            id,
            duration: Duration::from_millis(ms),
        })
    }

    #[test]
    fn holds_count_in_flight_until_released_and_then_from_their_end() {
        let Some(url) = server_url() else { return };
        let store = open(&url, &unique("holds"));
        let w = [rate(2, 400)];
        for id in [11, 12] {
            assert_eq!(
                store
                    .poll("b", &w, 1, Place::Try, hold(id, 60_000))
                    .unwrap(),
                Verdict::Admitted
            );
        }
        let u = store.usage("b", &w).unwrap();
        assert_eq!((u.in_flight, u.used[0]), (2, 0), "{u:?}");
        // Both in flight: the wait is the lower bound of one window from now.
        let t = wait_of(store.poll("b", &w, 1, Place::Try, None).unwrap());
        assert!(near(t, 400, 100), "{t:?}");
        // A queued hold waits behind them and holds its units once admitted.
        let q = wait_of(
            store
                .poll("b", &w, 1, Place::Queue { id: 13 }, hold(13, 60_000))
                .unwrap(),
        );
        assert!(near(q, 400, 100), "{q:?}");
        store.release("b", &w, 11, Duration::ZERO).unwrap();
        store.release("b", &w, 11, Duration::ZERO).unwrap();
        store.release("b", &w, 99, Duration::ZERO).unwrap();
        let u = store.usage("b", &w).unwrap();
        assert_eq!(
            (u.in_flight, u.used[0]),
            (1, 1),
            "a second release changes nothing: {u:?}"
        );
        // Ended "a minute ago": counted from its admission, not before.
        store.release("b", &w, 12, Duration::from_secs(60)).unwrap();
        let u = store.usage("b", &w).unwrap();
        assert_eq!((u.in_flight, u.used[0]), (0, 2), "{u:?}");
        std::thread::sleep(Duration::from_millis(420));
        assert_eq!(
            store
                .poll("b", &w, 1, Place::Queue { id: 13 }, hold(13, 60_000))
                .unwrap(),
            Verdict::Admitted
        );
        assert_eq!(store.usage("b", &w).unwrap().in_flight, 1);
    }

    #[test]
    fn a_hold_whose_lease_runs_out_is_logged_at_the_lease_end() {
        let Some(url) = server_url() else { return };
        let store = open(&url, &unique("lease"));
        let w = [rate(1, 300)];
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, hold(7, 200)).unwrap(),
            Verdict::Admitted
        );
        std::thread::sleep(Duration::from_millis(250));
        // Logged at the lease's end (200 ms), so it counts until 500 ms.
        let u = store.usage("b", &w).unwrap();
        assert_eq!((u.in_flight, u.used[0]), (0, 1), "{u:?}");
        let t = wait_of(store.poll("b", &w, 1, Place::Try, None).unwrap());
        assert!(near(t, 250, 100), "{t:?}");
        std::thread::sleep(t + Duration::from_millis(10));
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
    }

    /// Writes bucket `key` as formats 1 and 2 kept it: the hash (`next` units ever, the
    /// latest instant `last`, the holds `held` in format 2, no pause, no queue) and a ring
    /// of unit instants (µs), the unit with sequence number `s` at entry `s % ring.len()`.
    fn write_old_bucket(
        url: &str,
        prefix: &str,
        key: &str,
        next: u64,
        last: u64,
        held: Option<String>,
        ring: &[f64],
    ) {
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        let tag = format!("{{{prefix}:{key}}}");
        let mut hset = redis::cmd("HSET");
        hset.arg(format!("{tag}:s"))
            .arg("v")
            .arg(if held.is_some() { 2 } else { 1 })
            .arg(&["from", "0", "pause", "0", "win", "1000", "queue", ""])
            .arg("next")
            .arg(next)
            .arg("last")
            .arg(last)
            .arg("cap")
            .arg(ring.len());
        if let Some(held) = held {
            hset.arg("held").arg(held);
        }
        hset.exec(&mut con).unwrap();
        let bytes: Vec<u8> = ring.iter().flat_map(|t| t.to_le_bytes()).collect();
        redis::cmd("SET")
            .arg(format!("{tag}:r"))
            .arg(bytes)
            .exec(&mut con)
            .unwrap();
    }

    #[test]
    fn buckets_of_formats_1_and_2_are_rewritten_as_runs() {
        let Some(url) = server_url() else { return };
        let prefix = unique("format");
        let store = open(&url, &prefix);
        let t: u64 = 1_780_000_000_000_000;
        store.now_us.store(t, Ordering::Relaxed);
        let at = |ago: u64| (t - ago) as f64;
        // Format 2: six units ever, the ring of four holds units 2 to 5 (unit 4 at entry 0),
        // and a hold of two units in flight.
        let held = format!("7,2,{},{};", t - 50, t + 100_000);
        write_old_bucket(
            &url,
            &prefix,
            "two",
            6,
            t - 100,
            Some(held),
            &[at(500), at(100), at(900), at(900)],
        );
        let w = [rate(10, 1)];
        let short = [Window {
            calls: 10,
            window_ns: 600_000,
        }];
        let u = store.usage("two", &w).unwrap();
        assert_eq!((u.used[0], u.in_flight), (4, 2), "{u:?}");
        assert_eq!(store.usage("two", &short).unwrap().used, vec![2]);
        assert_eq!(
            store.poll("two", &w, 4, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        // The tenth newest unit is the oldest, 900 µs ago.
        assert_eq!(
            store.poll("two", &w, 1, Place::Try, None).unwrap(),
            Verdict::Wait(Duration::from_micros(100))
        );
        assert_eq!(
            logged(&url, &prefix, "two"),
            [
                at(900),
                at(900),
                at(500),
                at(100),
                at(0),
                at(0),
                at(0),
                at(0)
            ]
        );
        let (v, n) = numbers(&url, &prefix, "two");
        assert_eq!((v, n["runs"]), (4, 4), "format 4, one run per instant");
        // Format 1 had no holds: three units ever, the ring of two holds units 1 and 2.
        write_old_bucket(&url, &prefix, "one", 3, t - 200, None, &[at(200), at(300)]);
        let u = store.usage("one", &w).unwrap();
        assert_eq!((u.used[0], u.in_flight), (2, 0), "{u:?}");
        assert_eq!(
            store
                .poll("one", &w, 1, Place::Try, hold(1, 60_000))
                .unwrap(),
            Verdict::Admitted
        );
        assert_eq!(logged(&url, &prefix, "one"), [at(300), at(200)]);
        let u = store.usage("one", &w).unwrap();
        assert_eq!((u.used[0], u.in_flight), (2, 1), "{u:?}");
    }

    #[test]
    fn buckets_of_format_3_are_read_and_written_as_format_4() {
        let Some(url) = server_url() else { return };
        let prefix = unique("format3");
        let store = open(&url, &prefix);
        let t: u64 = 1_780_000_000_000_000;
        store.now_us.store(t, Ordering::Relaxed);
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let tag = format!("{{{prefix}:b}}");
        // Format 3: five units ever in runs 1 (units 0 to 2, 300 µs ago) and 2 (units 3 and 4,
        // 100 µs ago) of a ring of 64, a hold of one unit in flight; no exp, no time to live.
        redis::cmd("HSET")
            .arg(format!("{tag}:s"))
            .arg(&["v", "3", "cap", "64", "from", "1", "runs", "3", "base", "0"])
            .arg(&["pause", "0", "win", "1000", "calls", "10", "queue", ""])
            .arg("next")
            .arg(5)
            .arg("last")
            .arg(t - 100)
            .arg("held")
            .arg(format!("7,1,{},{};", t - 50, t + 100_000))
            .exec(&mut con)
            .unwrap();
        let mut ring = vec![0u8; 64 * 16];
        for (r, at, stop) in [(1usize, t - 300, 3.0), (2, t - 100, 5.0)] {
            ring[r * 16..r * 16 + 8].copy_from_slice(&(at as f64).to_le_bytes());
            ring[r * 16 + 8..r * 16 + 16].copy_from_slice(&f64::to_le_bytes(stop));
        }
        redis::cmd("SET")
            .arg(format!("{tag}:r"))
            .arg(ring)
            .exec(&mut con)
            .unwrap();
        let w = [rate(7, 1)];
        let u = store.usage("b", &w).unwrap();
        assert_eq!((u.used[0], u.in_flight), (5, 1), "{u:?}");
        // A unit fits beside the five logged and the one in flight; then none.
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Wait(Duration::from_micros(700))
        );
        let at = |ago: u64| (t - ago) as f64;
        assert_eq!(
            logged(&url, &prefix, "b"),
            [at(300), at(300), at(300), at(100), at(100), at(0)]
        );
        let (v, n) = numbers(&url, &prefix, "b");
        assert_eq!((v, n["last"], n["next"], n["runs"]), (4, t, 6, 4));
        assert!(n["exp"] > t, "{n:?}");
        // The numbers of format 3 are gone from the hash.
        let mut fields: Vec<String> = redis::cmd("HKEYS")
            .arg(format!("{tag}:s"))
            .query(&mut con)
            .unwrap();
        fields.sort();
        assert_eq!(fields, ["held", "n", "queue", "v"]);
        for suffix in ["s", "r"] {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(format!("{tag}:{suffix}"))
                .query(&mut con)
                .unwrap();
            assert!(ttl > LEASE.as_millis() as i64, "{suffix}: {ttl}");
        }
    }

    #[test]
    fn waiters_are_admitted_in_order_at_their_due_instants() {
        let Some(url) = server_url() else { return };
        let store = open(&url, &unique("fifo"));
        let w = [rate(2, 400)];
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        // The first waiter needs both slots: due when the newest unit leaves.
        let w1 = wait_of(
            store
                .poll("b", &w, 2, Place::Queue { id: 1 }, None)
                .unwrap(),
        );
        assert!(near(w1, 400, 150), "{w1:?}");
        // The second lines up behind it: due a window after the first.
        let w2 = wait_of(
            store
                .poll("b", &w, 1, Place::Queue { id: 2 }, None)
                .unwrap(),
        );
        assert!(near(w2, 800, 150), "{w2:?}");
        // A newcomer never jumps the queue.
        let t = wait_of(store.poll("b", &w, 1, Place::Try, None).unwrap());
        assert!(near(t, 800, 150), "{t:?}");
        std::thread::sleep(w1 + Duration::from_millis(10));
        let again = wait_of(
            store
                .poll("b", &w, 1, Place::Queue { id: 2 }, None)
                .unwrap(),
        );
        assert!(near(again, 400, 150), "the second still waits: {again:?}");
        assert_eq!(
            store
                .poll("b", &w, 2, Place::Queue { id: 1 }, None)
                .unwrap(),
            Verdict::Admitted
        );
        let w2 = wait_of(
            store
                .poll("b", &w, 1, Place::Queue { id: 2 }, None)
                .unwrap(),
        );
        assert!(near(w2, 400, 150), "{w2:?}");
        std::thread::sleep(w2 + Duration::from_millis(10));
        assert_eq!(
            store
                .poll("b", &w, 1, Place::Queue { id: 2 }, None)
                .unwrap(),
            Verdict::Admitted
        );
        let u = store.usage("b", &w).unwrap();
        // The first waiter's units left the window when the second became due.
        assert_eq!((u.used[0], u.queued), (1, 0), "{u:?}");
    }

    #[test]
    fn queued_waits_are_told_in_full() {
        let Some(url) = server_url() else { return };
        let store = open(&url, &unique("full-wait"));
        let w = [rate(1, 3000)];
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        // The waiter caps its own sleep; the store tells the whole wait, so that a
        // deadline that cannot be met fails at once.
        let q = wait_of(
            store
                .poll("b", &w, 1, Place::Queue { id: 9 }, None)
                .unwrap(),
        );
        assert!(near(q, 3000, 100), "{q:?}");
        let t = wait_of(store.poll("b", &w, 1, Place::Try, None).unwrap());
        assert!(near(t, 6000, 100), "Try reports the whole wait: {t:?}");
    }

    #[test]
    fn peek_never_admits() {
        let Some(url) = server_url() else { return };
        let store = open(&url, &unique("peek"));
        let w = [rate(1, 500)];
        for _ in 0..3 {
            assert_eq!(
                store.poll("b", &w, 1, Place::Peek, None).unwrap(),
                Verdict::Wait(Duration::ZERO)
            );
        }
        assert_eq!(store.usage("b", &w).unwrap().used, vec![0]);
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        let p = wait_of(store.poll("b", &w, 1, Place::Peek, None).unwrap());
        assert!(near(p, 500, 150), "{p:?}");
        assert_eq!(store.usage("b", &w).unwrap().used, vec![1]);
    }

    #[test]
    fn a_pause_is_shared_and_only_extends() {
        let Some(url) = server_url() else { return };
        let prefix = unique("pause");
        let (a, b) = (open(&url, &prefix), open(&url, &prefix));
        let w = [rate(10, 1000)];
        a.pause("b", Duration::from_millis(300)).unwrap();
        a.pause("b", Duration::from_millis(100)).unwrap();
        let t = wait_of(b.poll("b", &w, 1, Place::Try, None).unwrap());
        assert!(near(t, 300, 150), "{t:?}");
        let u = b.usage("b", &w).unwrap();
        assert!(near(u.paused_for, 300, 150), "{u:?}");
        std::thread::sleep(t + Duration::from_millis(10));
        assert_eq!(
            b.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        assert_eq!(a.usage("b", &w).unwrap().paused_for, Duration::ZERO);
    }

    #[test]
    fn leaving_frees_the_place() {
        let Some(url) = server_url() else { return };
        let store = open(&url, &unique("leave"));
        let w = [rate(1, 300)];
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        let first = wait_of(
            store
                .poll("b", &w, 1, Place::Queue { id: 11 }, None)
                .unwrap(),
        );
        let second = wait_of(
            store
                .poll("b", &w, 1, Place::Queue { id: 12 }, None)
                .unwrap(),
        );
        assert!(
            near(first, 300, 150) && near(second, 600, 150),
            "{first:?} {second:?}"
        );
        assert_eq!(store.usage("b", &w).unwrap().queued, 2);
        store.leave("b", 11).unwrap();
        store.leave("b", 999).unwrap();
        assert_eq!(store.usage("b", &w).unwrap().queued, 1);
        let moved = wait_of(
            store
                .poll("b", &w, 1, Place::Queue { id: 12 }, None)
                .unwrap(),
        );
        assert!(near(moved, 300, 150), "{moved:?}");
    }

    #[test]
    fn a_dead_waiter_loses_its_place_after_its_lease() {
        let Some(url) = server_url() else { return };
        let store = open(&url, &unique("lease"));
        let w = [rate(1, 200)];
        let start = Instant::now();
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        // Waiter 1 takes its place and never polls again.
        let first = wait_of(
            store
                .poll("b", &w, 1, Place::Queue { id: 21 }, None)
                .unwrap(),
        );
        assert!(near(first, 200, 150), "{first:?}");
        let admitted_at = loop {
            match store
                .poll("b", &w, 1, Place::Queue { id: 22 }, None)
                .unwrap()
            {
                Verdict::Admitted => break start.elapsed(),
                Verdict::Wait(d) => std::thread::sleep(d.min(Duration::from_millis(100))),
            }
            assert!(start.elapsed() < Duration::from_secs(5), "waiter 2 starves");
        };
        assert!(
            admitted_at >= Duration::from_millis(200) + LEASE - Duration::from_millis(50),
            "waiter 2 went ahead of a live lease at {admitted_at:?}"
        );
        assert!(
            admitted_at <= Duration::from_millis(200) + LEASE + Duration::from_millis(300),
            "the dead waiter kept its place too long: {admitted_at:?}"
        );
        assert_eq!(store.usage("b", &w).unwrap().queued, 0);
    }

    #[test]
    fn the_ring_grows_and_keeps_its_units() {
        let Some(url) = server_url() else { return };
        let prefix = unique("ring");
        let store = open(&url, &prefix);
        let small = [rate(10, 5000)];
        for _ in 0..10 {
            assert_eq!(
                store.poll("b", &small, 1, Place::Try, None).unwrap(),
                Verdict::Admitted
            );
        }
        assert!(matches!(
            store.poll("b", &small, 1, Place::Try, None).unwrap(),
            Verdict::Wait(_)
        ));
        // A caller with a larger rate: the ten units count, the ring grows past 64.
        let large = [rate(200, 5000), rate(1000, 6000)];
        let mut admitted = 0;
        while let Verdict::Admitted = store.poll("b", &large, 3, Place::Try, None).unwrap() {
            admitted += 3;
            assert!(admitted <= 200);
        }
        assert_eq!(admitted, 189, "190 units fit beside the ten");
        assert_eq!(store.usage("b", &large).unwrap().used, vec![199, 199]);
        let log = logged(&url, &prefix, "b");
        assert_eq!(log.len(), 199, "the ring holds every unit");
        assert!(log.windows(2).all(|p| p[0] <= p[1]), "in order");
        assert_eq!(store.usage("b", &small).unwrap().used, vec![199]);
    }

    /// The ring's entries (`cap`) and the byte length of its key.
    fn ring_size(url: &str, prefix: &str, key: &str) -> (u64, u64) {
        let cap = numbers(url, prefix, key).1["cap"];
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        let len: u64 = redis::cmd("STRLEN")
            .arg(format!("{{{prefix}:{key}}}:r"))
            .query(&mut con)
            .unwrap();
        (cap, len)
    }

    #[test]
    fn the_ring_of_runs_grows_wraps_and_shrinks() {
        let Some(url) = server_url() else { return };
        let prefix = unique("runs");
        let store = open(&url, &prefix);
        let t: u64 = 1_780_000_000_000_000;
        let w = [rate(1000, 1)];
        let poll_at = |at: u64, cost: u64| {
            store.now_us.store(at, Ordering::Relaxed);
            store.poll("b", &w, cost, Place::Try, None).unwrap()
        };
        // 300 units at 300 instants inside one window: 300 runs, so the ring of 64 doubles
        // three times.
        for i in 0..300 {
            assert_eq!(poll_at(t + i, 1), Verdict::Admitted);
        }
        assert_eq!(ring_size(&url, &prefix, "b"), (512, 512 * 16));
        // 500 units at one instant: one run.
        assert_eq!(poll_at(t + 400, 500), Verdict::Admitted);
        let log = logged(&url, &prefix, "b");
        assert_eq!(log.len(), 800);
        assert!(
            log[..300]
                .iter()
                .enumerate()
                .all(|(i, &u)| u == (t + i as u64) as f64)
        );
        assert!(log[300..].iter().all(|&u| u == (t + 400) as f64));
        assert_eq!(store.usage("b", &w).unwrap().used, vec![800]);
        // Later, runs of 64 units 100 µs apart: the 211th fills the ring, the 212th drops
        // every run outside the window, and the ring shrinks back to 64 entries.
        let later = t + 10_000;
        for j in 0..212 {
            assert_eq!(poll_at(later + 100 * j, 64), Verdict::Admitted);
        }
        assert_eq!(ring_size(&url, &prefix, "b"), (64, 64 * 16));
        let log = logged(&url, &prefix, "b");
        let newest = later + 100 * 211;
        let expected: Vec<f64> = (0..10)
            .rev()
            .flat_map(|k| std::iter::repeat_n((newest - 100 * k) as f64, 64))
            .collect();
        assert_eq!(log, expected, "the runs inside the window");
        assert_eq!(store.usage("b", &w).unwrap().used, vec![640]);
    }

    #[test]
    fn a_call_of_the_largest_cost_is_one_run() {
        let Some(url) = server_url() else { return };
        let prefix = unique("largest");
        let store = open(&url, &prefix);
        let max = u64::from(crate::limiter::MAX_CALLS);
        let w = [rate(max, 1)];
        for _ in 0..3 {
            let started = Instant::now();
            assert_eq!(
                store.poll("b", &w, max, Place::Try, None).unwrap(),
                Verdict::Admitted
            );
            // Each call once wrote 8 MiB; a slow machine still takes far less than this.
            assert!(started.elapsed() < Duration::from_millis(500));
            std::thread::sleep(Duration::from_millis(2));
        }
        // Three runs of 2^20 units each, in the initial ring of 64 entries.
        assert_eq!(ring_size(&url, &prefix, "b"), (64, 64 * 16));
        assert_eq!(
            store.usage("b", &[rate(max, 60_000)]).unwrap().used,
            vec![max]
        );
    }

    #[test]
    fn passwords_never_show() {
        let Some(_) = server_url() else { return };
        let dir = temp_dir("auth");
        let port = free_port();
        let server = Server::start(port, &dir, &["--requirepass", "Right-Pw-71"]);
        let wrong = format!("redis://:Wr0ng-Pw-52@127.0.0.1:{port}/0");
        let e = RedisStore::open(&settings(&wrong, "qg", 1000)).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        assert!(!e.message.contains("Wr0ng-Pw-52"), "{e}");
        assert!(e.message.contains("127.0.0.1"), "{e}");
        let none = format!("redis://127.0.0.1:{port}/0");
        let e = RedisStore::open(&settings(&none, "qg", 1000)).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        let right = format!("redis://:Right-Pw-71@127.0.0.1:{port}/0");
        let store = RedisStore::open(&settings(&right, "qg", 1000)).unwrap();
        assert!(!format!("{store:?}").contains("Right-Pw-71"));
        assert!(!store.location().contains("Right-Pw-71"));
        assert_eq!(
            store
                .poll("b", &[rate(1, 1000)], 1, Place::Try, None)
                .unwrap(),
            Verdict::Admitted
        );
        server.stop(&["-a", "Right-Pw-71", "--no-auth-warning"]);
        let e = store
            .poll("b", &[rate(1, 1000)], 1, Place::Try, None)
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
        assert!(!e.message.contains("Right-Pw-71"), "{e}");
        let e = RedisStore::open(&settings("redis://:p%40ss@[::1", "qg", 1000)).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        assert!(
            !e.message.contains("p%40ss") && !e.message.contains("p@ss"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn damaged_buckets_are_corrupt() {
        let Some(url) = server_url() else { return };
        let prefix = unique("corrupt");
        let store = open(&url, &prefix);
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("HSET")
            .arg(format!("{{{prefix}:b}}:s"))
            .arg("v")
            .arg("1")
            .arg("next")
            .arg("x")
            .exec(&mut con)
            .unwrap();
        let e = store
            .poll("b", &[rate(1, 100)], 1, Place::Try, None)
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
        redis::cmd("SET")
            .arg(format!("{{{prefix}:c}}:s"))
            .arg("x")
            .exec(&mut con)
            .unwrap();
        let e = store.usage("c", &[rate(1, 100)]).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
        // Format 4 numbers cut short, or one of them negative.
        let mut negative: Vec<u8> = [0.0f64; 10].iter().flat_map(|x| x.to_le_bytes()).collect();
        negative[8..16].copy_from_slice(&(-1.0f64).to_le_bytes());
        for (key, n) in [("e", b"0123456789".to_vec()), ("f", negative)] {
            redis::cmd("HSET")
                .arg(format!("{{{prefix}:{key}}}:s"))
                .arg("v")
                .arg(4)
                .arg("n")
                .arg(n)
                .exec(&mut con)
                .unwrap();
            let e = store
                .poll(key, &[rate(1, 100)], 1, Place::Try, None)
                .unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
            assert!(e.to_string().contains("bad numbers"), "{e}");
        }
        // The store still works after the errors.
        assert_eq!(
            store
                .poll("d", &[rate(1, 100)], 1, Place::Try, None)
                .unwrap(),
            Verdict::Admitted
        );
    }

    #[test]
    fn an_unreachable_server_is_unavailable_within_the_timeout() {
        let Some(_) = server_url() else { return };
        let port = free_port();
        let start = Instant::now();
        let e = RedisStore::open(&settings(
            &format!("redis://:pw-123@127.0.0.1:{port}"),
            "qg",
            500,
        ))
        .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
        assert!(!e.message.contains("pw-123"), "{e}");
        assert!(start.elapsed() < Duration::from_millis(1500));
        // A server that accepts connections but never answers: the read timeout bounds the
        // wait.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let start = Instant::now();
        let e = RedisStore::open(&settings(&format!("redis://127.0.0.1:{port}"), "qg", 300))
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        drop(silent);
    }

    #[test]
    fn the_log_survives_a_restart_with_persistence() {
        let Some(_) = server_url() else { return };
        let dir = temp_dir("restart");
        let port = free_port();
        let aof = ["--appendonly", "yes", "--appendfsync", "always"];
        let server = Server::start(port, &dir, &aof);
        let url = format!("redis://127.0.0.1:{port}");
        let store = open(&url, "qg");
        let w = [rate(3, 2000)];
        for _ in 0..3 {
            assert_eq!(
                store.poll("b", &w, 1, Place::Try, None).unwrap(),
                Verdict::Admitted
            );
        }
        let start = Instant::now();
        server.stop(&[]);
        let e = store.poll("b", &w, 1, Place::Try, None).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
        let server = Server::start(port, &dir, &aof);
        let verdict = loop {
            match store.poll("b", &w, 1, Place::Try, None) {
                Ok(v) => break v,
                Err(e) if e.kind == StoreErrorKind::Unavailable => {
                    assert!(start.elapsed() < Duration::from_secs(5), "{e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(
            start.elapsed() < Duration::from_millis(1800),
            "the restart took too long to test: {:?}",
            start.elapsed()
        );
        let wait = wait_of(verdict);
        assert!(wait > Duration::ZERO, "no over-admission after the restart");
        assert_eq!(store.usage("b", &w).unwrap().used, vec![3]);
        std::thread::sleep(wait + Duration::from_millis(10));
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        server.stop(&[]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_pooled_connection_closed_by_the_server_is_replaced() {
        let Some(url) = server_url() else { return };
        let store = open(&url, &unique("stale"));
        let w = [rate(100, 1000)];
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        let id: i64 = {
            let mut idle = store.idle.lock();
            assert_eq!(idle.len(), 1);
            redis::cmd("CLIENT")
                .arg("ID")
                .query(idle[0].like())
                .unwrap()
        };
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .exec(&mut con)
            .unwrap();
        assert_eq!(
            store.poll("b", &w, 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        assert_eq!(store.usage("b", &w).unwrap().used, vec![2]);
    }

    #[test]
    fn idle_buckets_expire() {
        let Some(url) = server_url() else { return };
        let prefix = unique("ttl");
        let store = open(&url, &prefix);
        store
            .poll("b", &[rate(1, 100)], 1, Place::Try, None)
            .unwrap();
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        // What the bucket needs (its window, a waiter's lease and a second), and a quarter
        // more, so that it is not set again on every call.
        let lease = LEASE.as_millis() as i64;
        let need = 100 + lease + 1000;
        let ttls = |con: &mut redis::Connection| {
            ["s", "r"].map(|suffix| {
                redis::cmd("PTTL")
                    .arg(format!("{{{prefix}:b}}:{suffix}"))
                    .query::<i64>(&mut *con)
                    .unwrap()
            })
        };
        let first = ttls(&mut con);
        for ttl in first {
            assert!(ttl > need && ttl <= need * 5 / 4, "{ttl}");
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            store.poll("b", &[rate(1, 1)], 1, Place::Try, None).unwrap(),
            Verdict::Admitted
        );
        let second = ttls(&mut con);
        assert!(
            second.iter().zip(first).all(|(&s, f)| s < f),
            "not set again while it covers what the bucket needs: {first:?}, then {second:?}"
        );
        // A longer window needs more: both keys get it at once.
        assert_eq!(
            store
                .poll("b", &[rate(5, 10_000)], 1, Place::Try, None)
                .unwrap(),
            Verdict::Admitted
        );
        for ttl in ttls(&mut con) {
            assert!(ttl > 10_000 + lease + 1000, "{ttl}");
        }
    }

    #[test]
    fn impossible_polls_are_invalid() {
        let Some(url) = server_url() else { return };
        let store = open(&url, &unique("invalid"));
        let e = store.poll("b", &[], 1, Place::Try, None).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        let e = store
            .poll("b", &[rate(2, 100)], 3, Place::Queue { id: 5 }, None)
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        assert_eq!(store.usage("b", &[rate(2, 100)]).unwrap().queued, 0);
    }

    #[test]
    fn rates_and_costs_above_the_maximum_never_reach_the_script() {
        let Some(url) = server_url() else { return };
        let prefix = unique("cap");
        let store = open(&url, &prefix);
        // A cost of 2^25 once kept the script busy for seconds and wrote a 256 MiB ring.
        let big = u64::from(crate::limiter::MAX_CALLS) + 1;
        for (calls, cost) in [(big, 1), (1 << 25, 1 << 25)] {
            let e = store
                .poll("b", &[rate(calls, 60_000)], cost, Place::Try, None)
                .unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        }
        let too_many = [rate(big, 60_000)];
        let e = store.usage("b", &too_many).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        let e = store
            .release("b", &too_many, 1, Duration::ZERO)
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        assert!(logged(&url, &prefix, "b").is_empty(), "nothing was logged");
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let exists: u64 = redis::cmd("EXISTS")
            .arg(format!("{{{prefix}:b}}:s"))
            .query(&mut con)
            .unwrap();
        assert_eq!(exists, 0, "the bucket was never written");
        let max = u64::from(crate::limiter::MAX_CALLS);
        assert_eq!(
            store
                .poll("c", &[rate(max, 60_000)], 1, Place::Try, None)
                .unwrap(),
            Verdict::Admitted
        );
    }

    /// The URL of each master of the cluster of `url`, as `redis://host:port`.
    fn masters(url: &str) -> Vec<String> {
        let mut con = open(url, "raw").connect().unwrap();
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(con.like())
            .unwrap();
        nodes
            .lines()
            .filter(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("master")))
            .map(|l| {
                let addr = l.split(' ').nth(1).unwrap();
                format!("redis://{}", addr.split('@').next().unwrap())
            })
            .collect()
    }

    #[test]
    fn a_cluster_spreads_buckets_and_keeps_each_on_one_node() {
        let Some(url) = cluster_url() else { return };
        let prefix = unique("spread");
        let store = open(&url, &prefix);
        let w = [rate(5, 1000)];
        for b in 0..30 {
            for _ in 0..2 {
                store
                    .poll(&format!("b{b}"), &w, 1, Place::Try, None)
                    .unwrap();
            }
            assert_eq!(store.usage(&format!("b{b}"), &w).unwrap().used, vec![2]);
        }
        let masters = masters(&url);
        assert_eq!(masters.len(), 3, "{masters:?}");
        let mut buckets = 0;
        for node in &masters {
            let mut con = redis::Client::open(node.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{{{prefix}:*"))
                .query(&mut con)
                .unwrap();
            let states: Vec<_> = keys.iter().filter(|k| k.ends_with("}:s")).collect();
            assert!(!states.is_empty(), "{node} holds no bucket: {keys:?}");
            for s in &states {
                let ring = format!("{}:r", s.strip_suffix(":s").unwrap());
                assert!(keys.contains(&ring), "{ring} is not on {node} beside {s}");
            }
            assert_eq!(keys.len(), 2 * states.len(), "{node}: {keys:?}");
            buckets += states.len();
        }
        assert_eq!(buckets, 30);
        // A node asked (as one server) for a bucket another node owns answers MOVED: the
        // store says unavailable, never corrupt.
        let one = open(&masters[0], &prefix);
        let (mut admitted, mut moved) = (0, 0);
        for b in 0..30 {
            match one.poll(&format!("b{b}"), &w, 1, Place::Try, None) {
                Ok(Verdict::Admitted) => admitted += 1,
                Ok(v) => panic!("{v:?}"),
                Err(e) => {
                    assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
                    assert!(e.message.contains("Moved"), "{e}");
                    moved += 1;
                }
            }
        }
        assert!(
            admitted > 0 && moved > 0,
            "{admitted} admitted, {moved} moved"
        );
    }

    #[test]
    fn cluster_passwords_never_show() {
        let Some(url) = cluster_url() else { return };
        // The test cluster has no password: a client that sends one is refused.
        let with_pw = url.replacen("://", "://:Wr0ng-Pw-52@", 1);
        let e = RedisStore::open(&settings(&with_pw, "qg", 1000)).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
        assert!(!e.message.contains("Wr0ng-Pw-52"), "{e}");
        assert!(e.message.contains("***@127.0.0.1"), "{e}");
        // A node that is not listening: unavailable, and still no password.
        let port = free_port();
        let e = RedisStore::open(&settings(
            &format!("redis+cluster://:pw-123@127.0.0.1:{port}/"),
            "qg",
            500,
        ))
        .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
        assert!(!e.message.contains("pw-123"), "{e}");
    }

    #[test]
    fn cluster_errors_are_unavailable() {
        for kind in [
            ServerErrorKind::Moved,
            ServerErrorKind::Ask,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::TryAgain,
        ] {
            let e = RedisError::from((ErrorKind::Server(kind), "cluster", "detail".to_string()));
            assert_eq!(kind_of(&e), StoreErrorKind::Unavailable, "{e}");
        }
    }

    #[test]
    fn secrets_are_found_raw_and_decoded() {
        assert_eq!(secrets("redis://:p%40ss@h:1/0"), vec!["p%40ss", "p@ss"]);
        assert_eq!(secrets("rediss://user:pw@h"), vec!["pw"]);
        assert!(secrets("redis://h:1/0").is_empty());
        assert!(secrets("redis://user@h").len() == 1);
    }
}

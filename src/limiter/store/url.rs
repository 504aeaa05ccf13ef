//! Store URLs: `file:///var/lib/quotagate/tenant.q?mode=0660`, `redis://host:6379/0?prefix=qg`,
//! `redis+cluster://host1:7000,host2:7000/?prefix=qg`.

use super::file::{FileSettings, MAX_MAX_BUCKETS, mode_is_allowed};
use super::{Store, StoreError, StoreErrorKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a limiter does when its store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnavailable {
    /// Retry (with growing pauses) until the call's deadline, then fail. Never admits
    /// without the store. The default.
    #[default]
    Wait,
    /// Fail the call at once.
    Fail,
}

/// Settings of a Redis store: one server, or a Redis Cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// The URL for the `redis` crate (`redis://` or `rediss://`, password included),
    /// without quotagate's own query parameters; for a cluster, the `redis+cluster://` or
    /// `rediss+cluster://` URL as given (without them), for messages.
    pub url: String,
    /// For a cluster, the URL of each node given (`redis://` or `rediss://`, password and
    /// the `redis` crate's own parameters included), from which the client learns the
    /// others; empty for one server.
    pub cluster_nodes: Vec<String>,
    /// The prefix of every key (`prefix=`, default `quotagate`).
    pub prefix: String,
    /// Connections kept open for reuse (`pool=`, default 8).
    pub pool: usize,
    /// Connect, read and write timeout (`timeout_ms=`, default 2000).
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact(&self.url))
            .field("cluster", &!self.cluster_nodes.is_empty())
            .field("prefix", &self.prefix)
            .field("pool", &self.pool)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Which store, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// A state file shared by the processes of one host.
    File(FileSettings),
    /// A Redis server, or a Redis Cluster, shared by many hosts.
    Redis(RedisSettings),
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The store.
    pub kind: StoreKind,
    /// What to do when it cannot be reached (`on_unavailable=wait|fail`).
    pub on_unavailable: OnUnavailable,
}

fn invalid(message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Invalid, message)
}

/// `url` with any user name and password replaced by `***`, for messages: everything from
/// the scheme's `//` to the last `@`. A password may hold a raw `/`, `?` or `#` (the URL
/// is then malformed, but its secret still must not show), so the authority is not cut at
/// them; an `@` later in the URL only hides more than needed.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if rest.starts_with('/') {
        // No authority at all (file:///path): nothing to hide.
        return url.to_string();
    }
    match rest.rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> Result<String, StoreError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(format!("bad percent escape in store path {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("store path {s:?} is not UTF-8")))
}

/// The absolute path of a `file://` URL's `path` part (percent escapes decoded).
fn file_path(path: &str, url: &str) -> Result<PathBuf, StoreError> {
    let path = percent_decode(path)?;
    // file:///C:/x on Windows names C:/x.
    let path = if cfg!(windows) && path.len() > 2 && path.as_bytes()[2] == b':' {
        path[1..].to_string()
    } else {
        path
    };
    if path.is_empty() || !std::path::Path::new(&path).is_absolute() {
        return Err(invalid(format!(
            "a file store needs an absolute path (file:///dir/name), not {url:?}"
        )));
    }
    Ok(PathBuf::from(path))
}

/// The query parameters of a store URL.
struct Params<'a> {
    on_unavailable: OnUnavailable,
    prefix: String,
    pool: usize,
    timeout: Option<Duration>,
    mode: u32,
    max_buckets: u64,
    /// Parameters of the redis crate itself (protocol=resp3, ...), passed through.
    passthrough: Vec<&'a str>,
}

impl<'a> Params<'a> {
    /// Parses `query`; which parameters a URL takes depends on its kind.
    fn parse(query: &'a str, is_redis: bool, is_file: bool) -> Result<Self, StoreError> {
        let defaults = FileSettings::new("");
        let mut p = Self {
            on_unavailable: OnUnavailable::default(),
            prefix: "quotagate".to_string(),
            pool: 8,
            timeout: None,
            mode: defaults.mode,
            max_buckets: defaults.max_buckets,
            passthrough: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "on_unavailable" => p.on_unavailable = on_unavailable(v)?,
                "prefix" if is_redis => p.prefix = prefix(v)?,
                "pool" if is_redis => p.pool = pool(v)?,
                "timeout_ms" if is_redis || is_file => p.timeout = Some(timeout(v)?),
                "mode" if is_file => p.mode = mode(v)?,
                "max_buckets" if is_file => p.max_buckets = max_buckets(v)?,
                _ if is_redis => p.passthrough.push(pair),
                _ => return Err(invalid(format!("unknown store URL parameter {k:?}"))),
            }
        }
        Ok(p)
    }

    fn file(&self, path: PathBuf) -> FileSettings {
        FileSettings {
            path,
            mode: self.mode,
            lock_timeout: self.timeout.unwrap_or(FileSettings::new("").lock_timeout),
            max_buckets: self.max_buckets,
        }
    }

    /// `base` with the `redis` crate's own parameters.
    fn with_passthrough(&self, base: &str) -> String {
        let mut url = base.to_string();
        if !self.passthrough.is_empty() {
            url.push('?');
            url.push_str(&self.passthrough.join("&"));
        }
        url
    }

    fn redis(&self, base: &str, cluster_nodes: Vec<String>) -> RedisSettings {
        RedisSettings {
            url: if cluster_nodes.is_empty() {
                self.with_passthrough(base)
            } else {
                base.to_string()
            },
            cluster_nodes: cluster_nodes
                .iter()
                .map(|n| self.with_passthrough(n))
                .collect(),
            prefix: self.prefix.clone(),
            pool: self.pool,
            timeout: self.timeout.unwrap_or(Duration::from_secs(2)),
        }
    }
}

fn on_unavailable(v: &str) -> Result<OnUnavailable, StoreError> {
    match v {
        "wait" => Ok(OnUnavailable::Wait),
        "fail" => Ok(OnUnavailable::Fail),
        _ => Err(invalid(format!(
            "on_unavailable must be wait or fail, not {v:?}"
        ))),
    }
}

fn prefix(v: &str) -> Result<String, StoreError> {
    if v.is_empty() || v.contains(char::is_whitespace) {
        return Err(invalid(format!("a bad Redis key prefix: {v:?}")));
    }
    Ok(v.to_string())
}

fn pool(v: &str) -> Result<usize, StoreError> {
    v.parse()
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .ok_or_else(|| invalid(format!("pool must be 1 to 1024, not {v:?}")))
}

fn timeout(v: &str) -> Result<Duration, StoreError> {
    v.parse()
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| invalid(format!("timeout_ms must be a positive number, not {v:?}")))
}

fn mode(v: &str) -> Result<u32, StoreError> {
    u32::from_str_radix(v, 8)
        .ok()
        .filter(|m| v.len() <= 4 && mode_is_allowed(*m))
        .ok_or_else(|| {
            invalid(format!(
                "mode must be an octal file mode from 0600 to 0660 (read and write for the \
                 owner, at most read and write for the group, nothing for others), not {v:?}"
            ))
        })
}

fn max_buckets(v: &str) -> Result<u64, StoreError> {
    v.parse()
        .ok()
        .filter(|n| (1..=MAX_MAX_BUCKETS).contains(n))
        .ok_or_else(|| {
            invalid(format!(
                "max_buckets must be 1 to {MAX_MAX_BUCKETS}, not {v:?}"
            ))
        })
}

/// The scheme of the nodes (`redis` or `rediss`) and the rest of a `redis+cluster://` or
/// `rediss+cluster://` URL.
fn cluster_scheme(base: &str) -> Option<(&'static str, &str)> {
    match base.split_once("+cluster://") {
        Some(("redis", rest)) => Some(("redis", rest)),
        Some(("rediss", rest)) => Some(("rediss", rest)),
        _ => None,
    }
}

/// The node URLs of a `redis+cluster://[user:password@]host:port[,host:port...][/]` or
/// `rediss+cluster://` URL (`base`, without its query; `scheme` and `rest` from
/// [`cluster_scheme`]): `redis://[user:password@]host:port` (or `rediss://`) each. A cluster
/// has database 0 only, so a path other than `/` or `/0` is refused.
fn cluster_nodes(base: &str, scheme: &str, rest: &str) -> Result<Vec<String>, StoreError> {
    // A password may hold a raw '/': the host list starts after the last '@'.
    let (userinfo, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (hosts, db) = hosts.split_once('/').unwrap_or((hosts, ""));
    if !matches!(db, "" | "0") {
        return Err(invalid(format!(
            "a Redis Cluster has database 0 only, not {db:?} ({})",
            redact(base)
        )));
    }
    hosts
        .split(',')
        .map(|host| {
            if host.is_empty() || host.contains(char::is_whitespace) {
                Err(invalid(format!(
                    "a Redis Cluster URL lists nodes as host:port,host:port, not {}",
                    redact(base)
                )))
            } else {
                Ok(format!("{scheme}://{userinfo}{host}"))
            }
        })
        .collect()
}

impl StoreConfig {
    /// Parses a store URL:
    ///
    /// - `file:///absolute/path[?mode=0600&timeout_ms=250&max_buckets=10000]` (on Windows
    ///   `file:///C:/path`); `%xx` escapes are decoded. `mode=` is the octal mode of the file
    ///   when it is created (`0600` to `0660`; Unix only), `timeout_ms=` the longest an
    ///   operation waits for the file's lock, `max_buckets=` the most buckets the file holds
    ///   at once (see [`FileSettings`]).
    /// - `redis://[user:password@]host[:port][/db][?prefix=p&pool=n&timeout_ms=n]`, or
    ///   `rediss://` for TLS.
    /// - `redis+cluster://[user:password@]host:port[,host:port...][/][?prefix=p&pool=n&timeout_ms=n]`
    ///   for a Redis Cluster (one or more of its nodes; the client learns the others), or
    ///   `rediss+cluster://` for TLS.
    ///
    /// All take `on_unavailable=wait` (the default) or `on_unavailable=fail`.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let url = url.trim();
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let cluster = cluster_scheme(base);
        let is_redis =
            cluster.is_some() || base.starts_with("redis://") || base.starts_with("rediss://");
        let params = Params::parse(query, is_redis, base.starts_with("file://"))?;
        let kind = if let Some(path) = base.strip_prefix("file://") {
            StoreKind::File(params.file(file_path(path, url)?))
        } else if let Some((scheme, rest)) = cluster {
            StoreKind::Redis(params.redis(base, cluster_nodes(base, scheme, rest)?))
        } else if is_redis {
            StoreKind::Redis(params.redis(base, Vec::new()))
        } else {
            return Err(invalid(format!(
                "a store URL starts with file://, redis://, rediss://, redis+cluster:// or \
                 rediss+cluster://, not {:?}",
                redact(url)
            )));
        };
        Ok(Self {
            kind,
            on_unavailable: params.on_unavailable,
        })
    }

    /// Opens the store.
    pub fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        match &self.kind {
            StoreKind::File(settings) => Ok(Arc::new(super::file::FileStore::open_with(settings)?)),
            #[cfg(feature = "redis")]
            StoreKind::Redis(settings) => Ok(Arc::new(super::redis::RedisStore::open(settings)?)),
            #[cfg(not(feature = "redis"))]
            StoreKind::Redis(_) => Err(invalid(
                "this build of quotagate has no Redis store (the `redis` feature is off)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Parsing never panics, and neither the redacted URL nor a parse error shows the
    /// password of a Redis URL.
    fn check_store_url(url: &str, password: Option<&str>) {
        let parsed = StoreConfig::parse(url);
        let shown = redact(url);
        if let Some(pw) = password {
            assert!(!shown.contains(pw), "{url:?} shown as {shown:?}");
            if let Err(e) = &parsed {
                assert!(!e.message.contains(pw), "{url:?}: {}", e.message);
            }
            if let Ok(c) = &parsed {
                assert!(!format!("{c:?}").contains(pw), "{url:?}");
            }
        }
    }

    #[test]
    fn fuzz_store_url_corpus() {
        for (_, url) in crate::fuzz::corpus_text("store-url") {
            check_store_url(&url, None);
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_store_urls(
            url in prop_oneof![
                any::<String>(),
                "(file|redis|rediss|redis\\+cluster|rediss\\+cluster)://[a-z0-9:/@?#=&%.,_-]{0,40}",
            ],
            scheme in prop_oneof![
                Just("redis"),
                Just("rediss"),
                Just("redis+cluster"),
                Just("rediss+cluster"),
            ],
            // Upper case never occurs in the rest of the URL, so a password is told
            // apart from the host and query that may be shown.
            password in "[A-Z][A-Z0-9/?#:%=&]{3,20}",
            rest in "[a-z0-9.-]{1,12}(:[0-9]{1,5})?(,[a-z0-9.-]{1,12}:[0-9]{1,5}){0,2}(/[0-9]{0,2})?(\\?[a-z_]{1,10}=[a-z0-9]{0,6})?",
        ) {
            check_store_url(&url, None);
            check_store_url(&format!("{scheme}://:{password}@{rest}"), Some(&password));
            check_store_url(&format!("{scheme}://user:{password}@{rest}"), Some(&password));
        }
    }

    #[test]
    fn parses_file_urls() {
        // An absolute path is rooted at a drive on Windows, at / elsewhere.
        let (url, path) = if cfg!(windows) {
            (
                "file:///C:/ProgramData/quotagate/tenant%20a.q",
                "C:/ProgramData/quotagate/tenant a.q",
            )
        } else {
            (
                "file:///var/lib/quotagate/tenant%20a.q",
                "/var/lib/quotagate/tenant a.q",
            )
        };
        let c = StoreConfig::parse(url).unwrap();
        assert_eq!(c.kind, StoreKind::File(FileSettings::new(path)));
        assert_eq!(c.on_unavailable, OnUnavailable::Wait);
        let c = StoreConfig::parse(&format!(
            "{url}?mode=0660&timeout_ms=250&max_buckets=50&on_unavailable=fail"
        ))
        .unwrap();
        assert_eq!(
            c.kind,
            StoreKind::File(FileSettings {
                path: PathBuf::from(path),
                mode: 0o660,
                lock_timeout: Duration::from_millis(250),
                max_buckets: 50,
            })
        );
        assert_eq!(c.on_unavailable, OnUnavailable::Fail);
        let c = StoreConfig::parse(&format!("{url}?mode=640")).unwrap();
        assert!(matches!(
            c.kind,
            StoreKind::File(FileSettings { mode: 0o640, .. })
        ));
        for bad in [
            "mode=0644",
            "mode=0666",
            "mode=0400",
            "mode=0700",
            "mode=rw",
            "mode=00660",
            "timeout_ms=0",
            "max_buckets=0",
            "max_buckets=99999999",
            "pool=3",
        ] {
            let e = StoreConfig::parse(&format!("{url}?{bad}")).unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Invalid, "{bad}");
        }
        assert!(StoreConfig::parse("file://relative/x").is_err());
        assert!(StoreConfig::parse("file:///x?prefix=a").is_err());
        assert!(StoreConfig::parse("file:///x?on_unavailable=maybe").is_err());
        assert!(StoreConfig::parse("ftp://x").is_err());
    }

    #[test]
    fn parses_redis_urls_and_keeps_passwords_out_of_messages() {
        let c = StoreConfig::parse(
            "rediss://user:s3cret@cache:6380/2?prefix=qg&pool=3&timeout_ms=500&protocol=resp3&on_unavailable=fail",
        )
        .unwrap();
        let StoreKind::Redis(r) = &c.kind else {
            panic!("not redis")
        };
        assert_eq!(r.url, "rediss://user:s3cret@cache:6380/2?protocol=resp3");
        assert_eq!(r.prefix, "qg");
        assert_eq!(r.pool, 3);
        assert_eq!(r.timeout, Duration::from_millis(500));
        assert_eq!(c.on_unavailable, OnUnavailable::Fail);
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://***@h:1/0".to_string());
        // A raw '/' or '?' in a password once ended the authority early, and the password
        // was printed in full.
        for url in [
            "redis://:pa/ss@h:1/0",
            "redis://:pa?ss@h:1/0?prefix=q",
            "rediss://user:p#a/s?s@h:1",
            "redis://u:p@ss@h:1/0",
        ] {
            let shown = redact(url);
            assert!(
                shown.starts_with("redis") && shown.contains("***@h:1"),
                "{shown}"
            );
            assert!(!shown.contains("pa") && !shown.contains("ss@"), "{shown}");
        }
        let e = StoreConfig::parse("mysql://:pa/ss@h:1/0").unwrap_err();
        assert!(!e.message.contains("pa/ss"), "{}", e.message);
        assert_eq!(redact("file:///var/lib/a@b.q"), "file:///var/lib/a@b.q");
        assert_eq!(redact("redis://cache:6379/0"), "redis://cache:6379/0");
        let e = StoreConfig::parse("mysql://root:pw@h").unwrap_err();
        assert!(!e.message.contains("pw@"), "{}", e.message);
        assert!(StoreConfig::parse("redis://h?pool=0").is_err());
    }

    fn redis_settings(url: &str) -> RedisSettings {
        match StoreConfig::parse(url).unwrap().kind {
            StoreKind::Redis(r) => r,
            other => panic!("{url} is {other:?}"),
        }
    }

    #[test]
    fn parses_cluster_urls() {
        let c = StoreConfig::parse(
            "rediss+cluster://:s3/cret@n1:7000,n2:7001,[::1]:7002/?prefix=qg&pool=2&protocol=resp3",
        )
        .unwrap();
        let StoreKind::Redis(r) = &c.kind else {
            panic!("not redis")
        };
        assert_eq!(
            r.url,
            "rediss+cluster://:s3/cret@n1:7000,n2:7001,[::1]:7002/"
        );
        assert_eq!(
            r.cluster_nodes,
            [
                "rediss://:s3/cret@n1:7000?protocol=resp3",
                "rediss://:s3/cret@n2:7001?protocol=resp3",
                "rediss://:s3/cret@[::1]:7002?protocol=resp3",
            ]
        );
        assert_eq!((r.prefix.as_str(), r.pool), ("qg", 2));
        assert_eq!(c.on_unavailable, OnUnavailable::Wait);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3/cret") && shown.contains("cluster: true"),
            "{shown}"
        );
        assert_eq!(
            redact("redis+cluster://u:pw@a:1,b:2/"),
            "redis+cluster://***@a:1,b:2/"
        );
        let r = redis_settings("redis+cluster://127.0.0.1:7000");
        assert_eq!(r.cluster_nodes, ["redis://127.0.0.1:7000"]);
        assert_eq!(r.prefix, "quotagate");
        // One server has no cluster nodes.
        assert!(redis_settings("redis://h:1/0").cluster_nodes.is_empty());
        for bad in [
            "redis+cluster://:pw-9@a:1,,b:2/",
            "redis+cluster://:pw-9@a:1/3",
            "redis+cluster://:pw-9@/",
            "redis+cluster://:pw-9@a:1/?pool=0",
            "redis+clusters://:pw-9@a:1/",
        ] {
            let e = StoreConfig::parse(bad).unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Invalid, "{bad}");
            assert!(!e.message.contains("pw-9"), "{}", e.message);
        }
        let e = StoreConfig::parse("memcached://h").unwrap_err();
        assert!(
            e.message.contains("redis+cluster://") && e.message.contains("rediss+cluster://"),
            "{}",
            e.message
        );
    }
}

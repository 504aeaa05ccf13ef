//! [`LimiterBuilder`]: the rates, margin, leases, bucket limit, clock and store of a
//! limiter, checked when it is built.

use super::memory::MemoryBackend;
use super::stored::StoreBackend;
use super::{
    Backend, Clock, ClockListener, DEFAULT_HOLD_LEASE, DEFAULT_MAX_BUCKETS, Error, Inner, Limiter,
    MonotonicClock, Rate, check_lease, store, validate_rates,
};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Configures a [`Limiter`].
#[derive(Clone)]
pub struct LimiterBuilder {
    rates: Vec<Rate>,
    margin: Duration,
    hold_lease: Duration,
    max_buckets: usize,
    clock: Option<Arc<dyn Clock>>,
    store: Option<StoreSetting>,
}

/// The store a builder was given: a URL to open at build time, or an open store.
#[derive(Clone)]
enum StoreSetting {
    Url(String),
    Open(Arc<dyn store::Store>, store::OnUnavailable),
}

impl std::fmt::Debug for LimiterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("rates", &self.rates)
            .field("margin", &self.margin)
            .field("hold_lease", &self.hold_lease)
            .field("max_buckets", &self.max_buckets)
            .field(
                "store",
                &self.store.as_ref().map(|s| match s {
                    StoreSetting::Url(u) => store::redact(u),
                    StoreSetting::Open(s, _) => s.location(),
                }),
            )
            .finish_non_exhaustive()
    }
}

impl Default for LimiterBuilder {
    fn default() -> Self {
        Self {
            rates: Vec::new(),
            margin: Duration::ZERO,
            hold_lease: DEFAULT_HOLD_LEASE,
            max_buckets: DEFAULT_MAX_BUCKETS,
            clock: None,
            store: None,
        }
    }
}

impl LimiterBuilder {
    /// Adds a rate that every bucket without rates of its own applies.
    pub fn rate(mut self, rate: Rate) -> Self {
        self.rates.push(rate);
        self
    }

    /// Adds rates; see [`rate`](Self::rate).
    pub fn rates(mut self, rates: impl IntoIterator<Item = Rate>) -> Self {
        self.rates.extend(rates);
        self
    }

    /// Widens every window by `margin` (zero by default). Holds already count a call until
    /// its answer, which is exact as the server sees it; a margin is for servers whose
    /// clocks run differently from ours.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// The lease of a hold made without one of its own (see [`Limiter::hold`]): a hold
    /// not ended within it is counted from the lease's end. Default
    /// [`DEFAULT_HOLD_LEASE`]; at most [`MAX_HOLD_LEASE`](super::MAX_HOLD_LEASE).
    pub fn hold_lease(mut self, lease: Duration) -> Self {
        self.hold_lease = lease;
        self
    }

    /// The most buckets the limiter holds at once (idle ones are dropped to make room).
    pub fn max_buckets(mut self, n: usize) -> Self {
        self.max_buckets = n;
        self
    }

    /// The clock (the monotonic clock unless set).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Keeps every bucket in the store that `url` names, shared with every process that
    /// opens the same store: `file:///path/to/state.q` (the processes of one host) or
    /// `redis://[:password@]host[:port][/db][?prefix=p]` and `rediss://` (many hosts), or
    /// `redis+cluster://host:port[,host:port...]/` and `rediss+cluster://` (a Redis Cluster).
    /// See [`store::StoreConfig::parse`] for every parameter. The store is opened by
    /// [`build`](Self::build). Without a store, buckets live in this process's memory.
    pub fn store(mut self, url: &str) -> Self {
        self.store = Some(StoreSetting::Url(url.to_string()));
        self
    }

    /// Keeps the buckets in memory again (the default).
    pub fn no_store(mut self) -> Self {
        self.store = None;
        self
    }

    /// Keeps every bucket in an open store; see [`store`](Self::store).
    pub fn store_handle(
        mut self,
        store: Arc<dyn store::Store>,
        on_unavailable: store::OnUnavailable,
    ) -> Self {
        self.store = Some(StoreSetting::Open(store, on_unavailable));
        self
    }

    /// The rates added so far.
    pub fn configured_rates(&self) -> &[Rate] {
        &self.rates
    }

    /// Builds a limiter. Fails when no rate was given or a rate is invalid.
    pub fn build(&self) -> Result<Limiter, Error> {
        validate_rates(&self.rates)?;
        check_lease(self.hold_lease)?;
        if self.max_buckets == 0 {
            return Err(Error::InvalidArgument(
                "max_buckets must be at least 1".into(),
            ));
        }
        let clock = self
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(MonotonicClock::new()));
        let backend = match &self.store {
            None => {
                let memory = Arc::new(MemoryBackend::new(
                    clock.clone(),
                    self.rates.clone(),
                    self.margin,
                    self.max_buckets,
                ));
                let weak: Weak<dyn ClockListener> =
                    Arc::downgrade(&memory) as Weak<dyn ClockListener>;
                clock.subscribe(weak);
                Backend::Memory(memory)
            }
            Some(setting) => {
                let (store, on_unavailable) = match setting {
                    StoreSetting::Url(url) => {
                        let config = store::StoreConfig::parse(url).map_err(Error::Store)?;
                        (config.open().map_err(Error::Store)?, config.on_unavailable)
                    }
                    StoreSetting::Open(s, o) => (s.clone(), *o),
                };
                Backend::Store(Arc::new(StoreBackend::new(
                    store,
                    on_unavailable,
                    self.rates.clone(),
                    self.margin,
                    self.max_buckets,
                )))
            }
        };
        Ok(Limiter {
            inner: Arc::new(Inner {
                backend,
                clock,
                default_rates: self.rates.clone(),
                margin: self.margin,
                hold_lease: self.hold_lease,
            }),
        })
    }
}

//! `qg_client_builder`: a client's API, transport, quotas and routes, before it is built.
//! Its credential setters are in `credentials.rs`.

use super::boundary::{OutPtr, free_box, opt_str, to_box, try_mut, try_ref, try_str};
use super::client::qg_client;
use super::error::{FfiError, qg_result};
use super::limiter::qg_limiter;
use super::settings::{rate, set_store, store_url};
use crate::client::{Client, ClientBuilder, Cloud, HuntingBudgetPolicy, Route, SignatureAlgorithm};
use crate::limiter::Rate;
use std::ffi::c_char;
use std::time::Duration;

/// Configures a client before it is built.
///
/// Methods: `qg_client_builder_new`, `qg_client_builder_build`, `qg_client_builder_free`;
/// where the API is: `qg_client_builder_set_cloud`, `qg_client_builder_set_base_url`,
/// `qg_client_builder_set_authority`, `qg_client_builder_set_allow_insecure_http`,
/// `qg_client_builder_set_proxy`; who the client is: `qg_client_builder_set_tenant_id`,
/// `qg_client_builder_set_client_id`, `qg_client_builder_set_client_secret`,
/// `qg_client_builder_set_certificate_file`, `qg_client_builder_set_certificate_pem_files`,
/// `qg_client_builder_set_certificate_pem`, `qg_client_builder_set_certificate_pfx_file`,
/// `qg_client_builder_set_assertion_algorithm`, `qg_client_builder_set_access_token`,
/// `qg_client_builder_set_token_source`, `qg_client_builder_set_token_provider`,
/// `qg_client_builder_set_scope`,
/// `qg_client_builder_set_resource`; time and size limits:
/// `qg_client_builder_set_timeout_ms`, `qg_client_builder_set_connect_timeout_ms`,
/// `qg_client_builder_set_max_body_bytes`, `qg_client_builder_set_max_pages`,
/// `qg_client_builder_set_max_attempts`, `qg_client_builder_set_max_quota_wait_ms`;
/// quotas: `qg_client_builder_add_default_rate`, `qg_client_builder_add_route`,
/// `qg_client_builder_set_max_in_flight`, `qg_client_builder_set_margin_ms`,
/// `qg_client_builder_set_hunting_budget_ms`, `qg_client_builder_set_hunting_budget_policy`,
/// `qg_client_builder_set_limiter`, `qg_client_builder_set_store`.
///
/// Owned by the caller, who frees it with `qg_client_builder_free`; it holds the secret
/// until then (wiped on free). Not for use by several threads at once.
pub struct qg_client_builder {
    pub(super) builder: ClientBuilder,
    default_rates: Option<Vec<Rate>>,
    pub(super) algorithm: SignatureAlgorithm,
}

pub(super) fn builder<'a>(
    b: *mut qg_client_builder,
) -> Result<&'a mut qg_client_builder, FfiError> {
    unsafe { try_mut(b, "builder") }
}

pub(super) fn with_builder(
    b: *mut qg_client_builder,
    f: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> Result<(), FfiError> {
    let b = builder(b)?;
    b.builder = f(std::mem::take(&mut b.builder));
    Ok(())
}

/// Creates a client builder with the defaults: the commercial MDE API, the commercial
/// login authority, 10 s to connect, 300 s per exchange, 8 attempts, 15 minutes of quota
/// wait at most, 256 MiB bodies, the published route table. On success `*out` receives a
/// builder that the caller frees with `qg_client_builder_free`. `out` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_new(out: *mut *mut qg_client_builder) -> qg_result {
    ffi_boundary! {
        let out = OutPtr::new(out, "out")?;
        out.write(to_box(qg_client_builder { builder: Client::builder(), default_rates: None, algorithm: SignatureAlgorithm::Ps256 }));
        Ok(())
    }
}

pub(super) fn set_string(
    b: *mut qg_client_builder,
    value: *const c_char,
    what: &str,
    set: impl FnOnce(ClientBuilder, &str) -> ClientBuilder,
) -> Result<(), FfiError> {
    let v = unsafe { try_str(value, what) }?;
    with_builder(b, |x| set(x, v))
}

/// Sets the API's base URL (default `https://api.securitycenter.microsoft.com`).
/// Copied; `b` and `url` must not be NULL. `qg_client_builder_build` refuses a URL with a
/// `user:password@`, and `http://` to a host that is not loopback unless
/// `qg_client_builder_set_allow_insecure_http` allows it.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_base_url(
    b: *mut qg_client_builder,
    url: *const c_char,
) -> qg_result {
    ffi_boundary! { set_string(b, url, "url", |x, v| x.base_url(v)) }
}

/// Sets the login authority (default `https://login.microsoftonline.com`).
/// Copied; `b` and `url` must not be NULL. Checked by `qg_client_builder_build` as the
/// base URL is.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_authority(
    b: *mut qg_client_builder,
    url: *const c_char,
) -> qg_result {
    ffi_boundary! { set_string(b, url, "url", |x, v| x.authority(v)) }
}

/// Accepts `http://` base URLs and authorities on hosts that are not loopback when `allow`
/// is 1; 0 (the default) refuses them. Plain HTTP to another host sends the client secret
/// and every access token unencrypted over the network, so `qg_client_builder_build`
/// fails with `QG_ERR_INVALID_ARGUMENT` (saying why) unless this is set, for instance
/// behind a TLS-terminating proxy on a network you trust. `http://` to `localhost`,
/// 127.0.0.0/8 or `::1` (the simulator) is always accepted. Another value of `allow` gives
/// `QG_ERR_INVALID_ARGUMENT`. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_allow_insecure_http(
    b: *mut qg_client_builder,
    allow: u32,
) -> qg_result {
    ffi_boundary! {
        let allow = match allow {
            0 => false,
            1 => true,
            other => return Err(FfiError::invalid(format!("allow must be 0 or 1, not {other}"))),
        };
        with_builder(b, |x| x.allow_insecure_http(allow))
    }
}

/// Sets the cloud by name: `"commercial"` (the default), the commercial regions
/// `"us"`, `"eu"`, `"uk"`, `"au"`, `"swa"`, `"ina"`, `"aea"`, or the US government clouds
/// `"gcc"`, `"gcc-high"`, `"dod"` (case-insensitive). It sets the login authority, the API
/// base URL and the token scope together; `qg_client_builder_set_base_url`,
/// `qg_client_builder_set_authority`, `qg_client_builder_set_scope` and
/// `qg_client_builder_set_resource` override its parts whatever the order of the calls.
/// An unknown name gives `QG_ERR_INVALID_ARGUMENT`, and the last error lists the valid
/// names. `b` and `name` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_cloud(
    b: *mut qg_client_builder,
    name: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let name = unsafe { try_str(name, "name") }?;
        let cloud = Cloud::from_name(name)?;
        with_builder(b, |x| x.cloud(cloud))
    }
}

/// Shares the client's quotas with every process that opens the same store:
/// `file:///path/to/state.q` (one host) or `redis://host:6379/0?prefix=qg` (many hosts);
/// see `qg_limiter_builder_set_store` for the URL's parameters. A malformed URL fails
/// here with `QG_ERR_INVALID_ARGUMENT`; `qg_client_builder_build` opens the store and
/// fails with `QG_ERR_STORE` when it cannot. Not together with
/// `qg_client_builder_set_limiter`. NULL goes back to memory. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_store(
    b: *mut qg_client_builder,
    url: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let url = unsafe { store_url(url) }?;
        set_store(&mut builder(b)?.builder, url);
        Ok(())
    }
}

/// Sets a proxy URL; NULL goes back to the environment (`HTTPS_PROXY`, `ALL_PROXY`,
/// `NO_PROXY`), which is the default. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_proxy(
    b: *mut qg_client_builder,
    url: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let url = unsafe { opt_str(url, "url") }?;
        let b = builder(b)?;
        let next = std::mem::take(&mut b.builder);
        b.builder = match url {
            Some(u) => next.proxy(u),
            None => next.proxy_from_env(),
        };
        Ok(())
    }
}

/// Sets the time limit of one HTTP exchange in milliseconds (default 300000; above 0).
/// `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_timeout_ms(
    b: *mut qg_client_builder,
    total_ms: u64,
) -> qg_result {
    ffi_boundary! {
        if total_ms == 0 { return Err(FfiError::invalid("the timeout must be above 0")); }
        with_builder(b, |x| x.timeout(Duration::from_millis(total_ms)))
    }
}

/// Sets the time limit of connecting in milliseconds (default 10000; above 0).
/// `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_connect_timeout_ms(
    b: *mut qg_client_builder,
    ms: u64,
) -> qg_result {
    ffi_boundary! {
        if ms == 0 { return Err(FfiError::invalid("the connect timeout must be above 0")); }
        with_builder(b, |x| x.connect_timeout(Duration::from_millis(ms)))
    }
}

/// Sets the largest answer body accepted, in bytes (default 256 MiB); a larger one fails
/// the call with `QG_ERR_BODY_TOO_LARGE`. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_max_body_bytes(
    b: *mut qg_client_builder,
    n: u64,
) -> qg_result {
    ffi_boundary! { with_builder(b, |x| x.max_body(n)) }
}

/// Sets the most pages one paging run (`qg_client_pages`) follows (default 100000; at
/// least 1); past it `qg_pages_next` and `qg_pages_next_item` fail with `QG_ERR_PAGING`.
/// `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_max_pages(b: *mut qg_client_builder, n: u64) -> qg_result {
    ffi_boundary! {
        if n == 0 { return Err(FfiError::invalid("max_pages must be at least 1")); }
        with_builder(b, |x| x.max_pages(n))
    }
}

/// Sets the attempts per call, the first included (default 8; at least 1).
/// `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_max_attempts(
    b: *mut qg_client_builder,
    n: u32,
) -> qg_result {
    ffi_boundary! {
        if n == 0 { return Err(FfiError::invalid("max_attempts must be at least 1")); }
        with_builder(b, |x| x.max_attempts(n))
    }
}

/// Sets the longest a call may wait for quota in all, in milliseconds (default 15
/// minutes); past it the call fails with `QG_ERR_THROTTLED`. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_max_quota_wait_ms(
    b: *mut qg_client_builder,
    ms: u64,
) -> qg_result {
    ffi_boundary! { with_builder(b, |x| x.max_quota_wait(Duration::from_millis(ms))) }
}

/// Widens every window of the client's own limiter by `margin_ms`, to absorb the latency
/// between admission here and the server's count (not used with
/// `qg_client_builder_set_limiter`: give that limiter its own margin). `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_margin_ms(
    b: *mut qg_client_builder,
    margin_ms: u64,
) -> qg_result {
    ffi_boundary! { with_builder(b, |x| x.margin(Duration::from_millis(margin_ms))) }
}

/// Adds a limit of `calls` per `window_ms` to requests that no route names. The first
/// call replaces the built-in defaults (100/min + 1,500/h); later calls add rates that
/// apply together. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_add_default_rate(
    b: *mut qg_client_builder,
    calls: u32,
    window_ms: u64,
) -> qg_result {
    ffi_boundary! {
        let r = rate(calls, window_ms)?;
        let b = builder(b)?;
        let rates = b.default_rates.get_or_insert_with(Vec::new);
        rates.push(r);
        let rates = rates.clone();
        b.builder = std::mem::take(&mut b.builder).default_rates(rates);
        Ok(())
    }
}

/// The method (NULL: any) and path pattern that name a route.
///
/// # Safety
/// Both must be NULL or NUL-terminated strings that outlive `'a`.
unsafe fn route_target<'a>(
    method: *const c_char,
    path_pattern: *const c_char,
) -> Result<(Option<&'a str>, &'a str), FfiError> {
    let method = unsafe { opt_str(method, "method") }?;
    let pattern = unsafe { try_str(path_pattern, "path_pattern") }?;
    if !pattern.starts_with('/') {
        return Err(FfiError::invalid("a path pattern starts with '/'"));
    }
    Ok((method, pattern))
}

/// Adds a limit of `calls` per `window_ms` for requests of `method` (NULL: any) to paths
/// matching `path_pattern`, where a segment `{name}` (or a lone star) matches any one
/// segment: `/api/machines/{id}/isolate`.
/// User routes come before the built-in ones; calling again with the same method and
/// pattern adds another rate to that route. `b` and `path_pattern` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_add_route(
    b: *mut qg_client_builder,
    method: *const c_char,
    path_pattern: *const c_char,
    calls: u32,
    window_ms: u64,
) -> qg_result {
    ffi_boundary! {
        let (method, pattern) = unsafe { route_target(method, path_pattern) }?;
        let r = rate(calls, window_ms)?;
        let b = builder(b)?;
        let method_up = method.map(str::to_ascii_uppercase);
        let existing = b.builder.user_routes().iter().find(|x| {
            x.method == method_up && x.pattern.eq_ignore_ascii_case(pattern) && x.class.starts_with("user:")
        });
        let mut rates = existing.map(|x| x.rates.clone()).unwrap_or_default();
        rates.push(r);
        let class = format!("user:{} {}", method_up.as_deref().unwrap_or("*"), pattern);
        b.builder = std::mem::take(&mut b.builder).route(Route::new(method, pattern, &class, rates));
        Ok(())
    }
}

/// Caps the calls under way at once of requests of `method` (NULL: any) to paths
/// matching `path_pattern` (as in `qg_client_builder_add_route`), per tenant and app: a
/// call beyond the cap waits its turn in FIFO order until one of them is answered, with
/// the deadline (`qg_client_builder_set_max_quota_wait_ms`, then `QG_ERR_THROTTLED`),
/// cancel and close behaviour of quota waits. The route with exactly that method and
/// pattern gets the cap; without one, the requests keep the class and limits they had.
/// Live response (`POST /api/machines/{id}/runliveresponse`) is capped at 25 by default;
/// `max_in_flight` 0 lifts a cap. Calling again for the same method and pattern replaces
/// the cap. `b` and `path_pattern` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_max_in_flight(
    b: *mut qg_client_builder,
    method: *const c_char,
    path_pattern: *const c_char,
    max_in_flight: u32,
) -> qg_result {
    ffi_boundary! {
        let (method, pattern) = unsafe { route_target(method, path_pattern) }?;
        with_builder(b, |x| x.max_in_flight(method, pattern, max_in_flight))
    }
}

/// `qg_client_builder_set_hunting_budget_policy`: a hunting query waits until enough run
/// time leaves the windows, within the quota-wait budget. The default.
pub const QG_HUNTING_BUDGET_WAIT: u32 = 0;
/// `qg_client_builder_set_hunting_budget_policy`: a hunting query fails at once with
/// `QG_ERR_THROTTLED` when the run-time budget is spent; the last error's
/// `QG_DETAIL_SERVER_CODE` is "HuntingBudgetSpent" and `QG_DETAIL_RETRY_AFTER_MS` tells
/// when run time frees up.
pub const QG_HUNTING_BUDGET_FAIL: u32 = 1;

/// Sets the tenant's advanced hunting run-time budget: `per_hour_ms` of query execution
/// per rolling hour (default 600000, 10 minutes) and `per_day_ms` per rolling day (default
/// 10800000, 3 hours); 0 turns that window off. The client records each hunting query's
/// execution time (the answer's `Stats.ExecutionTime`, else the time the exchange took)
/// and holds new hunting queries back while a window is spent (see
/// `qg_client_builder_set_hunting_budget_policy`). The record belongs to the client,
/// shared by all threads that use it. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_hunting_budget_ms(
    b: *mut qg_client_builder,
    per_hour_ms: u64,
    per_day_ms: u64,
) -> qg_result {
    ffi_boundary! {
        with_builder(b, |x| x.hunting_run_time(Duration::from_millis(per_hour_ms), Duration::from_millis(per_day_ms)))
    }
}

/// Chooses what a hunting query does when the run-time budget is spent:
/// `QG_HUNTING_BUDGET_WAIT` (the default) or `QG_HUNTING_BUDGET_FAIL`. Another value gives
/// `QG_ERR_INVALID_ARGUMENT`. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_hunting_budget_policy(
    b: *mut qg_client_builder,
    policy: u32,
) -> qg_result {
    ffi_boundary! {
        let policy = match policy {
            QG_HUNTING_BUDGET_WAIT => HuntingBudgetPolicy::Wait,
            QG_HUNTING_BUDGET_FAIL => HuntingBudgetPolicy::Fail,
            other => return Err(FfiError::invalid(format!("unknown hunting budget policy {other}: use QG_HUNTING_BUDGET_WAIT or QG_HUNTING_BUDGET_FAIL"))),
        };
        with_builder(b, |x| x.hunting_budget_policy(policy))
    }
}

/// Makes the client take its quotas from `l` (shared with other clients and with direct
/// `qg_limiter_*` calls) instead of a limiter of its own. The client keeps its own
/// reference: `l` may be freed afterwards. `b` and `l` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_limiter(
    b: *mut qg_client_builder,
    l: *const qg_limiter,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?.limiter.clone();
        with_builder(b, |x| x.limiter(l))
    }
}

/// Builds a client. The builder is not consumed. On success `*out` receives a client that
/// the caller frees with `qg_client_free`. Fails with `QG_ERR_INVALID_ARGUMENT` when
/// credentials are missing or a URL is invalid. `b` and `out` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_build(
    b: *const qg_client_builder,
    out: *mut *mut qg_client,
) -> qg_result {
    ffi_boundary! {
        let b = unsafe { try_ref(b, "builder") }?;
        let out = OutPtr::new(out, "out")?;
        let client = b.builder.build()?;
        out.write(to_box(qg_client { client }));
        Ok(())
    }
}

/// Frees a client builder and wipes the secret it holds. NULL does nothing; never free
/// the same builder twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_free(b: *mut qg_client_builder) {
    super::boundary::run_void(|| unsafe { free_box(b) })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ffi::client::qg_client_free;
    use crate::ffi::credentials::qg_client_builder_set_access_token;
    use crate::ffi::error::{QG_ERR_INVALID_ARGUMENT, QG_OK, qg_last_error_message};
    use std::ffi::{CStr, CString};

    pub(crate) fn last_error() -> String {
        let mut buf = [0 as c_char; 512];
        let mut n = 0;
        assert_eq!(
            qg_last_error_message(buf.as_mut_ptr(), buf.len(), &mut n),
            QG_OK
        );
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    pub(crate) fn new_builder() -> *mut qg_client_builder {
        let mut b = std::ptr::null_mut();
        assert_eq!(qg_client_builder_new(&mut b), QG_OK);
        let token = CString::new("t").unwrap();
        assert_eq!(qg_client_builder_set_access_token(b, token.as_ptr()), QG_OK);
        b
    }

    pub(crate) fn build(b: *mut qg_client_builder) -> Client {
        let mut c = std::ptr::null_mut();
        assert_eq!(
            qg_client_builder_build(b, &mut c),
            QG_OK,
            "{}",
            last_error()
        );
        let client = unsafe { &*c }.client.clone();
        qg_client_free(c);
        client
    }

    #[test]
    fn in_flight_caps_are_set_per_route() {
        let b = new_builder();
        let (post, pattern) = (
            CString::new("POST").unwrap(),
            CString::new("/api/machines/{id}/isolate").unwrap(),
        );
        assert_eq!(
            qg_client_builder_set_max_in_flight(b, post.as_ptr(), pattern.as_ptr(), 3),
            QG_OK
        );
        let live = CString::new("/api/machines/*/runliveresponse").unwrap();
        assert_eq!(
            qg_client_builder_set_max_in_flight(b, post.as_ptr(), live.as_ptr(), 0),
            QG_OK
        );
        let routes = unsafe { &*b }.builder.routes();
        assert_eq!(
            routes
                .find("POST", "/api/machines/m/isolate")
                .unwrap()
                .max_in_flight,
            Some(3)
        );
        assert_eq!(
            routes
                .find("POST", "/api/machines/m/runliveresponse")
                .unwrap()
                .max_in_flight,
            None
        );
        let relative = CString::new("api/x").unwrap();
        assert_eq!(
            qg_client_builder_set_max_in_flight(b, std::ptr::null(), relative.as_ptr(), 1),
            QG_ERR_INVALID_ARGUMENT
        );
        qg_client_builder_free(b);
    }

    #[test]
    fn hunting_budget_settings_are_checked() {
        let b = new_builder();
        assert_eq!(qg_client_builder_set_hunting_budget_ms(b, 60_000, 0), QG_OK);
        assert_eq!(
            qg_client_builder_set_hunting_budget_policy(b, QG_HUNTING_BUDGET_FAIL),
            QG_OK
        );
        assert_eq!(
            qg_client_builder_set_hunting_budget_policy(b, 9),
            QG_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("QG_HUNTING_BUDGET_WAIT"));
        let shown = format!("{:?}", unsafe { &*b }.builder);
        assert!(
            shown.contains("per_hour: 60s") && shown.contains("Fail"),
            "{shown}"
        );
        build(b);
        qg_client_builder_free(b);
    }

    #[test]
    fn a_malformed_store_url_leaves_the_builder_as_it_was() {
        let b = new_builder();
        let bad = CString::new("ftp://nowhere/state").unwrap();
        assert_eq!(
            qg_client_builder_set_store(b, bad.as_ptr()),
            QG_ERR_INVALID_ARGUMENT
        );
        // The access token set first is still there.
        build(b);
        qg_client_builder_free(b);
    }

    #[test]
    fn clouds_are_set_by_name() {
        let b = new_builder();
        let name = CString::new("GCC-High").unwrap();
        assert_eq!(qg_client_builder_set_cloud(b, name.as_ptr()), QG_OK);
        let c = build(b);
        assert_eq!(c.base_url(), "https://api-gov.securitycenter.microsoft.us");
        assert!(
            c.token_url()
                .starts_with("https://login.microsoftonline.us/")
        );
        let bad = CString::new("moon").unwrap();
        assert_eq!(
            qg_client_builder_set_cloud(b, bad.as_ptr()),
            QG_ERR_INVALID_ARGUMENT
        );
        assert!(
            last_error().contains("commercial, us, eu"),
            "{}",
            last_error()
        );
        qg_client_builder_free(b);
    }
}

//! `qg_client_builder`, `qg_client`, `qg_request`, `qg_response` and `qg_pages`.

use super::boundary::{OutPtr, free_box, opt_str, to_box, try_mut, try_ref, try_str};
use super::error::{
    FfiError, QG_DONE, QG_ERR_BUFFER_TOO_SMALL, QG_ERR_NOT_FOUND, QG_OK, copy_out_checked,
    detail_text, qg_result,
};
use super::limiter::qg_limiter;
use super::string::to_c_string;
use crate::client::{
    CertificateCredential, Client, ClientBuilder, Cloud, HuntingBudgetPolicy, Items, Request,
    Response, Route, Secret, SignatureAlgorithm,
};
use crate::limiter::Rate;
use std::ffi::{c_char, c_void};
use std::time::Duration;

/// Configures a client before it is built.
///
/// Methods: `qg_client_builder_new`, `qg_client_builder_set_*`,
/// `qg_client_builder_add_default_rate`, `qg_client_builder_add_route`,
/// `qg_client_builder_build`, `qg_client_builder_free`.
///
/// Owned by the caller, who frees it with `qg_client_builder_free`; it holds the secret
/// until then (wiped on free). Not for use by several threads at once.
pub struct qg_client_builder {
    builder: ClientBuilder,
    default_rates: Option<Vec<Rate>>,
    algorithm: SignatureAlgorithm,
}

/// A thread-safe client of the Defender APIs: every call waits for its quota, tokens are
/// cached and refreshed, 429s pause the bucket and are retried, pages are followed.
///
/// Methods: `qg_client_send`, `qg_client_pages`, `qg_client_stats_json`,
/// `qg_client_token_scope`, `qg_client_close`, `qg_client_free`.
///
/// Reference counted inside and safe to use from any number of threads at once; share
/// one client. Free it once with `qg_client_free`.
pub struct qg_client {
    client: Client,
}

/// A request: method, path or URL, query, headers, body.
///
/// Methods: `qg_request_new`, `qg_request_add_query`, `qg_request_set_header`,
/// `qg_request_set_body`, `qg_request_set_deadline_ms`, `qg_request_cancel`,
/// `qg_request_free`.
///
/// Build it on one thread; once sent it may be sent again, and `qg_request_cancel` may be
/// called from any thread while another sends it. Free it with `qg_request_free` when no
/// send uses it.
pub struct qg_request {
    request: Request,
}

/// An answer: status, headers and body, owned by the caller.
///
/// Methods: `qg_response_status`, `qg_response_body`, `qg_response_header`,
/// `qg_response_header_count`, `qg_response_header_at`, `qg_response_attempts`,
/// `qg_response_error_detail`, `qg_response_free`.
///
/// Immutable: safe to read from several threads. Pointers it hands out stay valid until
/// `qg_response_free`.
pub struct qg_response {
    response: Response,
}

/// The pages (and items) of a list, following `@odata.nextLink`.
///
/// Methods: `qg_pages_next`, `qg_pages_next_item`, `qg_pages_free`.
///
/// Not for use by several threads at once. Free it with `qg_pages_free`.
pub struct qg_pages {
    items: Items,
}

impl qg_pages {
    /// `next`'s answer, or the failure that ended the run (given again, never `QG_DONE`),
    /// or `None` after the last page.
    fn step<T>(
        &mut self,
        next: impl FnOnce(&mut Items) -> Option<Result<T, crate::client::Error>>,
    ) -> Result<Option<T>, FfiError> {
        if let Some(e) = self.items.failure() {
            return Err(e.clone().into());
        }
        Ok(next(&mut self.items).transpose()?)
    }
}

fn builder<'a>(b: *mut qg_client_builder) -> Result<&'a mut qg_client_builder, FfiError> {
    unsafe { try_mut(b, "builder") }
}

fn with_builder(
    b: *mut qg_client_builder,
    f: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> Result<(), FfiError> {
    let b = builder(b)?;
    b.builder = f(std::mem::take(&mut b.builder));
    Ok(())
}

fn rate(calls: u32, window_ms: u64) -> Result<Rate, FfiError> {
    let r = Rate::new(calls, Duration::from_millis(window_ms));
    r.validate().map_err(FfiError::invalid)?;
    Ok(r)
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

fn set_string(
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

/// Sets the tenant id for client-secret credentials. Copied; no NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_tenant_id(
    b: *mut qg_client_builder,
    tenant_id: *const c_char,
) -> qg_result {
    ffi_boundary! { set_string(b, tenant_id, "tenant_id", |x, v| x.tenant_id(v)) }
}

/// Sets the application (client) id for client-secret credentials. Copied; no NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_client_id(
    b: *mut qg_client_builder,
    client_id: *const c_char,
) -> qg_result {
    ffi_boundary! { set_string(b, client_id, "client_id", |x, v| x.client_id(v)) }
}

/// Sets the client secret. Copied into memory that is wiped when freed; it never
/// appears in error texts or logs. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_client_secret(
    b: *mut qg_client_builder,
    secret: *const c_char,
) -> qg_result {
    ffi_boundary! { set_string(b, secret, "secret", |x, v| x.client_secret(v)) }
}

/// `qg_client_builder_set_assertion_algorithm`: sign client assertions with PS256
/// (RSASSA-PSS, header `x5t#S256`). The default.
pub const QG_ASSERTION_PS256: u32 = 0;
/// `qg_client_builder_set_assertion_algorithm`: sign client assertions with RS256
/// (RSASSA-PKCS1-v1_5, header `x5t`), for older identity platforms.
pub const QG_ASSERTION_RS256: u32 = 1;

fn set_certificate(
    b: *mut qg_client_builder,
    load: impl FnOnce() -> Result<CertificateCredential, crate::client::Error>,
) -> Result<(), FfiError> {
    let b = builder(b)?;
    let cert = load()?.with_algorithm(b.algorithm);
    b.builder = std::mem::take(&mut b.builder).certificate(cert);
    Ok(())
}

/// Uses certificate credentials read from PEM files: `certificate_path` holds the
/// certificate, `key_path` its RSA private key (`PRIVATE KEY` or `RSA PRIVATE KEY`,
/// unencrypted); NULL `key_path` means the same file holds both. Give the tenant id and
/// client id as well. Token requests then carry a client assertion signed with the key
/// instead of a client secret. The files are read now; the key is kept in memory that
/// is wiped when the builder and its clients are freed, and never appears in error
/// texts or logs. A key file that group or others can read is logged as a warning.
/// Fails with `QG_ERR_INVALID_ARGUMENT` when a file cannot be read, holds no
/// certificate or key, the key is not RSA, or it does not belong to the certificate.
/// `b` and `certificate_path` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_certificate_pem_files(
    b: *mut qg_client_builder,
    certificate_path: *const c_char,
    key_path: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let cert = unsafe { try_str(certificate_path, "certificate_path") }?;
        let key = unsafe { opt_str(key_path, "key_path") }?;
        set_certificate(b, || {
            CertificateCredential::from_pem_files(
                std::path::Path::new(cert),
                key.map(std::path::Path::new),
            )
        })
    }
}

/// Uses certificate credentials given as PEM text (from a vault, say): `certificate_pem`
/// holds the certificate, `key_pem` the RSA private key; NULL `key_pem` means
/// `certificate_pem` holds both. Both are copied; otherwise as
/// `qg_client_builder_set_certificate_pem_files`. `b` and `certificate_pem` must not be
/// NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_certificate_pem(
    b: *mut qg_client_builder,
    certificate_pem: *const c_char,
    key_pem: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let cert = unsafe { try_str(certificate_pem, "certificate_pem") }?;
        let key = unsafe { opt_str(key_pem, "key_pem") }?.unwrap_or(cert);
        set_certificate(b, || CertificateCredential::from_pem(cert.as_bytes(), key.as_bytes()))
    }
}

/// Uses certificate credentials read from a PKCS#12/PFX file (as Windows, Azure Key Vault
/// and `openssl pkcs12 -export` write it) with its `password` (NULL: empty): the first
/// private key with its certificate. Otherwise as
/// `qg_client_builder_set_certificate_pem_files`. A wrong password, or a build without
/// PFX support, gives `QG_ERR_INVALID_ARGUMENT`. `b` and `path` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_certificate_pfx_file(
    b: *mut qg_client_builder,
    path: *const c_char,
    password: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let path = unsafe { try_str(path, "path") }?;
        let password = unsafe { opt_str(password, "password") }?.unwrap_or("");
        set_certificate(b, || CertificateCredential::from_pkcs12_file(std::path::Path::new(path), password))
    }
}

/// Chooses how client assertions are signed: `QG_ASSERTION_PS256` (the default) or
/// `QG_ASSERTION_RS256`. Applies to a certificate set before or after this call.
/// Another value gives `QG_ERR_INVALID_ARGUMENT`. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_assertion_algorithm(
    b: *mut qg_client_builder,
    algorithm: u32,
) -> qg_result {
    ffi_boundary! {
        let alg = match algorithm {
            QG_ASSERTION_PS256 => SignatureAlgorithm::Ps256,
            QG_ASSERTION_RS256 => SignatureAlgorithm::Rs256,
            other => return Err(FfiError::invalid(format!("unknown assertion algorithm {other}: use QG_ASSERTION_PS256 or QG_ASSERTION_RS256"))),
        };
        let b = builder(b)?;
        b.algorithm = alg;
        b.builder = std::mem::take(&mut b.builder).map_certificate(|c| c.with_algorithm(alg));
        Ok(())
    }
}

/// Uses a fixed access token instead of client credentials. Copied and guarded like a
/// secret. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_access_token(
    b: *mut qg_client_builder,
    token: *const c_char,
) -> qg_result {
    ffi_boundary! { set_string(b, token, "token", |x, v| x.access_token(v)) }
}

/// A token provider: the host's function that hands the client an access token.
///
/// The library calls it with `token_buf`, a buffer of `token_len` bytes (4096 at first).
/// The function copies the token (UTF-8; a terminating NUL is not needed) into
/// `token_buf`, writes its length in bytes to `*token_written` and its remaining
/// lifetime in milliseconds (above 0) to `*expires_in_ms`, and returns `QG_OK`. The
/// library copies the token out and wipes the buffer before the call returns to the
/// client.
///
/// - A token longer than `token_len`: write the needed length to `*token_written` and
///   return `QG_ERR_BUFFER_TOO_SMALL`; the library calls again at once with a buffer at
///   least that large (up to 1 MiB).
/// - A failure: return any other code (`QG_ERR_AUTH` fits). The call fails with
///   `QG_ERR_AUTH`, and the library neither reads nor quotes `token_buf` then (it may hold
///   part of a token): keep the reason on your side, or log it.
///
/// Threads: called from whichever thread sends a call while the cached token is missing,
/// near its end (a fifth of its lifetime early, at most five minutes) or refused by the
/// API (a 401): from any thread over time, but one call at a time per client, never two
/// at once. Other threads keep using the current token or wait meanwhile. A call the
/// function sends with the same client fails at once with `QG_ERR_REENTRANT_CALL`, since
/// it would wait for the token being fetched; other clients, limiters and the simulator
/// may be used. `user_data` is passed as given.
pub type qg_token_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        token_buf: *mut c_char,
        token_len: usize,
        token_written: *mut usize,
        expires_in_ms: *mut u64,
    ) -> qg_result,
>;

/// The host's token function and its data, callable from any thread as documented.
struct HostTokenFn {
    callback:
        unsafe extern "C" fn(*mut c_void, *mut c_char, usize, *mut usize, *mut u64) -> qg_result,
    user_data: usize,
}

impl HostTokenFn {
    fn call(&self) -> Result<(Secret, Duration), String> {
        const MAX: usize = 1 << 20;
        let mut len = 4096;
        loop {
            let mut buf = zeroize::Zeroizing::new(vec![0u8; len]);
            let (mut written, mut expires_ms) = (0usize, 0u64);
            // SAFETY: the buffer holds `len` bytes and the out-parameters are live locals;
            // the host promised that its function and `user_data` are usable from any thread.
            let code = unsafe {
                (self.callback)(
                    self.user_data as *mut c_void,
                    buf.as_mut_ptr().cast(),
                    len,
                    &mut written,
                    &mut expires_ms,
                )
            };
            match code {
                QG_OK if written > len => {
                    return Err("the token provider wrote past its buffer".into());
                }
                QG_OK => {
                    let token = std::str::from_utf8(&buf[..written])
                        .map_err(|_| "the token provider's token is not UTF-8".to_string())?;
                    return Ok((Secret::new(token), Duration::from_millis(expires_ms)));
                }
                QG_ERR_BUFFER_TOO_SMALL if written > len && written <= MAX => len = written,
                QG_ERR_BUFFER_TOO_SMALL => {
                    return Err(format!(
                        "the token provider needs {written} bytes (at most {MAX})"
                    ));
                }
                // Never quoted: a provider that wrote its token and then failed would
                // see the token in the error text. The host's binding tells its own reason.
                _ => return Err("it reported a failure".to_string()),
            }
        }
    }
}

/// Takes tokens from the host's `callback` (see `qg_token_fn` for the contract and the
/// threads it is called from) instead of client credentials or a fixed token. The
/// client caches each token for the lifetime the callback reports. `user_data` is
/// passed to every call; it must stay valid, and usable from any thread, until the
/// builder and every client built from it are freed. Set the tenant id and client id as
/// well to name the quota buckets after them. `b` and `callback` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_token_provider(
    b: *mut qg_client_builder,
    callback: qg_token_fn,
    user_data: *mut c_void,
) -> qg_result {
    let user_data = user_data as usize;
    ffi_boundary! {
        let callback = callback.ok_or_else(|| FfiError::null("callback"))?;
        let host = HostTokenFn { callback, user_data };
        with_builder(b, |x| x.token_provider(move || host.call()))
    }
}

/// Sets the v2 token scope (default: the base URL's origin + `/.default`). No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_scope(
    b: *mut qg_client_builder,
    scope: *const c_char,
) -> qg_result {
    ffi_boundary! { set_string(b, scope, "scope", |x, v| x.scope(v)) }
}

/// Asks v1 tokens for this resource instead of a v2 scope. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_resource(
    b: *mut qg_client_builder,
    resource: *const c_char,
) -> qg_result {
    ffi_boundary! { set_string(b, resource, "resource", |x, v| x.resource(v)) }
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
        let url = unsafe { opt_str(url, "url") }?;
        let b = builder(b)?;
        let next = std::mem::take(&mut b.builder);
        b.builder = match url {
            Some(u) => next.store(super::limiter::checked_store_url(u)?),
            None => next.no_store(),
        };
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
        let method = unsafe { opt_str(method, "method") }?;
        let pattern = unsafe { try_str(path_pattern, "path_pattern") }?;
        if !pattern.starts_with('/') {
            return Err(FfiError::invalid("a path pattern starts with '/'"));
        }
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
        let method = unsafe { opt_str(method, "method") }?;
        let pattern = unsafe { try_str(path_pattern, "path_pattern") }?;
        if !pattern.starts_with('/') {
            return Err(FfiError::invalid("a path pattern starts with '/'"));
        }
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

/// Creates a request of `method` (such as "GET", "POST") to `path_or_url`: a path on the
/// base URL ("/api/machines") or an absolute URL on the same host (an
/// `@odata.nextLink`, used exactly as given). On success `*out` receives a request that
/// the caller frees with `qg_request_free`. No argument may be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_new(
    method: *const c_char,
    path_or_url: *const c_char,
    out: *mut *mut qg_request,
) -> qg_result {
    ffi_boundary! {
        let method = unsafe { try_str(method, "method") }?;
        let target = unsafe { try_str(path_or_url, "path_or_url") }?;
        let out = OutPtr::new(out, "out")?;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(FfiError::invalid(format!("{method:?} is not an HTTP method")));
        }
        out.write(to_box(qg_request { request: Request::new(method, target) }));
        Ok(())
    }
}

/// Adds a query parameter; the library percent-encodes name and value. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_add_query(
    r: *mut qg_request,
    name: *const c_char,
    value: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let (n, v) = (unsafe { try_str(name, "name") }?, unsafe { try_str(value, "value") }?);
        unsafe { try_mut(r, "request") }?.request.add_query(n, v);
        Ok(())
    }
}

/// Sets a header, replacing one of the same name (case-insensitive). The client sets
/// `Authorization` itself. A name that is not an RFC 9110 token, or a value with a control
/// character other than tab, gives `QG_ERR_INVALID_ARGUMENT` here (the wire would refuse
/// it). No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_set_header(
    r: *mut qg_request,
    name: *const c_char,
    value: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let (n, v) = (unsafe { try_str(name, "name") }?, unsafe { try_str(value, "value") }?);
        crate::client::check_header(n, v)?;
        unsafe { try_mut(r, "request") }?.request.set_header(n, v);
        Ok(())
    }
}

/// Sets the body: `len` bytes copied from `body` (NULL only when `len` is 0), with the
/// content type `content_type` (NULL: "application/json"). `r` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_set_body(
    r: *mut qg_request,
    body: *const u8,
    len: usize,
    content_type: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let ct = unsafe { opt_str(content_type, "content_type") }?.unwrap_or("application/json");
        let bytes = if len == 0 {
            Vec::new()
        } else if body.is_null() {
            return Err(FfiError::null("body"));
        } else {
            unsafe { std::slice::from_raw_parts(body, len) }.to_vec()
        };
        unsafe { try_mut(r, "request") }?.request.set_body(bytes, ct);
        Ok(())
    }
}

/// Sets the request's deadline: `deadline_ms` milliseconds from the start of each
/// `qg_client_send` bound everything the call does (the quota wait, the token fetch,
/// every attempt, retries and backoff); past it the call fails with `QG_ERR_TIMEOUT`, at
/// once when a wait could not end in time. With `qg_client_pages` it bounds all the pages
/// together, from the first page's send. Below 0: no deadline (the default). `r` must
/// not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_set_deadline_ms(r: *mut qg_request, deadline_ms: i64) -> qg_result {
    ffi_boundary! {
        let d = u64::try_from(deadline_ms).ok().map(Duration::from_millis);
        unsafe { try_mut(r, "request") }?.request.set_deadline(d);
        Ok(())
    }
}

/// Cancels the request's waits: a `qg_client_send` or `qg_pages_next` using it returns
/// `QG_ERR_CANCELLED` within about 50 ms of this call if it is waiting for quota, a token
/// or a backoff (an exchange on the wire ends at its timeout). Thread-safe; `r` must not
/// be NULL. A cancelled request stays cancelled.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_cancel(r: *const qg_request) -> qg_result {
    ffi_boundary! {
        unsafe { try_ref(r, "request") }?.request.canceller().cancel();
        Ok(())
    }
}

/// Frees a request. NULL does nothing; never free the same request twice, nor while a
/// send uses it.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_free(r: *mut qg_request) {
    super::boundary::run_void(|| unsafe { free_box(r) })
}

/// Sends a request through the limiter, with token handling and retries, and blocks until
/// the final answer.
///
/// Returns `QG_OK` whenever the server gave a final answer, whatever its status (check it
/// with `qg_response_status`); `*out` then receives a response to free with
/// `qg_response_free`. Failures: `QG_ERR_THROTTLED` (quota budget ran out),
/// `QG_ERR_TIMEOUT`, `QG_ERR_TRANSPORT` (including an ambiguous POST failure, which is
/// never repeated), `QG_ERR_AUTH`, `QG_ERR_BODY_TOO_LARGE`, `QG_ERR_CANCELLED`,
/// `QG_ERR_CLOSED`, `QG_ERR_INVALID_ARGUMENT`; then `qg_last_error_detail` gives the
/// server's details on the same thread. No argument may be NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_send(
    c: *const qg_client,
    r: *const qg_request,
    out: *mut *mut qg_response,
) -> qg_result {
    ffi_boundary! {
        let c = unsafe { try_ref(c, "client") }?;
        let r = unsafe { try_ref(r, "request") }?;
        let out = OutPtr::new(out, "out")?;
        let response = c.client.send(&r.request)?;
        out.write(to_box(qg_response { response }));
        Ok(())
    }
}

/// Writes the answer's HTTP status to `*out`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_status(r: *const qg_response, out: *mut u16) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        OutPtr::new(out, "out")?.write(r.response.status());
        Ok(())
    }
}

/// Lends the answer's body: `*data` (not NUL-terminated; NULL-free even when empty) and
/// `*len`, valid until `qg_response_free`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_body(
    r: *const qg_response,
    data: *mut *const u8,
    len: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        let (d, l) = (OutPtr::new(data, "data")?, OutPtr::new(len, "len")?);
        let body = r.response.body();
        // An empty Vec's pointer is dangling but never NULL, as documented.
        d.write(body.as_ptr());
        l.write(body.len());
        Ok(())
    }
}

/// Lends the value of the first header called `name` (case-insensitive): `*value` (not
/// NUL-terminated) and `*len`, valid until `qg_response_free`. `QG_ERR_NOT_FOUND` when
/// absent. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_header(
    r: *const qg_response,
    name: *const c_char,
    value: *mut *const u8,
    len: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        let name = unsafe { try_str(name, "name") }?;
        let (v, l) = (OutPtr::new(value, "value")?, OutPtr::new(len, "len")?);
        let found = r.response.header(name).ok_or_else(|| FfiError::new(QG_ERR_NOT_FOUND, format!("no header {name:?}")))?;
        v.write(found.as_ptr());
        l.write(found.len());
        Ok(())
    }
}

/// Writes the number of headers to `*out`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_header_count(r: *const qg_response, out: *mut usize) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        OutPtr::new(out, "out")?.write(r.response.header_count());
        Ok(())
    }
}

/// Lends header `index` (in the order received; names in lower case): name and value as
/// (pointer, length) pairs, not NUL-terminated, valid until `qg_response_free`. An index
/// past the end gives `QG_ERR_NOT_FOUND`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_header_at(
    r: *const qg_response,
    index: usize,
    name: *mut *const u8,
    name_len: *mut usize,
    value: *mut *const u8,
    value_len: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        let outs = (OutPtr::new(name, "name")?, OutPtr::new(name_len, "name_len")?, OutPtr::new(value, "value")?, OutPtr::new(value_len, "value_len")?);
        let (n, v) = r.response.header_at(index).ok_or_else(|| FfiError::new(QG_ERR_NOT_FOUND, format!("no header at {index}")))?;
        outs.0.write(n.as_ptr());
        outs.1.write(n.len());
        outs.2.write(v.as_ptr());
        outs.3.write(v.len());
        Ok(())
    }
}

/// Writes to `*out` how many attempts the answer took (1 when the first was answered).
/// No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_attempts(r: *const qg_response, out: *mut u32) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        OutPtr::new(out, "out")?.write(r.response.attempts());
        Ok(())
    }
}

/// Copies one of the answer's error details (a `QG_DETAIL_*` field, read from the error
/// body and headers) into `buf`, with the conventions of `qg_last_error_message`; an
/// absent detail gives "". An unknown field gives `QG_ERR_INVALID_ARGUMENT`.
/// `r` and `written` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_error_detail(
    r: *const qg_response,
    field: u32,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        let details = r.response.error_details();
        let summary = if r.response.status() >= 400 {
            crate::client::Error::Http(Box::new(details.clone())).to_string()
        } else {
            String::new()
        };
        let text = detail_text(Some(&details), &summary, field).ok_or_else(|| FfiError::invalid(format!("unknown detail field {field}")))?;
        copy_out_checked(&text, buf, len, written)
    }
}

/// Frees a response. NULL does nothing; never free the same response twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_free(r: *mut qg_response) {
    super::boundary::run_void(|| unsafe { free_box(r) })
}

/// Starts paging: the first request is `first` (copied, with its cancel handle), and each
/// following page is the previous one's `@odata.nextLink`, used exactly as given. Nothing
/// is sent until `qg_pages_next` or `qg_pages_next_item`. On success `*out` receives
/// pages to free with `qg_pages_free`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_pages(
    c: *const qg_client,
    first: *const qg_request,
    out: *mut *mut qg_pages,
) -> qg_result {
    ffi_boundary! {
        let c = unsafe { try_ref(c, "client") }?;
        let first = unsafe { try_ref(first, "request") }?;
        let out = OutPtr::new(out, "out")?;
        out.write(to_box(qg_pages { items: c.client.items(&first.request) }));
        Ok(())
    }
}

/// Fetches the next page: `QG_OK` and a response in `*out` (free with
/// `qg_response_free`), `QG_DONE` after the last page, or a failure as in
/// `qg_client_send`, where an error status is `QG_ERR_HTTP_STATUS`, and
/// `QG_ERR_PAGING` when a next link leads back to a page already fetched or the list has
/// more pages than `qg_client_builder_set_max_pages` allows. A failure ends the run:
/// every later call returns the same failure again (with its last error text), never
/// `QG_DONE`, so a loop that stops at the first result other than `QG_OK` can tell a
/// complete list (`QG_DONE`) from a partial one. Blocks like `qg_client_send`, and stops
/// at the request's `qg_request_cancel`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_pages_next(p: *mut qg_pages, out: *mut *mut qg_response) -> qg_result {
    let done = std::cell::Cell::new(false);
    let done_ref = &done;
    let code = ffi_boundary! {
        let p = unsafe { try_mut(p, "pages") }?;
        let out = OutPtr::new(out, "out")?;
        match p.step(|items| items.pages_mut().next_page())? {
            None => done_ref.set(true),
            Some((response, _)) => out.write(to_box(qg_response { response })),
        }
        Ok(())
    };
    if done.get() { QG_DONE } else { code }
}

/// Gives the items of the pages' `value` arrays one by one, as JSON text in `*item_json`
/// (free with `qg_string_free`), fetching pages as needed; `QG_DONE` after the last item.
/// Failures as in `qg_pages_next`, and the same failure again on every later call. One
/// call may fetch several pages when pages hold no items; it stops at the request's
/// `qg_request_cancel`, and with `QG_ERR_TIMEOUT` once the client's quota-wait budget
/// (`qg_client_builder_set_max_quota_wait_ms`) has passed between such pages. Do not mix
/// with `qg_pages_next` on the same pages. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_pages_next_item(p: *mut qg_pages, item_json: *mut *mut c_char) -> qg_result {
    let done = std::cell::Cell::new(false);
    let done_ref = &done;
    let code = ffi_boundary! {
        let p = unsafe { try_mut(p, "pages") }?;
        let out = OutPtr::new(item_json, "item_json")?;
        match p.step(Iterator::next)? {
            None => done_ref.set(true),
            Some(item) => out.write(to_c_string(item.to_string())?),
        }
        Ok(())
    };
    if done.get() { QG_DONE } else { code }
}

/// Frees pages. NULL does nothing; never free the same pages twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_pages_free(p: *mut qg_pages) {
    super::boundary::run_void(|| unsafe { free_box(p) })
}

/// Copies the scope the client's tokens are for into `buf` (the `(buf, len, written)`
/// convention), in the v2 form (`https://api.securitycenter.microsoft.com/.default`)
/// even when the client asks for a v1 resource: what a host's credential object asks
/// its identity library for, before it hands tokens to a token provider. No NULL
/// except `buf` with `len` 0. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_token_scope(
    c: *const qg_client,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let scope = unsafe { try_ref(c, "client") }?.client.token_scope();
        copy_out_checked(&scope, buf, len, written)
    }
}

/// Writes the client's statistics as a JSON object to `*out` (free with
/// `qg_string_free`): `requests`, `retries`, `throttled`, `token_requests`,
/// `transport_failures`, `learned_limits`, and `buckets` by key with `admitted_calls`,
/// `waited_calls`, `total_wait_ms`, `longest_wait_ms`, `pauses` and `windows`
/// (`used`, `calls`, `window_ms`), and `in_flight_peaks` (for each route with a cap on
/// calls under way, the most there were at once). No NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_stats_json(c: *const qg_client, out: *mut *mut c_char) -> qg_result {
    ffi_boundary! {
        let c = unsafe { try_ref(c, "client") }?;
        let out = OutPtr::new(out, "out")?;
        let json = serde_json::to_string(&c.client.stats()).map_err(|e| FfiError::invalid(e.to_string()))?;
        out.write(to_c_string(json)?);
        Ok(())
    }
}

/// Closes the client: calls waiting for quota, a token or a backoff end with
/// `QG_ERR_CLOSED` within about 50 ms, and later calls fail the same way. A shared
/// limiter stays open. The handle stays valid until `qg_client_free`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_close(c: *const qg_client) -> qg_result {
    ffi_boundary! {
        unsafe { try_ref(c, "client") }?.client.close();
        Ok(())
    }
}

/// Releases the caller's reference to the client. NULL does nothing; never free the same
/// handle twice, nor while another thread still uses it.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_free(c: *mut qg_client) {
    super::boundary::run_void(|| unsafe { free_box(c) })
}

#[cfg(test)]
mod tests {
    use super::*;
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

    unsafe extern "C" fn provide(
        user_data: *mut c_void,
        buf: *mut c_char,
        len: usize,
        written: *mut usize,
        expires_ms: *mut u64,
    ) -> qg_result {
        let token = unsafe { &*(user_data as *const String) };
        unsafe { *written = token.len() };
        if token.starts_with("fail") {
            unsafe { std::ptr::copy_nonoverlapping(token.as_ptr(), buf.cast(), token.len()) };
            return crate::ffi::error::QG_ERR_AUTH;
        }
        if token.len() > len {
            return QG_ERR_BUFFER_TOO_SMALL;
        }
        unsafe {
            std::ptr::copy_nonoverlapping(token.as_ptr(), buf.cast(), token.len());
            *expires_ms = 60_000;
        }
        QG_OK
    }

    #[test]
    fn a_host_token_function_fills_the_buffer_and_may_ask_for_more() {
        let long = "x".repeat(10_000);
        let host = HostTokenFn {
            callback: provide,
            user_data: &long as *const String as usize,
        };
        let (token, lifetime) = host.call().unwrap();
        assert_eq!(
            (token.expose(), lifetime),
            (long.as_str(), Duration::from_secs(60))
        );
        // The buffer of a failed call may hold a token: it never reaches the error text.
        let failing = "fail-after-writing-the-token eyJ0eXAi.secret".to_string();
        let host = HostTokenFn {
            callback: provide,
            user_data: &failing as *const String as usize,
        };
        let e = host.call().unwrap_err();
        assert_eq!(e, "it reported a failure");
        let b = new_builder();
        assert_eq!(
            qg_client_builder_set_token_provider(b, None, std::ptr::null_mut()),
            crate::ffi::error::QG_ERR_NULL_ARGUMENT
        );
        let short = "abc".to_string();
        assert_eq!(
            qg_client_builder_set_token_provider(
                b,
                Some(provide),
                &short as *const String as *mut c_void
            ),
            QG_OK
        );
        build(b);
        qg_client_builder_free(b);
    }

    #[cfg(feature = "sim")]
    #[test]
    fn certificates_are_loaded_from_pem_files_and_text() {
        use crate::sim::{SimConfig, Simulator};
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
        let sim = Simulator::start(
            SimConfig::default()
                .add_certificate_client("cert-app", include_bytes!("../../tests/data/app.crt")),
        )
        .unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        for (i, algorithm) in [QG_ASSERTION_RS256, QG_ASSERTION_PS256, QG_ASSERTION_PS256]
            .into_iter()
            .enumerate()
        {
            let mut b = std::ptr::null_mut();
            assert_eq!(qg_client_builder_new(&mut b), QG_OK);
            for (set, v) in [
                (
                    qg_client_builder_set_base_url as extern "C" fn(_, _) -> _,
                    sim.url(),
                ),
                (qg_client_builder_set_authority, sim.authority()),
                (qg_client_builder_set_tenant_id, sim.tenant_id().to_owned()),
                (qg_client_builder_set_client_id, "cert-app".to_owned()),
            ] {
                assert_eq!(set(b, c(&v).as_ptr()), QG_OK);
            }
            assert_eq!(
                qg_client_builder_set_assertion_algorithm(b, algorithm),
                QG_OK
            );
            if i == 0 {
                let pem = c(&format!("{dir}app.pem"));
                assert_eq!(
                    qg_client_builder_set_certificate_pem_files(b, pem.as_ptr(), std::ptr::null()),
                    QG_OK
                );
            } else if cfg!(feature = "pfx") && i == 2 {
                let pfx = c(&format!("{dir}app-3des.pfx"));
                let password = c("quotagate");
                assert_eq!(
                    qg_client_builder_set_certificate_pfx_file(b, pfx.as_ptr(), password.as_ptr()),
                    QG_OK
                );
            } else {
                let cert = c(include_str!("../../tests/data/app.crt"));
                let key = c(include_str!("../../tests/data/app-pkcs1.key"));
                assert_eq!(
                    qg_client_builder_set_certificate_pem(b, cert.as_ptr(), key.as_ptr()),
                    QG_OK
                );
            }
            let client = build(b);
            assert_eq!(
                client
                    .send(&Request::get("/api/machines?$top=1"))
                    .unwrap()
                    .status(),
                200
            );
            qg_client_builder_free(b);
        }
        let b = new_builder();
        assert_eq!(
            qg_client_builder_set_assertion_algorithm(b, 7),
            QG_ERR_INVALID_ARGUMENT
        );
        let wrong = c(&format!("{dir}app.crt"));
        let key = c(&format!("{dir}other.key"));
        assert_eq!(
            qg_client_builder_set_certificate_pem_files(b, wrong.as_ptr(), key.as_ptr()),
            QG_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("does not belong"), "{}", last_error());
        qg_client_builder_free(b);
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

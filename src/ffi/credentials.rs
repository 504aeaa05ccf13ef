//! The credentials a `qg_client_builder` takes: client secret, certificate, fixed token,
//! or the host's token function (`qg_token_fn`), and the token's scope.

use super::boundary::{opt_str, try_mut, try_str};
use super::client_builder::{builder, qg_client_builder, set_string, with_builder};
use super::error::{FfiError, QG_ERR_BUFFER_TOO_SMALL, QG_OK, qg_result};
use crate::client::{CertificateCredential, Secret, SignatureAlgorithm};
use std::ffi::{c_char, c_void};
use std::time::Duration;

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

/// Where a token source (`qg_token_source_fn`) puts the token it fetched: valid only
/// during the call of the source that received it.
///
/// Methods: `qg_token_sink_set`.
pub struct qg_token_sink {
    token: Option<(Secret, Duration)>,
}

/// A token source: the host's function that fetches an access token and hands it to
/// `sink` with `qg_token_sink_set`, then returns `QG_OK`; the library copies the token
/// out at once and keeps it like a secret. Any other result is a failure: the call that
/// needed the token fails with `QG_ERR_AUTH` (a token already handed over is then
/// dropped unread). Returning `QG_OK` without a token is a failure too.
///
/// It is called when the cached token is missing, near its end or refused, from the
/// threads and with the limits that `qg_token_fn` describes (one call at a time per
/// client; a call with the same client fails with `QG_ERR_REENTRANT_CALL`). `user_data`
/// is passed as given.
pub type qg_token_source_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, sink: *mut qg_token_sink) -> qg_result>;

/// The longest token a source may hand over.
const MAX_TOKEN: usize = 1 << 20;

/// Hands a token source's token to the library: `len` bytes at `token` (UTF-8; a
/// terminating NUL is not needed) and its remaining lifetime in milliseconds (above 0).
/// The bytes are copied; a second call replaces the first token. Only valid inside the
/// call of the `qg_token_source_fn` that received `sink`. An empty token, one over 1 MiB
/// or not UTF-8, or a lifetime of 0, gives `QG_ERR_INVALID_ARGUMENT` (whose text never
/// quotes the token). No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_token_sink_set(
    sink: *mut qg_token_sink,
    token: *const c_char,
    len: usize,
    expires_in_ms: u64,
) -> qg_result {
    ffi_boundary! {
        let sink = unsafe { try_mut(sink, "sink") }?;
        if token.is_null() {
            return Err(FfiError::null("token"));
        }
        if len == 0 || len > MAX_TOKEN {
            return Err(FfiError::invalid(format!("a token has 1 to {MAX_TOKEN} bytes, not {len}")));
        }
        if expires_in_ms == 0 {
            return Err(FfiError::invalid("a token's lifetime must be above 0 ms"));
        }
        // SAFETY: the caller passes `len` readable bytes at `token`.
        let bytes = unsafe { std::slice::from_raw_parts(token.cast::<u8>(), len) };
        let text = std::str::from_utf8(bytes)
            .map_err(|_| FfiError::invalid("the token is not UTF-8"))?;
        sink.token = Some((Secret::new(text), Duration::from_millis(expires_in_ms)));
        Ok(())
    }
}

/// The host's token source and its data, callable from any thread as documented.
struct HostTokenSource {
    source: unsafe extern "C" fn(*mut c_void, *mut qg_token_sink) -> qg_result,
    user_data: usize,
}

impl HostTokenSource {
    fn call(&self) -> Result<(Secret, Duration), String> {
        let mut sink = qg_token_sink { token: None };
        // SAFETY: the sink lives until the call returns; the host promised that its
        // function and `user_data` are usable from any thread.
        let code = unsafe { (self.source)(self.user_data as *mut c_void, &mut sink) };
        match (code, sink.token.take()) {
            (QG_OK, Some(token)) => Ok(token),
            (QG_OK, None) => Err(
                "the token source returned QG_OK without handing a token to qg_token_sink_set"
                    .into(),
            ),
            // The host's binding tells its own reason.
            _ => Err("it reported a failure".into()),
        }
    }
}

/// Takes tokens from the host's `source` (see `qg_token_source_fn`), which hands each
/// token to a sink rather than into a buffer of the library's size. Otherwise as
/// `qg_client_builder_set_token_provider`, which it replaces. `b` and `source` must not
/// be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_token_source(
    b: *mut qg_client_builder,
    source: qg_token_source_fn,
    user_data: *mut c_void,
) -> qg_result {
    let user_data = user_data as usize;
    ffi_boundary! {
        let source = source.ok_or_else(|| FfiError::null("source"))?;
        let host = HostTokenSource { source, user_data };
        with_builder(b, |x| x.token_provider(move || host.call()))
    }
}

/// Uses certificate credentials read from `path`, PEM or PKCS#12/PFX, told apart by the
/// file's content rather than its name: a PEM file holds the certificate, and its key
/// too unless `key_path` names the key's file (unencrypted: `password` must be NULL); a
/// PFX file holds both (`key_path` must be NULL) and is opened with `password` (NULL:
/// empty). Otherwise as `qg_client_builder_set_certificate_pem_files` and
/// `qg_client_builder_set_certificate_pfx_file`. `b` and `path` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_builder_set_certificate_file(
    b: *mut qg_client_builder,
    path: *const c_char,
    key_path: *const c_char,
    password: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let path = unsafe { try_str(path, "path") }?;
        let key = unsafe { opt_str(key_path, "key_path") }?;
        let password = unsafe { opt_str(password, "password") }?;
        set_certificate(b, || {
            CertificateCredential::from_file(
                std::path::Path::new(path),
                key.map(std::path::Path::new),
                password,
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::client_builder::qg_client_builder_free;
    use crate::ffi::client_builder::tests::{build, new_builder};
    // The test against the simulator's token endpoint.
    #[cfg(feature = "sim")]
    use {
        crate::client::Request,
        crate::ffi::client_builder::tests::last_error,
        crate::ffi::client_builder::{
            qg_client_builder_new, qg_client_builder_set_authority, qg_client_builder_set_base_url,
        },
        crate::ffi::error::QG_ERR_INVALID_ARGUMENT,
        std::ffi::CString,
    };

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

    // Long: each way of loading a certificate (PEM files, PEM text, PFX) and each
    // algorithm signs in against the one simulator the test starts, then the refusals.
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
}

//! `qg_sim_config` and `qg_sim`: the local simulator of the Defender API, so that tests
//! and scripts in every language can run offline.

use super::boundary::{OutPtr, free_box, opt_str, to_box, try_mut, try_ref, try_str};
use super::error::{FfiError, QG_ERR_IO, copy_out_checked, qg_result};
use super::string::to_c_string;
use crate::sim::{Faults, RetryAfterStyle, SimConfig, Simulator};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::ffi::c_char;
use std::time::Duration;

/// The simulator's settings before it starts.
///
/// Methods: `qg_sim_config_new`, `qg_sim_config_set_machines`,
/// `qg_sim_config_set_limit_ms`, `qg_sim_config_set_limit` (deprecated),
/// `qg_sim_config_set_time_scale`, `qg_sim_config_set_token_lifetime_ms`,
/// `qg_sim_config_set_faults`, `qg_sim_config_set_inbound_jitter_ms`,
/// `qg_sim_config_set_retry_after_style`, `qg_sim_config_set_live_response_delay_ms`,
/// `qg_sim_config_add_certificate_client`, `qg_sim_config_free`; `qg_sim_start` starts a
/// simulator with it.
///
/// Owned by the caller; not for use by several threads at once.
pub struct qg_sim_config {
    config: SimConfig,
    limits: HashMap<String, Vec<(u32, f64)>>,
}

/// A running simulator on a loopback port.
///
/// Methods: `qg_sim_start`, `qg_sim_info`, `qg_sim_issue_token`, `qg_sim_log_json`,
/// `qg_sim_stats_json`, `qg_sim_stop`, `qg_sim_free`.
///
/// Safe to use from any number of threads at once. `qg_sim_free` stops it.
pub struct qg_sim {
    sim: Mutex<Option<Simulator>>,
    url: String,
    tenant_id: String,
    client_id: String,
    client_secret: String,
}

/// Field of `qg_sim_info`: the API's base URL, such as "http://127.0.0.1:40123".
pub const QG_SIM_URL: u32 = 0;
/// Field of `qg_sim_info`: the login authority (the same origin).
pub const QG_SIM_AUTHORITY: u32 = 1;
/// Field of `qg_sim_info`: the tenant id it accepts.
pub const QG_SIM_TENANT_ID: u32 = 2;
/// Field of `qg_sim_info`: the client id it accepts.
pub const QG_SIM_CLIENT_ID: u32 = 3;
/// Field of `qg_sim_info`: the client secret it accepts (a test value, not a secret).
pub const QG_SIM_CLIENT_SECRET: u32 = 4;

/// Retry-After style of `qg_sim_config_set_retry_after_style`: whole seconds (default).
pub const QG_SIM_RETRY_AFTER_SECONDS: u32 = 0;
/// Retry-After style: an HTTP-date.
pub const QG_SIM_RETRY_AFTER_HTTP_DATE: u32 = 1;
/// Retry-After style: only `retry-after-ms`.
pub const QG_SIM_RETRY_AFTER_MS: u32 = 2;
/// Retry-After style: only `x-ms-retry-after-ms`.
pub const QG_SIM_RETRY_AFTER_X_MS: u32 = 3;
/// Retry-After style: no header; the body's message states the limit.
pub const QG_SIM_RETRY_AFTER_BODY_ONLY: u32 = 4;
/// Retry-After style: no hint at all.
pub const QG_SIM_RETRY_AFTER_NONE: u32 = 5;

fn config<'a>(c: *mut qg_sim_config) -> Result<&'a mut qg_sim_config, FfiError> {
    unsafe { try_mut(c, "config") }
}

fn edit(c: *mut qg_sim_config, f: impl FnOnce(SimConfig) -> SimConfig) -> Result<(), FfiError> {
    let c = config(c)?;
    c.config = f(std::mem::take(&mut c.config));
    Ok(())
}

/// Creates simulator settings with the defaults: 250 machines, the published limits
/// (100/min + 1,500/h; hunting 45/min + 1,500/h), real time, tokens for 3599 s, no
/// faults. On success `*out` receives settings to free with `qg_sim_config_free`.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_new(out: *mut *mut qg_sim_config) -> qg_result {
    ffi_boundary! {
        OutPtr::new(out, "out")?.write(to_box(qg_sim_config { config: SimConfig::default(), limits: HashMap::new() }));
        Ok(())
    }
}

/// Sets how many machines the simulated tenant has. `c` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_set_machines(c: *mut qg_sim_config, n: u32) -> qg_result {
    ffi_boundary! { edit(c, |x| x.machines(n as usize)) }
}

/// Limits the endpoint class `endpoint_class` (NULL: "default"; also "hunting",
/// "batch_update_alerts", "token") to `calls` per `window_ms` milliseconds of API time.
/// The first call for a class replaces its built-in limits; later calls add limits that
/// apply together. `c` must not be NULL; `calls` and `window_ms` above 0.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_set_limit_ms(
    c: *mut qg_sim_config,
    endpoint_class: *const c_char,
    calls: u32,
    window_ms: u64,
) -> qg_result {
    qg_sim_config_set_limit(c, endpoint_class, calls, window_ms as f64 / 1000.0)
}

/// Deprecated: `qg_sim_config_set_limit_ms`, whose name says its unit (here the window
/// is in seconds, as a double); kept for callers written against 0.1.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_set_limit(
    c: *mut qg_sim_config,
    endpoint_class: *const c_char,
    calls: u32,
    window_seconds: f64,
) -> qg_result {
    ffi_boundary! {
        let class = unsafe { opt_str(endpoint_class, "endpoint_class") }?.unwrap_or("default").to_string();
        if calls == 0 || !(window_seconds.is_finite() && window_seconds > 0.0) {
            return Err(FfiError::invalid("a limit needs calls and a window above 0"));
        }
        let c = config(c)?;
        let list = c.limits.entry(class.clone()).or_default();
        list.push((calls, window_seconds));
        let list = list.clone();
        c.config = std::mem::take(&mut c.config).limits(&class, &list);
        Ok(())
    }
}

/// Scales time: 0.01 makes a 60 s window last 600 ms of real time (token lifetimes and
/// simulated delays scale too). Above 0. `c` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_set_time_scale(c: *mut qg_sim_config, scale: f64) -> qg_result {
    ffi_boundary! {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(FfiError::invalid("the time scale must be above 0"));
        }
        edit(c, |x| x.time_scale(scale))
    }
}

/// Registers a certificate (PEM text, NUL-terminated) for the application `client_id`:
/// token requests with a client assertion signed by its key are then accepted while the
/// certificate is valid; assertions are checked as the identity platform checks them
/// (signature, thumbprint, `aud`, `iss`/`sub`, `nbf`/`exp`, the certificate's validity,
/// a `jti` used only once). An id other than the main client is an application with its
/// own quotas. Both are copied; an unreadable certificate makes `qg_sim_start` fail with
/// `QG_ERR_INVALID_ARGUMENT`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_add_certificate_client(
    c: *mut qg_sim_config,
    client_id: *const c_char,
    certificate_pem: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let id = unsafe { try_str(client_id, "client_id") }?;
        let pem = unsafe { try_str(certificate_pem, "certificate_pem") }?;
        edit(c, |x| x.add_certificate_client(id, pem))
    }
}

/// Sets how long `POST /api/machines/{id}/runliveresponse` takes to answer, in
/// milliseconds of API time (default 0); `max_in_flight` in `qg_sim_stats_json` shows
/// how many such calls the simulator held at once. `c` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_set_live_response_delay_ms(
    c: *mut qg_sim_config,
    ms: u64,
) -> qg_result {
    ffi_boundary! { edit(c, |x| x.live_response_delay(Duration::from_millis(ms))) }
}

/// Sets how long issued tokens live, in milliseconds of API time (above 0).
/// `c` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_set_token_lifetime_ms(c: *mut qg_sim_config, ms: u64) -> qg_result {
    ffi_boundary! {
        if ms == 0 {
            return Err(FfiError::invalid("the token lifetime must be above 0"));
        }
        edit(c, |x| x.token_lifetime(Duration::from_millis(ms)))
    }
}

/// Injects faults into API calls: the share (0 to 1) answered 503, the share processed
/// and then answered by closing the connection, and real latency added to each answer.
/// Leaves the inbound jitter (`qg_sim_config_set_inbound_jitter_ms`) as it was.
/// `c` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_set_faults(
    c: *mut qg_sim_config,
    error_503_rate: f64,
    reset_rate: f64,
    latency_ms: u64,
) -> qg_result {
    ffi_boundary! {
        let share = |v: f64| (0.0..=1.0).contains(&v);
        if !share(error_503_rate) || !share(reset_rate) {
            return Err(FfiError::invalid("fault rates are shares from 0 to 1"));
        }
        edit(c, |x| {
            let inbound_jitter = x.faults.inbound_jitter;
            x.faults(Faults {
                error_503_rate,
                reset_rate,
                latency: Duration::from_millis(latency_ms),
                inbound_jitter,
                ..Faults::default()
            })
        })
    }
}

/// Sets the most real time, in milliseconds, that a request waits on its way in before
/// the simulator decides and counts it, as a real server counts a call when it arrives:
/// each request (token requests included) waits a delay drawn uniformly from 0 to
/// `jitter_ms`, so a call sent exactly one window after another can arrive inside the
/// same window. The delays come from a seeded generator: every run replays the same
/// ones, and they change no fault draw. Default 0 (no delay); at most 10000 (10 s),
/// above which it returns `QG_ERR_INVALID_ARGUMENT` and changes nothing. Independent of
/// `qg_sim_config_set_faults`. `c` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_set_inbound_jitter_ms(
    c: *mut qg_sim_config,
    jitter_ms: u64,
) -> qg_result {
    ffi_boundary! {
        let c = config(c)?;
        let next = c.config.clone().inbound_jitter(Duration::from_millis(jitter_ms));
        next.faults.validate().map_err(FfiError::invalid)?;
        c.config = next;
        Ok(())
    }
}

/// Chooses how 429 answers tell the wait (a `QG_SIM_RETRY_AFTER_*` value).
/// `c` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_set_retry_after_style(
    c: *mut qg_sim_config,
    style: u32,
) -> qg_result {
    ffi_boundary! {
        let style = match style {
            QG_SIM_RETRY_AFTER_SECONDS => RetryAfterStyle::Seconds,
            QG_SIM_RETRY_AFTER_HTTP_DATE => RetryAfterStyle::HttpDate,
            QG_SIM_RETRY_AFTER_MS => RetryAfterStyle::Milliseconds,
            QG_SIM_RETRY_AFTER_X_MS => RetryAfterStyle::XmsMilliseconds,
            QG_SIM_RETRY_AFTER_BODY_ONLY => RetryAfterStyle::BodyOnly,
            QG_SIM_RETRY_AFTER_NONE => RetryAfterStyle::None,
            other => return Err(FfiError::invalid(format!("unknown Retry-After style {other}"))),
        };
        edit(c, |x| x.retry_after_style(style))
    }
}

/// Frees simulator settings. NULL does nothing; never free the same settings twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_config_free(c: *mut qg_sim_config) {
    super::boundary::run_void(|| unsafe { free_box(c) })
}

/// Starts a simulator with the settings `c` (not consumed) on 127.0.0.1:`port` (0: any
/// free port). On success `*out` receives a running simulator to free with
/// `qg_sim_free`. `QG_ERR_IO` when the port cannot be bound. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_start(
    c: *const qg_sim_config,
    port: u16,
    out: *mut *mut qg_sim,
) -> qg_result {
    ffi_boundary! {
        let c = unsafe { try_ref(c, "config") }?;
        let out = OutPtr::new(out, "out")?;
        let sim = Simulator::start_on(c.config.clone(), port).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidInput {
                FfiError::invalid(e.to_string())
            } else {
                FfiError::new(QG_ERR_IO, format!("the simulator could not start: {e}"))
            }
        })?;
        let handle = qg_sim {
            url: sim.url(),
            tenant_id: sim.tenant_id().to_string(),
            client_id: sim.client_id().to_string(),
            client_secret: sim.client_secret().to_string(),
            sim: Mutex::new(Some(sim)),
        };
        out.write(to_box(handle));
        Ok(())
    }
}

/// Copies one fact of the running simulator (a `QG_SIM_*` field) into `buf`, with the
/// conventions of `qg_last_error_message`; `QG_ERR_CLOSED` once stopped. `s` and
/// `written` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_info(
    s: *const qg_sim,
    field: u32,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let s = unsafe { try_ref(s, "sim") }?;
        if s.sim.lock().is_none() {
            return Err(FfiError::new(super::error::QG_ERR_CLOSED, "the simulator is stopped"));
        }
        let text = match field {
            QG_SIM_URL | QG_SIM_AUTHORITY => &s.url,
            QG_SIM_TENANT_ID => &s.tenant_id,
            QG_SIM_CLIENT_ID => &s.client_id,
            QG_SIM_CLIENT_SECRET => &s.client_secret,
            other => return Err(FfiError::invalid(format!("unknown simulator field {other}"))),
        };
        copy_out_checked(text, buf, len, written)
    }
}

fn with_sim<R>(s: *const qg_sim, f: impl FnOnce(&Simulator) -> R) -> Result<R, FfiError> {
    let s = unsafe { try_ref(s, "sim") }?;
    let guard = s.sim.lock();
    let sim = guard
        .as_ref()
        .ok_or_else(|| FfiError::new(super::error::QG_ERR_CLOSED, "the simulator is stopped"))?;
    Ok(f(sim))
}

/// Issues a bearer token for `client_id` without a token request (for tests of token
/// providers), valid for the configured token lifetime from now, and copies it into
/// `buf` with the conventions of `qg_last_error_message`. `QG_ERR_CLOSED` once stopped.
/// `s`, `client_id` and `written` must not be NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_issue_token(
    s: *const qg_sim,
    client_id: *const c_char,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let id = unsafe { try_str(client_id, "client_id") }?;
        let token = with_sim(s, |sim| sim.issue_token(id))?;
        copy_out_checked(&token, buf, len, written)
    }
}

/// Writes the log of every request received as a JSON array to `*out` (free with
/// `qg_string_free`): objects with `at_ms` (since start, when the call was counted),
/// `inbound_delay_ms` (the delay it waited before, see
/// `qg_sim_config_set_inbound_jitter_ms`), `method`, `path` (as received), `status`,
/// `class`, `client_id` (or null), `reset`, `counted` and `retry_after_ms` (or null).
/// `QG_ERR_CLOSED` once stopped. No NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_log_json(s: *const qg_sim, out: *mut *mut c_char) -> qg_result {
    ffi_boundary! {
        let out = OutPtr::new(out, "out")?;
        let entries = with_sim(s, |sim| sim.log())?;
        let list: Vec<_> = entries.iter().map(|e| json!({
            "at_ms": e.instant.as_secs_f64() * 1000.0,
            "inbound_delay_ms": e.inbound_delay.as_secs_f64() * 1000.0,
            "method": e.method,
            "path": e.path,
            "status": e.status,
            "class": e.class,
            "client_id": e.client_id,
            "reset": e.reset,
            "counted": e.counted,
            "retry_after_ms": e.retry_after.map(|d| d.as_secs_f64() * 1000.0),
        })).collect();
        out.write(to_c_string(serde_json::Value::Array(list).to_string())?);
        Ok(())
    }
}

/// Writes the simulator's figures as a JSON object to `*out` (free with
/// `qg_string_free`): `requests`, `throttled`, `token_requests`, `resets`, `errors_503`,
/// `by_status` (status to count) and `max_in_window` (class to a list of `calls`,
/// `window_ms` and `peak`: the most calls one client had inside any rolling window) and
/// `max_in_flight` (class to the most calls answered at once; `live_response` only).
/// `QG_ERR_CLOSED` once stopped. No NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_stats_json(s: *const qg_sim, out: *mut *mut c_char) -> qg_result {
    ffi_boundary! {
        let out = OutPtr::new(out, "out")?;
        let st = with_sim(s, |sim| sim.stats())?;
        let by_status: serde_json::Map<_, _> = st.by_status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let windows: serde_json::Map<_, _> = st.max_in_window.iter().map(|(class, peaks)| {
            (class.clone(), json!(peaks.iter().map(|p| json!({
                "calls": p.calls, "window_ms": p.window.as_secs_f64() * 1000.0, "peak": p.peak,
            })).collect::<Vec<_>>()))
        }).collect();
        let v = json!({
            "requests": st.requests, "throttled": st.throttled, "token_requests": st.token_requests,
            "resets": st.resets, "errors_503": st.errors_503, "by_status": by_status, "max_in_window": windows,
            "max_in_flight": st.max_in_flight,
        });
        out.write(to_c_string(v.to_string())?);
        Ok(())
    }
}

/// Stops the simulator: it closes its port and connections. Later calls on it give
/// `QG_ERR_CLOSED`; stopping twice is fine. The handle stays valid until `qg_sim_free`.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_stop(s: *const qg_sim) -> qg_result {
    ffi_boundary! {
        let s = unsafe { try_ref(s, "sim") }?;
        let sim = s.sim.lock().take();
        if let Some(sim) = sim {
            sim.stop();
        }
        Ok(())
    }
}

/// Stops (if running) and frees a simulator. NULL does nothing; never free the same
/// handle twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_sim_free(s: *mut qg_sim) {
    super::boundary::run_void(|| unsafe { free_box(s) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::{QG_ERR_INVALID_ARGUMENT, QG_ERR_NULL_ARGUMENT, QG_OK};

    #[test]
    fn inbound_jitter_is_checked_and_outlives_set_faults() {
        let mut c = std::ptr::null_mut();
        assert_eq!(qg_sim_config_new(&mut c), QG_OK);
        let jitter = |c: *mut qg_sim_config| unsafe { (*c).config.faults.inbound_jitter };
        assert_eq!(qg_sim_config_set_inbound_jitter_ms(c, 40), QG_OK);
        assert_eq!(qg_sim_config_set_faults(c, 0.1, 0.2, 5), QG_OK);
        assert_eq!(jitter(c), Duration::from_millis(40));
        assert_eq!(
            unsafe { (*c).config.faults.latency },
            Duration::from_millis(5)
        );
        // Refused above the maximum, and the setting stays as it was.
        assert_eq!(
            qg_sim_config_set_inbound_jitter_ms(c, 10_001),
            QG_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            qg_sim_config_set_inbound_jitter_ms(c, u64::MAX),
            QG_ERR_INVALID_ARGUMENT
        );
        assert_eq!(jitter(c), Duration::from_millis(40));
        assert_eq!(qg_sim_config_set_inbound_jitter_ms(c, 10_000), QG_OK);
        assert_eq!(jitter(c), crate::sim::MAX_INBOUND_JITTER);
        assert_eq!(
            qg_sim_config_set_inbound_jitter_ms(std::ptr::null_mut(), 1),
            QG_ERR_NULL_ARGUMENT
        );
        qg_sim_config_free(c);
    }
}

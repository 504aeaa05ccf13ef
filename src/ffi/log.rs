//! Hands the library's log records (waits, retries, pauses, token refreshes) to a
//! callback of the host, so that bindings can show them in their own logging.

use super::error::{FfiError, QG_ERR_REENTRANT_CALL, qg_result};
use parking_lot::RwLock;
use std::cell::Cell;
use std::ffi::{CString, c_char, c_void};

/// A log callback: `level` is one of `QG_LOG_*`, `message` a NUL-terminated UTF-8 string
/// valid only during the call, `user_data` what was given to `qg_set_logger`. It may be
/// called from any thread, at any time until `qg_set_logger(NULL, ...)` returns. It may
/// call the library, but records logged meanwhile on the same thread are dropped (no
/// callback runs inside itself), and `qg_set_logger` fails there with
/// `QG_ERR_REENTRANT_CALL`.
pub type qg_log_fn =
    Option<unsafe extern "C" fn(level: u32, message: *const c_char, user_data: *mut c_void)>;

/// Log level: failures.
pub const QG_LOG_ERROR: u32 = 1;
/// Log level: something went wrong but the call goes on (an ambiguous failure, a lowered limit).
pub const QG_LOG_WARN: u32 = 2;
/// Log level: 429s and pauses, token refreshes after a 401.
pub const QG_LOG_INFO: u32 = 3;
/// Log level: waits for quota, retries, tokens obtained.
pub const QG_LOG_DEBUG: u32 = 4;
/// Log level: everything.
pub const QG_LOG_TRACE: u32 = 5;

struct Sink {
    callback: unsafe extern "C" fn(u32, *const c_char, *mut c_void),
    max_level: log::LevelFilter,
    user_data: usize,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

thread_local! {
    /// Set while this thread runs the host's log callback: a record logged meanwhile would
    /// take the sink's lock again, which a waiting `qg_set_logger` makes a deadlock.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Clears `IN_CALLBACK` however the callback ends.
struct InCallback;

impl InCallback {
    fn enter() -> Option<Self> {
        (!IN_CALLBACK.with(|c| c.replace(true))).then_some(InCallback)
    }
}

impl Drop for InCallback {
    fn drop(&mut self) {
        IN_CALLBACK.with(|c| c.set(false));
    }
}

struct Forwarder;

static FORWARDER: Forwarder = Forwarder;

fn to_level(level: u32) -> Option<log::LevelFilter> {
    Some(match level {
        0 => log::LevelFilter::Off,
        QG_LOG_ERROR => log::LevelFilter::Error,
        QG_LOG_WARN => log::LevelFilter::Warn,
        QG_LOG_INFO => log::LevelFilter::Info,
        QG_LOG_DEBUG => log::LevelFilter::Debug,
        QG_LOG_TRACE => log::LevelFilter::Trace,
        _ => return None,
    })
}

impl log::Log for Forwarder {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target().starts_with("quotagate")
            && SINK
                .read()
                .as_ref()
                .is_some_and(|s| m.level() <= s.max_level)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Ok(text) = CString::new(record.args().to_string()) else {
            return;
        };
        let level = record.level() as u32; // Error = 1 ... Trace = 5, as QG_LOG_*.
        let Some(_inside) = InCallback::enter() else {
            return;
        };
        if let Some(s) = SINK.read().as_ref() {
            unsafe { (s.callback)(level, text.as_ptr(), s.user_data as *mut c_void) };
        }
    }

    fn flush(&self) {}
}

/// Sends the library's log records at `max_level` (a `QG_LOG_*` value) and more severe
/// to `callback` with `user_data`; NULL `callback` stops. Replaces an earlier callback.
///
/// Returns `QG_ERR_INVALID_ARGUMENT` for an unknown level, or when the process already
/// routes Rust logging elsewhere (a Rust host with its own `log` logger: use that one);
/// `QG_ERR_REENTRANT_CALL` when called from inside the log callback (it would wait for
/// that very callback to end). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_set_logger(
    callback: qg_log_fn,
    max_level: u32,
    user_data: *mut c_void,
) -> qg_result {
    let user_data = user_data as usize;
    ffi_boundary! {
        if IN_CALLBACK.with(Cell::get) {
            return Err(FfiError::new(QG_ERR_REENTRANT_CALL, "qg_set_logger was called from inside the log callback, which it would wait for; call it from elsewhere"));
        }
        let level = to_level(max_level).ok_or_else(|| FfiError::invalid(format!("unknown log level {max_level}")))?;
        static INSTALLED: once_cell::sync::OnceCell<bool> = once_cell::sync::OnceCell::new();
        let ours = *INSTALLED.get_or_init(|| log::set_logger(&FORWARDER).is_ok());
        if !ours {
            return Err(FfiError::invalid("another logger already receives this process's Rust log records"));
        }
        let mut sink = SINK.write();
        *sink = callback.map(|cb| Sink { callback: cb, max_level: level, user_data });
        log::set_max_level(if sink.is_some() { level } else { log::LevelFilter::Off });
        Ok(())
    }
}

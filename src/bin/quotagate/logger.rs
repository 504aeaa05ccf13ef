//! `-v`: the library's `log` records on stderr, without pulling in a logging crate.

use log::{Level, Log, Metadata, Record};

struct Stderr(Level);

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.0 && metadata.target().starts_with("quotagate")
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "[{}] {}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// No records by default; `-v` shows info and warnings (429s, learned limits), `-vv`
/// every wait and retry.
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => return,
        1 => Level::Info,
        _ => Level::Debug,
    };
    let logger: &'static Stderr = Box::leak(Box::new(Stderr(level)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level.to_level_filter());
    }
}

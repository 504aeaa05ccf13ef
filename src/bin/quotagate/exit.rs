//! Exit codes, and the failure that carries one to `main`.

use quotagate::client::Error;

/// The server answered with an error status, or paging could not go on (links that loop,
/// more pages than the limit); the demo's checks failed.
pub const HTTP: u8 = 1;
/// A usage or configuration error (clap uses the same code for bad flags).
pub const USAGE: u8 = 2;
/// Still throttled when the quota budget ran out.
pub const THROTTLED: u8 = 3;
/// The connection failed, or a call took longer than its time limit.
pub const TRANSPORT: u8 = 4;
/// No access token could be obtained.
pub const AUTH: u8 = 5;
/// The shared quota store failed (unreachable, damaged, misconfigured).
pub const STORE: u8 = 6;

/// Why a command failed: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }
}

/// The exit code of a client error.
pub fn code_of(e: &Error) -> u8 {
    match e {
        Error::Http(_) | Error::Paging(_) => HTTP,
        Error::Throttled(_) => THROTTLED,
        Error::Auth(..) => AUTH,
        Error::InvalidArgument(_) | Error::Reentrant(_) => USAGE,
        Error::Store(_) => STORE,
        Error::Transport(..)
        | Error::Timeout(..)
        | Error::BodyTooLarge(_)
        | Error::Cancelled
        | Error::Closed
        | Error::LimiterClosed => TRANSPORT,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::new(code_of(&e), e.to_string())
    }
}

//! An answer: status, headers (case-insensitive) and body.

use super::error::{Error, ErrorDetails};

/// The server's answer to a call.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    attempts: u32,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body_bytes", &self.body.len())
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl Response {
    pub(crate) fn new(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        Self {
            status,
            headers,
            body,
            attempts: 1,
        }
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers, in the order received (names in lower case).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many headers there are.
    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// The header at `index`.
    pub fn header_at(&self, index: usize) -> Option<(&str, &str)> {
        self.headers
            .get(index)
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The body's bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Attempts it took to get this answer.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The server's error details (code, message, target, request id) of this answer.
    pub fn error_details(&self) -> ErrorDetails {
        let mut d = ErrorDetails::from_answer(self.status, &self.body, self.header("request-id"));
        d.attempts = self.attempts;
        d
    }

    /// `Ok(self)` for a success, else [`Error::Http`] with the server's details.
    pub fn error_for_status(self) -> Result<Self, Error> {
        if self.status < 400 {
            Ok(self)
        } else {
            Err(Error::Http(Box::new(self.error_details())))
        }
    }
}

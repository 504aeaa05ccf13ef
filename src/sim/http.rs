//! The HTTP/1.1 wire format the simulator speaks: reading one request from a connection
//! and writing one answer.
//!
//! The simulator first served with tiny_http 0.12, whose thread pool can leave a
//! connection that arrives in a burst unread until another connection closes (a client
//! that keeps connections alive then hangs); the connection handling is now ours
//! (`net.rs`), and request heads are parsed by httparse.
//!
//! Small on purpose: request line, headers, bodies by `Content-Length` or chunked,
//! `Expect: 100-continue`, keep-alive by version and `Connection`, pipelined requests
//! answered in order (the caller serves a connection one request at a time).

use std::io::{self, BufRead, Read, Write};

/// The largest request line plus headers accepted.
const MAX_HEAD: usize = 64 << 10;

/// A request as read from the connection.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// The request target as received: path and raw query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The body, cut at the reader's limit.
    pub body: Vec<u8>,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header lists `token` (case-insensitive).
    fn lists(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection failed, or ended in the middle of a request.
    Io,
    /// The bytes are no request this server reads; answer `status` and close, since
    /// where the next request would start is unknown.
    Malformed { status: u16, reason: &'static str },
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

fn malformed(status: u16, reason: &'static str) -> ReadError {
    ReadError::Malformed { status, reason }
}

/// Reads the next request. `Ok(None)` when the client closed the connection between
/// requests. Bodies longer than `max_body` are read to their end and cut. `interim`
/// receives the `100 Continue` a client that expects one waits for.
pub(crate) fn read_request(
    reader: &mut impl BufRead,
    interim: &mut impl Write,
    max_body: u64,
) -> Result<Option<Request>, ReadError> {
    let Some(head) = read_head(reader)? else {
        return Ok(None);
    };
    let (mut request, http10) = parse_head(&head)?;
    request.keep_alive = if http10 {
        request.lists("Connection", "keep-alive")
    } else {
        !request.lists("Connection", "close")
    };
    let chunked = match request.header("Transfer-Encoding") {
        None => false,
        Some(te)
            if te
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked")) =>
        {
            true
        }
        Some(_) => return Err(malformed(400, "Bad Request")),
    };
    let length = match (chunked, request.header("Content-Length")) {
        (true, _) | (false, None) => 0,
        (false, Some(n)) => n
            .parse::<u64>()
            .map_err(|_| malformed(400, "Bad Request"))?,
    };
    if (chunked || length > 0) && request.lists("Expect", "100-continue") && !http10 {
        interim.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        interim.flush()?;
    }
    if chunked {
        read_chunked(reader, &mut request.body, max_body)?;
    } else {
        read_body(reader, length, &mut request.body, max_body)?;
    }
    Ok(Some(request))
}

/// Reads a request's head (request line and headers, up to the empty line), skipping
/// empty lines before it. `Ok(None)` when the connection closed before any.
fn read_head(reader: &mut impl BufRead) -> Result<Option<Vec<u8>>, ReadError> {
    // The head is framed here and parsed by httparse, the parser hyper uses; bodies are
    // framed by read_request.
    let mut head = Vec::new();
    loop {
        let limit = (MAX_HEAD - head.len()) as u64 + 1;
        let n = reader.by_ref().take(limit).read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Io)
            };
        }
        if head.len() > MAX_HEAD {
            return Err(malformed(431, "Request Header Fields Too Large"));
        }
        if head.last() != Some(&b'\n') {
            return Err(ReadError::Io);
        }
        // A client may send empty lines before a request line (RFC 9112, 2.2).
        if head == b"\r\n" || head == b"\n" {
            head.clear();
            continue;
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(Some(head));
        }
    }
}

/// Parses a head into a request without a body, and whether it is HTTP/1.0.
fn parse_head(head: &[u8]) -> Result<(Request, bool), ReadError> {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(malformed(400, "Bad Request")),
        Err(httparse::Error::Version) => {
            let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            return Err(if line.windows(5).any(|w| w == b"HTTP/") {
                malformed(505, "HTTP Version Not Supported")
            } else {
                malformed(400, "Bad Request")
            });
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(malformed(431, "Request Header Fields Too Large"));
        }
        Err(_) => return Err(malformed(400, "Bad Request")),
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(malformed(400, "Bad Request"));
    };
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| malformed(400, "Bad Request"))?;
        headers.push((h.name.to_owned(), value.trim().to_owned()));
    }
    let request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: Vec::new(),
        keep_alive: false,
    };
    Ok((request, version == 0))
}

/// Reads `length` bytes, keeping those that fit under `max_body`.
fn read_body(
    reader: &mut impl BufRead,
    length: u64,
    body: &mut Vec<u8>,
    max_body: u64,
) -> Result<(), ReadError> {
    let room = max_body.saturating_sub(body.len() as u64);
    let keep = length.min(room);
    let kept = reader.by_ref().take(keep).read_to_end(body)? as u64;
    let skipped = io::copy(&mut reader.by_ref().take(length - keep), &mut io::sink())?;
    if kept + skipped < length {
        return Err(ReadError::Io);
    }
    Ok(())
}

/// Reads a chunked body and its trailers.
fn read_chunked(
    reader: &mut impl BufRead,
    body: &mut Vec<u8>,
    max_body: u64,
) -> Result<(), ReadError> {
    loop {
        let mut budget = MAX_HEAD;
        let Some(line) = read_line(reader, &mut budget)? else {
            return Err(ReadError::Io);
        };
        let framed = format!("{line}\r\n");
        let size = match httparse::parse_chunk_size(framed.as_bytes()) {
            Ok(httparse::Status::Complete((_, size))) => size,
            _ => return Err(malformed(400, "Bad Request")),
        };
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                match read_line(reader, &mut budget)? {
                    None => return Err(ReadError::Io),
                    Some(line) if line.is_empty() => return Ok(()),
                    Some(_) => {}
                }
            }
        }
        read_body(reader, size, body, max_body)?;
        match read_line(reader, &mut budget)? {
            Some(line) if line.is_empty() => {}
            Some(_) => return Err(malformed(400, "Bad Request")),
            None => return Err(ReadError::Io),
        }
    }
}

/// One line without its CRLF (or bare LF); `None` at end of stream before any byte.
fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> Result<Option<String>, ReadError> {
    let mut line = Vec::new();
    let limit = *budget as u64 + 1;
    let n = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n as u64 == limit && line.last() != Some(&b'\n') {
        return Err(malformed(431, "Request Header Fields Too Large"));
    }
    *budget -= n.min(*budget);
    if line.pop() != Some(b'\n') {
        return Err(ReadError::Io);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| malformed(400, "Bad Request"))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Writes an answer in one piece. `Content-Length`, `Date` and, when `close`,
/// `Connection: close` are added; headers that would break the framing are left out.
pub(crate) fn write_response(
    writer: &mut impl Write,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes());
    let framing = ["content-length", "transfer-encoding", "connection"];
    for (name, value) in headers {
        let valid =
            !name.is_empty() && name.bytes().all(is_token_byte) && !value.contains(['\r', '\n']);
        if !valid || framing.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            continue;
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    writer.write_all(&out)?;
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads every request `bytes` holds: never a panic, always an end.
    fn check_requests(bytes: &[u8]) {
        let mut reader = io::BufReader::with_capacity(7, bytes);
        for _ in 0..=bytes.len() {
            match read_request(&mut reader, &mut Vec::new(), 64) {
                Ok(Some(r)) => assert!(r.body.len() <= 64),
                Ok(None) | Err(_) => return,
            }
        }
        panic!(
            "more requests than bytes in {:?}",
            String::from_utf8_lossy(bytes)
        );
    }

    #[test]
    fn fuzz_sim_request_corpus() {
        for (_, bytes) in crate::fuzz::corpus("sim-request") {
            check_requests(&bytes);
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_sim_requests(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            head in "(GET|POST|[A-Z]{0,6}) [ -~]{0,30} HTTP/1\\.[01]\r\n",
            headers in proptest::collection::vec(
                "(Content-Length|Transfer-Encoding|Expect|Connection|X)(:| :|:  )[ -~]{0,24}\r\n", 0..5),
            body in "[0-9a-fA-F\r\n;x]{0,60}",
        ) {
            check_requests(&bytes);
            check_requests(format!("{head}{}\r\n{body}", headers.concat()).as_bytes());
        }
    }

    fn read(bytes: &[u8], max_body: u64) -> (Result<Option<Request>, ReadError>, Vec<u8>) {
        let mut interim = Vec::new();
        let mut reader = io::BufReader::with_capacity(7, bytes);
        (read_request(&mut reader, &mut interim, max_body), interim)
    }

    fn status_of(bytes: &[u8]) -> u16 {
        match read(bytes, 100).0 {
            Err(ReadError::Malformed { status, .. }) => status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pipelined_requests_are_read_in_order() {
        let bytes = b"\r\nPOST /t/oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /api/machines?$top=1 HTTP/1.1\r\nAuthorization:  Bearer a \r\n\r\n";
        let mut reader = io::BufReader::with_capacity(5, &bytes[..]);
        let mut interim = Vec::new();
        let first = read_request(&mut reader, &mut interim, 100)
            .unwrap()
            .unwrap();
        assert_eq!(
            (first.method.as_str(), first.target.as_str()),
            ("POST", "/t/oauth2/token")
        );
        assert_eq!(first.body, b"hello");
        assert!(first.keep_alive);
        let second = read_request(&mut reader, &mut interim, 100)
            .unwrap()
            .unwrap();
        assert_eq!(second.target, "/api/machines?$top=1");
        assert_eq!(second.header("authorization"), Some("Bearer a"));
        assert!(second.body.is_empty());
        assert!(
            read_request(&mut reader, &mut interim, 100)
                .unwrap()
                .is_none()
        );
        assert!(interim.is_empty());
    }

    #[test]
    fn chunked_bodies_and_continue() {
        let bytes = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n";
        let (rq, interim) = read(bytes, 100);
        assert_eq!(rq.unwrap().unwrap().body, b"abc0123456789");
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn long_bodies_are_cut_and_skipped() {
        let bytes =
            b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789GET /y HTTP/1.1\r\n\r\n";
        let mut reader = io::BufReader::new(&bytes[..]);
        let mut interim = Vec::new();
        let rq = read_request(&mut reader, &mut interim, 4).unwrap().unwrap();
        assert_eq!(rq.body, b"0123");
        let next = read_request(&mut reader, &mut interim, 4).unwrap().unwrap();
        assert_eq!(next.target, "/y");
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let keep = |bytes: &[u8]| read(bytes, 0).0.unwrap().unwrap().keep_alive;
        assert!(keep(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert_eq!(status_of(b"GET /\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status_of(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(status_of(b"GET / HTTP/1.1\r\n folded\r\n\r\n"), 400);
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            400
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 100, b'a');
        huge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&huge), 431);
        // Cut short: a transport failure, not an answer.
        assert!(matches!(
            read(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc", 100).0,
            Err(ReadError::Io)
        ));
        assert!(matches!(
            read(b"GET / HTTP/1.1\r\nHost", 100).0,
            Err(ReadError::Io)
        ));
    }

    #[test]
    fn answers_carry_their_framing() {
        let mut out = Vec::new();
        let headers = [
            ("Content-Type", "application/json".to_owned()),
            ("Content-Length", "999".to_owned()),
            ("X-Bad", "a\r\nInjected: 1".to_owned()),
        ];
        write_response(&mut out, 429, &headers, b"{}", false, true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(!text.contains("999") && !text.contains("Injected"));
        assert!(text.ends_with("\r\n\r\n{}"));
        let mut out = Vec::new();
        write_response(&mut out, 404, &[], b"body", true, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 4\r\n") && text.ends_with("\r\n\r\n"));
    }
}

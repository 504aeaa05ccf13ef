//! One HTTP exchange over the pooled agent, and what its failures mean for retrying.

use super::error::Error;
use super::response::Response;
use std::time::Duration;

/// The outcome of an exchange that produced no answer.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    /// The request certainly never reached the server (connection refused, DNS, connect
    /// timeout): even a POST may be sent again.
    pub(crate) not_sent: bool,
    pub(crate) timeout: bool,
    pub(crate) body_too_large: Option<u64>,
    /// The request can never be sent as it is (a malformed URL or head): retrying it
    /// would only spend quota.
    pub(crate) invalid: bool,
}

/// True for an RFC 9110 token: a method or a header name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Checks a header as RFC 9110 defines one: the name a token, the value visible
/// characters (and any non-ASCII), spaces and tabs, no other control character.
pub(crate) fn check_header(name: &str, value: &str) -> Result<(), Error> {
    if !is_token(name) {
        return Err(Error::InvalidArgument(format!(
            "{name:?} is not a header name: use letters, digits and !#$%&'*+-.^_`|~"
        )));
    }
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(Error::InvalidArgument(format!(
            "the value of header {name:?} holds a control character"
        )));
    }
    Ok(())
}

/// Checks a request's method and headers before anything is spent on it: the wire
/// refuses what RFC 9110 does not allow, and a request refused there would otherwise be
/// retried as "not sent", taking a quota unit each time.
pub(crate) fn check_head(method: &str, headers: &[(String, String)]) -> Result<(), Error> {
    if !is_token(method) {
        return Err(Error::InvalidArgument(format!(
            "{method:?} is not an HTTP method"
        )));
    }
    headers.iter().try_for_each(|(n, v)| check_header(n, v))
}

/// Sends one request and reads the whole answer, up to `max_body` bytes.
pub(crate) fn exchange(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    max_body: u64,
    limit: Option<Duration>,
) -> Result<Response, Failure> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let req = req
        .body(body.map(<[u8]>::to_vec).unwrap_or_default())
        .map_err(|e| Failure {
            message: format!("invalid request: {e}"),
            not_sent: true,
            timeout: false,
            body_too_large: None,
            invalid: true,
        })?;
    // A call's deadline bounds the whole exchange, below the agent's own timeouts.
    let req = match limit {
        Some(d) => {
            let d = agent.config().timeouts().global.map_or(d, |t| t.min(d));
            agent.configure_request(req).timeout_global(Some(d)).build()
        }
        None => req,
    };
    let mut answer = agent.run(req).map_err(classify)?;
    let status = answer.status().as_u16();
    let headers = answer
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = answer
        .body_mut()
        .with_config()
        .limit(max_body)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(n) => Failure {
                message: format!("the body exceeds {n} bytes"),
                not_sent: false,
                timeout: false,
                body_too_large: Some(max_body),
                invalid: false,
            },
            other => classify(other),
        })?;
    Ok(Response::new(status, headers, body))
}

fn classify(e: ureq::Error) -> Failure {
    use std::io::ErrorKind;
    let not_sent = match &e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound | ureq::Error::BadUri(_) => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused | ErrorKind::AddrNotAvailable | ErrorKind::NotFound
        ),
        _ => false,
    };
    Failure {
        message: e.to_string(),
        not_sent,
        timeout: matches!(e, ureq::Error::Timeout(_)),
        body_too_large: match e {
            ureq::Error::BodyExceedsLimit(n) => Some(n),
            _ => None,
        },
        invalid: matches!(e, ureq::Error::BadUri(_)),
    }
}

/// Builds the pooled agent: keep-alive, timeouts always set, statuses as answers.
pub(crate) fn agent(
    connect_timeout: Duration,
    timeout: Duration,
    proxy: Option<ureq::Proxy>,
    user_agent: &str,
) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(connect_timeout))
        .timeout_global(Some(timeout))
        .user_agent(user_agent)
        .max_redirects(0)
        .max_idle_connections_per_host(64);
    if let Some(p) = proxy {
        config = config.proxy(Some(p));
    }
    config.build().new_agent()
}

/// Percent-encodes `s` for a query string or a form body (RFC 3986 unreserved characters
/// and `$` stay as they are, so OData's `$top` keeps its name).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'$' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Percent-encodes what may not stand in a URL as is (non-ASCII bytes, spaces, controls,
/// quotes and angle brackets) and leaves the rest of a path and query alone, so that a
/// path already encoded stays the same.
pub(crate) fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b <= b' '
            || b >= 0x7f
            || matches!(
                b,
                b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
            )
        {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_checked_as_rfc_9110_defines_them() {
        for (name, value) in [
            ("X-Test", "a b\tc"),
            ("x!#$%&'*+-.^_`|~9", ""),
            ("Prefer", "odata.maxpagesize=10"),
            ("X-Note", "Grüße"),
        ] {
            assert_eq!(check_header(name, value), Ok(()), "{name}: {value}");
        }
        // Each of these passed the bindings' checks and then failed on the wire, three
        // times, costing a quota unit each.
        for (name, value) in [
            ("X(A", "v"),
            ("X A", "v"),
            ("", "v"),
            ("X:A", "v"),
            ("X-Ünï", "v"),
            ("X-Test", "a\x01b"),
            ("X-Test", "a\x7fb"),
            ("X-Test", "a\r\nInjected: 1"),
            ("X-Test", "a\0"),
        ] {
            assert!(
                matches!(check_header(name, value), Err(Error::InvalidArgument(_))),
                "{name:?}: {value:?}"
            );
        }
        assert!(check_head("GET", &[]).is_ok());
        assert!(check_head("M-SEARCH", &[]).is_ok());
        for method in ["", "GE T", "GET\r\n", "G(T"] {
            assert!(check_head(method, &[]).is_err(), "{method:?}");
        }
    }

    #[test]
    fn paths_keep_what_is_valid() {
        assert_eq!(
            super::encode_path("/api/machines?$top=1&$filter=a%20b"),
            "/api/machines?$top=1&$filter=a%20b"
        );
        assert_eq!(
            super::encode_path("/api/machines/Grüße x"),
            "/api/machines/Gr%C3%BC%C3%9Fe%20x"
        );
    }

    #[test]
    fn encoding_keeps_odata_names() {
        assert_eq!(super::encode("$top"), "$top");
        assert_eq!(super::encode("name eq 'a&b'"), "name%20eq%20%27a%26b%27");
        assert_eq!(super::encode("Grüße"), "Gr%C3%BC%C3%9Fe");
    }
}

//! The URLs a client sends secrets to (the API's base URL and the login authority): what
//! it accepts, and how any URL it holds shows in debug output.

use super::error::Error;
use std::net::IpAddr;

/// A URL as the client holds it: its `Debug` hides any `user:password@` (a proxy's or a
/// store's credentials), so that printing a builder never shows them.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedactedUrl(pub(crate) String);

impl RedactedUrl {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::limiter::store::redact(&self.0))
    }
}

/// True for a host that names this machine: `localhost` (and names under it), an address
/// in 127.0.0.0/8, or `::1`.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// Checks a URL the client sends the client secret or tokens to (`what` names it in the
/// message): `https://`, or `http://` only to a loopback host unless
/// `allow_insecure_http`; never a `user:password@`. The message never quotes the URL's
/// user information.
pub(crate) fn check_endpoint(
    url: &str,
    what: &str,
    allow_insecure_http: bool,
) -> Result<(), Error> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad(format!("{what} needs http:// or https:// and a host"));
    };
    // Any @ counts: a password may hold a raw '/' or '?', and a base URL or authority
    // has no use for one elsewhere.
    if rest.contains('@') {
        return bad(format!(
            "{what} must not carry a user name or password ('user:password@'): the client \
             would put them in token scopes, quota keys and logs; give credentials with \
             the credential settings"
        ));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("{what} is not a valid URL")))?;
    let host = uri.host().unwrap_or("");
    if host.is_empty() {
        return bad(format!("{what} needs http:// or https:// and a host"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(host) => Ok(()),
        "http" => bad(format!(
            "refusing http:// for {what}: {host} is not a loopback host, and the client secret \
             and access tokens would cross the network unencrypted; use https://, or set \
             allow_insecure_http to accept that (for instance behind a TLS-terminating proxy \
             on a network you trust)"
        )),
        _ => bad(format!("{what} needs http:// or https:// and a host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1",
            "127.8.9.10",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST.",
            "api.localhost",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "0.0.0.0",
            "[::]",
            "localhost.example.com",
            "api.securitycenter.microsoft.com",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        assert!(check_endpoint("https://api.example.com", "the base URL", false).is_ok());
        assert!(check_endpoint("http://127.0.0.1:8080", "the base URL", false).is_ok());
        assert!(check_endpoint("http://localhost/x", "the authority", false).is_ok());
        let e = check_endpoint("http://api.example.com", "the base URL", false).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("api.example.com is not a loopback host")
                && text.contains("allow_insecure_http"),
            "{text}"
        );
        assert!(check_endpoint("http://api.example.com", "the base URL", true).is_ok());
        assert!(check_endpoint("HTTP://10.1.2.3:80", "the authority", false).is_err());
        for nonsense in ["ftp://x", "api.example.com", "https://", "https:///path"] {
            assert!(
                check_endpoint(nonsense, "the base URL", true).is_err(),
                "{nonsense}"
            );
        }
    }

    #[test]
    fn user_information_is_refused_without_quoting_it() {
        for url in [
            "https://user:hunter2@api.example.com",
            "https://:hunter2@api.example.com/",
            "http://user:hunter2@127.0.0.1:8080",
            "https://us/er:hunter2@api.example.com",
            "https://user:hun?ter2@api.example.com",
        ] {
            let e = check_endpoint(url, "the base URL", true).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("user name or password"), "{url}: {text}");
            assert!(
                !text.contains("hunter2") && !text.contains("us/er"),
                "{text}"
            );
        }
    }

    #[test]
    fn debug_output_hides_user_information() {
        let shown = format!("{:?}", RedactedUrl("http://me:pw@proxy:3128".into()));
        assert_eq!(shown, "\"http://***@proxy:3128\"");
    }
}

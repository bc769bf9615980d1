//! Server base URL → `/ws` URL (`PROTOCOL.md` §3.1), and the TCP address to dial.

use std::net::{IpAddr, SocketAddr};

use url::{Host, Url};

use crate::error::ClientError;

/// Turns an OpenEnv server URL into its `/ws` WebSocket URL, as the official clients do.
///
/// - a trailing `/` is dropped; `http://` becomes `ws://`, `https://` becomes `wss://`, and a
///   URL without a scheme gets `ws://`;
/// - `/ws` is appended to the path unless the path already ends with `/ws`; a path prefix is
///   kept (`http://h/p` → `ws://h/p/ws`);
/// - the query is kept, so an attach URL (`ws://h:1/ws?session_id=…`, `PROTOCOL.md` §3.7)
///   works as given; a fragment is dropped.
///
/// ```
/// use env_client::client::ws_url;
/// assert_eq!(ws_url("http://127.0.0.1:8000/").unwrap(), "ws://127.0.0.1:8000/ws");
/// assert_eq!(ws_url("localhost:8000").unwrap(), "ws://localhost:8000/ws");
/// assert_eq!(ws_url("https://h/p").unwrap(), "wss://h/p/ws");
/// assert_eq!(ws_url("ws://h:1/ws?session_id=x").unwrap(), "ws://h:1/ws?session_id=x");
/// ```
pub fn ws_url(base: &str) -> Result<String, ClientError> {
    parse(base).map(String::from)
}

/// [`ws_url`] as a parsed URL.
pub(crate) fn parse(base: &str) -> Result<Url, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: base.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = base.trim();
    let without_fragment = trimmed.split('#').next().unwrap_or_default();
    let (location, query) = match without_fragment.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (without_fragment, None),
    };
    let (scheme, rest) = match location.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => ("ws", rest),
            "https" | "wss" => ("wss", rest),
            _ => return Err(invalid("unsupported scheme (use http, https, ws or wss)")),
        },
        None => ("ws", location),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("no host"));
    }
    let location = format!("{scheme}://{rest}");
    let mut url = Url::parse(&location).map_err(|err| invalid(&err.to_string()))?;
    if url.host().is_none() {
        return Err(invalid("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the URL are not supported"));
    }
    let path = url.path().trim_end_matches('/');
    if !path.ends_with("/ws") {
        let path = format!("{path}/ws");
        url.set_path(&path);
    }
    url.set_query(query.filter(|q| !q.is_empty()));
    Ok(url)
}

/// Where to open the TCP connection for a `ws://` URL: a host name (resolved when dialling)
/// or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dial {
    /// A DNS name and port.
    Name(String, u16),
    /// An IP address and port.
    Addr(SocketAddr),
}

/// The TCP target of a parsed `ws://` URL; `wss://` is refused (no TLS in this build).
pub(crate) fn dial_target(url: &Url, original: &str) -> Result<Dial, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: original.to_owned(),
        reason: reason.to_owned(),
    };
    if url.scheme() == "wss" {
        return Err(invalid(
            "wss:// needs TLS, which this build of env-client does not include; use ws:// (or http://)",
        ));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| invalid("no port"))?;
    match url.host() {
        Some(Host::Domain(name)) => Ok(Dial::Name(name.to_owned(), port)),
        Some(Host::Ipv4(ip)) => Ok(Dial::Addr(SocketAddr::new(IpAddr::V4(ip), port))),
        Some(Host::Ipv6(ip)) => Ok(Dial::Addr(SocketAddr::new(IpAddr::V6(ip), port))),
        None => Err(invalid("no host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_rules() {
        let cases = [
            ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
            ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000/ws"),
            ("https://example.org", "wss://example.org/ws"),
            ("127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
            ("localhost:8000///", "ws://localhost:8000/ws"),
            ("http://h/p", "ws://h/p/ws"),
            ("http://h/p/", "ws://h/p/ws"),
            ("ws://h:1/ws", "ws://h:1/ws"),
            ("ws://h:1/ws/", "ws://h:1/ws"),
            ("ws://h:1/ws?session_id=x", "ws://h:1/ws?session_id=x"),
            ("http://h:1?session_id=x", "ws://h:1/ws?session_id=x"),
            ("http://h:1/p/?session_id=x", "ws://h:1/p/ws?session_id=x"),
            ("ws://ws", "ws://ws/ws"),
            ("HTTP://H:2", "ws://h:2/ws"),
            ("http://[::1]:8000", "ws://[::1]:8000/ws"),
            ("http://h/news", "ws://h/news/ws"),
        ];
        for (input, expected) in cases {
            assert_eq!(ws_url(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn refusals() {
        for bad in ["", "/", "ftp://h", "http://", "http://user:pw@h"] {
            assert!(
                matches!(ws_url(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad:?}"
            );
        }
        let url = parse("https://h").unwrap();
        let err = dial_target(&url, "https://h").unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
    }

    #[test]
    fn dial_targets() {
        let url = parse("localhost:8000").unwrap();
        assert_eq!(
            dial_target(&url, "").unwrap(),
            Dial::Name("localhost".into(), 8000)
        );
        let url = parse("http://[::1]").unwrap();
        assert_eq!(
            dial_target(&url, "").unwrap(),
            Dial::Addr("[::1]:80".parse().unwrap())
        );
    }
}

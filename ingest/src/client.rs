//! Which client a request comes from, for the per-address limits (guest tokens
//! and guest sends): the TCP peer that the server loop records in each
//! request's extensions (axum's `ConnectInfo`), or, when
//! `limits.trusted_proxy_header` names a header, the right-most address in that
//! header: the one the trusted proxy added (anything left of it was sent by the
//! client and proves nothing).
//!
//! Limits count an [`address_key`]: IPv4 addresses as they are, IPv6 by their
//! /64, the smallest block one subscriber usually gets (counting single IPv6
//! addresses would let one host use 2^64 buckets).

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap};
use std::net::{IpAddr, SocketAddr};

/// The client's address: from `trusted_header` when it is set and the request
/// carries a parsable address there, else the TCP peer, else `None` (a router
/// driven without the server loop, as in tests).
pub fn client_ip(
    headers: &HeaderMap,
    extensions: &Extensions,
    trusted_header: &str,
) -> Option<IpAddr> {
    if !trusted_header.is_empty() {
        // Several header lines are one comma-separated list (RFC 9110 5.3): the
        // last line holds the right-most element.
        let from_proxy = headers
            .get_all(trusted_header)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(parse_element);
        if from_proxy.is_some() {
            return from_proxy;
        }
    }
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

/// One element of `X-Forwarded-For` (`203.0.113.7`, `2001:db8::1`), of
/// `X-Real-IP`, or of RFC 7239 `Forwarded` (`for=203.0.113.7;proto=https`,
/// `for="[2001:db8::1]:4711"`); a port is dropped. `None` for `unknown`,
/// obfuscated identifiers and garbage.
fn parse_element(element: &str) -> Option<IpAddr> {
    let element = element.trim();
    let value = if element.contains('=') {
        element.split(';').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            name.trim().eq_ignore_ascii_case("for").then_some(value)
        })?
    } else {
        element
    };
    let value = value.trim().trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    value
        .parse::<IpAddr>()
        .ok()
        .or_else(|| value.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The key a per-address limit counts: an IPv4 address (also when mapped into
/// IPv6) as is, an IPv6 address as its /64 (`2001:db8:1:2::/64`).
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn with(peer: &str, header: &[(&str, &str)], trusted: &str) -> Option<IpAddr> {
        let mut headers = HeaderMap::new();
        for (k, v) in header {
            headers.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let mut ext = Extensions::new();
        ext.insert(ConnectInfo::<SocketAddr>(peer.parse().unwrap()));
        client_ip(&headers, &ext, trusted)
    }

    #[test]
    fn the_peer_unless_a_trusted_header_is_configured() {
        let xff = [("x-forwarded-for", "198.51.100.1, 203.0.113.9")];
        assert_eq!(with("10.0.0.1:5000", &xff, ""), Some(ip("10.0.0.1")));
        assert_eq!(
            with("10.0.0.1:5000", &xff, "x-forwarded-for"),
            Some(ip("203.0.113.9"))
        );
        // Header names are case-insensitive; the last line is the proxy's.
        let two_lines = [
            ("x-forwarded-for", "198.51.100.1"),
            ("X-Forwarded-For", "spoofed, 203.0.113.10"),
        ];
        assert_eq!(
            with("10.0.0.1:5000", &two_lines, "X-Forwarded-For"),
            Some(ip("203.0.113.10"))
        );
        // Missing or unusable: the peer.
        assert_eq!(
            with("10.0.0.1:5000", &[], "x-forwarded-for"),
            Some(ip("10.0.0.1"))
        );
        let junk = [("x-forwarded-for", "1.2.3.4, unknown")];
        assert_eq!(
            with("10.0.0.1:5000", &junk, "x-forwarded-for"),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(client_ip(&HeaderMap::new(), &Extensions::new(), ""), None);
    }

    #[test]
    fn element_forms() {
        for (raw, want) in [
            ("203.0.113.7", "203.0.113.7"),
            (" 203.0.113.7:8080 ", "203.0.113.7"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            ("For=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
        ] {
            assert_eq!(parse_element(raw), Some(ip(want)), "{raw}");
        }
        for raw in ["", "unknown", "for=_hidden", "by=1.2.3.4", "[::1", "1.2.3"] {
            assert_eq!(parse_element(raw), None, "{raw}");
        }
    }

    #[test]
    fn keys_group_ipv6_by_64() {
        assert_eq!(address_key(ip("192.0.2.1")), "192.0.2.1");
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), "192.0.2.1");
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_eq!(address_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
    }
}

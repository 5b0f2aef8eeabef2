//! The client's address behind trusted proxies (`server.trusted_proxies`).
//!
//! A connection from a trusted proxy is attributed to the address the proxy
//! names: the right-most address in `X-Forwarded-For` (or `Forwarded: for=`)
//! that is not itself a trusted proxy, the standard way to read a chain that
//! a client may have prefixed with made-up entries. From any other address
//! the headers are ignored, so clients cannot choose their own address.

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// Parse the configured proxies (already validated): CIDRs or single addresses.
pub(crate) fn parse_trusted(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|s| s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))).collect()
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|n| n.contains(&ip))
}

/// One `Forwarded` `for=` value or `X-Forwarded-For` entry as an address
/// (`1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:4711"`, `2001:db8::1`).
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(host, _)| host.parse().ok())
}

/// The addresses a proxy chain names, client first (`None` for an entry
/// that is not an address, such as `for=unknown`). `Forwarded` (RFC 7239)
/// wins when present: a proxy that sets it may pass a client's own
/// `X-Forwarded-For` through untouched.
fn chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<Option<IpAddr>> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v))
            })
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(parse_node)
        .collect()
}

/// The address to count and log for a connection from `peer`: walking the
/// chain from the right, the first entry that is not a trusted proxy. An
/// entry that is not an address stops the walk (what lies left of it cannot
/// be trusted), and the last trusted hop stands for the client.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut last = peer;
    for hop in chain(headers).into_iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip, trusted) => last = ip,
            Some(ip) => return ip,
            None => return last,
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_trusted_proxies_are_believed_and_the_rightmost_untrusted_entry_wins() {
        let trusted = parse_trusted(&["10.0.0.0/8".into(), "192.0.2.1".into()]);
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        let stranger: IpAddr = "198.51.100.7".parse().expect("ip");
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.9.9.9")]);
        assert_eq!(client_ip(proxy, &h, &trusted), "203.0.113.5".parse::<IpAddr>().expect("ip"));
        assert_eq!(client_ip(stranger, &h, &trusted), stranger, "an untrusted peer's header is ignored");
        let f = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https, for=192.0.2.1")]);
        assert_eq!(client_ip(proxy, &f, &trusted), "2001:db8::1".parse::<IpAddr>().expect("ip"));
        let both = headers(&[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=203.0.113.9")]);
        assert_eq!(client_ip(proxy, &both, &trusted), "203.0.113.9".parse::<IpAddr>().expect("ip"), "Forwarded wins");
        let unknown = headers(&[("x-forwarded-for", "6.6.6.6, unknown, 10.2.2.2")]);
        assert_eq!(client_ip(proxy, &unknown, &trusted), "10.2.2.2".parse::<IpAddr>().expect("ip"), "stops at garbage");
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy, "no header: the proxy itself");
        let all_trusted = headers(&[("x-forwarded-for", "10.3.3.3")]);
        assert_eq!(client_ip(proxy, &all_trusted, &trusted), "10.3.3.3".parse::<IpAddr>().expect("ip"));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(client_ip(mapped, &h, &trusted), "203.0.113.5".parse::<IpAddr>().expect("ip"));
        assert_eq!(client_ip(proxy, &h, &[]), proxy, "no trusted proxies: headers never count");
    }
}

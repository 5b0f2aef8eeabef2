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

/// The addresses a proxy chain names, client first.
fn chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let xff: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(parse_node)
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v)).flatten()
            })
        })
        .collect()
}

/// The address to count and log for a connection from `peer`.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let chain = chain(headers);
    chain.iter().rev().copied().find(|ip| !is_trusted(*ip, trusted)).or_else(|| chain.first().copied()).unwrap_or(peer)
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
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy, "no header: the proxy itself");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(client_ip(mapped, &h, &trusted), "203.0.113.5".parse::<IpAddr>().expect("ip"));
        assert_eq!(client_ip(proxy, &h, &[]), proxy, "no trusted proxies: headers never count");
    }
}

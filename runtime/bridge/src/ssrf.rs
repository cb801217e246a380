//! Which sinks the bridge may call: a sink's host is resolved and every address it resolves
//! to must be public — not loopback, private, link-local, CGNAT (100.64/10), unique-local,
//! multicast, unspecified, broadcast or documentation space (as Svix's filter) — unless the
//! operator allows private sinks. The addresses checked are the ones to connect to, so a
//! name that resolves differently a moment later (DNS rebinding) changes nothing.

use std::net::{IpAddr, SocketAddr};

/// Why a sink may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkRefused {
    /// Not an http(s) URL with a host.
    #[error("sink `{url}`: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// It resolves to an address the bridge does not call.
    #[error(
        "sink `{url}` resolves to {address}, a {class} address: refused (SSRF); allow private sinks in the bridge's configuration to call it"
    )]
    Private {
        /// The URL.
        url: String,
        /// The address.
        address: IpAddr,
        /// What kind of address.
        class: &'static str,
    },
    /// It does not resolve.
    #[error("sink `{url}`: {why}")]
    Unresolved {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
}

/// What kind of non-public address `ip` is, or `None` for a public one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (CGNAT)")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if v4.is_multicast() || a >= 240 {
                Some("multicast or reserved")
            } else if v4.is_broadcast() {
                Some("broadcast")
            } else if v4.is_documentation() || (a == 198 && (b == 18 || b == 19)) {
                Some("documentation or benchmarking")
            } else if a == 192 && b == 0 && v4.octets()[2] == 0 {
                Some("IETF protocol assignments")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            // Addresses that carry an IPv4 address reach it: judge that one. IPv4-mapped
            // (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96 and
            // 64:ff9b:1::/48, the last 32 bits) and 6to4 (2002:AABB:CCDD::/16).
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public(IpAddr::V4(v4));
            }
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return non_public(IpAddr::V4(embedded(s[6], s[7])));
            }
            if (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0])
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
            {
                return non_public(IpAddr::V4(embedded(s[6], s[7])));
            }
            if s[0] == 0x2002 {
                return non_public(IpAddr::V4(embedded(s[1], s[2])));
            }
            let first = s[0];
            if first == 0x2001 && s[1] == 0 {
                // Teredo: the client's address is obfuscated; never call it.
                return Some("Teredo");
            }
            if first == 0x0100 && s[1..4] == [0, 0, 0] {
                return Some("discard-only");
            }
            if first & 0xffc0 == 0xfec0 {
                return Some("site-local");
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if first == 0x2001 && v6.segments()[1] == 0x0db8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

/// The addresses to call `url` at, each checked ([`non_public`]) unless `allow_private`.
pub async fn resolve(url: &str, allow_private: bool) -> Result<Vec<SocketAddr>, SinkRefused> {
    let bad = |why: &str| SinkRefused::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("only http and https sinks are called"));
    }
    let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| bad("no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| SinkRefused::Unresolved {
            url: url.to_owned(),
            why: e.to_string(),
        })?
        .collect();
    if addresses.is_empty() {
        return Err(SinkRefused::Unresolved {
            url: url.to_owned(),
            why: "no address".into(),
        });
    }
    if !allow_private {
        for address in &addresses {
            if let Some(class) = non_public(address.ip()) {
                return Err(SinkRefused::Private {
                    url: url.to_owned(),
                    address: address.ip(),
                    class,
                });
            }
        }
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_named() {
        for (ip, class) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.20.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("shared (CGNAT)")),
            ("0.0.0.0", Some("unspecified")),
            ("::1", Some("loopback")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("fd00::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("::127.0.0.1", Some("loopback")),
            ("::169.254.169.254", Some("link-local")),
            ("64:ff9b::a00:1", Some("private")),
            ("64:ff9b:1::a9fe:a9fe", Some("link-local")),
            ("2002:7f00:1::", Some("loopback")),
            ("2001:0:4136:e378::1", Some("Teredo")),
            ("fec0::1", Some("site-local")),
            ("100::1", Some("discard-only")),
            ("192.0.0.8", Some("IETF protocol assignments")),
            ("64:ff9b::808:808", None),
            ("8.8.8.8", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(non_public(ip.parse().unwrap()), class, "{ip}");
        }
    }

    #[tokio::test]
    async fn a_loopback_sink_is_refused_unless_allowed() {
        let refused = resolve("http://127.0.0.1:9/hook", false).await.unwrap_err();
        assert!(refused.to_string().contains("loopback"), "{refused}");
        let localhost = resolve("http://localhost:9/hook", false).await.unwrap_err();
        assert!(
            matches!(localhost, SinkRefused::Private { .. }),
            "{localhost}"
        );
        assert_eq!(
            resolve("http://127.0.0.1:9/hook", true).await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        assert!(matches!(
            resolve("ftp://example.org/x", true).await,
            Err(SinkRefused::BadUrl { .. })
        ));
    }
}

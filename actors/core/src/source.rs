//! Who a request comes from, for the caps and for fair service.
//!
//! A source is a network address: an IPv4 address, an IPv6 address's /64
//! prefix (one host is routinely given a whole /64, so counting per /128
//! would give it 2^64 sources), an IPv4-mapped IPv6 address as its IPv4
//! address. A remote that is not a socket address (a WebRTC peer ID, an
//! in-memory transport's address) is its own source, unless the layer
//! knows the network address it comes from (a WebRTC link's: see
//! [`crate::stream::Inbound::address`]). Within one address, the key a
//! secure channel verified makes a finer source for fair service, so that
//! several honest nodes behind one address keep a share each, or without
//! one, the link's own address (an anonymous WebRTC peer); minting keys or
//! IDs buys nothing, since an address's connections are capped and served
//! as one share however many keys they show.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::identity::PeerKey;

/// The address part of a source, as a string: `remote`'s IP address
/// (IPv6 cut to its /64), or `remote` itself when it is not a socket
/// address.
pub fn address_of(remote: &str) -> String {
    match remote.parse::<SocketAddr>() {
        Ok(addr) => canonical_ip(addr.ip()),
        Err(_) => remote.to_owned(),
    }
}

/// The address part of the source of a connection from `remote` that
/// the layer says comes from `address` (see [`crate::stream::Inbound`]).
pub fn source_address(remote: &str, address: Option<SocketAddr>) -> String {
    match address {
        Some(address) => canonical_ip(address.ip()),
        None => address_of(remote),
    }
}

fn canonical_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => ipv4_text(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ipv4_text(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{}/64", Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// `v4` in dotted decimal, as its `Display` writes it. Written here
/// because a transport making a connection per call (QUIC) names the
/// source of every call, and the formatting machinery took twenty times
/// as long.
fn ipv4_text(v4: Ipv4Addr) -> String {
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// The source this thread named last, and what it was named from: a
/// transport making a connection per call (QUIC: a stream each) names
/// the same source for every call of a connection, twice (when the
/// connection is taken in, and when it is served), and naming takes four
/// allocations.
struct LastSource {
    remote: String,
    address: Option<SocketAddr>,
    key: Option<PeerKey>,
    source: Source,
}

thread_local! {
    static LAST_SOURCE: std::cell::RefCell<Option<LastSource>> = const { std::cell::RefCell::new(None) };
}

/// Where a request comes from, for fair service: its address, and within
/// it the key the channel verified, if any.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    /// The address part (see [`address_of`]).
    pub address: Arc<str>,
    /// The verified key (the hex of its compressed form), on an
    /// authenticated channel; without one, the link's address when the
    /// layer gave it.
    pub key: Option<Arc<str>>,
}

impl Source {
    /// The source of a request from `remote`, sent by `key` when the
    /// channel verified one.
    pub fn new(remote: &str, key: Option<&PeerKey>) -> Source {
        Source::of(remote, None, key)
    }

    /// The source of a request from `remote`, which the layer says comes
    /// from `address` when the name does not say it, sent by `key` when
    /// the channel verified one. Without a key, a connection whose
    /// address the layer gave is told apart by that address (a WebRTC
    /// link's, port included) within its IP's share.
    pub fn of(remote: &str, address: Option<SocketAddr>, key: Option<&PeerKey>) -> Source {
        LAST_SOURCE.with(|last| {
            let mut last = last.borrow_mut();
            if let Some(known) = last
                .as_ref()
                .filter(|l| l.remote == remote && l.address == address && l.key.as_ref() == key)
            {
                return known.source.clone();
            }
            let source = Source::named(remote, address, key);
            *last = Some(LastSource {
                remote: remote.to_owned(),
                address,
                key: key.copied(),
                source: source.clone(),
            });
            source
        })
    }

    fn named(remote: &str, address: Option<SocketAddr>, key: Option<&PeerKey>) -> Source {
        let key = match (key, address) {
            // The compressed form names the key as well, and costs no
            // point decompression (a square root on the curve), which a
            // transport making a connection per call pays per call.
            (Some(key), _) => Some(key.compressed_hex().into()),
            (None, Some(link)) => Some(link.to_string().into()),
            (None, None) => None,
        };
        Source {
            address: source_address(remote, address).into(),
            key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_named_again_is_the_same_and_a_different_one_is_not_confused() {
        let key = Some(crate::identity::NodeKey::generate().public());
        let a: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let first = Source::of("10.0.0.1:4000", Some(a), key.as_ref());
        assert_eq!(first, Source::named("10.0.0.1:4000", Some(a), key.as_ref()));
        assert_eq!(Source::of("10.0.0.1:4000", Some(a), key.as_ref()), first);
        // Each part of what a source is named from counts.
        assert_eq!(
            Source::of("10.0.0.1:4000", Some(b), key.as_ref())
                .address
                .as_ref(),
            "10.0.0.2"
        );
        assert_eq!(
            Source::of("10.0.0.1:4000", Some(a), None).key,
            Some("10.0.0.1:4000".into())
        );
        assert_eq!(Source::of("peer-x", None, None).address.as_ref(), "peer-x");
        assert_eq!(Source::of("10.0.0.1:4000", Some(a), key.as_ref()), first);
    }

    #[test]
    fn ipv4_text_is_what_display_writes() {
        for octets in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [9, 10, 99, 100],
            [255, 255, 255, 255],
        ] {
            let v4 = Ipv4Addr::from(octets);
            assert_eq!(ipv4_text(v4), v4.to_string());
        }
        for n in (0..=u32::MAX).step_by(65_537) {
            let v4 = Ipv4Addr::from(n);
            assert_eq!(ipv4_text(v4), v4.to_string());
        }
    }

    #[test]
    fn ipv4_is_its_address_and_names_are_themselves() {
        assert_eq!(address_of("10.1.2.3:1337"), "10.1.2.3");
        assert_eq!(address_of("node-7"), "node-7");
        assert_eq!(address_of("inmem://a"), "inmem://a");
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_is_ipv4() {
        let a = address_of("[2001:db8:1:2:aaaa::1]:1");
        let b = address_of("[2001:db8:1:2:ffff:ffff:ffff:ffff]:2");
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_ne!(a, address_of("[2001:db8:1:3::1]:1"));
        assert_eq!(address_of("[::ffff:10.0.0.1]:5"), "10.0.0.1");
    }

    #[test]
    fn a_named_remote_with_a_known_address_is_counted_by_that_address() {
        let link: SocketAddr = "10.0.0.9:40000".parse().unwrap();
        let other: SocketAddr = "10.0.0.9:40001".parse().unwrap();
        let a = Source::of("minted-id-1", Some(link), None);
        let b = Source::of("minted-id-2", Some(other), None);
        // One address, whatever the IDs; each link a finer share within.
        assert_eq!(a.address, b.address);
        assert_eq!(&*a.address, "10.0.0.9");
        assert_ne!(a, b);
        // A verified key is the finer source when there is one.
        let key = crate::identity::NodeKey::generate().public();
        let keyed = Source::of("minted-id-1", Some(link), Some(&key));
        assert_eq!(
            keyed.key.as_deref(),
            Some(hex::encode(key.to_compressed()).as_str())
        );
        assert_eq!(source_address("node-7", None), "node-7");
    }

    #[test]
    fn a_verified_key_makes_a_finer_source_within_its_address() {
        let key = crate::identity::NodeKey::generate().public();
        let with_key = Source::new("10.0.0.1:1", Some(&key));
        let without = Source::new("10.0.0.1:2", None);
        assert_eq!(with_key.address, without.address);
        assert_eq!(
            with_key.key.as_deref(),
            Some(hex::encode(key.to_compressed()).as_str())
        );
        assert_ne!(with_key, without);
    }
}

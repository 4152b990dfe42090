//! How fast one source address may start QUIC handshakes: a token bucket
//! per address. Pure state, no I/O.
//!
//! A closed QUIC connection lingers in the endpoint while it drains (three
//! probe timeouts, seconds when no round trip was measured), holding its
//! state (tens of KiB). A source that starts handshakes as fast as the
//! node takes them, each evicting its own previous connection at its cap,
//! would pile up closing connections without bound; at a few handshakes a
//! second per address, what it leaves behind stays small.
//!
//! An address that has not proved it receives packets may be spoofed: it
//! takes a token only while its bucket is full (a quiet address), and is
//! otherwise asked to prove itself (a Retry) first, so that a spoofer
//! cannot spend an honest address's tokens beyond one.

use std::collections::HashMap;
use std::time::Instant;

/// What to do with a new handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Start it (a token was taken).
    Start,
    /// Ask the address to prove itself first (a stateless Retry).
    Validate,
    /// Refuse it: its address started too many just now.
    Refuse,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// See the [module docs](self).
pub(super) struct HandshakeRate {
    /// Handshakes an address may start at once, and per second after.
    burst: f64,
    buckets: HashMap<String, Bucket>,
}

/// Addresses remembered before full buckets are forgotten.
const PRUNE_AT: usize = 4096;

impl HandshakeRate {
    /// `per_second` handshakes a second per address, as many at once.
    pub(super) fn new(per_second: usize) -> HandshakeRate {
        HandshakeRate {
            burst: per_second.max(1) as f64,
            buckets: HashMap::new(),
        }
    }

    /// Whether `source` may start a handshake at `now`; `validated`: its
    /// address is proved (it answered a Retry).
    pub(super) fn check(&mut self, source: &str, validated: bool, now: Instant) -> Verdict {
        if self.buckets.len() >= PRUNE_AT {
            self.prune(now);
        }
        let burst = self.burst;
        let bucket = self.buckets.entry(source.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * burst).min(burst);
        bucket.at = now;
        let full = bucket.tokens >= burst;
        match (validated, bucket.tokens >= 1.0) {
            (false, _) if !full => Verdict::Validate,
            (_, true) => {
                bucket.tokens -= 1.0;
                Verdict::Start
            }
            (_, false) => Verdict::Refuse,
        }
    }

    /// Forgets the addresses whose buckets have filled again.
    fn prune(&mut self, now: Instant) {
        let burst = self.burst;
        self.buckets.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens + elapsed * burst < burst
        });
    }

    /// Addresses remembered now.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_address_starts_a_burst_then_its_rate() {
        let mut rate = HandshakeRate::new(4);
        let now = Instant::now();
        for _ in 0..4 {
            assert_eq!(rate.check("10.0.0.1", true, now), Verdict::Start);
        }
        assert_eq!(rate.check("10.0.0.1", true, now), Verdict::Refuse);
        // Another address is not held up.
        assert_eq!(rate.check("10.0.0.2", true, now), Verdict::Start);
        // A quarter of a second later, one more.
        let later = now + Duration::from_millis(250);
        assert_eq!(rate.check("10.0.0.1", true, later), Verdict::Start);
        assert_eq!(rate.check("10.0.0.1", true, later), Verdict::Refuse);
    }

    #[test]
    fn an_unproved_address_spends_at_most_one_token_then_must_prove_itself() {
        let mut rate = HandshakeRate::new(4);
        let now = Instant::now();
        // A spoofer sending from an honest address...
        assert_eq!(rate.check("10.0.0.1", false, now), Verdict::Start);
        for _ in 0..10 {
            assert_eq!(rate.check("10.0.0.1", false, now), Verdict::Validate);
        }
        // ...leaves the address that proves itself three.
        for _ in 0..3 {
            assert_eq!(rate.check("10.0.0.1", true, now), Verdict::Start);
        }
        assert_eq!(rate.check("10.0.0.1", true, now), Verdict::Refuse);
    }

    #[test]
    fn quiet_addresses_are_forgotten() {
        let mut rate = HandshakeRate::new(4);
        let now = Instant::now();
        for i in 0..PRUNE_AT {
            rate.check(&format!("10.{}.{}.1", i / 256, i % 256), true, now);
        }
        assert_eq!(rate.remembered(), PRUNE_AT);
        rate.check("10.99.0.1", true, now + Duration::from_secs(1));
        assert_eq!(rate.remembered(), 1);
    }
}

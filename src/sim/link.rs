//! One direction of a simulated link: what it is like ([`Link`]) and what
//! happens to each message sent over it ([`LinkState::send`]).

use std::time::Duration;

// The runtime's clock, so that tests with paused time see exact delays.
use tokio::time::Instant;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// What a simulated link is like, in one direction.
///
/// The default is a perfect link: no delay, no loss, no bandwidth limit.
///
/// ```
/// use std::time::Duration;
/// use babble_net::sim::Link;
///
/// let wan = Link::default()
///     .latency(Duration::from_millis(50))
///     .jitter(Duration::from_millis(10))
///     .loss(0.01)
///     .bandwidth(1_000_000);
/// assert_eq!(wan.latency, Duration::from_millis(50));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Link {
    /// One-way delay of every message.
    pub latency: Duration,
    /// Each message's delay is `latency` plus or minus up to this much,
    /// uniformly (never below zero), so messages can overtake each other.
    pub jitter: Duration,
    /// The chance, from 0 to 1, that a message is lost. A lost request or
    /// reply fails its call with a timeout, as on a real network.
    pub loss: f64,
    /// Bytes per second the link carries (`None`: unlimited). Messages
    /// queue behind each other: one of `n` bytes holds the link for
    /// `n / bandwidth` seconds.
    pub bandwidth: Option<u64>,
}

impl Link {
    /// This link with a one-way `latency`.
    pub fn latency(self, latency: Duration) -> Link {
        Link { latency, ..self }
    }

    /// This link with `jitter` around its latency.
    pub fn jitter(self, jitter: Duration) -> Link {
        Link { jitter, ..self }
    }

    /// This link losing each message with probability `loss` (clamped to
    /// 0..=1; 0.01 is 1%).
    pub fn loss(self, loss: f64) -> Link {
        let loss = if loss.is_nan() {
            0.0
        } else {
            loss.clamp(0.0, 1.0)
        };
        Link { loss, ..self }
    }

    /// This link carrying at most `bytes_per_sec` (at least 1).
    pub fn bandwidth(self, bytes_per_sec: u64) -> Link {
        Link {
            bandwidth: Some(bytes_per_sec.max(1)),
            ..self
        }
    }

    /// Whether sending over this link needs the message's size.
    pub(crate) fn needs_size(&self) -> bool {
        self.bandwidth.is_some()
    }
}

/// What became of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// It arrives at this instant.
    Arrives(Instant),
    /// It never arrives.
    Lost,
}

/// One direction of a link between two nodes: its own random sequence
/// (from the network's seed and the two addresses, so a run can be
/// replayed) and, with a bandwidth limit, when the link is free again.
pub(crate) struct LinkState {
    rng: Xoshiro256PlusPlus,
    free_at: Option<Instant>,
}

impl LinkState {
    /// A link whose draws come from `seed`.
    pub(crate) fn new(seed: u64) -> LinkState {
        LinkState {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            free_at: None,
        }
    }

    /// Sends `bytes` over `link` at `now`: when the message arrives, or
    /// that it is lost. The draws happen in the same order whatever the
    /// link is like, so changing one property does not reshuffle the
    /// others.
    pub(crate) fn send(&mut self, link: &Link, bytes: usize, now: Instant) -> Fate {
        let lost = self.rng.random::<f64>() < link.loss;
        let spread = self.rng.random::<f64>() * 2.0 - 1.0;
        let departs = match link.bandwidth {
            Some(rate) => {
                let start = self.free_at.map_or(now, |free| free.max(now));
                let done = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
                self.free_at = Some(done);
                done
            }
            None => now,
        };
        if lost {
            return Fate::Lost;
        }
        let delay = link.latency.as_secs_f64() + spread * link.jitter.as_secs_f64();
        Fate::Arrives(departs + Duration::from_secs_f64(delay.max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrivals(link: &Link, seed: u64, count: usize) -> Vec<Fate> {
        let now = Instant::now();
        let mut state = LinkState::new(seed);
        (0..count).map(|_| state.send(link, 100, now)).collect()
    }

    #[test]
    fn a_perfect_link_delivers_at_once() {
        let now = Instant::now();
        let mut state = LinkState::new(1);
        assert_eq!(
            state.send(&Link::default(), 1 << 20, now),
            Fate::Arrives(now)
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_fates() {
        let link = Link::default()
            .latency(Duration::from_millis(50))
            .jitter(Duration::from_millis(20))
            .loss(0.3);
        let now = Instant::now();
        let fates = |seed| {
            let mut state = LinkState::new(seed);
            (0..100)
                .map(|_| state.send(&link, 10, now))
                .collect::<Vec<_>>()
        };
        assert_eq!(fates(7), fates(7));
        assert_ne!(fates(7), fates(8));
    }

    #[test]
    fn delays_stay_within_latency_plus_or_minus_jitter() {
        let link = Link::default()
            .latency(Duration::from_millis(50))
            .jitter(Duration::from_millis(10));
        let now = Instant::now();
        let mut state = LinkState::new(3);
        let delays: Vec<Duration> = (0..1000)
            .map(|_| match state.send(&link, 10, now) {
                Fate::Arrives(at) => at - now,
                Fate::Lost => panic!("no loss configured"),
            })
            .collect();
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(*min >= Duration::from_millis(40), "{min:?}");
        assert!(*max <= Duration::from_millis(60), "{max:?}");
        assert!(
            *max - *min > Duration::from_millis(15),
            "jitter spreads them"
        );
    }

    #[test]
    fn loss_drops_about_its_share() {
        let lost = arrivals(&Link::default().loss(0.1), 11, 10_000)
            .iter()
            .filter(|fate| **fate == Fate::Lost)
            .count();
        assert!((800..1200).contains(&lost), "{lost} of 10000 lost at 10%");
        assert!(arrivals(&Link::default().loss(1.0), 1, 100)
            .iter()
            .all(|fate| *fate == Fate::Lost));
    }

    #[test]
    fn messages_queue_behind_each_other_on_a_slow_link() {
        let link = Link::default().bandwidth(1000);
        let now = Instant::now();
        let mut state = LinkState::new(5);
        // 500 bytes at 1000 bytes/s each: done after 0.5 s, then 1 s.
        assert_eq!(
            state.send(&link, 500, now),
            Fate::Arrives(now + Duration::from_millis(500))
        );
        assert_eq!(
            state.send(&link, 500, now),
            Fate::Arrives(now + Duration::from_millis(1000))
        );
        // Once the link is idle again, a message starts when it is sent.
        let later = now + Duration::from_secs(5);
        assert_eq!(
            state.send(&link, 100, later),
            Fate::Arrives(later + Duration::from_millis(100))
        );
    }

    #[test]
    fn odd_loss_values_are_clamped() {
        assert_eq!(Link::default().loss(f64::NAN).loss, 0.0);
        assert_eq!(Link::default().loss(-1.0).loss, 0.0);
        assert_eq!(Link::default().loss(7.0).loss, 1.0);
        assert_eq!(Link::default().bandwidth(0).bandwidth, Some(1));
    }
}

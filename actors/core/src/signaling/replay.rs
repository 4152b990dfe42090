//! The replay window: offers and answers seen lately, by the digest of
//! what was signed (see [`super::signed`]), so that each is taken once.
//!
//! It is bounded ([`MAX_SEEN`] entries), and full it never refuses: the
//! oldest entry of the signer holding the most makes room, so a flood
//! signed by one key pushes out its own entries. When every signer holds
//! one (a flood signed by keys minted one per offer), the oldest entry
//! goes, except those of peers we hold links with: signers whose offer we
//! answered or whose answer we took ([`ReplayWindow::protect`], at most
//! [`MAX_PROTECTED`] of them, the least recently protected given up
//! first). Every operation costs O(log n) amortised, whatever the flood.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::signed::SignedDigest;

/// Offers and answers remembered at most.
pub const MAX_SEEN: usize = 8192;

/// Signers whose entries are kept while others can make room.
pub const MAX_PROTECTED: usize = 1024;

/// Dead entries a scan may pass before `order` is compacted.
const DEAD_SCANNED: usize = 256;

/// See the [module docs](self).
#[derive(Debug, Default)]
pub struct ReplayWindow {
    /// Every entry, in the order it arrived, with the sequence number that
    /// tells it from a later entry of the same digest; entries evicted out
    /// of order stay here until reached (see [`ReplayWindow::compact`]).
    order: VecDeque<(u64, SignedDigest, u64)>,
    /// The live entries: their signer and sequence number.
    seen: HashMap<SignedDigest, (Arc<str>, u64)>,
    /// Each signer's live entries, oldest first.
    by_signer: HashMap<Arc<str>, VecDeque<SignedDigest>>,
    /// Signers by how many live entries they hold.
    by_count: BTreeMap<usize, HashSet<Arc<str>>>,
    /// Protected signers, with when each was last protected.
    protected: HashMap<Arc<str>, u64>,
    next_sequence: u64,
}

impl ReplayWindow {
    /// Records `digest` (signed by `signer`) at `now_ms`; false if it was
    /// seen before. Entries older than twice `max_age` are forgotten
    /// (their timestamps refuse them anyway).
    pub fn first_time(
        &mut self,
        digest: SignedDigest,
        signer: &str,
        now_ms: u64,
        max_age: Duration,
    ) -> bool {
        let horizon = now_ms.saturating_sub(2 * max_age.as_millis() as u64);
        self.expire(horizon);
        if self.seen.contains_key(&digest) {
            return false;
        }
        if self.seen.len() >= MAX_SEEN {
            self.evict();
        }
        let signer: Arc<str> = match self.by_signer.get_key_value(signer) {
            Some((name, _)) => name.clone(),
            None => signer.into(),
        };
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.seen.insert(digest, (signer.clone(), sequence));
        self.order.push_back((now_ms, digest, sequence));
        let entries = self.by_signer.entry(signer.clone()).or_default();
        entries.push_back(digest);
        let count = entries.len();
        self.move_count(&signer, count - 1, count);
        if self.order.len() > 2 * MAX_SEEN {
            self.compact();
        }
        true
    }

    /// Keeps `signer`'s entries while unprotected signers can make room
    /// (a peer we hold a link with: a replay of its offer must not find
    /// the window emptied of it).
    pub fn protect(&mut self, signer: &str, now_ms: u64) {
        if let Some(at) = self.protected.get_mut(signer) {
            *at = now_ms;
            return;
        }
        if self.protected.len() >= MAX_PROTECTED {
            // Rare (a new peer beyond the bound): a scan of the bound.
            let oldest = self
                .protected
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(signer, _)| signer.clone());
            if let Some(oldest) = oldest {
                self.protected.remove(&oldest);
            }
        }
        self.protected.insert(signer.into(), now_ms);
    }

    /// Live entries now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }

    fn is_live(&self, digest: &SignedDigest, sequence: u64) -> bool {
        self.seen.get(digest).is_some_and(|(_, s)| *s == sequence)
    }

    /// Forgets entries that arrived before `horizon`.
    fn expire(&mut self, horizon: u64) {
        while let Some(&(at, digest, sequence)) = self.order.front() {
            let live = self.is_live(&digest, sequence);
            if live && at >= horizon {
                break;
            }
            self.order.pop_front();
            if live {
                self.forget(&digest);
            }
        }
    }

    /// Makes room for one entry (see the [module docs](self)).
    fn evict(&mut self) {
        let heaviest = self
            .by_count
            .iter()
            .next_back()
            .and_then(|(count, signers)| {
                // Among the heaviest, one not protected if there is one.
                let pick = signers
                    .iter()
                    .find(|s| !self.protected.contains_key(*s))
                    .or_else(|| signers.iter().next());
                pick.map(|signer| (*count, signer.clone()))
            });
        let victim = match heaviest {
            Some((count, signer)) if count > 1 => self.by_signer[&signer].front().copied(),
            _ => self.oldest_unprotected(),
        };
        if let Some(digest) = victim {
            self.forget(&digest);
        }
    }

    /// The oldest live entry of a signer not protected, else the oldest;
    /// taken out of `order` on the way.
    fn oldest_unprotected(&mut self) -> Option<SignedDigest> {
        // Out-of-order leftovers at the front go now: they are dead.
        while let Some(&(_, digest, sequence)) = self.order.front() {
            if self.is_live(&digest, sequence) {
                break;
            }
            self.order.pop_front();
        }
        // Protected entries are passed over (at most MAX_PROTECTED signers,
        // one entry each when every signer holds one), and so are dead
        // leftovers, which are compacted away once there are many.
        let (mut first, mut dead, mut found) = (None, 0, None);
        for (at, (_, digest, sequence)) in self.order.iter().enumerate() {
            let Some((signer, live)) = self.seen.get(digest) else {
                dead += 1;
                continue;
            };
            if live != sequence {
                dead += 1;
                continue;
            }
            if !self.protected.contains_key(signer) {
                found = Some(at);
                break;
            }
            first.get_or_insert(at);
        }
        let at = found.or(first)?;
        let (_, digest, _) = self.order.remove(at).expect("found above");
        if dead > DEAD_SCANNED {
            self.compact();
        }
        Some(digest)
    }

    fn forget(&mut self, digest: &SignedDigest) {
        let Some((signer, _)) = self.seen.remove(digest) else {
            return;
        };
        let Some(entries) = self.by_signer.get_mut(&signer) else {
            return;
        };
        // Always the signer's oldest but in a caller's odd case: its
        // entries are in time order, and every eviction takes the oldest.
        if entries.front() == Some(digest) {
            entries.pop_front();
        } else {
            entries.retain(|held| held != digest);
        }
        let count = entries.len();
        if count == 0 {
            self.by_signer.remove(&signer);
        }
        self.move_count(&signer, count + 1, count);
    }

    fn move_count(&mut self, signer: &Arc<str>, from: usize, to: usize) {
        if from > 0 {
            if let Some(signers) = self.by_count.get_mut(&from) {
                signers.remove(signer);
                if signers.is_empty() {
                    self.by_count.remove(&from);
                }
            }
        }
        if to > 0 {
            self.by_count.entry(to).or_default().insert(signer.clone());
        }
    }

    /// Drops the dead entries of `order`: called when it holds twice the
    /// bound, so it costs O(1) per entry added.
    fn compact(&mut self) {
        let seen = &self.seen;
        self.order
            .retain(|(_, digest, sequence)| seen.get(digest).is_some_and(|(_, s)| s == sequence));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(10);

    fn digest(i: u32) -> SignedDigest {
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&i.to_be_bytes());
        digest
    }

    #[test]
    fn a_replayed_offer_is_seen() {
        let mut seen = ReplayWindow::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(seen.first_time(a, "x", 1000, AGE));
        assert!(!seen.first_time(a, "x", 2000, AGE));
        assert!(seen.first_time(b, "x", 2000, AGE));
        // Long after, the window has moved on (and a stale signature is
        // refused by its timestamp anyway).
        assert!(seen.first_time(a, "x", 100_000, AGE));
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn a_full_window_pushes_out_the_heaviest_signer_not_everyone() {
        let mut seen = ReplayWindow::default();
        let honest = [0xffu8; 32];
        assert!(seen.first_time(honest, "honest", 1000, AGE));
        // A flood from one key fills the window and goes on.
        for i in 0..(MAX_SEEN as u32 + 100) {
            assert!(seen.first_time(digest(i), "flood", 1001, AGE), "{i}");
        }
        assert_eq!(seen.len(), MAX_SEEN);
        // A new honest offer is still taken, and the old one still known;
        // the flood's oldest were the ones to go.
        assert!(seen.first_time([0xfeu8; 32], "honest", 1002, AGE));
        assert!(!seen.first_time(honest, "honest", 1003, AGE));
        assert!(seen.first_time(digest(0), "flood", 1004, AGE));
        assert!(!seen.first_time(digest(MAX_SEEN as u32 + 99), "flood", 1004, AGE));
    }

    #[test]
    fn keys_minted_per_offer_push_out_each_other_not_a_protected_peer() {
        let mut seen = ReplayWindow::default();
        let (peer, stranger) = ([0xffu8; 32], [0xfeu8; 32]);
        assert!(seen.first_time(peer, "peer", 1000, AGE));
        assert!(seen.first_time(stranger, "stranger", 1000, AGE));
        seen.protect("peer", 1000);
        // One key per offer: every signer holds one entry.
        for i in 0..(2 * MAX_SEEN as u32) {
            let minted = format!("minted-{i}");
            assert!(seen.first_time(digest(i), &minted, 1001, AGE), "{i}");
        }
        assert_eq!(seen.len(), MAX_SEEN);
        // The protected peer's offer is still known as seen; the stranger's
        // (the oldest, unprotected) made room first.
        assert!(!seen.first_time(peer, "peer", 1002, AGE));
        assert!(seen.first_time(stranger, "stranger", 1002, AGE));
        // Dead leftovers are compacted away: the order stays bounded.
        assert!(seen.order.len() <= 2 * MAX_SEEN);
    }

    #[test]
    fn protection_is_bounded_the_least_recent_given_up_first() {
        let mut seen = ReplayWindow::default();
        for i in 0..(MAX_PROTECTED as u64 + 1) {
            seen.protect(&format!("peer-{i}"), i);
        }
        assert_eq!(seen.protected.len(), MAX_PROTECTED);
        assert!(!seen.protected.contains_key("peer-0"));
        assert!(seen
            .protected
            .contains_key(format!("peer-{MAX_PROTECTED}").as_str()));
    }
}

//! Offers from other peers being answered: each holds a place, counted
//! by its caller's network address as the router saw it (or, through a
//! router that does not say, by the offer's `from`), under the admission
//! rule every cap of babble-net shares ([`crate::places`]). At
//! `max_offers`, a newcomer's offer takes the place of the oldest offer
//! of the address holding the most, which is withdrawn: refused to its
//! caller, and its answering stopped. So IDs made up behind one address
//! share that address's places, and a flood of offers sheds itself
//! instead of locking newcomers out. One `from` still has at most
//! `max_per_caller` offers being answered; more are refused.

use std::collections::HashMap;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::places::Places;

/// The longest caller address taken from a router; a longer one is not an
/// address, and the offer counts under its `from`.
const MAX_ADDRESS: usize = 64;

/// One offer being answered.
struct Answering {
    /// The offer's `from`.
    caller: String,
    place: u64,
    /// Cancelled when the offer is withdrawn.
    withdrawn: CancellationToken,
}

/// An offer admitted.
pub(super) struct Admitted {
    /// Cancelled if the offer is withdrawn before it is answered.
    pub(super) withdrawn: CancellationToken,
    /// The INVOCATION request of an offer withdrawn to make room.
    pub(super) displaced: Option<u64>,
}

/// See the [module docs](self).
pub(super) struct OffersAnswered {
    places: Places,
    by_request: HashMap<u64, Answering>,
    per_caller: HashMap<String, usize>,
    max_per_caller: usize,
}

impl OffersAnswered {
    /// Room for `max_offers` offers, `max_per_caller` from one `from`.
    pub(super) fn new(max_offers: usize, max_per_caller: usize) -> OffersAnswered {
        OffersAnswered {
            places: Places::new(max_offers, max_offers),
            by_request: HashMap::new(),
            per_caller: HashMap::new(),
            max_per_caller,
        }
    }

    /// The source an offer counts under: the caller's address the router
    /// gave, else its `from`.
    pub(super) fn source<'a>(address: Option<&'a str>, from: &'a str) -> &'a str {
        match address {
            Some(address) if !address.is_empty() && address.len() <= MAX_ADDRESS => address,
            _ => from,
        }
    }

    /// Why offer `request` from `from` would be refused, if it would.
    pub(super) fn refusal(&self, request: u64, from: &str) -> Option<&'static str> {
        if self.by_request.contains_key(&request) {
            Some("an offer with this request ID is being answered")
        } else if self.per_caller.get(from).copied().unwrap_or(0) >= self.max_per_caller {
            Some("too many offers from this peer being answered")
        } else {
            None
        }
    }

    /// Admits offer `request` from `from` (placed under `source`), or
    /// says why it is refused.
    pub(super) fn admit(
        &mut self,
        request: u64,
        from: &str,
        source: &str,
        now: Instant,
    ) -> Result<Admitted, &'static str> {
        if let Some(why) = self.refusal(request, from) {
            return Err(why);
        }
        let admission = self.places.admit(source, now, CancellationToken::new());
        let Some((place, withdrawn, _)) = admission.slot else {
            return Err("too many offers being answered");
        };
        // The place evicted (its token cancelled by the admission), if any.
        let displaced = admission.shed.and_then(|_| {
            self.by_request
                .iter()
                .find(|(_, offer)| offer.withdrawn.is_cancelled())
                .map(|(request, _)| *request)
        });
        if let Some(request) = displaced {
            self.forget(request);
        }
        *self.per_caller.entry(from.to_owned()).or_default() += 1;
        self.by_request.insert(
            request,
            Answering {
                caller: from.to_owned(),
                place,
                withdrawn: withdrawn.clone(),
            },
        );
        Ok(Admitted {
            withdrawn,
            displaced,
        })
    }

    /// Offer `request` is answered (or its caller gave up): its caller,
    /// if it was being answered.
    pub(super) fn finish(&mut self, request: u64) -> Option<String> {
        let offer = self.by_request.remove(&request)?;
        self.places.release(offer.place);
        self.release_caller(&offer.caller);
        Some(offer.caller)
    }

    /// Every offer withdrawn and forgotten (the session is over).
    pub(super) fn clear(&mut self) {
        let requests: Vec<u64> = self.by_request.keys().copied().collect();
        for request in requests {
            self.forget(request);
        }
    }

    /// Offers being answered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_request.len()
    }

    /// Withdraws and forgets offer `request`.
    fn forget(&mut self, request: u64) {
        if let Some(offer) = self.by_request.remove(&request) {
            offer.withdrawn.cancel();
            self.places.release(offer.place);
            self.release_caller(&offer.caller);
        }
    }

    fn release_caller(&mut self, caller: &str) {
        if let Some(count) = self.per_caller.get_mut(caller) {
            *count -= 1;
            if *count == 0 {
                self.per_caller.remove(caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_address_with_the_most_gives_way_to_a_newcomer() {
        let now = Instant::now();
        let mut offers = OffersAnswered::new(3, 2);
        // Three made-up IDs behind one address fill every place.
        let flood: Vec<Admitted> = (0..3)
            .map(|i| {
                let from = format!("minted{i}");
                offers.admit(i, &from, "10.0.0.2", now).unwrap()
            })
            .collect();
        // A newcomer from another address takes the oldest flood offer's
        // place: that offer is withdrawn.
        let newcomer = offers.admit(10, "alice", "10.0.0.1", now).unwrap();
        assert_eq!(newcomer.displaced, Some(0));
        assert!(flood[0].withdrawn.is_cancelled());
        assert!(!flood[1].withdrawn.is_cancelled());
        assert_eq!(offers.len(), 3);
        // The withdrawn offer's answer finds nothing to answer.
        assert_eq!(offers.finish(0), None);
        assert_eq!(offers.finish(10).as_deref(), Some("alice"));
    }

    #[test]
    fn one_id_is_refused_beyond_its_share_and_a_request_id_once() {
        let now = Instant::now();
        let mut offers = OffersAnswered::new(8, 2);
        offers.admit(1, "bob", "10.0.0.1", now).unwrap();
        offers.admit(2, "bob", "10.0.0.1", now).unwrap();
        assert!(offers.admit(3, "bob", "10.0.0.1", now).is_err());
        assert!(offers.admit(2, "carol", "10.0.0.1", now).is_err());
        // Answering one makes room for another from the same ID.
        assert_eq!(offers.finish(1).as_deref(), Some("bob"));
        offers.admit(3, "bob", "10.0.0.1", now).unwrap();
    }

    #[test]
    fn without_an_address_an_offer_counts_under_its_from() {
        assert_eq!(OffersAnswered::source(None, "bob"), "bob");
        assert_eq!(OffersAnswered::source(Some(""), "bob"), "bob");
        let long = "1".repeat(MAX_ADDRESS + 1);
        assert_eq!(OffersAnswered::source(Some(&long), "bob"), "bob");
        assert_eq!(OffersAnswered::source(Some("10.0.0.1"), "bob"), "10.0.0.1");
    }

    #[test]
    fn a_session_ending_withdraws_every_offer() {
        let now = Instant::now();
        let mut offers = OffersAnswered::new(8, 2);
        let first = offers.admit(1, "bob", "10.0.0.1", now).unwrap();
        offers.clear();
        assert!(first.withdrawn.is_cancelled());
        assert_eq!(offers.len(), 0);
        offers.admit(1, "bob", "10.0.0.1", now).unwrap();
    }
}

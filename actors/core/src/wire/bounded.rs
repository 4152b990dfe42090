//! Decoding that stays within a small multiple of the bytes received.
//!
//! JSON can describe large values in few bytes: `{}` is a whole
//! [`WireEvent`](crate::wire::WireEvent) (a few hundred bytes of memory for
//! three on the wire), `null` a whole transaction slot. Within [`decode`],
//! every element of every list and map of the wire types is charged its
//! size, as it is decoded, against a budget of [`AMPLIFICATION`] times the
//! frame's length; decoding fails as soon as the budget runs out, so a
//! frame never decodes into much more memory than its own size. Strings
//! and byte slices need no charge: they are never larger than their text.
//!
//! Outside [`decode`] (a node decoding its own data) nothing is limited.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Memory a frame may decode into, as a multiple of its length (plus a
/// fixed 64 KiB for small frames). Frames written by Go Babble or by this
/// crate decode into less than their own length in charged elements.
pub const AMPLIFICATION: usize = 8;

const SLACK: usize = 64 * 1024;

thread_local! {
    static BUDGET: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Parses `json` as a `T`, charging its lists and maps against the budget
/// of a frame of `json.len()` bytes.
pub fn decode<T: DeserializeOwned>(json: &[u8]) -> serde_json::Result<T> {
    decode_measured(json).map(|(value, _)| value)
}

/// [`decode`], and at most how many bytes of memory the value holds: what
/// its lists and maps were charged, plus the frame's length (its strings
/// and byte slices are never longer than their text).
pub fn decode_measured<T: DeserializeOwned>(json: &[u8]) -> serde_json::Result<(T, usize)> {
    let budget = json
        .len()
        .saturating_mul(AMPLIFICATION)
        .saturating_add(SLACK);
    let outer = BUDGET.replace(budget);
    let result = serde_json::from_slice(json);
    let charged = budget - BUDGET.get();
    BUDGET.set(outer);
    result.map(|value| (value, charged.saturating_add(json.len())))
}

/// Takes `bytes` from the budget, or fails once it is spent.
pub(crate) fn charge<E: de::Error>(bytes: usize) -> Result<(), E> {
    let left = BUDGET.get();
    if bytes > left {
        return Err(E::custom(format_args!(
            "the frame decodes into more than {AMPLIFICATION} times its size"
        )));
    }
    BUDGET.set(left - bytes);
    Ok(())
}

/// What one element of a `Vec<T>` costs: itself, twice over (a vector
/// grows by doubling, so its capacity can be twice its length).
fn element_cost<T>() -> usize {
    2 * std::mem::size_of::<T>().max(1)
}

/// What one entry of a `BTreeMap<K, V>` costs: the pair and a share of
/// its node.
fn entry_cost<K, V>() -> usize {
    std::mem::size_of::<(K, V)>() + 16
}

/// `Option<Vec<T>>` (a Go slice, `null` when nil), charged per element.
pub mod seq {
    use super::*;

    /// Deserializes a Go slice, charging each element.
    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        d.deserialize_option(OptionalSeq(PhantomData))
    }

    struct OptionalSeq<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for OptionalSeq<T> {
        type Value = Option<Vec<T>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            elements(seq).map(Some)
        }
    }

    /// Collects the elements of `seq`, charging each before it is decoded.
    pub(crate) fn elements<'de, A, T>(mut seq: A) -> Result<Vec<T>, A::Error>
    where
        A: SeqAccess<'de>,
        T: Deserialize<'de>,
    {
        let mut items = Vec::new();
        loop {
            charge::<A::Error>(element_cost::<T>())?;
            match seq.next_element()? {
                Some(item) => items.push(item),
                None => return Ok(items),
            }
        }
    }
}

/// `Option<BTreeMap<String, V>>` (a Go map with string keys, `null` when
/// nil), charged per entry.
pub mod map {
    use super::*;

    /// Deserializes a Go map, charging each entry.
    pub fn deserialize<'de, D, K, V>(d: D) -> Result<Option<BTreeMap<K, V>>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        d.deserialize_option(OptionalMap(PhantomData))
    }

    struct OptionalMap<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for OptionalMap<K, V>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        type Value = Option<BTreeMap<K, V>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            loop {
                charge::<A::Error>(entry_cost::<K, V>())?;
                match access.next_entry()? {
                    Some((key, value)) => {
                        map.insert(key, value);
                    }
                    None => return Ok(Some(map)),
                }
            }
        }
    }
}

/// `Option<BTreeMap<K, Option<Vec<T>>>>` (a Go map of slices, such as a
/// frame's peer sets), charged per entry and per element.
pub mod map_of_seqs {
    use super::*;

    /// A Go slice inside a map, charged per element.
    struct Charged<T>(Option<Vec<T>>);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Charged<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            seq::deserialize(d).map(Charged)
        }
    }

    /// Deserializes a Go map of slices.
    #[allow(clippy::type_complexity)]
    pub fn deserialize<'de, D, K, T>(d: D) -> Result<Option<BTreeMap<K, Option<Vec<T>>>>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        T: Deserialize<'de>,
    {
        let charged: Option<BTreeMap<K, Charged<T>>> = map::deserialize(d)?;
        Ok(charged.map(|map| map.into_iter().map(|(k, Charged(v))| (k, v)).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EagerSyncRequest, SyncRequest};

    #[test]
    fn empty_objects_cannot_multiply_into_gigabytes() {
        // 100k events of `{}`: 300 kB on the wire, ~40 MB decoded.
        let events = vec!["{}"; 100_000].join(",");
        let json = format!(r#"{{"FromID":1,"Events":[{events}]}}"#);
        let err = decode::<EagerSyncRequest>(json.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("times its size"), "{err}");
        // Without a budget, the same text decodes (a node's own data).
        let request: EagerSyncRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(request.events.map(|e| e.len()), Some(100_000));
    }

    #[test]
    fn honest_frames_decode_within_the_budget() {
        // A Known map of 200k peers: 6-12 bytes an entry, ~5x in memory.
        let entries: Vec<String> = (0..200_000).map(|i| format!(r#""{i}":0"#)).collect();
        let json = format!(
            r#"{{"FromID":1,"Known":{{{}}},"SyncLimit":1}}"#,
            entries.join(",")
        );
        let request = decode::<SyncRequest>(json.as_bytes()).unwrap();
        assert_eq!(request.known.map(|k| k.len()), Some(200_000));
    }

    #[test]
    fn null_transactions_are_charged() {
        let slots = vec!["null"; 1_000_000].join(",");
        let json =
            format!(r#"{{"Events":[{{"Body":{{"Transactions":[{slots}]}},"Signature":""}}]}}"#);
        assert!(decode::<EagerSyncRequest>(json.as_bytes()).is_err());
    }

    #[test]
    fn a_measured_decode_counts_every_element_and_the_text() {
        let json = br#"{"FromID":1,"Events":[{},{}]}"#;
        let (request, bytes) = decode_measured::<EagerSyncRequest>(json).unwrap();
        assert_eq!(request.events.map(|e| e.len()), Some(2));
        // Three elements charged (the two events and the end of the list).
        let events = 3 * element_cost::<crate::wire::WireEvent>();
        assert_eq!(bytes, events + json.len());
    }

    #[test]
    fn the_budget_is_restored_after_a_decode() {
        let _ = decode::<EagerSyncRequest>(b"{\"Events\":[{},{}]}");
        assert_eq!(BUDGET.get(), usize::MAX);
    }
}

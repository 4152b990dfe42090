//! Signed offers and answers: what binds a data channel to the node keys
//! at its two ends, whatever the signaling router does.
//!
//! With authentication on, a CALL carries a third argument
//! `{"ts": <unix milliseconds>, "sig": "<hex DER ECDSA>"}`: the caller's
//! signature of SHA-256 of the compact JSON array
//! `["offer", callerID, calleeID, offerSdpJSON, ts]`; the RESULT a second
//! argument of the same form, the callee's signature of
//! `["answer", calleeID, callerID, answerSdpJSON, ts]`. The SDP holds the
//! DTLS fingerprint, so nobody in between can stand in for either end. A
//! node rejects SDP that is unsigned, signed by another key, older than
//! its offer timeout (or as far in the future), or seen before.
//!
//! "Seen before" is decided on the signed content, never on the
//! signature: an ECDSA signature has two valid encodings (low and high S),
//! and hex has two cases, so the same offer can be sent again with other
//! signature bytes.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::identity::{NodeKey, PeerKey};

/// Which half of the exchange a signature covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sdp {
    /// The caller's offer.
    Offer,
    /// The callee's answer.
    Answer,
}

impl Sdp {
    fn name(self) -> &'static str {
        match self {
            Sdp::Offer => "offer",
            Sdp::Answer => "answer",
        }
    }
}

/// The bytes a signature covers.
fn signed_bytes(kind: Sdp, signer: &str, other: &str, sdp: &str, ts: u64) -> Vec<u8> {
    json!([kind.name(), signer, other, sdp, ts])
        .to_string()
        .into_bytes()
}

/// The `{"ts", "sig"}` argument for `sdp`, sent by `signer` (our ID) to
/// `other`, at `now_ms`.
pub fn sign(key: &NodeKey, kind: Sdp, signer: &str, other: &str, sdp: &str, now_ms: u64) -> Value {
    let signature = key.sign(&signed_bytes(kind, signer, other, sdp, now_ms));
    json!({ "ts": now_ms, "sig": hex::encode(signature) })
}

/// What was signed, as a digest: the identity of an offer or answer for
/// replay protection.
pub type SignedDigest = [u8; 32];

/// Checks the `{"ts", "sig"}` argument of `sdp`, sent by `signer` to
/// `other`: signed by `signer`'s key (the ID is the key), within `max_age`
/// of `now_ms`. Returns the digest of what was signed, to check it was not
/// seen before.
pub fn verify(
    kind: Sdp,
    signer: &str,
    other: &str,
    sdp: &str,
    argument: Option<&Value>,
    now_ms: u64,
    max_age: Duration,
) -> Result<SignedDigest, String> {
    let argument = argument.ok_or_else(|| format!("unsigned {}", kind.name()))?;
    let ts = argument
        .get("ts")
        .and_then(Value::as_u64)
        .ok_or("the signature has no timestamp")?;
    let sig = argument
        .get("sig")
        .and_then(Value::as_str)
        .ok_or("the signature is missing")?;
    let age = Duration::from_millis(now_ms.abs_diff(ts));
    if age > max_age {
        return Err(format!(
            "a stale {}: signed {age:?} away from now",
            kind.name()
        ));
    }
    let key = PeerKey::parse(signer).map_err(|_| format!("{signer} is not a public key"))?;
    let signature = hex::decode(sig).map_err(|_| "the signature is not hex".to_owned())?;
    let signed = signed_bytes(kind, signer, other, sdp, ts);
    if !key.verify(&signed, &signature) {
        return Err(format!("the {} is not signed by {signer}", kind.name()));
    }
    Ok(Sha256::digest(&signed).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(10);

    #[test]
    fn a_signed_offer_verifies_only_as_sent() {
        let key = NodeKey::generate();
        let me = key.public().to_string();
        let arg = sign(&key, Sdp::Offer, &me, "bob", "{sdp}", 1_000_000);
        assert!(verify(Sdp::Offer, &me, "bob", "{sdp}", Some(&arg), 1_000_500, AGE).is_ok());
        // Another SDP, callee, kind or signer: refused.
        assert!(verify(
            Sdp::Offer,
            &me,
            "bob",
            "{other}",
            Some(&arg),
            1_000_500,
            AGE
        )
        .is_err());
        assert!(verify(
            Sdp::Offer,
            &me,
            "carol",
            "{sdp}",
            Some(&arg),
            1_000_500,
            AGE
        )
        .is_err());
        assert!(verify(Sdp::Answer, &me, "bob", "{sdp}", Some(&arg), 1_000_500, AGE).is_err());
        let other = NodeKey::generate().public().to_string();
        assert!(verify(
            Sdp::Offer,
            &other,
            "bob",
            "{sdp}",
            Some(&arg),
            1_000_500,
            AGE
        )
        .is_err());
        // Unsigned, stale, from the future.
        assert!(verify(Sdp::Offer, &me, "bob", "{sdp}", None, 1_000_500, AGE).is_err());
        assert!(verify(Sdp::Offer, &me, "bob", "{sdp}", Some(&arg), 1_011_000, AGE).is_err());
        assert!(verify(Sdp::Offer, &me, "bob", "{sdp}", Some(&arg), 989_000, AGE).is_err());
    }

    #[test]
    fn the_signed_bytes_are_the_compact_json_array() {
        assert_eq!(
            signed_bytes(Sdp::Offer, "0X04AB", "0X04CD", "{\"type\":\"offer\"}", 17),
            br#"["offer","0X04AB","0X04CD","{\"type\":\"offer\"}",17]"#.to_vec()
        );
    }

    #[test]
    fn the_same_offer_with_its_signature_re_encoded_is_a_replay() {
        let key = NodeKey::generate();
        let me = key.public().to_string();
        let arg = sign(&key, Sdp::Offer, &me, "bob", "{sdp}", 1_000_000);
        let first = verify(Sdp::Offer, &me, "bob", "{sdp}", Some(&arg), 1_000_100, AGE).unwrap();
        // The same signature as upper-case hex, and as its high-S twin (as
        // a signer that does not normalise would have made it): both
        // verify, and both are the same offer.
        let sig = arg["sig"].as_str().unwrap();
        let upper = json!({ "ts": arg["ts"], "sig": sig.to_uppercase() });
        let der = hex::decode(sig).unwrap();
        let low = k256::ecdsa::Signature::from_der(&der).unwrap();
        let (r, s) = low.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        assert!(high.normalize_s().is_some(), "the twin is high-S");
        let high = json!({ "ts": arg["ts"], "sig": hex::encode(high.to_der().as_bytes()) });
        let mut seen = super::super::replay::ReplayWindow::default();
        assert!(seen.first_time(first, &me, 1_000_100, AGE));
        for twin in [upper, high] {
            let digest =
                verify(Sdp::Offer, &me, "bob", "{sdp}", Some(&twin), 1_000_200, AGE).unwrap();
            assert!(!seen.first_time(digest, &me, 1_000_200, AGE));
        }
    }
}

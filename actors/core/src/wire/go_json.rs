//! JSON the way Go's `encoding/json` writes it.
//!
//! Go Babble nodes hash and sign the JSON of what they exchange, so a Rust
//! node has to produce the very bytes a Go node would. serde_json already
//! writes compact JSON with integers the way Go does; what differs is
//! covered here:
//!
//! * strings: `<`, `>`, `&`, U+2028 and U+2029 are escaped as `\u003c`,
//!   `\u003e`, `\u0026`, `\u2028`, `\u2029`; backspace and form feed are
//!   written `\u0008` and `\u000c` (not `\b`, `\f`); U+FFFD is written
//!   `\ufffd` (see below);
//! * `[]byte` is standard base64 with padding ([`bytes`], [`bytes_list`]);
//! * map keys are sorted as strings, so `"10"` comes before `"2"`
//!   ([`string_sorted_map`]).
//!
//! One case cannot be exact both ways. A Go string may hold invalid UTF-8,
//! which Go writes as `\ufffd`, while it writes a genuine U+FFFD raw. Both
//! decode to U+FFFD, the only thing a Rust `String` can hold. This encoder
//! writes U+FFFD as `\ufffd`, which reproduces what a Go node sent for a
//! string with invalid bytes (Go Babble's own vectors have such strings)
//! and differs from Go only for a string that held U+FFFD itself.

use std::fmt;
use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};

/// A serde_json [`Formatter`] that escapes strings exactly like Go's
/// `encoding/json` (with its default HTML-safe escaping).
#[derive(Clone, Copy, Debug, Default)]
pub struct GoFormatter;

impl Formatter for GoFormatter {
    #[inline]
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let bytes = fragment.as_bytes();
        let mut start = 0;
        while let Some(offset) = find_go_escape(&bytes[start..]) {
            let at = start + offset;
            let (escape, len): (&[u8], usize) = match bytes[at] {
                b'<' => (b"\\u003c", 1),
                b'>' => (b"\\u003e", 1),
                b'&' => (b"\\u0026", 1),
                // E2 80 A8 / E2 80 A9 are U+2028 / U+2029; EF BF BD is U+FFFD.
                _ => match &bytes[at..at + 3] {
                    [0xE2, 0x80, 0xA8] => (b"\\u2028", 3),
                    [0xE2, 0x80, 0xA9] => (b"\\u2029", 3),
                    [0xEF, 0xBF, 0xBD] => (b"\\ufffd", 3),
                    // Another character starting with the same byte.
                    _ => {
                        writer.write_all(&bytes[start..at + 1])?;
                        start = at + 1;
                        continue;
                    }
                },
            };
            writer.write_all(&bytes[start..at])?;
            writer.write_all(escape)?;
            start = at + len;
        }
        writer.write_all(&bytes[start..])
    }

    #[inline]
    fn write_char_escape<W>(&mut self, writer: &mut W, char_escape: CharEscape) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let short: &[u8] = match char_escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::Backspace => b"\\u0008",
            CharEscape::FormFeed => b"\\u000c",
            CharEscape::AsciiControl(byte) => {
                let escaped = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(byte >> 4) as usize],
                    HEX[(byte & 0xF) as usize],
                ];
                return writer.write_all(&escaped);
            }
        };
        writer.write_all(short)
    }

    /// A Go `[]byte` is a base64 string. Base64 never needs escaping, so
    /// it is written straight out, without the per-byte escape scan every
    /// other string goes through (the fields of this crate's wire types
    /// reach here only inside [`to_writer`], see [`bytes`]).
    fn write_byte_array<W>(&mut self, writer: &mut W, value: &[u8]) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        fn write_in<const INPUT: usize, const TEXT: usize, W: ?Sized + io::Write>(
            writer: &mut W,
            value: &[u8],
        ) -> io::Result<()> {
            let mut text = [0u8; TEXT];
            for chunk in value.chunks(INPUT) {
                let encoded =
                    base64_simd::STANDARD.encode(chunk, base64_simd::Out::from_slice(&mut text));
                writer.write_all(encoded)?;
            }
            Ok(())
        }
        writer.write_all(b"\"")?;
        // A buffer the size of the text for short values (transactions are
        // often a few hundred bytes), so no time goes to clearing it.
        match value.len() {
            0..=192 => write_in::<192, 256, W>(writer, value)?,
            _ => write_in::<3072, 4096, W>(writer, value)?,
        }
        writer.write_all(b"\"")
    }
}

thread_local! {
    /// Set while [`to_writer`] runs on this thread: its serializer writes
    /// `serialize_bytes` as base64 (see `GoFormatter::write_byte_array`).
    static GO_BYTES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks [`to_writer`] as running until dropped (also when unwinding).
struct GoBytes(bool);

impl GoBytes {
    fn enter() -> GoBytes {
        GoBytes(GO_BYTES.replace(true))
    }
}

impl Drop for GoBytes {
    fn drop(&mut self) {
        GO_BYTES.set(self.0);
    }
}

/// Where the next byte that may need a Go-only escape is: `<`, `>`, `&`, or
/// the first byte of U+2028, U+2029 or U+FFFD (always a 3-byte sequence in
/// valid UTF-8). Most strings on the wire are base64 or hex, so this has to
/// be fast: a plain loop for short strings (keys, signatures), SIMD
/// searches for long ones, and none for non-ASCII bytes in ASCII text.
#[inline]
fn find_go_escape(bytes: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    let special = |b: &u8| matches!(b, b'<' | b'>' | b'&' | 0xE2 | 0xEF);
    if bytes.len() <= SHORT {
        // Eight bytes at a time while they are plain ASCII with none of
        // `<`, `>`, `&` (keys and hex are); the first word that may hold
        // one is looked at byte by byte.
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
        let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let word = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            let flagged = (word & HIGHS)
                | zero_in(word ^ u64::from_ne_bytes([b'<'; 8]))
                | zero_in(word ^ u64::from_ne_bytes([b'>'; 8]))
                | zero_in(word ^ u64::from_ne_bytes([b'&'; 8]));
            if flagged != 0 {
                break;
            }
            at += 8;
        }
        return bytes[at..].iter().position(special).map(|found| at + found);
    }
    let html = memchr::memchr3(b'<', b'>', b'&', bytes);
    if bytes.is_ascii() {
        return html;
    }
    let haystack = &bytes[..html.unwrap_or(bytes.len())];
    memchr::memchr2(0xE2, 0xEF, haystack).or(html)
}

/// Writes `value` as Go's `json.Marshal` would (no trailing newline).
pub fn to_writer<W: io::Write, T: ?Sized + Serialize>(
    writer: W,
    value: &T,
) -> serde_json::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(writer, GoFormatter);
    let _go_bytes = GoBytes::enter();
    value.serialize(&mut serializer)
}

/// Returns `value` as Go's `json.Marshal` would.
pub fn to_vec<T: ?Sized + Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    to_writer(&mut out, value)?;
    Ok(out)
}

/// The base64 flavour of Go's `encoding/json`: standard alphabet with
/// padding; like Go, stray bits in the last character are tolerated.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical),
);

fn decode_base64<E: serde::de::Error>(text: &[u8]) -> Result<Vec<u8>, E> {
    use base64::Engine;
    // The SIMD decoder takes canonical base64 only; what it refuses (stray
    // bits in the last character, or nothing valid at all) is left to the
    // tolerant one, which has Go's rules and gives the error.
    if let Ok(bytes) = base64_simd::STANDARD.decode_to_vec(text) {
        return Ok(bytes);
    }
    BASE64
        .decode(text)
        .map_err(|err| E::custom(format_args!("invalid base64 in a []byte field: {err}")))
}

/// Streams base64 into the serializer without an intermediate `String`
/// (a FastForward snapshot can be tens of MiB).
struct Base64Text<'a>(&'a [u8]);

impl fmt::Display for Base64Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&base64::display::Base64Display::new(self.0, &BASE64), f)
    }
}

/// Go `[]byte` as `Option<Vec<u8>>`: `None` is Go's nil slice (`null`),
/// `Some` is base64 text (`""` when empty).
pub mod bytes {
    use serde::de::{Deserializer, Visitor};
    use serde::Serializer;
    use std::fmt;

    /// Serializes a Go `[]byte`: as a base64 string for any serializer;
    /// inside [`to_writer`](super::to_writer), whose formatter writes
    /// bytes as base64 without escaping them, through `serialize_bytes`.
    /// (A `Serialize` impl that serialized into another serializer from
    /// inside `to_writer` would get bytes there as they are: none of this
    /// crate's does.)
    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(bytes) if super::GO_BYTES.get() => s.serialize_bytes(bytes),
            Some(bytes) => s.collect_str(&super::Base64Text(bytes)),
        }
    }

    /// Deserializes a Go `[]byte`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        d.deserialize_option(OptionalBytes)
    }

    pub(super) struct OptionalBytes;

    impl<'de> Visitor<'de> for OptionalBytes {
        type Value = Option<Vec<u8>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a base64 string or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            // serde_json hands a string's raw bytes to `visit_bytes` without
            // checking them for UTF-8 first (base64 is ASCII: anything else
            // fails to decode anyway). An array is refused (`visit_seq` is
            // not implemented), as Go refuses it for a `[]byte`.
            d.deserialize_bytes(self)
        }

        fn visit_bytes<E: serde::de::Error>(self, text: &[u8]) -> Result<Self::Value, E> {
            super::decode_base64(text).map(Some)
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            super::decode_base64(text.as_bytes()).map(Some)
        }
    }
}

/// Go `[][]byte` as [`ByteSlices`](crate::wire::ByteSlices): the list and every
/// inner slice can be nil.
pub mod bytes_list {
    use crate::wire::ByteSlices;
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Serialize, Serializer};
    use std::fmt;

    struct Item<'a>(&'a Option<Vec<u8>>);

    impl Serialize for Item<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::bytes::serialize(self.0, s)
        }
    }

    struct OwnedItem(Option<Vec<u8>>);

    impl<'de> Deserialize<'de> for OwnedItem {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::bytes::deserialize(d).map(OwnedItem)
        }
    }

    /// Serializes a Go `[][]byte`.
    pub fn serialize<S: Serializer>(value: &ByteSlices, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Item(item))?;
                }
                seq.end()
            }
        }
    }

    /// Deserializes a Go `[][]byte`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSlices, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = ByteSlices;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of base64 strings or null")
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_seq(self)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let items: Vec<OwnedItem> = crate::wire::bounded::seq::elements(seq)?;
                Ok(Some(
                    items.into_iter().map(|OwnedItem(item)| item).collect(),
                ))
            }
        }

        d.deserialize_option(ListVisitor)
    }
}

/// A Go map as `Option<BTreeMap<K, V>>` (`None` is a nil map), written with
/// its keys sorted as strings the way Go does (`"10"` before `"2"`).
/// Decoding accepts the keys in any order.
pub mod string_sorted_map {
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;
    use std::fmt::Display;

    /// Serializes a Go map with non-string keys.
    pub fn serialize<K, V, S>(value: &Option<BTreeMap<K, V>>, s: S) -> Result<S::Ok, S::Error>
    where
        K: Display,
        V: Serialize,
        S: Serializer,
    {
        let Some(map) = value else {
            return s.serialize_none();
        };
        let mut entries: Vec<(String, &V)> = map.iter().map(|(k, v)| (k.to_string(), v)).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out = s.serialize_map(Some(entries.len()))?;
        for (key, value) in entries {
            out.serialize_entry(&key, value)?;
        }
        out.end()
    }

    /// Deserializes a Go map with non-string keys, charging each entry
    /// (see [`bounded`](crate::wire::bounded)).
    pub fn deserialize<'de, K, V, D>(d: D) -> Result<Option<BTreeMap<K, V>>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        crate::wire::bounded::map::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(s: &str) -> String {
        String::from_utf8(to_vec(s).unwrap()).unwrap()
    }

    #[test]
    fn escapes_html_characters_and_line_separators_like_go() {
        assert_eq!(go("<a>&"), r#""\u003ca\u003e\u0026""#);
        assert_eq!(go("x\u{2028}y\u{2029}"), r#""x\u2028y\u2029""#);
        assert_eq!(go("\u{2027}é😀/"), "\"\u{2027}é😀/\"");
        assert_eq!(go("bad:\u{fffd}"), r#""bad:\ufffd""#);
    }

    #[test]
    fn writes_bytes_as_base64_with_or_without_to_writer() {
        #[derive(serde::Serialize)]
        struct Bytes {
            #[serde(serialize_with = "bytes::serialize")]
            a: Option<Vec<u8>>,
            #[serde(serialize_with = "bytes::serialize")]
            b: Option<Vec<u8>>,
            #[serde(serialize_with = "bytes::serialize")]
            c: Option<Vec<u8>>,
        }
        let value = Bytes {
            a: Some((0..=255).cycle().take(7000).collect()),
            b: Some(Vec::new()),
            c: None,
        };
        let go = to_vec(&value).unwrap();
        let plain = serde_json::to_vec(&value).unwrap();
        assert_eq!(go, plain);
        assert!(go.starts_with(b"{\"a\":\"AAECAwQF"));
        assert!(go.ends_with(b"\",\"b\":\"\",\"c\":null}"));
        // Outside `to_writer`, bytes go through the escaping path again.
        assert!(!GO_BYTES.get());
    }

    #[test]
    fn reads_bytes_as_go_does() {
        #[derive(serde::Deserialize, Debug)]
        struct Bytes {
            #[serde(deserialize_with = "bytes::deserialize")]
            a: Option<Vec<u8>>,
        }
        let read = |json: &str| serde_json::from_str::<Bytes>(json).map(|b| b.a);
        assert_eq!(read(r#"{"a":"AQID"}"#).unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(read(r#"{"a":"\u0041QID"}"#).unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(read(r#"{"a":""}"#).unwrap(), Some(vec![]));
        assert_eq!(read(r#"{"a":null}"#).unwrap(), None);
        // Stray bits in the last character are tolerated, as by Go.
        assert_eq!(read(r#"{"a":"AQJ="}"#).unwrap(), Some(vec![1, 2]));
        for refused in [
            r#"{"a":[1,2]}"#,
            r#"{"a":"AQI"}"#,
            r#"{"a":"A QID"}"#,
            r#"{"a":1}"#,
        ] {
            assert!(read(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_fast_base64_decoder_agrees_with_go_rules() {
        use base64::Engine;
        // Texts near valid base64: encodings of random bytes with one
        // character changed, cut short or padded differently.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=- \\";
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut text = BASE64.encode(&data).into_bytes();
            match next() % 4 {
                0 if !text.is_empty() => {
                    let at = (next() as usize) % text.len();
                    text[at] = alphabet[(next() as usize) % alphabet.len()];
                }
                1 if !text.is_empty() => text.truncate((next() as usize) % text.len()),
                2 => text.push(b'='),
                _ => {}
            }
            let fast = decode_base64::<serde_json::Error>(&text).ok();
            let tolerant = BASE64.decode(&text).ok();
            assert_eq!(fast, tolerant, "{:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn finds_every_go_escape_at_every_offset() {
        let specials: [&[u8]; 7] = [
            b"<",
            b">",
            b"&",
            "\u{2028}".as_bytes(),
            "\u{2029}".as_bytes(),
            "\u{fffd}".as_bytes(),
            "é".as_bytes(),
        ];
        for len in 0..48 {
            for at in 0..len {
                for special in specials {
                    let mut bytes = vec![b'a'; len + special.len()];
                    bytes[at..at + special.len()].copy_from_slice(special);
                    let expected = (special != "é".as_bytes()).then_some(at);
                    assert_eq!(find_go_escape(&bytes), expected, "{len} {at} {special:?}");
                }
            }
        }
    }

    #[test]
    fn writes_control_characters_in_go_1_19_form() {
        assert_eq!(
            go("\u{0}\u{8}\t\n\u{c}\r\u{1b}\u{7f}\"\\"),
            r#""\u0000\u0008\t\n\u000c\r\u001b"#.to_owned() + "\u{7f}" + r#"\"\\""#
        );
    }
}

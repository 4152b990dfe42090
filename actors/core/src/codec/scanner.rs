//! Finds where a JSON value ends in a growing buffer.
//!
//! The wire format has no length prefix: a frame ends where its JSON value
//! ends. Re-parsing the buffer after every read would be quadratic for a
//! large snapshot, so this scanner walks each byte once, resuming where it
//! stopped, and only tracks what decides the end of a value: nesting depth,
//! strings and escapes. Full validation is left to serde_json, which parses
//! the value once it is complete.

use memchr::memchr2;

use super::CodecError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Skipping whitespace before the value.
    Start,
    /// Inside an object or array, outside any string.
    Container,
    /// Inside a string; `top_level` when the string is the whole value.
    String { top_level: bool },
    /// Just after a backslash inside a string.
    Escape { top_level: bool },
    /// Inside a number, `true`, `false` or `null` at the top level.
    Literal { start: usize },
}

/// Whitespace allowed before a value. Go writes one newline between the
/// values of a frame; a peer sending more is flooding (whitespace must not
/// keep a connection busy for free).
pub(crate) const MAX_BLANK: usize = 64;

/// Incremental end-of-value finder, see the module docs.
#[derive(Clone, Debug)]
pub(crate) struct ValueScanner {
    /// Next byte to look at, as an index into the buffer given to `scan`.
    pos: usize,
    depth: usize,
    state: State,
    /// Whitespace seen before the value.
    blank: usize,
}

impl ValueScanner {
    /// A scanner for a value that starts at `offset` (after optional
    /// whitespace) in the buffers it will be given.
    pub(crate) fn starting_at(offset: usize) -> Self {
        ValueScanner {
            pos: offset,
            depth: 0,
            state: State::Start,
            blank: 0,
        }
    }

    /// Looks at the bytes of `buf` not yet seen. Returns the index just past
    /// the value once it is complete, `None` while more bytes are needed.
    ///
    /// `buf` must start with the bytes given to earlier calls.
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, CodecError> {
        while self.pos < buf.len() {
            let byte = buf[self.pos];
            match self.state {
                State::Start => match byte {
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        self.pos += 1;
                        self.blank += 1;
                        if self.blank > MAX_BLANK {
                            return Err(CodecError::Syntax(format!(
                                "more than {MAX_BLANK} bytes of whitespace before a value"
                            )));
                        }
                    }
                    b'{' | b'[' => {
                        self.depth = 1;
                        self.state = State::Container;
                        self.pos += 1;
                    }
                    b'"' => {
                        self.state = State::String { top_level: true };
                        self.pos += 1;
                    }
                    b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                        self.state = State::Literal { start: self.pos };
                        self.pos += 1;
                    }
                    other => return Err(CodecError::Syntax(unexpected(other))),
                },
                State::Container => {
                    // A tight loop over the structural bytes between two
                    // strings; state is only re-examined when one is found.
                    let rest = &buf[self.pos..];
                    let mut consumed = rest.len();
                    for (offset, byte) in rest.iter().enumerate() {
                        match byte {
                            b'"' => {
                                self.state = State::String { top_level: false };
                                consumed = offset + 1;
                                break;
                            }
                            b'{' | b'[' => self.depth += 1,
                            b'}' | b']' => {
                                self.depth -= 1;
                                if self.depth == 0 {
                                    self.pos += offset + 1;
                                    return Ok(Some(self.pos));
                                }
                            }
                            _ => {}
                        }
                    }
                    self.pos += consumed;
                }
                State::String { top_level } => match find_quote_or_backslash(&buf[self.pos..]) {
                    None => self.pos = buf.len(),
                    Some(offset) => {
                        self.pos += offset + 1;
                        if buf[self.pos - 1] == b'\\' {
                            self.state = State::Escape { top_level };
                        } else if top_level {
                            return Ok(Some(self.pos));
                        } else {
                            self.state = State::Container;
                        }
                    }
                },
                State::Escape { top_level } => {
                    self.pos += 1;
                    self.state = State::String { top_level };
                }
                State::Literal { start } => {
                    if !matches!(byte, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'+' | b'-')
                    {
                        return Ok(Some(self.pos));
                    }
                    self.pos += 1;
                    // Keywords are complete without a delimiter; numbers
                    // are not (the next byte could be another digit).
                    if matches!(&buf[start..self.pos], b"null" | b"true" | b"false") {
                        return Ok(Some(self.pos));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// The first `"` or `\\`: a plain loop over the first bytes (most strings
/// are short keys), then a SIMD search (base64 payloads can be megabytes).
#[inline]
fn find_quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    const SHORT: usize = 32;
    // Eight bytes at a time: a byte equal to `"` or `\\` turns into a zero
    // byte after the XOR, and `(x - 0x01..) & !x & 0x80..` flags the first
    // zero byte exactly (a borrow can only flag bytes above it).
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let head = bytes.len().min(SHORT);
    let mut at = 0;
    while at + 8 <= head {
        let word = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let found = zero_in(word ^ QUOTES) | zero_in(word ^ BACKSLASHES);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    if let Some(found) = bytes[at..head]
        .iter()
        .position(|b| *b == b'"' || *b == b'\\')
    {
        return Some(at + found);
    }
    if bytes.len() <= SHORT {
        return None;
    }
    memchr2(b'"', b'\\', &bytes[SHORT..]).map(|found| found + SHORT)
}

fn unexpected(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!(
            "unexpected '{}' where a JSON value should start",
            byte as char
        )
    } else {
        format!("unexpected byte 0x{byte:02x} where a JSON value should start")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(input: &[u8]) -> Option<usize> {
        ValueScanner::starting_at(0).scan(input).unwrap()
    }

    #[test]
    fn finds_the_end_of_objects_strings_and_keywords() {
        assert_eq!(end_of(br#"{"a":[1,{"b":"}"}]}xyz"#), Some(19));
        assert_eq!(end_of(br#"  "a\"b" "#), Some(8));
        assert_eq!(end_of(b"null\n"), Some(4));
        assert_eq!(end_of(b"\n-12 "), Some(4));
    }

    #[test]
    fn waits_for_more_bytes_when_the_value_is_incomplete() {
        assert_eq!(end_of(br#"{"a":"}"#), None);
        assert_eq!(end_of(b"12"), None);
        assert_eq!(end_of(b"nu"), None);
    }

    #[test]
    fn gives_the_same_answer_byte_by_byte() {
        let input = br#" {"k":"v\\\"}","n":[true,null,{"x":-1.5e3}]} "#;
        let mut scanner = ValueScanner::starting_at(0);
        let mut found = None;
        for len in 1..=input.len() {
            if let Some(end) = scanner.scan(&input[..len]).unwrap() {
                found = Some(end);
                break;
            }
        }
        assert_eq!(found, end_of(input));
        assert_eq!(found, Some(input.len() - 1));
    }

    #[test]
    fn refuses_a_whitespace_flood_before_a_value() {
        let mut scanner = ValueScanner::starting_at(0);
        assert_eq!(scanner.scan(&[b' '; MAX_BLANK]).unwrap(), None);
        assert!(scanner.scan(&[b' '; MAX_BLANK + 1]).is_err());
    }

    #[test]
    fn finds_the_first_quote_or_backslash_at_every_offset() {
        for len in 0..80 {
            for at in 0..len {
                for special in [b'"', b'\\'] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    // A later special byte must not hide the first one.
                    if at + 1 < len {
                        bytes[len - 1] = b'"';
                    }
                    assert_eq!(find_quote_or_backslash(&bytes), Some(at), "{len} {at}");
                }
            }
            assert_eq!(find_quote_or_backslash(&vec![0x80 | b'"'; len]), None);
            assert_eq!(find_quote_or_backslash(&vec![b'a'; len]), None);
        }
    }

    #[test]
    fn refuses_a_byte_that_cannot_start_a_value() {
        assert!(ValueScanner::starting_at(0).scan(b"}").is_err());
    }
}

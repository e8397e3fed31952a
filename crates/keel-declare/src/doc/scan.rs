//! A strict, single-pass scanner for one JSON object per record.
//!
//! It accepts exactly RFC 8259 JSON whose top-level value is an object, with nothing but
//! whitespace around it, and records each top-level key and value as a span of the input
//! together with the value's kind. Nested objects and arrays are validated and skipped.
//! Strings are checked for control characters, valid escapes and paired surrogates; the
//! whole input is checked to be UTF-8 first. Nesting of 128 levels or more is refused (as
//! `serde_json` does). Numbers follow the JSON grammar; their range is not limited here.
//!
//! The differential test at the bottom compares it with `serde_json` on many mutated
//! inputs.

use super::Kind;

/// Maximum nesting depth of arrays and objects.
pub const MAX_DEPTH: usize = 127;

/// Why a record is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    /// What was expected or found.
    pub message: &'static str,
    /// Byte offset in the record.
    pub at: usize,
    /// The record is not valid UTF-8.
    pub invalid_utf8: bool,
}

/// One top-level member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Key text between the quotes.
    pub key: (u32, u32),
    /// True when the key contains escapes and must be decoded.
    pub key_escaped: bool,
    /// Value text.
    pub value: (u32, u32),
    /// Value kind.
    pub kind: Kind,
}

/// 1 for bytes that need no attention inside a string, 0 for `"`, `\\`, control characters
/// and non-ASCII bytes.
static PLAIN: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0x20;
    while i < 0x80 {
        t[i] = 1;
        i += 1;
    }
    t[b'"' as usize] = 0;
    t[b'\\' as usize] = 0;
    t
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// A mask with the high bit set in bytes of `w` (little-endian) that are `"`, `\\`, below
/// 0x20 or above 0x7f. Bytes above the first such byte may be flagged falsely (borrows
/// propagate upwards), but the lowest flagged byte is always a true one: its index is
/// `mask.trailing_zeros() / 8`.
#[inline]
fn special_mask(w: u64) -> u64 {
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below_0x20 = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    zero_byte(w ^ (ONES * u64::from(b'"'))) | zero_byte(w ^ (ONES * u64::from(b'\\'))) | below_0x20 | (w & HIGHS)
}

#[cfg(test)]
fn special(w: u64) -> bool {
    special_mask(w) != 0
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

type R<T> = Result<T, ScanError>;

impl<'a> Scanner<'a> {
    #[inline]
    fn err<T>(&self, message: &'static str) -> R<T> {
        Err(ScanError {
            message,
            at: self.i,
            invalid_utf8: false,
        })
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Scans a string starting at its opening quote; returns (content span, has escapes).
    #[inline]
    fn string(&mut self) -> R<(usize, usize, bool)> {
        self.i += 1; // opening quote
        let start = self.i;
        let mut escaped = false;
        loop {
            // Jump to the next byte that needs attention, eight bytes at a time.
            loop {
                match self.b.get(self.i..).and_then(|r| r.first_chunk::<8>()) {
                    Some(chunk) => {
                        let mask = special_mask(u64::from_le_bytes(*chunk));
                        if mask == 0 {
                            self.i += 8;
                        } else {
                            self.i += (mask.trailing_zeros() / 8) as usize;
                            break;
                        }
                    }
                    None => {
                        // fewer than eight bytes left: one at a time
                        let rest = &self.b[self.i.min(self.b.len())..];
                        self.i += rest.iter().position(|&c| PLAIN[c as usize] == 0).unwrap_or(rest.len());
                        break;
                    }
                }
            }
            let Some(&c) = self.b.get(self.i) else {
                return self.err("unterminated string");
            };
            match c {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Ok((start, end, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                0..=0x1f => return self.err("control character in string"),
                0x80.. => self.utf8_char()?,
                _ => self.i += 1,
            }
        }
    }

    /// At a byte above 0x7f inside a string: validates one UTF-8 encoded character.
    fn utf8_char(&mut self) -> R<()> {
        let len = match self.b[self.i] {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 0,
        };
        match self.b.get(self.i..self.i + len) {
            Some(seq) if len > 0 && std::str::from_utf8(seq).is_ok() => {
                self.i += len;
                Ok(())
            }
            _ => Err(ScanError {
                message: "invalid UTF-8",
                at: self.i,
                invalid_utf8: true,
            }),
        }
    }

    fn hex4(&mut self) -> R<u16> {
        let Some(h) = self.b.get(self.i..self.i + 4) else {
            return self.err("truncated \\u escape");
        };
        let mut v = 0u16;
        for &c in h {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return self.err("invalid \\u escape"),
            };
            v = v << 4 | u16::from(d);
        }
        self.i += 4;
        Ok(v)
    }

    /// At a backslash: validates one escape sequence.
    fn escape(&mut self) -> R<()> {
        self.i += 1;
        let Some(&c) = self.b.get(self.i) else {
            return self.err("truncated escape");
        };
        self.i += 1;
        match c {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => {
                let u = self.hex4()?;
                match u {
                    0xD800..=0xDBFF => {
                        if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                            return self.err("lone leading surrogate in \\u escape");
                        }
                        self.i += 2;
                        let lo = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return self.err("invalid trailing surrogate in \\u escape");
                        }
                        Ok(())
                    }
                    0xDC00..=0xDFFF => self.err("lone trailing surrogate in \\u escape"),
                    _ => Ok(()),
                }
            }
            _ => self.err("invalid escape"),
        }
    }

    #[inline]
    fn digits(&mut self) -> usize {
        let rest = &self.b[self.i.min(self.b.len())..];
        let n = rest.iter().position(|c| !c.is_ascii_digit()).unwrap_or(rest.len());
        self.i += n;
        n
    }

    /// Scans a number; returns Integer when it has no fraction or exponent.
    fn number(&mut self) -> R<Kind> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return self.err("leading zero in number");
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        let mut kind = Kind::Integer;
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("missing digits after the decimal point");
            }
            kind = Kind::Float;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("missing digits in exponent");
            }
            kind = Kind::Float;
        }
        // integers beyond 64 bits are numbers, not integers
        if kind == Kind::Integer && self.i - start > 18 {
            let t = &self.b[start..self.i];
            let fits = std::str::from_utf8(t)
                .ok()
                .is_some_and(|s| s.parse::<i64>().is_ok() || s.parse::<u64>().is_ok());
            if !fits {
                kind = Kind::Float;
            }
        }
        Ok(kind)
    }

    fn literal(&mut self, word: &'static [u8], kind: Kind) -> R<Kind> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(kind)
        } else {
            self.err("invalid literal")
        }
    }

    /// Scans any value; `depth` is the nesting level of the value's container.
    fn value(&mut self, depth: usize) -> R<Kind> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| Kind::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true", Kind::Bool),
            Some(b'f') => self.literal(b"false", Kind::Bool),
            Some(b'n') => self.literal(b"null", Kind::Null),
            Some(b'{') => self.nested_object(depth + 1).map(|_| Kind::Object),
            Some(b'[') => self.array(depth + 1).map(|_| Kind::Array),
            Some(_) => self.err("expected a value"),
            None => self.err("unexpected end of input"),
        }
    }

    fn nested_object(&mut self, depth: usize) -> R<()> {
        if depth > MAX_DEPTH {
            return self.err("nested too deeply");
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.err("expected a key string");
            }
            self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return self.err("expected `:`");
            }
            self.i += 1;
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected `,` or `}`"),
            }
        }
    }

    fn array(&mut self, depth: usize) -> R<()> {
        if depth > MAX_DEPTH {
            return self.err("nested too deeply");
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected `,` or `]`"),
            }
        }
    }
}

/// Scans `b` as one JSON object, appending its members to `out`.
pub fn scan_object(b: &[u8], out: &mut Vec<Member>) -> Result<(), ScanError> {
    scan_members(b, |m| {
        out.push(m);
        Ok(())
    })
}

/// Scans `b` as one JSON object, calling `member` for each top-level member in order.
pub fn scan_members(b: &[u8], member: impl FnMut(Member) -> Result<(), ScanError>) -> Result<(), ScanError> {
    scan_inner(b, member).map_err(|mut e| {
        // Outside strings only ASCII is valid JSON: report invalid UTF-8 anywhere as such.
        if !e.invalid_utf8
            && let Err(u) = std::str::from_utf8(b)
        {
            e = ScanError {
                message: "invalid UTF-8",
                at: u.valid_up_to(),
                invalid_utf8: true,
            };
        }
        e
    })
}

fn scan_inner(b: &[u8], mut member: impl FnMut(Member) -> Result<(), ScanError>) -> Result<(), ScanError> {
    if b.len() > u32::MAX as usize {
        return Err(ScanError {
            message: "record too large",
            at: 0,
            invalid_utf8: false,
        });
    }
    let mut s = Scanner { b, i: 0 };
    s.ws();
    if s.peek() != Some(b'{') {
        return s.err(if s.peek().is_none() {
            "empty record"
        } else {
            "not a JSON object"
        });
    }
    s.i += 1;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            if s.peek() != Some(b'"') {
                return s.err("expected a key string");
            }
            let (ks, ke, key_escaped) = s.string()?;
            s.ws();
            if s.peek() != Some(b':') {
                return s.err("expected `:` after a key");
            }
            s.i += 1;
            s.ws();
            let vs = s.i;
            let kind = s.value(1)?;
            member(Member {
                key: (ks as u32, ke as u32),
                key_escaped,
                value: (vs as u32, s.i as u32),
                kind,
            })?;
            s.ws();
            match s.peek() {
                Some(b',') => {
                    s.i += 1;
                    s.ws();
                }
                Some(b'}') => {
                    s.i += 1;
                    break;
                }
                _ => return s.err("expected `,` or `}`"),
            }
        }
    }
    s.ws();
    if s.i != b.len() {
        return s.err("trailing characters after the object");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> bool {
        scan_object(s.as_bytes(), &mut Vec::new()).is_ok()
    }

    fn serde_ok(s: &[u8]) -> bool {
        matches!(
            serde_json::from_slice::<serde_json::Value>(s),
            Ok(serde_json::Value::Object(_))
        )
    }

    #[test]
    fn accepts_and_refuses() {
        assert!(ok(r#"{}"#));
        assert!(ok(
            r#" { "a" : [1, {"b": [true, false, null]}], "c": -0.5e+10, "d": "x\u00e9\n\ud83d\ude00" } "#
        ));
        for bad in [
            "",
            "[]",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\t\"}",
            "{a:1}",
            "{\"a\":1}}",
            "{\"a\":1} x",
            "{\"a\":[1,]}",
            "{\"a\":NaN}",
            "{'a':1}",
        ] {
            assert!(!ok(bad), "accepted {bad:?}");
            assert!(!serde_ok(bad.as_bytes()), "serde accepts {bad:?}");
        }
    }

    #[test]
    fn kinds_and_spans() {
        let s = r#"{"i": 12, "f": 1.5, "big": 123456789012345678901, "s": "x", "o": {}, "a": [], "n": null, "t": true, "k\"ey": 1}"#;
        let mut m = Vec::new();
        scan_object(s.as_bytes(), &mut m).unwrap();
        let kinds: Vec<Kind> = m.iter().map(|m| m.kind).collect();
        use Kind::*;
        assert_eq!(
            kinds,
            vec![Integer, Float, Float, String, Object, Array, Null, Bool, Integer]
        );
        assert_eq!(&s[m[3].value.0 as usize..m[3].value.1 as usize], "\"x\"");
        assert!(m[8].key_escaped && !m[0].key_escaped);
    }

    #[test]
    fn swar_mask_points_at_the_first_special_byte() {
        let specials = [b'"', b'\\', 0x00, 0x1f, 0x80, 0xff];
        let plains = [b'a', b' ', b'~', b'!', 0x7f, b'0'];
        let mut rng = 12345u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut w = [0u8; 8];
            let mut first = None;
            for (k, b) in w.iter_mut().enumerate() {
                let r = (rng >> (k * 6)) as usize;
                *b = if r % 5 == 0 {
                    specials[(r / 5) % specials.len()]
                } else {
                    plains[(r / 5) % plains.len()]
                };
                if first.is_none() && PLAIN[*b as usize] == 0 {
                    first = Some(k);
                }
            }
            let mask = special_mask(u64::from_le_bytes(w));
            match first {
                None => assert_eq!(mask, 0, "{w:?}"),
                Some(k) => assert_eq!((mask.trailing_zeros() / 8) as usize, k, "{w:?}"),
            }
        }
    }

    #[test]
    fn swar_finds_every_special_byte() {
        for pos in 0..8 {
            for b in [b'"', b'\\', 0x00, 0x1f] {
                let mut w = [b'a'; 8];
                w[pos] = b;
                assert!(special(u64::from_le_bytes(w)), "{b:#x} at {pos}");
            }
        }
        assert!(!special(u64::from_le_bytes(*b"plain ok")));
        assert!(!special(u64::from_le_bytes([
            0x20, 0x7f, b'~', b'!', b'#', b'[', b'{', b'a'
        ])));
        assert!(special(u64::from_le_bytes([
            b'a', b'a', 0xc3, 0xa9, b'a', b'a', b'a', b'a'
        ])));
    }

    #[test]
    fn utf8_is_validated_inside_and_outside_strings() {
        assert!(ok("{\"caf\u{e9}\": \"\u{1F600} ok \u{e9}t\u{e9}\"}"));
        for bad in [
            &b"{\"a\": \"\xff\"}"[..],
            b"{\"a\": \"\xc3\"}",
            b"{\"a\": \"\xed\xa0\x80\"}",
            b"{\"a\": 1}\xff",
        ] {
            let e = scan_object(bad, &mut Vec::new()).unwrap_err();
            assert!(e.invalid_utf8, "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn depth_limit_matches_serde() {
        for depth in [126, 127, 128, 129, 200] {
            let s = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(ok(&s), serde_ok(s.as_bytes()), "depth {depth}");
        }
    }

    /// The kind serde_json gives a value, in the scanner's terms.
    fn serde_kind(v: &serde_json::Value) -> Kind {
        use serde_json::Value as V;
        match v {
            V::Null => Kind::Null,
            V::Bool(_) => Kind::Bool,
            V::Number(n) if n.is_i64() || n.is_u64() => Kind::Integer,
            V::Number(_) => Kind::Float,
            V::String(_) => Kind::String,
            V::Array(_) => Kind::Array,
            V::Object(_) => Kind::Object,
        }
    }

    /// The scanner's members of `s` are serde_json's object `want`: the same keys (decoded),
    /// each with serde_json's kind, and its value span decodes to serde_json's value (the
    /// last of repeated keys wins, as in serde_json).
    fn same_members(
        s: &[u8],
        members: &[Member],
        want: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), String> {
        let mut got = serde_json::Map::new();
        for m in members {
            // the key span is between the quotes: decode it with them
            let quoted = &s[m.key.0 as usize - 1..m.key.1 as usize + 1];
            let key: String = serde_json::from_slice(quoted).map_err(|e| format!("key span {quoted:?}: {e}"))?;
            if !m.key_escaped && quoted[1..quoted.len() - 1] != *key.as_bytes() {
                return Err(format!("key {key:?} has escapes but is not marked escaped"));
            }
            let span = &s[m.value.0 as usize..m.value.1 as usize];
            let value: serde_json::Value = serde_json::from_slice(span)
                .map_err(|e| format!("value span {:?} of {key:?}: {e}", String::from_utf8_lossy(span)))?;
            // serde_json reads `-0` as the float -0.0 (to keep its sign); the scanner's kinds
            // are syntactic: no fraction nor exponent and in 64 bits is an integer
            let theirs = if span == b"-0" {
                Kind::Integer
            } else {
                serde_kind(&value)
            };
            if theirs != m.kind {
                return Err(format!("{key:?}: kind {:?}, serde_json says {theirs:?}", m.kind));
            }
            got.insert(key, value);
        }
        if &got != want {
            return Err(format!("members {got:?}, serde_json {want:?}"));
        }
        Ok(())
    }

    /// Differential test: thousands of mutations of valid records must be judged the same as
    /// by serde_json (numbers are kept in range, where serde_json adds its own limits).
    #[test]
    fn agrees_with_serde_json_on_mutations() {
        let seeds: [&[u8]; 4] = [
            br#"{"id": 123, "ts": 1699923600123, "customer": "c42", "amount": 1999, "note": "blue fox pays"}"#,
            br#"{"a": [1, 2.5, -3e2, {"b": "\u00e9\n"}], "c": {"d": null, "e": [true, false]}}"#,
            br#"{"k\"q": "v\\", "u": "\ud83d\ude00", "z": []}"#,
            br#"  {"x" : -0 , "y":0.0e-1}  "#,
        ];
        let alphabet = b"{}[]\":,.-+eE0123456789 \\ntrufalsu\t\x01\x7f\xc3\xa9";
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut disagreements = Vec::new();
        let mut compared = 0;
        for round in 0..40_000 {
            let mut s = seeds[round % seeds.len()].to_vec();
            for _ in 0..(1 + next() % 3) {
                let pos = (next() as usize) % (s.len() + 1);
                match next() % 3 {
                    0 if pos < s.len() => {
                        s.remove(pos);
                    }
                    1 => s.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
                    _ if pos < s.len() => s[pos] = alphabet[(next() as usize) % alphabet.len()],
                    _ => {}
                }
            }
            let mut members = Vec::new();
            let ours = scan_object(&s, &mut members).is_ok();
            let theirs = serde_json::from_slice::<serde_json::Value>(&s);
            // serde_json limits the range of numbers; JSON itself does not
            if theirs
                .as_ref()
                .is_err_and(|e| e.to_string().starts_with("number out of range"))
            {
                continue;
            }
            if ours != serde_ok(&s) {
                disagreements.push(String::from_utf8_lossy(&s).into_owned());
            } else if let (true, Ok(serde_json::Value::Object(want))) = (ours, &theirs) {
                compared += 1;
                if let Err(why) = same_members(&s, &members, want) {
                    disagreements.push(format!("{why} in {}", String::from_utf8_lossy(&s)));
                }
            }
        }
        // most mutations break the record; enough of them must still be compared by value
        assert!(compared > 4_000, "only {compared} records compared by value");
        assert!(
            disagreements.is_empty(),
            "{} disagreements, e.g. {:?}",
            disagreements.len(),
            &disagreements[..disagreements.len().min(5)]
        );
    }
}

//! `Doc`: a JSON object as declared steps see it, cheap to parse and to write back.
//!
//! Parsing validates the whole line as strict JSON (RFC 8259, nothing but whitespace after
//! the value) but keeps every top-level value as a span of the original text. Reading a field
//! decodes just that value; writing a doc copies untouched values verbatim. Fields that steps
//! add or change hold decoded values. Duplicate keys: the last one wins, as in most JSON
//! readers.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub mod scan;

/// A JSON value held by a [`Doc`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// JSON text in the doc's source, `start..end`, of a known kind.
    Raw(u32, u32, Kind),
    /// A string.
    Str(Box<str>),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Null.
    Null,
    /// Any other JSON (objects, arrays, results of jq programs).
    Json(Box<serde_json::Value>),
}

/// The JSON type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true` / `false`
    Bool,
    /// A number without fraction or exponent that fits in 64 bits.
    Integer,
    /// Any other number.
    Float,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

impl Kind {
    /// The name used in configuration and messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "boolean",
            Kind::Integer => "integer",
            Kind::Float => "number",
            Kind::String => "string",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Name {
    /// Key text in the source (it had no escapes, so it is also its own JSON form).
    Span(u32, u32),
    /// A name set by a step; shared, so setting it on every record costs no allocation.
    Owned(Arc<str>),
}

#[derive(Clone, Debug, PartialEq)]
struct Field {
    name: Name,
    value: Value,
}

/// A parsed JSON object (or, before parsing, raw text).
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    src: Bytes,
    fields: Vec<Field>,
    parsed: bool,
    /// False when the parsed keys are certainly distinct (a cheap signature test), which
    /// lets hinted lookups skip the search for a later duplicate.
    maybe_dups: bool,
}

/// Why text is not a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// What is wrong.
    pub message: String,
    /// Not valid UTF-8 (as opposed to not valid JSON).
    pub invalid_utf8: bool,
}

impl Doc {
    /// Unparsed text: written back as is.
    pub fn raw(src: Bytes) -> Self {
        Doc {
            src,
            fields: Vec::new(),
            parsed: false,
            maybe_dups: false,
        }
    }

    /// An empty object.
    pub fn object() -> Self {
        Doc {
            src: Bytes::new(),
            fields: Vec::new(),
            parsed: true,
            maybe_dups: false,
        }
    }

    /// True once the doc is an object with fields (after a parse step).
    pub fn is_parsed(&self) -> bool {
        self.parsed
    }

    /// The text the doc was made from.
    pub fn source(&self) -> &Bytes {
        &self.src
    }

    /// Parses `src` as one JSON object (strict RFC 8259, see [`scan`]).
    pub fn parse_json(src: Bytes) -> Result<Doc, ParseError> {
        let mut doc = Doc {
            src,
            fields: Vec::new(),
            parsed: true,
            maybe_dups: false,
        };
        doc.reparse_json()?;
        Ok(doc)
    }

    /// Parses this doc's source as a JSON object, replacing its fields.
    pub fn reparse_json(&mut self) -> Result<(), ParseError> {
        self.fields.clear();
        if self.fields.capacity() == 0 {
            self.fields = take_pooled();
        }
        self.parsed = true;
        self.maybe_dups = false;
        let src = &self.src;
        let fields = &mut self.fields;
        let mut signatures = 0u64;
        let mut maybe_dups = false;
        let mut key_error = None;
        let scanned = scan::scan_members(src, |m| {
            let key = &src[m.key.0 as usize..m.key.1 as usize];
            let bucket = (key.len().wrapping_mul(31)
                + key.first().map_or(0, |&c| c as usize * 7)
                + key.last().map_or(0, |&c| c as usize))
                % 64;
            let sig = 1u64 << bucket;
            maybe_dups |= (signatures & sig) != 0 || m.key_escaped;
            signatures |= sig;
            let name = if m.key_escaped {
                match serde_json::from_slice::<String>(&src[m.key.0 as usize - 1..m.key.1 as usize + 1]) {
                    Ok(k) => Name::Owned(k.into()),
                    Err(e) => {
                        key_error = Some(e.to_string());
                        return Err(scan::ScanError {
                            message: "invalid key",
                            at: m.key.0 as usize,
                            invalid_utf8: false,
                        });
                    }
                }
            } else {
                Name::Span(m.key.0, m.key.1)
            };
            fields.push(Field {
                name,
                value: Value::Raw(m.value.0, m.value.1, m.kind),
            });
            Ok(())
        });
        self.maybe_dups = maybe_dups;
        scanned.map_err(|e| ParseError {
            message: match key_error {
                Some(k) => format!("key at byte {}: {k}", e.at),
                None => format!("{} at byte {}", e.message, e.at),
            },
            invalid_utf8: e.invalid_utf8,
        })
    }

    /// Builds a doc from a decoded JSON object.
    pub fn from_json(v: serde_json::Value) -> Result<Doc, serde_json::Value> {
        match v {
            serde_json::Value::Object(map) => {
                let mut d = Doc::object();
                for (k, v) in map {
                    d.set(&k, Value::from_json(v));
                }
                Ok(d)
            }
            other => Err(other),
        }
    }

    fn name_bytes<'a>(&'a self, f: &'a Field) -> &'a [u8] {
        match &f.name {
            Name::Span(a, b) => &self.src[*a as usize..*b as usize],
            Name::Owned(s) => s.as_bytes(),
        }
    }

    fn name_of<'a>(&'a self, f: &'a Field) -> &'a str {
        // span names were borrowed from validated UTF-8 text
        std::str::from_utf8(self.name_bytes(f)).unwrap_or_default()
    }

    /// The index of the last field called `name` (the last duplicate wins).
    #[inline]
    fn index(&self, name: &str) -> Option<usize> {
        let name = name.as_bytes();
        (0..self.fields.len())
            .rev()
            .find(|&i| short_eq(self.name_bytes(&self.fields[i]), name))
    }

    /// The value of a top-level field, trying the index in `hint` first and updating it.
    /// Records of a stream usually share their layout, so this is one comparison.
    #[inline]
    pub fn get_hinted(&self, name: &str, hint: &mut u32) -> Option<&Value> {
        let h = *hint as usize;
        if !self.maybe_dups
            && let Some(f) = self.fields.get(h)
            && short_eq(self.name_bytes(f), name.as_bytes())
        {
            return Some(&f.value);
        }
        let i = self.index(name)?;
        *hint = i as u32;
        Some(&self.fields[i].value)
    }

    /// The value of a top-level field.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.index(name).map(|i| &self.fields[i].value)
    }

    /// Sets a top-level field (replacing it, or appending it).
    pub fn set(&mut self, name: &str, value: Value) {
        self.parsed = true;
        match self.index(name) {
            Some(i) => self.fields[i].value = value,
            None => self.fields.push(Field {
                name: Name::Owned(name.into()),
                value,
            }),
        }
    }

    /// Sets a top-level field whose name a step holds; appending costs no allocation.
    pub fn set_shared(&mut self, name: &Arc<str>, value: Value) {
        self.parsed = true;
        let found = self.fields.iter().rposition(|f| match &f.name {
            Name::Owned(n) if Arc::ptr_eq(n, name) => true,
            _ => short_eq(self.name_bytes(f), name.as_bytes()),
        });
        match found {
            Some(i) => self.fields[i].value = value,
            None => self.fields.push(Field {
                name: Name::Owned(name.clone()),
                value,
            }),
        }
    }

    /// Removes a top-level field; returns its value.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let i = self.index(name)?;
        let v = self.fields.remove(i).value;
        // drop shadowed duplicates too, so the field is really gone
        while let Some(j) = self.index(name) {
            self.fields.remove(j);
        }
        Some(v)
    }

    /// Renames a top-level field.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        match self.remove(from) {
            Some(v) => {
                self.set(to, v);
                true
            }
            None => false,
        }
    }

    /// Keeps only the listed fields, in the listed order (absent ones are skipped). Works in
    /// place: each wanted field is swapped to the front.
    pub fn select(&mut self, names: &[String]) {
        self.select_hinted(names, &mut [])
    }

    /// [`Doc::select`] with position hints (one per name; missing hints are fine).
    pub fn select_hinted(&mut self, names: &[String], hints: &mut [u32]) {
        let mut next = 0;
        for (k, n) in names.iter().enumerate() {
            let nb = n.as_bytes();
            let hinted = hints.get(k).map(|&h| h as usize).filter(|&h| {
                !self.maybe_dups && h >= next && h < self.fields.len() && short_eq(self.name_bytes(&self.fields[h]), nb)
            });
            let found = hinted.or_else(|| {
                (next..self.fields.len())
                    .rev()
                    .find(|&i| short_eq(self.name_bytes(&self.fields[i]), nb))
            });
            if let Some(i) = found {
                if let Some(h) = hints.get_mut(k) {
                    *h = i as u32;
                }
                self.fields.swap(next, i);
                next += 1;
            }
        }
        self.fields.truncate(next);
    }

    /// Field names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| self.name_of(f))
    }

    /// The raw JSON text of a `Raw` value.
    pub fn raw_text(&self, v: &Value) -> Option<&str> {
        match v {
            Value::Raw(a, b, _) => std::str::from_utf8(&self.src[*a as usize..*b as usize]).ok(),
            _ => None,
        }
    }

    /// The JSON type of a value.
    pub fn kind(&self, v: &Value) -> Kind {
        match v {
            Value::Raw(_, _, k) => *k,
            Value::Str(_) => Kind::String,
            Value::Int(_) => Kind::Integer,
            Value::Float(_) => Kind::Float,
            Value::Bool(_) => Kind::Bool,
            Value::Null => Kind::Null,
            Value::Json(j) => json_kind(j),
        }
    }

    /// A value as an integer, if it is one.
    pub fn as_i64(&self, v: &Value) -> Option<i64> {
        match v {
            Value::Int(i) => Some(*i),
            // JSON text of a float (`1.5`, `1e3`) or a non-number does not parse as i64
            Value::Raw(a, b, Kind::Integer) => parse_int(&self.src[*a as usize..*b as usize]),
            Value::Json(j) => j.as_i64(),
            _ => None,
        }
    }

    /// A value as a number, if it is one.
    pub fn as_f64(&self, v: &Value) -> Option<f64> {
        match v {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Raw(a, b, Kind::Integer) => match parse_int(&self.src[*a as usize..*b as usize]) {
                Some(i) => Some(i as f64),
                None => std::str::from_utf8(&self.src[*a as usize..*b as usize])
                    .ok()?
                    .parse()
                    .ok(),
            },
            Value::Raw(a, b, Kind::Float) => std::str::from_utf8(&self.src[*a as usize..*b as usize])
                .ok()?
                .parse()
                .ok(),
            Value::Json(j) => j.as_f64(),
            _ => None,
        }
    }

    /// A value as a string, if it is one.
    pub fn as_str<'a>(&'a self, v: &'a Value) -> Option<Cow<'a, str>> {
        match v {
            Value::Str(s) => Some(Cow::Borrowed(s)),
            Value::Raw(a, b, Kind::String) => {
                let t = &self.src[*a as usize..*b as usize];
                if t.len() < 2 {
                    return None;
                }
                let inner = &t[1..t.len() - 1];
                if memchr::memchr(b'\\', inner).is_none() {
                    std::str::from_utf8(inner).ok().map(Cow::Borrowed)
                } else {
                    serde_json::from_slice::<String>(t).ok().map(Cow::Owned)
                }
            }
            Value::Json(j) => j.as_str().map(Cow::Borrowed),
            _ => None,
        }
    }

    /// Writes a value as canonical JSON text (the form used for state keys).
    pub fn write_value(&self, v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Raw(a, b, _) => out.extend_from_slice(&self.src[*a as usize..*b as usize]),
            Value::Str(s) => write_json_str(s, out),
            Value::Int(i) => {
                let mut b = itoa::Buffer::new();
                out.extend_from_slice(b.format(*i).as_bytes());
            }
            Value::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
                None => out.extend_from_slice(b"null"),
            },
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Null => out.extend_from_slice(b"null"),
            Value::Json(j) => {
                let _ = serde_json::to_writer(&mut *out, j);
            }
        }
    }

    /// A value decoded into `serde_json::Value`.
    pub fn to_json_value(&self, v: &Value) -> serde_json::Value {
        match v {
            Value::Raw(a, b, _) => {
                serde_json::from_slice(&self.src[*a as usize..*b as usize]).unwrap_or(serde_json::Value::Null)
            }
            Value::Str(s) => serde_json::Value::String(s.to_string()),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            Value::Bool(b) => (*b).into(),
            Value::Null => serde_json::Value::Null,
            Value::Json(j) => (**j).clone(),
        }
    }

    /// The whole doc as a `serde_json::Value` (an object; raw text for an unparsed doc).
    pub fn to_json(&self) -> serde_json::Value {
        if !self.parsed {
            return serde_json::Value::String(String::from_utf8_lossy(&self.src).into_owned());
        }
        let mut m = serde_json::Map::with_capacity(self.fields.len());
        for f in &self.fields {
            m.insert(self.name_of(f).to_owned(), self.to_json_value(&f.value));
        }
        serde_json::Value::Object(m)
    }

    /// Looks up a dotted path (`user.address.city`); nested levels are decoded on demand.
    pub fn get_path(&self, path: &FieldPath) -> Option<PathValue<'_>> {
        let mut hint = 0;
        self.get_path_hinted(path, &mut hint)
    }

    /// [`Doc::get_path`] with a position hint for the top-level field (see
    /// [`Doc::get_hinted`]).
    pub fn get_path_hinted(&self, path: &FieldPath, hint: &mut u32) -> Option<PathValue<'_>> {
        let top = self.get_hinted(&path.segments[0], hint)?;
        if path.segments.len() == 1 {
            return Some(PathValue::Top(top));
        }
        let mut cur = self.to_json_value(top);
        for seg in &path.segments[1..] {
            cur = match cur {
                serde_json::Value::Object(mut m) => m.remove(seg)?,
                serde_json::Value::Array(mut a) => {
                    let i: usize = seg.parse().ok()?;
                    if i < a.len() {
                        a.swap_remove(i)
                    } else {
                        return None;
                    }
                }
                _ => return None,
            };
        }
        Some(PathValue::Nested(Value::Json(Box::new(cur))))
    }

    /// Writes the doc as one line of compact JSON (raw text for an unparsed doc).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        if !self.parsed {
            out.extend_from_slice(&self.src);
            return;
        }
        out.reserve(self.src.len() + 16 * self.fields.len());
        out.push(b'{');
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match &f.name {
                // a borrowed key has no escapes and no characters that need them
                Name::Span(a, b) => {
                    out.push(b'"');
                    out.extend_from_slice(&self.src[*a as usize..*b as usize]);
                    out.push(b'"');
                }
                Name::Owned(s) => write_json_str(s, out),
            }
            out.push(b':');
            self.write_value(&f.value, out);
        }
        out.push(b'}');
    }
}

thread_local! {
    /// Field vectors of dropped docs, reused by the next parses on this thread.
    static POOL: std::cell::RefCell<Vec<Vec<Field>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_pooled() -> Vec<Field> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(8))
}

impl Drop for Doc {
    fn drop(&mut self) {
        if self.fields.capacity() == 0 || self.fields.capacity() > 64 {
            return;
        }
        let mut v = std::mem::take(&mut self.fields);
        v.clear();
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < 256 {
                p.push(v);
            }
        });
    }
}

/// A value found by [`Doc::get_path`].
pub enum PathValue<'a> {
    /// A top-level value of the doc.
    Top(&'a Value),
    /// A decoded nested value.
    Nested(Value),
}

impl PathValue<'_> {
    /// The value.
    pub fn value(&self) -> &Value {
        match self {
            PathValue::Top(v) => v,
            PathValue::Nested(v) => v,
        }
    }
}

/// A dotted field path, split once at configuration time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    segments: Vec<String>,
    text: String,
}

impl FieldPath {
    /// Parses `a.b.c`; `None` for an empty path or an empty segment.
    pub fn parse(text: &str) -> Option<FieldPath> {
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return None;
        }
        Some(FieldPath {
            segments,
            text: text.to_owned(),
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for a top-level field.
    pub fn is_top(&self) -> bool {
        self.segments.len() == 1
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Value {
    /// Converts decoded JSON into a doc value.
    pub fn from_json(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s.into()),
            other => Value::Json(Box::new(other)),
        }
    }
}

fn json_kind(j: &serde_json::Value) -> Kind {
    match j {
        serde_json::Value::Null => Kind::Null,
        serde_json::Value::Bool(_) => Kind::Bool,
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Kind::Integer,
        serde_json::Value::Number(_) => Kind::Float,
        serde_json::Value::String(_) => Kind::String,
        serde_json::Value::Array(_) => Kind::Array,
        serde_json::Value::Object(_) => Kind::Object,
    }
}

/// Parses JSON integer text (`-?[0-9]+`) that fits in an i64, without UTF-8 checks.
#[inline]
fn parse_int(t: &[u8]) -> Option<i64> {
    let (neg, digits) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(d))?;
    }
    if neg { Some(v) } else { v.checked_neg() }
}

/// Byte equality tuned for short names.
#[inline]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // names are short: a plain loop beats a call to memcmp
    for i in 0..a.len() {
        if a[i] != b[i] {
            return false;
        }
    }
    true
}

/// Writes `s` as a JSON string.
#[inline]
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // serde_json's string writer escapes exactly what JSON requires
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Doc {
        Doc::parse_json(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn fields_are_read_lazily_and_written_verbatim() {
        let d = parse(r#" {"id": 123, "ts": 1.5e3, "customer": "c\"42", "ok": true, "n": null, "o": {"a":[1]}} "#);
        assert_eq!(d.as_i64(d.get("id").unwrap()), Some(123));
        assert_eq!(d.kind(d.get("ts").unwrap()), Kind::Float);
        assert_eq!(d.as_str(d.get("customer").unwrap()).unwrap(), "c\"42");
        assert_eq!(d.kind(d.get("ok").unwrap()), Kind::Bool);
        assert_eq!(d.kind(d.get("n").unwrap()), Kind::Null);
        assert_eq!(d.kind(d.get("o").unwrap()), Kind::Object);
        let mut out = Vec::new();
        d.write_json(&mut out);
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(std::str::from_utf8(d.source()).unwrap()).unwrap()
        );
    }

    #[test]
    fn strict_json_only() {
        for bad in [
            r#"{"id": 1"#,
            r#"{id: 1}"#,
            r#"{"id": 1}}"#,
            r#"[1, 2]"#,
            r#""text""#,
            r#"{"a": 01}"#,
            r#"{"a": NaN}"#,
            "",
            r#"{"a": 1} x"#,
        ] {
            assert!(
                Doc::parse_json(Bytes::copy_from_slice(bad.as_bytes())).is_err(),
                "accepted {bad:?}"
            );
        }
        let e = Doc::parse_json(Bytes::from_static(b"{\"a\": \"\xff\"}")).unwrap_err();
        assert!(e.invalid_utf8);
    }

    #[test]
    fn last_duplicate_key_wins_and_edits_work() {
        let mut d = parse(r#"{"a": 1, "b": 2, "a": 3}"#);
        assert_eq!(d.as_i64(d.get("a").unwrap()), Some(3));
        d.set("c", Value::Int(9));
        d.rename("b", "bee");
        d.remove("a");
        let mut out = Vec::new();
        d.write_json(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"c":9,"bee":2}"#);
        d.select(&["bee".to_string(), "zzz".to_string(), "c".to_string()]);
        assert_eq!(d.names().collect::<Vec<_>>(), vec!["bee", "c"]);
    }

    #[test]
    fn escaped_keys_and_big_numbers() {
        let d = parse(r#"{"a\u0062": 18446744073709551616, "i": -9223372036854775808}"#);
        assert_eq!(d.names().collect::<Vec<_>>(), vec!["ab", "i"]);
        assert_eq!(d.kind(d.get("ab").unwrap()), Kind::Float);
        assert_eq!(d.as_i64(d.get("i").unwrap()), Some(i64::MIN));
    }

    #[test]
    fn nested_paths() {
        let d = parse(r#"{"user": {"address": {"city": "Oslo"}, "tags": ["x", "y"]}}"#);
        let p = FieldPath::parse("user.address.city").unwrap();
        let v = d.get_path(&p).unwrap();
        assert_eq!(d.as_str(v.value()).unwrap(), "Oslo");
        let p = FieldPath::parse("user.tags.1").unwrap();
        assert_eq!(d.as_str(d.get_path(&p).unwrap().value()).unwrap(), "y");
        assert!(d.get_path(&FieldPath::parse("user.nope").unwrap()).is_none());
        assert!(FieldPath::parse("a..b").is_none());
    }
}

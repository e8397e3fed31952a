//! Reading the pipeline file's structs from its TOML tree: every problem at once, each named by
//! the line and the whole key path of its own key, in the file's words.
//!
//! [`from_tree`] runs serde over the parsed tree ([`DeValue`]s keep their byte spans), so an
//! error deep inside a `[[steps]]` entry knows its key (`steps[3].final.sink`) and its line.
//!
//! **What is collected.** Serde stops at the first error of a value, so the file is read in
//! rounds, each changing what the next one reads so that it gets past the last error: a key
//! or list element that failed is read as absent, and an absent required key as a
//! wildcard value that every reader accepts. So every unknown key, every value of the wrong type
//! or with a bad value and every missing key is reported, wherever it is, except: a missing
//! key that is only missing because it was reported wrong, or that an unknown key's "did you
//! mean" names; and the content of a table whose `type` is missing or wrong (what it should
//! hold is not known). A file with TOML syntax errors is not read (see [`crate::load`]).
//!
//! **Tagged tables.** An enum read from a table takes its variant from the table's `type` key
//! and its content from the other keys (`[[steps]] type = "parse" ...`). The enums of
//! [`crate::config`] are plain (externally tagged) serde enums for this reason: serde's own
//! `#[serde(tag = "type")]` buffers the table and loses every path and line inside it.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};
use toml::Spanned;
use toml::de::{DeInteger, DeTable, DeValue};

use crate::error::{KeyPath, Seg};

/// One problem found while reading the tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The key path (empty for the root).
    pub path: KeyPath,
    /// Byte range of the offending key or value in the text.
    pub span: Range<usize>,
    /// What is wrong, in the file's words.
    pub message: String,
    /// The key an unknown key probably meant.
    suggestion: Option<&'static str>,
    /// The key whose absence this problem is, and whether a wildcard may stand in for it.
    missing: Option<(&'static str, bool)>,
}

/// Reads a `T` from `tree`, or returns every problem, in file order (see the module doc).
pub fn from_tree<T: DeserializeOwned>(tree: Spanned<DeTable<'_>>) -> Result<T, Vec<Problem>> {
    let span = tree.span();
    let root = DeValue::Table(tree.into_inner());
    let mut rounds = Rounds::default();
    let mut problems: Vec<Problem> = Vec::new();
    loop {
        let node = Node {
            value: &root,
            span: span.clone(),
            path: KeyPath::default(),
            rounds: &rounds,
            tagged: false,
        };
        let e = match T::deserialize(node) {
            Ok(v) if problems.is_empty() => return Ok(v),
            Ok(_) => break,
            Err(e) => e,
        };
        let (path, span) = e.at.unwrap_or_default();
        if !rounds.absorb(Problem::new(e.kind, path, span), &mut problems) {
            break;
        }
    }
    problems.sort_by_key(|p| p.span.start);
    Err(problems)
}

/// What the rounds of [`from_tree`] read differently from the tree.
#[derive(Debug, Default)]
struct Rounds {
    /// Keys and list elements read as absent.
    skips: HashSet<KeyPath>,
    /// Absent keys read as a [`Wildcard`].
    fills: HashSet<KeyPath>,
}

impl Rounds {
    /// Records `p` in `problems` unless it only follows from earlier ones, and changes what
    /// the next round reads so that it gets past `p`. False when nothing can change: the
    /// reading is over.
    fn absorb(&mut self, p: Problem, problems: &mut Vec<Problem>) -> bool {
        if let Some(fill) = self.fills.iter().find(|f| p.path.starts_with(f)) {
            // a wildcard was refused (a check of its value): leave its table out
            return self.skip(fill.parent().unwrap_or_default());
        }
        if !p.repeats(&self.skips, problems) {
            problems.push(p.clone());
        }
        match p.missing {
            Some((key, true)) => self.fills.insert(p.path.k(key)),
            _ => self.skip(p.path),
        }
    }

    /// Reads `path` as absent from now on; false for the root or a path skipped already.
    fn skip(&mut self, path: KeyPath) -> bool {
        !path.0.is_empty() && self.skips.insert(path)
    }

    /// The keys of the table at `path` to read as wildcards.
    fn fills_of(&self, path: &KeyPath) -> Vec<String> {
        self.fills
            .iter()
            .filter(|f| f.parent().as_ref() == Some(path))
            .filter_map(|f| match f.0.last() {
                Some(Seg::Key(k)) => Some(k.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Problem {
    fn new(kind: Kind, path: KeyPath, span: Range<usize>) -> Problem {
        let (message, suggestion) = kind.describe();
        Problem {
            path,
            span,
            message,
            suggestion,
            missing: match kind {
                Kind::Missing { key, fillable } => Some((key, fillable)),
                _ => None,
            },
        }
    }

    /// Whether this problem only follows from earlier ones: a missing key that was there but
    /// wrong (and skipped), or that an unknown key of the same table was suggested to be.
    fn repeats(&self, skips: &HashSet<KeyPath>, earlier: &[Problem]) -> bool {
        let Some((key, _)) = self.missing else {
            return false;
        };
        skips.contains(&self.path.k(key))
            || earlier
                .iter()
                .any(|p| p.suggestion == Some(key) && p.path.parent().as_ref() == Some(&self.path))
    }
}

impl Kind {
    /// The message, and the key an unknown key probably meant.
    fn describe(&self) -> (String, Option<&'static str>) {
        match self {
            Kind::Message(m) => (m.clone(), None),
            Kind::Missing { key, .. } => (format!("missing key `{key}`"), None),
            Kind::UnknownKey { key, allowed } => {
                let near = nearest(key, allowed);
                let m = match (near, allowed.is_empty()) {
                    (Some(n), _) => format!("unknown key `{key}`; did you mean `{n}`?"),
                    (None, true) => format!("unknown key `{key}`; this table takes no keys"),
                    (None, false) => format!("unknown key `{key}`; allowed keys: {}", ticked(allowed)),
                };
                (m, near)
            }
        }
    }
}

/// The nearest of `allowed` to a mistyped `key`, if near enough to be a typo.
fn nearest(key: &str, allowed: &[&'static str]) -> Option<&'static str> {
    let limit = (key.chars().count() / 3).clamp(1, 3);
    allowed
        .iter()
        .map(|a| (edit_distance(key, a), *a))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance, `-` and `_` counted equal.
fn edit_distance(a: &str, b: &str) -> usize {
    let norm = |c: char| if c == '-' { '_' } else { c.to_ascii_lowercase() };
    let b: Vec<char> = b.chars().map(norm).collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().map(norm).enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// `` `a`, `b`, `c` ``.
fn ticked(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// What went wrong, before it is worded.
#[derive(Debug)]
enum Kind {
    /// A key the table does not take; `allowed` are the keys it takes.
    UnknownKey { key: String, allowed: Vec<&'static str> },
    /// A required key is absent; `fillable` unless it is the `type` of a tagged table.
    Missing { key: &'static str, fillable: bool },
    /// Anything else, already worded.
    Message(String),
}

/// The serde error of [`from_tree`]: a problem and, once known, where it is.
#[derive(Debug, thiserror::Error)]
#[error("{}", kind.describe().0)]
pub struct DeError {
    kind: Kind,
    at: Option<(KeyPath, Range<usize>)>,
}

impl DeError {
    fn message(m: String) -> DeError {
        DeError {
            kind: Kind::Message(m),
            at: None,
        }
    }

    /// This error, placed at `path` and `span` unless a deeper node placed it already.
    fn at(mut self, path: &KeyPath, span: &Range<usize>) -> DeError {
        if self.at.is_none() {
            self.at = Some((path.clone(), span.clone()));
        }
        self
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::message(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::message(format!("expected {}, found {}", words(&exp.to_string()), found(&unexp)))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::message(format!(
            "expected {}, found {}",
            range_words(&exp.to_string(), &unexp),
            found(&unexp)
        ))
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        DeError::message(format!("expected {}, found {len} values", words(&exp.to_string())))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::message(format!("expected one of {}, found {variant:?}", ticked(expected)))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            kind: Kind::UnknownKey {
                key: field.to_owned(),
                allowed: expected.to_vec(),
            },
            at: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            kind: Kind::Missing {
                key: field,
                fillable: true,
            },
            at: None,
        }
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::message(format!("`{field}` is given twice"))
    }
}

/// What a serde visitor expects (`u32`, `a sequence`, `struct X`), in the file's words.
fn words(expected: &str) -> String {
    let w = match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => {
            "a whole number"
        }
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" => "a string",
        "a character" | "a char" => "a single character",
        "a sequence" => "a list",
        "a map" => "a table",
        "any valid TOML value" => "a value",
        e if e.starts_with("struct ") => "a table",
        e if e.starts_with("enum ") || e.contains("identifier") => "a name",
        e => e,
    };
    w.to_owned()
}

/// Like [`words`], with the range of a whole number type: for a value `unexp` out of range.
fn range_words(expected: &str, unexp: &Unexpected<'_>) -> String {
    let max = match expected {
        "u8" => u64::from(u8::MAX),
        "u16" => u64::from(u16::MAX),
        "u32" => u64::from(u32::MAX),
        "u64" | "usize" => u64::MAX,
        e => return words(e),
    };
    match unexp {
        Unexpected::Signed(n) if *n < 0 => "a whole number of 0 or more".to_owned(),
        _ => format!("a whole number up to {max}"),
    }
}

/// A value serde did not expect, as the file shows it.
fn found(unexp: &Unexpected<'_>) -> String {
    match unexp {
        Unexpected::Bool(b) => b.to_string(),
        Unexpected::Unsigned(n) => n.to_string(),
        Unexpected::Signed(n) => n.to_string(),
        Unexpected::Float(f) => format!("{f:?}"),
        Unexpected::Char(c) => format!("{:?}", c.to_string()),
        Unexpected::Str(s) => format!("{s:?}"),
        Unexpected::Map => "a table".to_owned(),
        Unexpected::Seq => "a list".to_owned(),
        _ => "another kind of value".to_owned(),
    }
}

/// A TOML value, as an error shows what was found.
fn found_value(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("{:?}", s.as_ref()),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "a list".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// One value of the tree, with its path and span: a serde deserializer.
#[derive(Clone)]
struct Node<'a, 'i> {
    value: &'a DeValue<'i>,
    span: Range<usize>,
    path: KeyPath,
    rounds: &'a Rounds,
    /// The content of a tagged table: its `type` key named the variant and is no field.
    tagged: bool,
}

impl<'a, 'i> Node<'a, 'i> {
    fn child(&self, v: &'a Spanned<DeValue<'i>>, path: KeyPath) -> Node<'a, 'i> {
        Node {
            value: v.get_ref(),
            span: v.span(),
            path,
            rounds: self.rounds,
            tagged: false,
        }
    }

    /// Places an error at this node unless it is placed already.
    fn place<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|e| e.at(&self.path, &self.span))
    }

    /// The `type` of a table read as an enum, unless absent or skipped: its value and span.
    fn tag(&self) -> Option<&'a Spanned<DeValue<'i>>> {
        self.value
            .get("type")
            .filter(|_| !self.rounds.skips.contains(&self.path.k("type")))
    }
}

/// Visits a TOML integer as `i64`, or `u64` when it is larger.
fn integer<'de, V: Visitor<'de>>(i: &DeInteger<'_>, visitor: V) -> Result<V::Value, DeError> {
    if let Ok(n) = i64::from_str_radix(i.as_str(), i.radix()) {
        visitor.visit_i64(n)
    } else if let Ok(n) = u64::from_str_radix(i.as_str(), i.radix()) {
        visitor.visit_u64(n)
    } else {
        Err(DeError::message(format!("{i} is too large a number")))
    }
}

/// "expected one of `a`, `b`, found ...".
fn not_one_of(variants: &[&str], found: &str) -> DeError {
    DeError::message(format!("expected one of {}, found {found}", ticked(variants)))
}

impl<'de> de::Deserializer<'de> for Node<'_, '_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match self.value {
            DeValue::String(s) => visitor.visit_str(s),
            DeValue::Integer(i) => integer(i, visitor),
            DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(x) => visitor.visit_f64(x),
                Err(_) => Err(DeError::message(format!("{f} is not a number"))),
            },
            DeValue::Boolean(b) => visitor.visit_bool(*b),
            DeValue::Datetime(d) => visitor.visit_string(d.to_string()),
            DeValue::Array(a) => visitor.visit_seq(Items {
                parent: self.clone(),
                iter: a.iter().enumerate(),
            }),
            DeValue::Table(t) => visitor.visit_map(Entries {
                parent: self.clone(),
                iter: t.iter(),
                fills: self.rounds.fills_of(&self.path).into_iter(),
                value: None,
            }),
        };
        self.place(r)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let at = self.clone();
        at.place(visitor.visit_some(self))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, DeError> {
        let at = self.clone();
        at.place(visitor.visit_newtype_struct(self))
    }

    /// A string names a variant; a table names it with its `type` key (see the module doc).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let r = match (self.value, self.tag()) {
            (DeValue::String(s), _) => visitor.visit_enum(Variant {
                name: s,
                name_at: (self.path.clone(), self.span.clone()),
                content: None,
                variants,
            }),
            (DeValue::Table(_), None) => Err(DeError {
                kind: Kind::Missing {
                    key: "type",
                    fillable: false,
                },
                at: None,
            }),
            (DeValue::Table(_), Some(ty)) => match ty.get_ref().as_str() {
                None => Err(not_one_of(variants, &found_value(ty.get_ref())).at(&self.path.k("type"), &ty.span())),
                Some(name) => visitor.visit_enum(Variant {
                    name,
                    name_at: (self.path.k("type"), ty.span()),
                    content: Some(Node {
                        tagged: true,
                        ..self.clone()
                    }),
                    variants,
                }),
            },
            (other, _) => Err(not_one_of(variants, &found_value(other))),
        };
        self.place(r)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// The entries of a table minus skipped keys (and `type` in a tagged table), then its
/// filled keys.
struct Entries<'a, 'i> {
    parent: Node<'a, 'i>,
    iter: toml::map::Iter<'a, Spanned<std::borrow::Cow<'i, str>>, Spanned<DeValue<'i>>>,
    fills: std::vec::IntoIter<String>,
    value: Option<Result<Node<'a, 'i>, KeyPath>>,
}

impl<'de> de::MapAccess<'de> for Entries<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        for (k, v) in self.iter.by_ref() {
            let key: &str = k.get_ref();
            let path = self.parent.path.k(key);
            if (self.parent.tagged && key == "type") || self.parent.rounds.skips.contains(&path) {
                continue;
            }
            let r = seed.deserialize(key.into_deserializer()).map_err(|mut e: DeError| {
                if let (Kind::UnknownKey { allowed, .. }, true) = (&mut e.kind, self.parent.tagged) {
                    allowed.insert(0, "type");
                }
                e.at(&path, &k.span())
            });
            self.value = Some(Ok(self.parent.child(v, path)));
            return r.map(Some);
        }
        let Some(key) = self.fills.next() else {
            return Ok(None);
        };
        let path = self.parent.path.k(&key);
        let r = seed.deserialize(key.as_str().into_deserializer());
        self.value = Some(Err(path));
        self.parent.place(r).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(Ok(node)) => seed.deserialize(node),
            Some(Err(filled)) => seed.deserialize(Wildcard).map_err(|e| e.at(&filled, &self.parent.span)),
            None => Err(DeError::message("a value was read before its key".to_owned())),
        }
    }
}

/// The elements of a list, minus skipped ones; each keeps its index in the file.
struct Items<'a, 'i> {
    parent: Node<'a, 'i>,
    iter: std::iter::Enumerate<std::slice::Iter<'a, Spanned<DeValue<'i>>>>,
}

impl<'de> de::SeqAccess<'de> for Items<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        for (i, v) in self.iter.by_ref() {
            let path = self.parent.path.i(i);
            if !self.parent.rounds.skips.contains(&path) {
                return seed.deserialize(self.parent.child(v, path)).map(Some);
            }
        }
        Ok(None)
    }
}

/// An enum's variant: its name and, for a tagged table, the table as its content.
struct Variant<'a, 'i> {
    name: &'a str,
    name_at: (KeyPath, Range<usize>),
    content: Option<Node<'a, 'i>>,
    variants: &'static [&'static str],
}

impl<'de, 'a, 'i> de::EnumAccess<'de> for Variant<'a, 'i> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), DeError> {
        let v = seed
            .deserialize(self.name.into_deserializer())
            .map_err(|e: DeError| e.at(&self.name_at.0, &self.name_at.1))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, '_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.content {
            None => Ok(()),
            Some(_) => Err(not_one_of(self.variants, "a table")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        match self.content {
            Some(node) => seed.deserialize(node),
            None => Err(DeError::message(format!(
                "expected a table with `type = {:?}`, found {:?}",
                self.name, self.name
            ))),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, DeError> {
        Err(DeError::message("expected a table".to_owned()))
    }

    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], visitor: V) -> Result<V::Value, DeError> {
        match self.content {
            Some(node) => de::Deserializer::deserialize_any(node, visitor),
            None => Err(DeError::message("expected a table".to_owned())),
        }
    }
}

/// `fn deserialize_x(self, visitor) { visitor.visit_y(value) }` for each `x => visit_y(value)`.
macro_rules! wildcard_scalars {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            visitor.$visit($($value)?)
        }
    )*};
}

/// The value read for an absent required key, so that reading goes on to the table's next
/// missing key. Every reader of [`crate::config`] accepts it: `0`, `false`, `"0s"` (a string
/// that is also a duration), empty lists and maps, a struct whose every field is a wildcard,
/// the first variant of an enum. Its value is never used: a file with a missing key is refused.
struct Wildcard;

impl<'de> de::Deserializer<'de> for Wildcard {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str("0s")
    }
    wildcard_scalars! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(0), deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0), deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u64(0), deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0), deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0), deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('0'), deserialize_unit => visit_unit()
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_none()
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_seq(WildFields(&[]))
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(WildFields(&[]))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_map(WildFields(fields))
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_enum(WildVariant(variants.first().copied().unwrap_or_default()))
    }

    serde::forward_to_deserialize_any! {
        i128 u128 str string bytes byte_buf unit_struct newtype_struct tuple tuple_struct identifier ignored_any
    }
}

/// The entries of a wildcard struct: each field, a wildcard (no entries for a map or list).
struct WildFields(&'static [&'static str]);

impl<'de> de::MapAccess<'de> for WildFields {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some((first, rest)) = self.0.split_first() else {
            return Ok(None);
        };
        self.0 = rest;
        seed.deserialize(first.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        seed.deserialize(Wildcard)
    }
}

impl<'de> de::SeqAccess<'de> for WildFields {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, _: T) -> Result<Option<T::Value>, DeError> {
        Ok(None)
    }
}

/// The first variant of an enum, its content a wildcard.
struct WildVariant(&'static str);

impl<'de> de::EnumAccess<'de> for WildVariant {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), DeError> {
        Ok((seed.deserialize(self.0.into_deserializer())?, self))
    }
}

impl<'de> de::VariantAccess<'de> for WildVariant {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(Wildcard)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_seq(WildFields(&[]))
    }
    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(WildFields(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_keys_are_suggested() {
        let allowed = ["lateness", "late", "idle_timeout", "name"];
        assert_eq!(nearest("latenes", &allowed), Some("lateness"));
        assert_eq!(nearest("idle-timeout", &allowed), Some("idle_timeout"));
        assert_eq!(nearest("nme", &allowed), Some("name"));
        assert_eq!(nearest("colour", &allowed), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn rust_types_become_words() {
        assert_eq!(words("usize"), "a whole number");
        assert_eq!(words("struct ParseConfig"), "a table");
        assert_eq!(range_words("u8", &Unexpected::Signed(300)), "a whole number up to 255");
        assert_eq!(
            range_words("usize", &Unexpected::Signed(-1)),
            "a whole number of 0 or more"
        );
        assert_eq!(found(&Unexpected::Str("x")), "\"x\"");
    }
}

//! `parse`: record text to fields.

use std::sync::Arc;

use bytes::Bytes;
use keel::failure::reason;
use keel::{Context, Failure};

use keel_connectors::file::{CsvDialect, CsvFields, CsvParser};

use super::{DocStep, Next};
use crate::doc::{Doc, Value};

/// Parses a JSON object per record. Text that is not strict JSON, or not an object, fails
/// with `malformed`; text that is not UTF-8 with `invalid_utf8`.
#[derive(Clone, Default)]
pub struct ParseJson;

impl DocStep for ParseJson {
    fn apply(&mut self, doc: &mut Doc, _cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        match doc.reparse_json() {
            Ok(()) => Ok(Next::Keep),
            Err(e) if e.invalid_utf8 => Err(Failure::permanent(reason::INVALID_UTF8, e.message)),
            Err(e) => Err(Failure::permanent(reason::MALFORMED, e.message)),
        }
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

/// What an empty CSV field becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyFields {
    /// Both `""` and nothing are the empty string (the default without `infer_types`).
    #[default]
    String,
    /// Both are null (the default with `infer_types`).
    Null,
    /// `""` is the empty string, nothing is null.
    NullUnlessQuoted,
}

/// Parses a CSV record per record (RFC 4180, with `csv-core`: quoted fields may hold
/// delimiters, quotes as `""` and line breaks) into fields named by the file's header
/// record (or by the configured columns). A record with more or fewer fields than the
/// header fails with `column_count`; a quoted field that is not closed, or text holding
/// two records, with `malformed`; text that is not UTF-8 with `invalid_utf8`.
#[derive(Clone)]
pub struct ParseCsv {
    parser: CsvParser,
    infer_types: bool,
    empty: EmptyFields,
    columns: Option<Arc<Vec<String>>>,
    cached: Option<(Bytes, Arc<Vec<String>>)>,
    fields: CsvFields,
}

impl ParseCsv {
    /// A parser of `dialect`; `columns` replaces the header record when given.
    pub fn new(dialect: CsvDialect, infer_types: bool, empty: EmptyFields, columns: Option<Vec<String>>) -> Self {
        ParseCsv {
            parser: CsvParser::new(&dialect),
            infer_types,
            empty,
            columns: columns.map(Arc::new),
            cached: None,
            fields: CsvFields::default(),
        }
    }

    fn header(&mut self, cx: &Context<'_>) -> Result<Arc<Vec<String>>, Failure> {
        if let Some(c) = &self.columns {
            return Ok(c.clone());
        }
        let raw = cx
            .record()
            .and_then(|r| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == "csv.header")
                    .map(|(_, v)| v.clone())
            })
            .ok_or_else(|| {
                Failure::fatal(
                    "config",
                    "parse csv: the source gives no header line; read CSV files or set `columns`",
                )
            })?;
        if let Some((b, cols)) = &self.cached
            && *b == raw
        {
            return Ok(cols.clone());
        }
        let mut fields = CsvFields::default();
        self.parser
            .parse(&raw, &mut fields)
            .map_err(|e| Failure::permanent(reason::MALFORMED, format!("CSV header: {e}")))?;
        let mut cols = Vec::with_capacity(fields.len());
        for i in 0..fields.len() {
            let (b, _) = fields.get(i).unwrap_or_default();
            let name = std::str::from_utf8(b)
                .map_err(|_| Failure::permanent(reason::INVALID_UTF8, "CSV header is not UTF-8"))?;
            cols.push(name.to_owned());
        }
        let cols = Arc::new(cols);
        self.cached = Some((raw, cols.clone()));
        Ok(cols)
    }
}

impl DocStep for ParseCsv {
    fn apply(&mut self, doc: &mut Doc, cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        let header = self.header(cx)?;
        let fields = &mut self.fields;
        self.parser
            .parse(doc.source(), fields)
            .map_err(|e| Failure::permanent(reason::MALFORMED, format!("CSV record: {e}")))?;
        if fields.len() != header.len() {
            return Err(Failure::permanent(
                reason::COLUMN_COUNT,
                format!(
                    "CSV record has {} fields but the header has {}",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        let empty = match self.empty {
            EmptyFields::String if self.infer_types => EmptyFields::Null,
            e => e,
        };
        let mut d = Doc::object();
        for (i, name) in header.iter().enumerate() {
            let (bytes, quoted) = fields.get(i).unwrap_or_default();
            let cell = std::str::from_utf8(bytes).map_err(|e| {
                Failure::permanent(reason::INVALID_UTF8, format!("CSV field `{name}` is not UTF-8: {e}"))
            })?;
            let v = if cell.is_empty() {
                match (empty, quoted) {
                    (EmptyFields::Null, _) | (EmptyFields::NullUnlessQuoted, false) => Value::Null,
                    _ => Value::Str("".into()),
                }
            } else if self.infer_types {
                infer(cell)
            } else {
                Value::Str(cell.into())
            };
            d.set(name, v);
        }
        *doc = d;
        Ok(Next::Keep)
    }
    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

fn infer(cell: &str) -> Value {
    let Some(&first) = cell.as_bytes().first() else {
        return Value::Null;
    };
    let numeric = first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.');
    if numeric && let Ok(i) = cell.parse::<i64>() {
        return Value::Int(i);
    }
    if numeric
        && let Ok(f) = cell.parse::<f64>()
        && f.is_finite()
        && cell
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return Value::Float(f);
    }
    match cell {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::Str(cell.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference() {
        assert_eq!(infer("12"), Value::Int(12));
        assert_eq!(infer("-1.5"), Value::Float(-1.5));
        assert_eq!(infer("true"), Value::Bool(true));
        assert_eq!(infer(""), Value::Null);
        assert_eq!(infer("inf"), Value::Str("inf".into()));
        assert_eq!(infer("12a"), Value::Str("12a".into()));
    }
}

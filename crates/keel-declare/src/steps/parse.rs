//! `parse`: record text to fields.

use std::sync::Arc;

use bytes::Bytes;
use keel::failure::reason;
use keel::{Context, Failure};

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

/// Parses a CSV row per record into fields named by the file's header line (or by the
/// configured columns).
#[derive(Clone)]
pub struct ParseCsv {
    delimiter: u8,
    infer_types: bool,
    columns: Option<Arc<Vec<String>>>,
    cached: Option<(Bytes, Arc<Vec<String>>)>,
    cells: Vec<String>,
}

impl ParseCsv {
    /// A parser; `columns` replaces the header line when given.
    pub fn new(delimiter: u8, infer_types: bool, columns: Option<Vec<String>>) -> Self {
        ParseCsv {
            delimiter,
            infer_types,
            columns: columns.map(Arc::new),
            cached: None,
            cells: Vec::new(),
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
        let text = std::str::from_utf8(&raw)
            .map_err(|_| Failure::permanent(reason::INVALID_UTF8, "CSV header is not UTF-8"))?;
        let mut cells = Vec::new();
        split_csv(text, self.delimiter, &mut cells)
            .map_err(|m| Failure::permanent(reason::MALFORMED, format!("CSV header: {m}")))?;
        let cols = Arc::new(cells);
        self.cached = Some((raw, cols.clone()));
        Ok(cols)
    }
}

impl DocStep for ParseCsv {
    fn apply(&mut self, doc: &mut Doc, cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        let header = self.header(cx)?;
        let text = std::str::from_utf8(doc.source())
            .map_err(|e| Failure::permanent(reason::INVALID_UTF8, format!("CSV row is not UTF-8: {e}")))?;
        split_csv(text, self.delimiter, &mut self.cells).map_err(|m| Failure::permanent(reason::MALFORMED, m))?;
        if self.cells.len() != header.len() {
            return Err(Failure::permanent(
                reason::MALFORMED,
                format!(
                    "CSV row has {} fields but the header has {}",
                    self.cells.len(),
                    header.len()
                ),
            ));
        }
        let mut d = Doc::object();
        for (name, cell) in header.iter().zip(self.cells.drain(..)) {
            let v = if self.infer_types {
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

fn infer(cell: String) -> Value {
    if cell.is_empty() {
        return Value::Null;
    }
    if let Ok(i) = cell.parse::<i64>() {
        return Value::Int(i);
    }
    if let Ok(f) = cell.parse::<f64>()
        && f.is_finite()
        && cell
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return Value::Float(f);
    }
    match cell.as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::Str(cell.into()),
    }
}

/// Splits one CSV row (RFC 4180: quoted fields, `""` for a quote inside quotes).
pub fn split_csv(line: &str, delimiter: u8, cells: &mut Vec<String>) -> Result<(), String> {
    cells.clear();
    let b = line.as_bytes();
    let mut i = 0;
    loop {
        let mut cell = String::new();
        if b.get(i) == Some(&b'"') {
            i += 1;
            let mut start = i;
            loop {
                match b[i..].iter().position(|&c| c == b'"') {
                    None => return Err(format!("unterminated quoted field at byte {}", start - 1)),
                    Some(q) => {
                        cell.push_str(&line[start..i + q]);
                        i += q + 1;
                        if b.get(i) == Some(&b'"') {
                            cell.push('"');
                            i += 1;
                            start = i;
                        } else {
                            break;
                        }
                    }
                }
            }
            match b.get(i) {
                None => {
                    cells.push(cell);
                    return Ok(());
                }
                Some(&c) if c == delimiter => i += 1,
                Some(_) => {
                    return Err(format!("unexpected character after a quoted field at byte {i}"));
                }
            }
            cells.push(cell);
        } else {
            let end = b[i..].iter().position(|&c| c == delimiter).map(|p| i + p);
            let stop = end.unwrap_or(b.len());
            let raw = &line[i..stop];
            if raw.contains('"') {
                return Err(format!("a quote inside an unquoted field at byte {i}"));
            }
            cell.push_str(raw);
            cells.push(cell);
            match end {
                Some(e) => i = e + 1,
                None => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows() {
        let mut c = Vec::new();
        split_csv(r#"1,"a, ""b""",,x"#, b',', &mut c).unwrap();
        assert_eq!(c, vec!["1", "a, \"b\"", "", "x"]);
        split_csv("", b',', &mut c).unwrap();
        assert_eq!(c, vec![""]);
        split_csv("a;b;", b';', &mut c).unwrap();
        assert_eq!(c, vec!["a", "b", ""]);
        assert!(split_csv(r#""open"#, b',', &mut c).is_err());
        assert!(split_csv(r#"a"b"#, b',', &mut c).is_err());
        assert!(split_csv(r#""a"b"#, b',', &mut c).is_err());
    }

    #[test]
    fn inference() {
        assert_eq!(infer("12".into()), Value::Int(12));
        assert_eq!(infer("-1.5".into()), Value::Float(-1.5));
        assert_eq!(infer("true".into()), Value::Bool(true));
        assert_eq!(infer("".into()), Value::Null);
        assert_eq!(infer("inf".into()), Value::Str("inf".into()));
        assert_eq!(infer("12a".into()), Value::Str("12a".into()));
    }
}

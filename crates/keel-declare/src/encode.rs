//! Writing docs to sinks: JSON lines, or CSV rows with fixed columns.

use std::sync::Arc;

use keel::{Encoder, Failure};

use crate::doc::{Doc, Kind, Value};

/// How a sink wants docs encoded.
#[derive(Clone, Debug)]
pub enum DocEncoder {
    /// One compact JSON object per record.
    Json,
    /// One CSV record per record, with these columns.
    Csv(CsvOut),
    /// One compact JSON object per record, keyed by the value of this top-level field (its
    /// text for a string, its JSON otherwise; no key when the field is missing or null).
    JsonKeyed(Arc<str>),
}

/// A CSV output: its columns and whether formulas are neutralised.
#[derive(Clone, Debug)]
pub struct CsvOut {
    /// The columns, in order.
    pub columns: Arc<[String]>,
    /// Text fields starting with `=`, `+`, `-`, `@`, tab or CR get a leading `'`.
    pub neutralize_formulas: bool,
}

impl Encoder<Doc> for DocEncoder {
    fn encode(&mut self, doc: &Doc, out: &mut Vec<u8>) -> Result<(), Failure> {
        match self {
            DocEncoder::Json | DocEncoder::JsonKeyed(_) => doc.write_json(out),
            DocEncoder::Csv(csv) => {
                let start = out.len();
                for (i, c) in csv.columns.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if let Some(v) = doc.get(c) {
                        write_csv_cell(doc, v, csv.neutralize_formulas, out);
                    }
                }
                if out.len() == start {
                    // an empty line is no record: one empty column is written `""`
                    out.extend_from_slice(b"\"\"");
                }
            }
        }
        Ok(())
    }

    fn key(&mut self, doc: &Doc, out: &mut Vec<u8>) -> bool {
        let DocEncoder::JsonKeyed(field) = self else {
            return false;
        };
        let Some(v) = doc.get(field) else {
            return false;
        };
        match doc.kind(v) {
            Kind::Null => false,
            Kind::String => {
                out.extend_from_slice(doc.as_str(v).unwrap_or_default().as_bytes());
                true
            }
            _ => {
                doc.write_value(v, out);
                true
            }
        }
    }
}

/// Writes one field as RFC 4180 wants: quoted when it holds a comma, a quote, CR or LF
/// (quotes doubled), and when it is the empty string (so that it reads back as `""`, not as
/// a missing value); a null is written as nothing.
fn write_csv_cell(doc: &Doc, v: &Value, neutralize_formulas: bool, out: &mut Vec<u8>) {
    let kind = doc.kind(v);
    let text = match kind {
        Kind::Null => return,
        Kind::String => doc.as_str(v).map(|s| s.into_owned()).unwrap_or_default(),
        _ => {
            let mut b = Vec::new();
            doc.write_value(v, &mut b);
            String::from_utf8_lossy(&b).into_owned()
        }
    };
    let formula = neutralize_formulas && kind == Kind::String && text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    write_csv_text(&text, formula, out);
}

fn write_csv_text(text: &str, prefix_quote: bool, out: &mut Vec<u8>) {
    if text.is_empty() || text.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        if prefix_quote {
            out.push(b'\'');
        }
        for part in text.split('"').enumerate() {
            if part.0 > 0 {
                out.extend_from_slice(b"\"\"");
            }
            out.extend_from_slice(part.1.as_bytes());
        }
        out.push(b'"');
    } else {
        if prefix_quote {
            out.push(b'\'');
        }
        out.extend_from_slice(text.as_bytes());
    }
}

/// The CSV header line for `columns`.
pub fn csv_header(columns: &[String]) -> String {
    let mut out = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_csv_text(c, false, &mut out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn csv_cells_are_quoted_when_needed() {
        let d = Doc::parse_json(Bytes::from_static(
            br#"{"a": "x,y", "b": 2, "c": null, "d": "say \"hi\""}"#,
        ))
        .unwrap();
        let mut e = csv(&["a", "b", "c", "d", "missing"], false);
        let mut out = Vec::new();
        e.encode(&d, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#""x,y",2,,"say ""hi""","#);
    }

    fn csv(cols: &[&str], neutralize_formulas: bool) -> DocEncoder {
        DocEncoder::Csv(CsvOut {
            columns: cols.iter().map(|c| c.to_string()).collect::<Vec<_>>().into(),
            neutralize_formulas,
        })
    }

    #[test]
    fn formulas_are_neutralised_in_text_only_and_empty_strings_quoted() {
        let d = Doc::parse_json(Bytes::from_static(
            br#"{"a": "=SUM(A1)", "b": -3, "c": "@x,y", "d": "", "e": "plain", "f": "-1"}"#,
        ))
        .unwrap();
        let mut out = Vec::new();
        csv(&["a", "b", "c", "d", "e", "f"], true).encode(&d, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"'=SUM(A1),-3,"'@x,y","",plain,'-1"#);
        let mut out = Vec::new();
        csv(&["a", "d"], false).encode(&d, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"=SUM(A1),"""#);
        let mut out = Vec::new();
        csv(&["missing"], false).encode(&d, &mut out).unwrap();
        assert_eq!(out, b"\"\"");
        assert_eq!(csv_header(&["a\nb".into(), "c".into()]), "\"a\nb\",c");
    }
}

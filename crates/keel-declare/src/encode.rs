//! Writing docs to sinks: JSON lines, or CSV rows with fixed columns.

use std::sync::Arc;

use keel::{Encoder, Failure};

use crate::doc::{Doc, Kind, Value};

/// How a sink wants docs encoded.
#[derive(Clone, Debug)]
pub enum DocEncoder {
    /// One compact JSON object per record.
    Json,
    /// One CSV row per record, with these columns.
    Csv(Arc<[String]>),
}

impl Encoder<Doc> for DocEncoder {
    fn encode(&mut self, doc: &Doc, out: &mut Vec<u8>) -> Result<(), Failure> {
        match self {
            DocEncoder::Json => doc.write_json(out),
            DocEncoder::Csv(cols) => {
                for (i, c) in cols.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if let Some(v) = doc.get(c) {
                        write_csv_cell(doc, v, out);
                    }
                }
            }
        }
        Ok(())
    }
}

fn write_csv_cell(doc: &Doc, v: &Value, out: &mut Vec<u8>) {
    let text = match doc.kind(v) {
        Kind::Null => return,
        Kind::String => doc.as_str(v).map(|s| s.into_owned()).unwrap_or_default(),
        _ => {
            let mut b = Vec::new();
            doc.write_value(v, &mut b);
            String::from_utf8_lossy(&b).into_owned()
        }
    };
    if text.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(text.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

/// The CSV header line for `columns`.
pub fn csv_header(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| {
            if c.contains([',', '"']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
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
        let mut e = DocEncoder::Csv(vec!["a".into(), "b".into(), "c".into(), "d".into(), "missing".into()].into());
        let mut out = Vec::new();
        e.encode(&d, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#""x,y",2,,"say ""hi""","#);
    }
}

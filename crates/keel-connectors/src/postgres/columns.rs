//! The table's columns as the catalog gives them, and the check of each record against
//! them.

use keel::Failure;
use keel::failure::reason;
use serde_json::Value;

/// What values a column takes, by its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `smallint`, `integer`, `bigint`: an integer in range (a number, or text of one).
    Integer { min: i64, max: i64 },
    /// `real`, `double precision`, `numeric`: a number (or text of one).
    Number,
    /// `boolean`.
    Bool,
    /// Text types: any scalar.
    Text,
    /// `json`, `jsonb`: anything.
    Json,
    /// `uuid`: text of a UUID.
    Uuid,
    /// `timestamp`, `timestamptz`, `date`, `time`: text (the server parses it).
    Time,
    /// Anything else: the server decides.
    Other,
}

impl Kind {
    /// The kind of a type as `format_type` names it.
    pub(crate) fn of(ty: &str) -> Kind {
        match ty {
            "smallint" => Kind::Integer {
                min: i16::MIN.into(),
                max: i16::MAX.into(),
            },
            "integer" => Kind::Integer {
                min: i32::MIN.into(),
                max: i32::MAX.into(),
            },
            "bigint" => Kind::Integer {
                min: i64::MIN,
                max: i64::MAX,
            },
            "real" | "double precision" => Kind::Number,
            t if t.starts_with("numeric") => Kind::Number,
            "boolean" => Kind::Bool,
            "text" | "name" | "citext" => Kind::Text,
            t if t.starts_with("character") => Kind::Text,
            "json" | "jsonb" => Kind::Json,
            "uuid" => Kind::Uuid,
            "date" => Kind::Time,
            t if t.starts_with("timestamp") || t.starts_with("time ") || t == "time" => Kind::Time,
            _ => Kind::Other,
        }
    }
}

/// A column of the table.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// As `format_type` names it (`bigint`, `numeric(12,2)`).
    pub(crate) ty: String,
    pub(crate) kind: Kind,
    pub(crate) not_null: bool,
    pub(crate) has_default: bool,
}

/// A mapped column and the record field it takes.
#[derive(Clone, Debug)]
pub(crate) struct Mapped {
    pub(crate) column: Column,
    pub(crate) field: String,
}

fn is_uuid(s: &str) -> bool {
    let hex = s.bytes().filter(u8::is_ascii_hexdigit).count();
    let s = s.trim_start_matches('{').trim_end_matches('}');
    hex == 32 && s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Checks one field's value against its column.
fn check(m: &Mapped, v: Option<&Value>) -> Result<(), Failure> {
    let c = &m.column;
    let bad = |what: &str| {
        Err(Failure::permanent(
            reason::BAD_TYPE,
            format!("field `{}`: {what}, and column {} is {}", m.field, c.name, c.ty),
        )
        .with_field(m.field.clone()))
    };
    let v = match v {
        None | Some(Value::Null) if c.not_null => {
            return Err(Failure::permanent(
                reason::MISSING_FIELD,
                format!(
                    "field `{}` is missing or null, and column {} is NOT NULL",
                    m.field, c.name
                ),
            )
            .with_field(m.field.clone()));
        }
        None | Some(Value::Null) => return Ok(()),
        Some(v) => v,
    };
    // PostgreSQL text cannot hold a NUL character, nor can jsonb (`\u0000`)
    if has_nul(v) {
        return bad("a NUL character cannot be stored");
    }
    match (c.kind, v) {
        (Kind::Json | Kind::Other, _) => Ok(()),
        (Kind::Text, Value::String(_) | Value::Number(_) | Value::Bool(_)) => Ok(()),
        (Kind::Text, _) => bad("an object or array is not text"),
        (Kind::Integer { min, max }, Value::Number(n)) => match n.as_i64() {
            Some(i) if (min..=max).contains(&i) => Ok(()),
            Some(i) => bad(&format!("{i} is out of range")),
            None => bad(&format!("{n} is not an integer")),
        },
        (Kind::Integer { min, max }, Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(i) if (min..=max).contains(&i) => Ok(()),
            _ => bad(&format!("{s:?} is not an integer in range")),
        },
        (Kind::Number, Value::Number(_)) => Ok(()),
        (Kind::Number, Value::String(s)) if s.trim().parse::<f64>().is_ok() => Ok(()),
        (Kind::Bool, Value::Bool(_)) => Ok(()),
        (Kind::Bool, Value::String(s)) if matches!(s.as_str(), "true" | "false" | "t" | "f") => Ok(()),
        (Kind::Uuid, Value::String(s)) if is_uuid(s) => Ok(()),
        (Kind::Time, Value::String(s)) if s.len() >= 8 && s.as_bytes()[..4].iter().all(u8::is_ascii_digit) => Ok(()),
        (Kind::Time, Value::String(s)) if s.contains(':') => Ok(()),
        (_, v) => bad(&format!("{} is not accepted", short(v))),
    }
}

/// Whether a string anywhere in `v` holds a NUL character.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

/// Checks a record (a JSON object) against every mapped column.
pub(crate) fn check_record(columns: &[Mapped], value: &[u8]) -> Result<(), Failure> {
    let object: serde_json::Map<String, Value> = serde_json::from_slice(value)
        .map_err(|e| Failure::permanent(reason::MALFORMED, format!("a row must be a JSON object: {e}")))?;
    for m in columns {
        check(m, object.get(&m.field))?;
    }
    Ok(())
}

/// The row of a record: `{column: value of its field}` for every mapped column.
pub(crate) fn row(columns: &[Mapped], value: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    let mut object: serde_json::Map<String, Value> =
        serde_json::from_slice(value).map_err(|e| format!("a staged row is not a JSON object: {e}"))?;
    Ok(columns
        .iter()
        .map(|m| (m.column.name.clone(), object.remove(&m.field).unwrap_or(Value::Null)))
        .collect())
}

/// Appends the row of a record to a CSV body for `COPY … (FORMAT csv)`: every mapped column
/// in order, NULL as an empty unquoted field, text always quoted (so an empty string stays
/// one), JSON values of `json`/`jsonb` columns as their JSON text. The values went through
/// [`check_record`] when they were written, so each is one the column takes.
pub(crate) fn csv_row(columns: &[Mapped], value: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let object: serde_json::Map<String, Value> =
        serde_json::from_slice(value).map_err(|e| format!("a staged row is not a JSON object: {e}"))?;
    for (i, m) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match (object.get(&m.field), m.column.kind) {
            (None | Some(Value::Null), _) => {}
            (Some(v), Kind::Json) => quoted(&v.to_string(), out),
            (Some(Value::String(s)), _) => quoted(s, out),
            (Some(Value::Number(n)), _) => out.extend_from_slice(n.to_string().as_bytes()),
            (Some(Value::Bool(b)), _) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            (Some(v), _) => quoted(&v.to_string(), out),
        }
    }
    out.push(b'\n');
    Ok(())
}

/// A CSV field in double quotes, inner quotes doubled.
fn quoted(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for (i, part) in s.split('"').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(part.as_bytes());
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(ty: &str, not_null: bool) -> Vec<Mapped> {
        vec![Mapped {
            column: Column {
                name: "c".into(),
                ty: ty.into(),
                kind: Kind::of(ty),
                not_null,
                has_default: false,
            },
            field: "f".into(),
        }]
    }

    #[test]
    fn values_are_checked_against_the_column_type() {
        let ok = |ty: &str, v: &str| check_record(&mapped(ty, false), format!("{{\"f\":{v}}}").as_bytes());
        assert!(ok("integer", "12").is_ok());
        assert!(ok("integer", "\"12\"").is_ok());
        assert_eq!(ok("integer", "3000000000").unwrap_err().reason, reason::BAD_TYPE);
        assert_eq!(ok("smallint", "40000").unwrap_err().reason, reason::BAD_TYPE);
        assert_eq!(ok("bigint", "1.5").unwrap_err().reason, reason::BAD_TYPE);
        assert!(ok("numeric(12,2)", "1.5").is_ok());
        assert_eq!(ok("double precision", "\"x\"").unwrap_err().reason, reason::BAD_TYPE);
        assert!(ok("boolean", "true").is_ok());
        assert!(ok("text", "5").is_ok());
        assert!(ok("text", "[1]").is_err());
        assert!(ok("jsonb", "{\"a\":[1]}").is_ok());
        assert!(ok("uuid", "\"6f1c1d2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f\"").is_ok());
        assert!(ok("uuid", "\"nope\"").is_err());
        assert!(ok("timestamp with time zone", "\"2026-11-30T10:00:00Z\"").is_ok());
        assert!(ok("timestamp with time zone", "17").is_err());
        assert!(ok("integer", "null").is_ok());
        assert!(ok("text", "\"a\\u0000b\"").is_err());
        assert!(ok("jsonb", "{\"a\":\"\\u0000\"}").is_err());
        let e = check_record(&mapped("integer", true), b"{}").unwrap_err();
        assert_eq!(e.reason, reason::MISSING_FIELD);
        assert_eq!(e.field.as_deref(), Some("f"));
        assert_eq!(
            check_record(&mapped("integer", false), b"[1]").unwrap_err().reason,
            reason::MALFORMED
        );
    }

    #[test]
    fn csv_rows_quote_text_and_leave_nulls_empty() {
        let col = |name: &str, ty: &str, field: &str| Mapped {
            column: Column {
                name: name.into(),
                ty: ty.into(),
                kind: Kind::of(ty),
                not_null: false,
                has_default: false,
            },
            field: field.into(),
        };
        let cols = vec![
            col("id", "bigint", "id"),
            col("name", "text", "n"),
            col("doc", "jsonb", "d"),
            col("ok", "boolean", "ok"),
            col("note", "text", "missing"),
        ];
        let mut out = Vec::new();
        csv_row(
            &cols,
            br#"{"id":7,"n":"say \"hi\",\nbye","d":{"a":[1,"x"]},"ok":true}"#,
            &mut out,
        )
        .unwrap();
        csv_row(&cols, br#"{"id":8,"n":"","d":"s","ok":null}"#, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "7,\"say \"\"hi\"\",\nbye\",\"{\"\"a\"\":[1,\"\"x\"\"]}\",true,\n8,\"\",\"\"\"s\"\"\",,\n"
        );
        assert!(csv_row(&cols, b"[1]", &mut Vec::new()).is_err());
    }
}

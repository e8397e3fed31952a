//! The table's columns as the sink sees them, and the check of each record against them.

use keel::Failure;
use keel::failure::reason;
use serde_json::Value;

use super::config::ColumnType;

/// A column: its name, type and whether it takes nulls.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) ty: ColumnType,
    pub(crate) nullable: bool,
}

/// The type of a Delta primitive type's name (`long`, `string`...), if the sink writes it.
pub(crate) fn type_of(name: &str) -> Option<ColumnType> {
    name.parse().ok()
}

/// The type a JSON value infers.
pub(crate) fn infer(v: &Value) -> Option<ColumnType> {
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(ColumnType::Long),
        Value::Number(_) => Some(ColumnType::Double),
        Value::String(_) => Some(ColumnType::String),
        Value::Bool(_) => Some(ColumnType::Boolean),
        _ => None,
    }
}

/// Columns for the fields of `records` (JSON objects); a field with integers and other
/// numbers is a `double`, any other disagreement keeps the first type seen (the records
/// that disagree then fail the check of later epochs).
pub(crate) fn inferred(records: &[serde_json::Map<String, Value>]) -> Vec<Column> {
    let mut out: Vec<Column> = Vec::new();
    for r in records {
        for (k, v) in r {
            let Some(t) = infer(v) else { continue };
            match out.iter_mut().find(|c| &c.name == k) {
                Some(c) if c.ty == ColumnType::Long && t == ColumnType::Double => c.ty = ColumnType::Double,
                Some(_) => {}
                None => out.push(Column {
                    name: k.clone(),
                    ty: t,
                    nullable: true,
                }),
            }
        }
    }
    out
}

fn check(c: &Column, v: Option<&Value>) -> Result<(), Failure> {
    let bad = |what: String| {
        Err(Failure::permanent(
            reason::BAD_TYPE,
            format!("field `{}`: {what}, and the table's column is {:?}", c.name, c.ty),
        )
        .with_field(c.name.clone()))
    };
    let v = match v {
        None | Some(Value::Null) if !c.nullable => {
            return Err(Failure::permanent(
                reason::MISSING_FIELD,
                format!(
                    "field `{}` is missing or null, and the table's column is not nullable",
                    c.name
                ),
            )
            .with_field(c.name.clone()));
        }
        None | Some(Value::Null) => return Ok(()),
        Some(v) => v,
    };
    match (c.ty, v) {
        (ColumnType::String, Value::String(_)) => Ok(()),
        (ColumnType::Long, Value::Number(n)) if n.is_i64() => Ok(()),
        (ColumnType::Integer, Value::Number(n)) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => Ok(()),
        (ColumnType::Double, Value::Number(_)) => Ok(()),
        (ColumnType::Boolean, Value::Bool(_)) => Ok(()),
        (ColumnType::Timestamp | ColumnType::Date, Value::String(s)) if s.len() >= 10 => Ok(()),
        (_, v) => bad(format!("{v} does not fit")),
    }
}

/// Checks a record (a JSON object) against every column.
pub(crate) fn check_record(columns: &[Column], value: &[u8]) -> Result<(), Failure> {
    let object: serde_json::Map<String, Value> = serde_json::from_slice(value)
        .map_err(|e| Failure::permanent(reason::MALFORMED, format!("a row must be a JSON object: {e}")))?;
    for c in columns {
        check(c, object.get(&c.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_and_schemas_inferred() {
        let cols = vec![
            Column {
                name: "id".into(),
                ty: ColumnType::Long,
                nullable: false,
            },
            Column {
                name: "amount".into(),
                ty: ColumnType::Double,
                nullable: true,
            },
        ];
        assert!(check_record(&cols, br#"{"id":1,"amount":2}"#).is_ok());
        assert!(check_record(&cols, br#"{"id":1}"#).is_ok());
        assert_eq!(
            check_record(&cols, br#"{"amount":2}"#).unwrap_err().reason,
            reason::MISSING_FIELD
        );
        let e = check_record(&cols, br#"{"id":"x"}"#).unwrap_err();
        assert_eq!((e.reason.as_ref(), e.field.as_deref()), (reason::BAD_TYPE, Some("id")));
        let rows: Vec<serde_json::Map<String, Value>> = [r#"{"id":1,"a":1,"s":"x"}"#, r#"{"id":2,"a":1.5,"b":true}"#]
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect();
        let inf = inferred(&rows);
        let mut types: Vec<(&str, ColumnType)> = inf.iter().map(|c| (c.name.as_str(), c.ty)).collect();
        types.sort_by_key(|t| t.0);
        assert_eq!(
            types,
            vec![
                ("a", ColumnType::Double),
                ("b", ColumnType::Boolean),
                ("id", ColumnType::Long),
                ("s", ColumnType::String)
            ]
        );
    }
}

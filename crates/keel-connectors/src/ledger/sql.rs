//! SQL shared by the SQLite and PostgreSQL ledgers: the column list and filters.

use keel::ledger::{Filter, Status};

/// The columns of a unit row, in the order [`Unit`](keel::ledger::Unit) is read from.
pub(crate) const COLUMNS: &str = "pipeline, scope, key, checksum, size, mtime_ns, status, attempts, last_error, \
     metadata, owner, lease_until_ms, started_ms, finished_ms, updated_ms";

/// A bound parameter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

/// A `WHERE` clause (possibly empty) and its parameters.
#[derive(Debug, PartialEq)]
pub(crate) struct Where {
    pub(crate) clause: String,
    pub(crate) params: Vec<Param>,
}

/// The `WHERE` clause of `filter`; `status` overrides the filter's status when the filter
/// has none. `placeholder(n)` writes the n-th (1-based) parameter (`?1`, `$1`).
pub(crate) fn where_clause(filter: &Filter, status: Option<Status>, placeholder: fn(usize) -> String) -> Where {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    let mut add = |column: &str, op: &str, p: Param| {
        params.push(p);
        conds.push(format!("{column} {op} {}", placeholder(params.len())));
    };
    if let Some(p) = &filter.pipeline {
        add("pipeline", "=", Param::Text(p.clone()));
    }
    if let Some(s) = &filter.scope {
        add("scope", "=", Param::Text(s.clone()));
    }
    if let Some(k) = &filter.key {
        add("key", "=", Param::Text(k.clone()));
    }
    if let Some(s) = filter.status.or(status) {
        add("status", "=", Param::Text(s.as_str().to_owned()));
    }
    if let Some(t) = filter.updated_before_ms {
        add("updated_ms", "<", Param::Int(to_i64(t)));
    }
    let clause = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    Where { clause, params }
}

/// The clause selecting the rows an update or delete touches, honouring the filter's limit
/// (in key order) through a sub-select.
pub(crate) fn target_clause(
    table: &str,
    filter: &Filter,
    status: Option<Status>,
    placeholder: fn(usize) -> String,
) -> Where {
    let w = where_clause(filter, status, placeholder);
    match filter.limit {
        None => w,
        Some(n) => Where {
            clause: format!(
                " WHERE (pipeline, scope, key) IN (SELECT pipeline, scope, key FROM {table}{} ORDER BY pipeline, scope, key LIMIT {n})",
                w.clause
            ),
            params: w.params,
        },
    }
}

/// A stored millisecond time or size, saturated to the SQL integer range.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored integer read back as unsigned (negative values are clamped to 0).
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_clauses() {
        let f = Filter {
            pipeline: Some("p".into()),
            status: None,
            updated_before_ms: Some(5),
            ..Filter::default()
        };
        let w = where_clause(&f, Some(Status::Failed), |n| format!("${n}"));
        assert_eq!(w.clause, " WHERE pipeline = $1 AND status = $2 AND updated_ms < $3");
        assert_eq!(
            w.params,
            vec![Param::Text("p".into()), Param::Text("failed".into()), Param::Int(5)]
        );
        assert_eq!(where_clause(&Filter::default(), None, |n| format!("?{n}")).clause, "");
        let limited = Filter {
            limit: Some(3),
            ..Filter::default()
        };
        let t = target_clause("units", &limited, None, |n| format!("?{n}"));
        assert!(
            t.clause.contains("ORDER BY pipeline, scope, key LIMIT 3"),
            "{}",
            t.clause
        );
    }
}

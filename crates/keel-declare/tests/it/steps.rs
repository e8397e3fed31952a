//! Every declared step on small inputs, through a whole pipeline.

use crate::{Case, pipeline};

#[test]
fn validate_checks_required_types_rules_and_schema_in_order() {
    let steps = r#"
[[steps]]
type = "parse"

[[steps]]
type = "validate"
required = ["id", "amount"]
types = { id = "integer", amount = "integer", name = "string" }
rules = [
  { field = "amount", min = 0, reason = "negative_amount" },
  { field = "name", pattern = "[a-z]+", reason = "bad_name" },
  { field = "name", max_length = 5, reason = "long_name" },
  { field = "tier", one_of = ["gold", "silver"], reason = "bad_tier" },
]
schema = "schema.json"
"#;
    let input = [
        r#"{"id": 1, "amount": 5, "name": "abc", "tier": "gold"}"#,
        r#"{"id": 2, "amount": null}"#,
        r#"{"id": 3}"#,
        r#"{"id": 4, "amount": 1.5}"#,
        r#"{"id": "5", "amount": 1}"#,
        r#"{"id": 6, "amount": -1}"#,
        r#"{"id": 7, "amount": 1, "name": "ABC"}"#,
        r#"{"id": 8, "amount": 1, "name": "abcdefg"}"#,
        r#"{"id": 9, "amount": 1, "tier": "bronze"}"#,
        r#"{"id": 10, "amount": 1, "extra": true}"#,
        r#"{"id": 11, "amount": 1"#,
        "[1, 2]",
        "{\"id\": 13, \"amount\": \"\u{0}\"}",
    ]
    .join("\n");
    let c = Case::new(&pipeline("json_lines", steps, ""), &[("a.jsonl", &input)]);
    c.write(
        "schema.json",
        r#"{"type": "object", "properties": {"extra": {"type": "string"}}}"#,
    );
    let s = c.run();
    assert_eq!((s.records_in, s.records_out, s.dead_letters), (13, 1, 12));
    let dead = c.json("dead");
    let reason_of = |id: i64| {
        dead.iter()
            .find(|d| d["id"] == id)
            .map(|d| d["reason"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(reason_of(2), "missing_field");
    assert_eq!(reason_of(3), "missing_field");
    assert_eq!(reason_of(4), "bad_type");
    assert!(
        dead.iter()
            .any(|d| d["id"] == "5" && d["reason"] == "bad_type" && d["field"] == "id")
    );
    assert_eq!(reason_of(6), "negative_amount");
    assert_eq!(reason_of(7), "bad_name");
    assert_eq!(reason_of(8), "long_name");
    assert_eq!(reason_of(9), "bad_tier");
    assert_eq!(reason_of(10), "schema_violation");
    assert_eq!(
        reason_of(11),
        "malformed",
        "the id of a malformed line comes from its text"
    );
    assert!(dead.iter().any(|d| d["raw"] == "[1, 2]" && d["reason"] == "malformed"));
    let missing = dead.iter().find(|d| d["id"] == 3).unwrap();
    assert_eq!(
        (missing["field"].as_str(), missing["stage"].as_str()),
        (Some("amount"), Some("validate"))
    );
}

#[test]
fn csv_parse_with_header_and_type_inference_to_csv_output() {
    let steps = r#"
[[steps]]
type = "parse"
format = "csv"
infer_types = true

[[steps]]
type = "validate"
types = { qty = "integer" }
"#;
    let toml = pipeline("csv", steps, "").replace(
        "path = \"out\"\n",
        "path = \"out\"\nformat = \"csv\"\ncolumns = [\"sku\", \"qty\", \"note\"]\n",
    );
    let c = Case::new(
        &toml,
        &[("a.csv", "sku,qty,note\r\nA1,3,\"x, y\"\r\nB2,two,z\r\nC3,5\r\n")],
    );
    let s = c.run();
    assert_eq!((s.records_out, s.dead_letters), (1, 2));
    assert_eq!(
        c.lines("out"),
        vec!["sku,qty,note".to_string(), "A1,3,\"x, y\"".to_string()]
    );
    let reasons: Vec<String> = c
        .json("dead")
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons, vec!["bad_type", "column_count"]);
}

#[test]
fn jq_transform_filter_and_reshaping() {
    let steps = r#"
[[steps]]
type = "parse"

[[steps]]
type = "filter"
jq = ".qty > 0"

[[steps]]
type = "transform"
jq = ".items[] as $i | {order: .id, sku: $i, total: (.price * .qty), debug: 1}"

[[steps]]
type = "rename"
fields = { order = "order_id" }

[[steps]]
type = "drop"
fields = ["debug"]
"#;
    let input = [
        r#"{"id": 1, "price": 2, "qty": 3, "items": ["a", "b"]}"#,
        r#"{"id": 2, "price": 2, "qty": 0, "items": ["c"]}"#,
        r#"{"id": 3, "price": {}, "qty": 1, "items": ["d"]}"#,
    ]
    .join("\n");
    let c = Case::new(&pipeline("json_lines", steps, ""), &[("a.jsonl", &input)]);
    let s = c.run();
    assert_eq!((s.records_in, s.records_out, s.dead_letters), (3, 2, 1));
    assert_eq!(
        c.json("out"),
        vec![
            serde_json::json!({"order_id": 1, "sku": "a", "total": 6}),
            serde_json::json!({"order_id": 1, "sku": "b", "total": 6}),
        ]
    );
    assert_eq!(c.json("dead")[0]["reason"], "transform_error");
}

#[test]
fn aggregates_running_and_final_with_state_across_partitions() {
    let steps = r#"
[[steps]]
type = "parse"

[[steps]]
type = "aggregate"
key = "user.id"
aggregates = { n = "count()", total = "sum(v)", low = "min(v)", high = "max(v)" }
final = { sink = "final" }
"#;
    let extra = "[[sinks]]\nname = \"final\"\ntype = \"files\"\npath = \"final\"\n";
    let a = (0..50)
        .map(|i| format!(r#"{{"user": {{"id": "u{}"}}, "v": {i}}}"#, i % 3))
        .collect::<Vec<_>>()
        .join("\n");
    let b = (50..100)
        .map(|i| format!(r#"{{"user": {{"id": "u{}"}}, "v": {}.5}}"#, i % 3, i))
        .collect::<Vec<_>>()
        .join("\n");
    let c = Case::new(
        &pipeline("json_lines", steps, extra),
        &[("a.jsonl", &a), ("b.jsonl", &b)],
    );
    let s = c.run();
    assert_eq!(s.records_out, 100);
    let finals = c.json("final");
    assert_eq!(finals.len(), 3);
    let u0 = finals.iter().find(|f| f["id"] == "u0").unwrap();
    let (ints, floats): (Vec<i64>, Vec<f64>) = (
        (0..50).filter(|i| i % 3 == 0).collect(),
        (50..100).filter(|i| i % 3 == 0).map(|i| i as f64 + 0.5).collect(),
    );
    assert_eq!(u0["n"], (ints.len() + floats.len()) as i64);
    assert_eq!(
        u0["total"].as_f64().unwrap(),
        ints.iter().sum::<i64>() as f64 + floats.iter().sum::<f64>()
    );
    assert_eq!(u0["low"], 0);
    assert_eq!(u0["high"].as_f64().unwrap(), 99.5);
    // running values: the last record of each key carries its final count
    let out = c.json("out");
    let max_n = out
        .iter()
        .filter(|r| r["user"]["id"] == "u0")
        .map(|r| r["n"].as_i64().unwrap())
        .max()
        .unwrap();
    assert_eq!(max_n, u0["n"].as_i64().unwrap());
}

#[test]
fn dedupe_drops_or_dead_letters_repeats_within_the_window() {
    let steps = |policy: &str| {
        format!(
            r#"
[[steps]]
type = "parse"

[[steps]]
type = "event_time"
field = "ts"
unit = "rfc3339"
lateness = "1h"

[[steps]]
type = "dedupe"
key = "id"
window = "10m"
on_duplicate = "{policy}"
"#
        )
    };
    let input = [
        r#"{"id": 1, "ts": "2024-01-01T00:00:00Z"}"#,
        r#"{"id": 1, "ts": "2024-01-01T00:05:00Z"}"#,
        r#"{"id": 2, "ts": "2024-01-01T00:06:00Z"}"#,
        r#"{"id": 1, "ts": "2024-01-01T00:20:00Z"}"#,
    ]
    .join("\n");
    let c = Case::new(&pipeline("json_lines", &steps("drop"), ""), &[("a.jsonl", &input)]);
    let s = c.run();
    assert_eq!((s.records_out, s.dead_letters), (3, 0));
    let c = Case::new(
        &pipeline("json_lines", &steps("dead_letter"), ""),
        &[("a.jsonl", &input)],
    );
    let s = c.run();
    assert_eq!((s.records_out, s.dead_letters), (3, 1));
    assert_eq!(c.json("dead")[0]["reason"], "duplicate");
}

#[test]
fn raw_lines_pass_through_without_a_parse_step() {
    let c = Case::new(&pipeline("lines", "", ""), &[("a.txt", "hello\nworld\n")]);
    c.run();
    assert_eq!(c.lines("out"), vec!["hello".to_string(), "world".to_string()]);
}

#[test]
fn event_time_dead_letters_records_too_far_ahead_of_the_clock() {
    let steps = |skew: &str| {
        format!(
            r#"
[[steps]]
type = "parse"

[[steps]]
type = "event_time"
field = "ts"
lateness = "1s"
{skew}
"#
        )
    };
    let now = keel::util::now_ms() as i64;
    let far = now + 10 * 24 * 3_600_000;
    let mut input = vec![format!(r#"{{"id": 0, "ts": {far}}}"#)];
    input.extend((1..=200).map(|i| format!(r#"{{"id": {i}, "ts": {}}}"#, now - 60_000 + i * 10)));
    let input = input.join("\n");
    for skew in ["", "max_future_skew = \"2h\""] {
        let c = Case::new(&pipeline("json_lines", &steps(skew), ""), &[("a.jsonl", &input)]);
        let s = c.run();
        assert_eq!((s.records_out, s.dead_letters), (200, 1), "{skew}");
        let dead = c.json("dead");
        assert_eq!(dead[0]["reason"], "future_event_time");
        assert_eq!(dead[0]["raw"].as_str().unwrap(), format!(r#"{{"id": 0, "ts": {far}}}"#));
    }
    // "0s" accepts any event time
    let c = Case::new(
        &pipeline("json_lines", &steps("max_future_skew = \"0s\""), ""),
        &[("a.jsonl", &input)],
    );
    c.run();
    assert!(c.json("out").iter().any(|r| r["id"] == 0));
}

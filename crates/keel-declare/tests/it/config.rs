//! Loading pipeline files: full examples parse, every mistake is named with its line.

use crate::Case;

#[test]
fn the_shipped_pipeline_files_parse_and_build() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = root.join("examples/orders/pipeline.toml");
    let loaded = keel_declare::load(&example).unwrap_or_else(|e| panic!("{e}"));
    keel_declare::build(&loaded, |_| {}).unwrap_or_else(|e| panic!("{e}"));
    // the benchmark job reads IN, OUT and STATE from the environment
    let job = std::fs::read_to_string(root.join("bench/keel/job.toml")).unwrap();
    let job = job
        .replace("${IN}", "in")
        .replace("${OUT}", "out")
        .replace("${STATE}", "state");
    let c = Case::new(&job, &[]);
    assert_eq!(c.errors(), "");
}

#[test]
fn every_key_of_a_full_file_is_accepted() {
    let toml = r#"
name = "full"
description = "every table and key"

[source]
type = "files"
path = "in"
format = "csv"
pattern = "*.csv"
follow = false
poll_interval = "250ms"

[[steps]]
type = "parse"
name = "decode"
format = "csv"
delimiter = ";"
infer_types = true
columns = ["id", "ts", "customer", "amount", "email"]

[[steps]]
type = "validate"
required = ["id", "customer"]
types = { id = "integer", amount = "number", customer = "string" }
rules = [
  { field = "amount", min = 0, max = 1e9, reason = "bad_amount", message = "amount out of range" },
  { field = "customer", min_length = 1, max_length = 64, pattern = "c[0-9]+", reason = "bad_customer" },
  { field = "email", one_of = ["a@b", "c@d"], reason = "unknown_email" },
]

[[steps]]
type = "event_time"
field = "ts"
unit = "ms"
lateness = "2s"
idle_timeout = "30s"
late = "drop"
max_future_skew = "1h"

[[steps]]
type = "dedupe"
name = "once"
key = "id"
window = "10m"
on_duplicate = "dead_letter"

[[steps]]
type = "filter"
jq = ".amount > 0"

[[steps]]
type = "transform"
jq = ".cents = .amount * 100"

[[steps]]
type = "rename"
fields = { cents = "amount_cents" }

[[steps]]
type = "drop"
fields = ["email"]

[[steps]]
type = "aggregate"
name = "per_customer"
key = "customer"
aggregates = { n = "count()", total = "sum(amount)", low = "min(amount)", high = "max(amount)" }
emit = true
final = { sink = "totals", fields = { customer = "key", total = "total", orders = "n" } }

[[steps]]
type = "select"
fields = ["id", "customer", "total"]

[[sinks]]
name = "out"
type = "files"
path = "out"
format = "csv"
columns = ["id", "customer", "total"]
prefix = "orders"
max_file_bytes = 1000000

[[sinks]]
name = "totals"
type = "files"
path = "totals"

[[sinks]]
name = "console"
type = "stdout"

[dead_letter]
path = "dead"
id_field = "id"

[checkpoint]
path = "state"
interval = "500ms"
retain = 5

[run]
batch_size = 256
max_open_partitions = 8
"#;
    let c = Case::new(toml, &[]);
    assert_eq!(c.errors(), "");
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_with_their_line() {
    let c = Case::new(
        "name = \"x\"\n[source]\ntype = \"files\"\npath = \"in\"\ncolour = \"red\"\n[[sinks]]\nname=\"o\"\ntype=\"stdout\"\n",
        &[],
    );
    let e = c.errors();
    assert!(
        e.contains("pipeline.toml:2:") && e.contains("unknown field `colour`"),
        "{e}"
    );
    let c = Case::new(
        "name = \"x\"\n[source]\ntype = \"files\"\npath = \"in\"\n[checkpoint]\nretain = \"three\"\n[[sinks]]\nname=\"o\"\ntype=\"stdout\"\n",
        &[],
    );
    let e = c.errors();
    assert!(e.contains("pipeline.toml:6:") && e.contains("invalid type"), "{e}");
    let c = Case::new("name = \"x\"\n[source]\ntype = \"kafka\"\n", &[]);
    assert!(c.errors().contains("unknown variant `kafka`"), "{}", c.errors());
}

#[test]
fn semantic_mistakes_are_all_reported_with_key_and_line() {
    let toml = crate::pipeline(
        "json_lines",
        r#"[[steps]]
type = "validate"
required = ["id"]

[[steps]]
type = "parse"

[[steps]]
type = "transform"
jq = ".a |"

[[steps]]
type = "aggregate"
key = "c"
aggregates = { t = "median(x)" }

[[steps]]
type = "aggregate"
key = "c"
aggregates = { t = "sum(x)" }
final = { sink = "nowhere" }

[[steps]]
type = "dedupe"
key = "a..b"
window = "1m"
"#,
        "",
    );
    let c = Case::new(&toml, &[]);
    let e = c.errors();
    for expected in [
        "steps[0].type: a `validate` step needs parsed records",
        "steps[2].jq: jq program does not compile",
        "steps[3].aggregates.t: `median(x)`: unknown function `median`",
        "steps[4].name: two stateful steps use the state table `aggregate`",
        "steps[4].final.sink: no sink is named `nowhere`",
        "steps[5].key: `a..b` is not a field name",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
    assert!(
        e.lines().all(|l| l.contains("pipeline.toml:")),
        "every error names a line:\n{e}"
    );
}

#[test]
fn environment_variables_are_interpolated_and_missing_ones_refused() {
    let c = Case::new("name = \"${KEEL_TEST_SURELY_UNSET}\"\n", &[]);
    assert!(c.errors().contains("KEEL_TEST_SURELY_UNSET"), "{}", c.errors());
    let c = Case::new(
        &crate::pipeline("json_lines", "", "").replace("name = \"t\"", "name = \"${KEEL_TEST_UNSET_TOO:-fallback}\""),
        &[],
    );
    assert_eq!(c.errors(), "");
}

#[test]
fn the_errors_table_maps_to_policies_and_its_mistakes_are_named() {
    let errors = r#"
[errors]
exit_code_on_dead_letters = 0
max_record_bytes = 65536
dead_letter_rate = 500

[errors.default]
transient = { action = "retry", max_attempts = 3, initial = "50ms", multiplier = 3.0, max_delay = "2s", jitter = "decorrelated", then = "skip" }
throttled = { action = "pause", duration = "2s", max_pauses = 3, then = "dead_letter" }
permanent = "dead_letter"
fatal = "abort"

[errors.stages.validate]
permanent = "skip"

[[errors.classify]]
stage = "validate"
message = "quota"
class = "throttled"
as = "quota_reached"
retry_after = "1s"

[errors.retry_budget]
ratio = 0.1
min_per_sec = 5
window = "30s"

[errors.error_budget]
max_percent = 5
window = "1m"
min_records = 1000
action = "pause"

[errors.sink_breaker]
failures = 3
open_for = "10s"
slow_call = "2s"

[errors.sink_retry]
backoff = "constant"
delay = "200ms"
max_attempts = 4
"#;
    let steps = "[[steps]]\ntype = \"parse\"\n\n[[steps]]\ntype = \"validate\"\nrequired = [\"id\"]\n";
    let c = crate::Case::new(&format!("{}{errors}", crate::pipeline("json_lines", steps, "")), &[]);
    assert_eq!(c.errors(), "");

    let bad = r#"
[errors.default]
transient = { action = "retry", then = "retry" }
permanent = "dead-letter"
fatal = { action = "fail", max_attempts = 2 }

[errors.stages.enrich]
transient = "skip"

[errors.sink_retry]
backoff = "constant"

[errors.error_budget]
window = "1m"
"#;
    let c = crate::Case::new(&format!("{}{bad}", crate::pipeline("json_lines", steps, "")), &[]);
    let e = c.errors();
    for expected in [
        "errors.default.transient.then: `then` must be fail, skip, dead_letter or abort, not `retry`",
        "errors.default.permanent: unknown action `dead-letter`",
        "errors.default.fatal: `fail` takes no settings",
        "errors.stages.enrich: no step or sink is named `enrich`",
        "errors.sink_retry: a constant backoff needs `delay`",
        "errors.error_budget: set `max_percent` or `max_count`",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
}

/// A file sink that would start a file every few bytes is refused (issue 9.3: thousands of
/// files per epoch, each a rename and an fsync at the commit).
#[test]
fn tiny_file_sizes_are_refused() {
    let toml = crate::pipeline("json_lines", "[[steps]]\ntype = \"parse\"\n", "max_file_bytes = 10\n")
        .replace("id_field = \"id\"", "id_field = \"id\"\nmax_segment_bytes = 100");
    let e = Case::new(&toml, &[]).errors();
    assert!(e.contains("sinks[0].max_file_bytes: must be at least 4096"), "{e}");
    assert!(
        e.contains("dead_letter.max_segment_bytes: must be at least 4096"),
        "{e}"
    );
}

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
max_records_per_second = 50000
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
        e.contains("pipeline.toml:5: source.colour: unknown key `colour`"),
        "{e}"
    );
    let c = Case::new(
        "name = \"x\"\n[source]\ntype = \"files\"\npath = \"in\"\n[checkpoint]\nretain = \"three\"\n[[sinks]]\nname=\"o\"\ntype=\"stdout\"\n",
        &[],
    );
    let e = c.errors();
    assert!(
        e.contains("pipeline.toml:6: checkpoint.retain: expected a whole number, found \"three\""),
        "{e}"
    );
    let c = Case::new("name = \"x\"\n[source]\ntype = \"ftp\"\n", &[]);
    assert!(
        c.errors()
            .contains("pipeline.toml:3: source.type: expected one of `files`, `generator`, `kafka`, `nats`, `redis_stream`, found \"ftp\""),
        "{}",
        c.errors()
    );
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
        "[run]\nmax_records_per_second = 0\n",
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
        "run.max_records_per_second: must be at least 1",
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

/// A valid file with four steps and four sinks, nested tables and lists: the cases below
/// break one key each, keeping every line where it is.
const DEEP: &str = r#"name = "t"

[source]
type = "files"
path = "in"

[[steps]]
type = "parse"

[[steps]]
type = "validate"
required = ["id"]
rules = [
  { field = "amount", min = 0, reason = "negative_amount" },
  { field = "customer", min_length = 1, reason = "no_customer" },
]

[[steps]]
type = "event_time"
field = "ts"
lateness = "5s"
late = "drop"

[[steps]]
type = "aggregate"
key = "customer"
aggregates = { total = "sum(amount)" }

[steps.final]
sink = "totals"

[[sinks]]
name = "out"
type = "files"
path = "out"

[[sinks]]
name = "totals"
type = "files"
path = "totals"
format = "csv"
columns = ["customer", "total"]

[[sinks]]
name = "console"
type = "stdout"

[[sinks]]
name = "archive"
type = "files"
path = "archive"
max_file_bytes = 1048576
"#;

/// The errors of `toml` as `file:line: path: message` lines, the directory left out.
fn error_lines(toml: &str) -> Vec<String> {
    let c = Case::new(toml, &[]);
    let dir = format!("{}/", c.dir.path().display());
    c.errors().replace(&dir, "").lines().map(str::to_owned).collect()
}

/// `DEEP` with `from` replaced by `to` (which must be there).
fn deep_with(from: &str, to: &str) -> String {
    assert!(DEEP.contains(from), "{from:?} is not in DEEP");
    DEEP.replacen(from, to, 1)
}

/// Each mistake deep inside the 2nd, 3rd and 4th `[[steps]]` and `[[sinks]]` names the line
/// of the key itself and its whole path (issue 10.4: the line was that of the first header).
#[test]
fn errors_deep_in_arrays_of_tables_name_the_line_and_path_of_the_key() {
    assert_eq!(error_lines(DEEP), Vec::<String>::new());
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "late = \"drop\"",
            "late = \"later\"",
            &["pipeline.toml:22: steps[2].late: expected one of `drop`, `dead_letter`, `keep`, found \"later\""],
        ),
        (
            "lateness = \"5s\"",
            "lateness = 5",
            &["pipeline.toml:21: steps[2].lateness: expected a duration like \"5s\", found 5"],
        ),
        (
            "lateness = \"5s\"",
            "lateness = \"5 parsecs\"",
            &["pipeline.toml:21: steps[2].lateness: `5 parsecs` has no known unit (ms, s, m, h, d)"],
        ),
        (
            "lateness = \"5s\"",
            "latenes = \"5s\"",
            &["pipeline.toml:21: steps[2].latenes: unknown key `latenes`; did you mean `lateness`?"],
        ),
        (
            "min_length = 1",
            "min_length = -1",
            &["pipeline.toml:15: steps[1].rules[1].min_length: expected a whole number of 0 or more, found -1"],
        ),
        (
            "reason = \"no_customer\"",
            "reasn = \"no_customer\"",
            &["pipeline.toml:15: steps[1].rules[1].reasn: unknown key `reasn`; did you mean `reason`?"],
        ),
        (
            "min = 0,",
            "min = \"zero\",",
            &["pipeline.toml:14: steps[1].rules[0].min: expected a number, found \"zero\""],
        ),
        (
            "reason = \"negative_amount\"",
            "reason = \"Negative\"",
            &[
                "pipeline.toml:14: steps[1].rules[0].reason: `Negative` is not a snake_case reason (like `negative_amount`)",
            ],
        ),
        (
            "required = [\"id\"]",
            "required = [\"id\", 7]",
            &["pipeline.toml:12: steps[1].required[1]: expected a string, found 7"],
        ),
        (
            "aggregates = { total = \"sum(amount)\" }",
            "aggregates = { total = 1 }",
            &["pipeline.toml:27: steps[3].aggregates.total: expected a string, found 1"],
        ),
        (
            "sink = \"totals\"",
            "sink = 5",
            &["pipeline.toml:30: steps[3].final.sink: expected a string, found 5"],
        ),
        (
            "sink = \"totals\"",
            "sink = \"nowhere\"",
            &["pipeline.toml:30: steps[3].final.sink: no sink is named `nowhere`"],
        ),
        (
            "sink = \"totals\"",
            "sinc = \"totals\"",
            &["pipeline.toml:30: steps[3].final.sinc: unknown key `sinc`; did you mean `sink`?"],
        ),
        (
            "key = \"customer\"\naggregates = { total = \"sum(amount)\" }",
            "\n",
            &[
                "pipeline.toml:24: steps[3]: missing key `key`",
                "pipeline.toml:24: steps[3]: missing key `aggregates`",
            ],
        ),
        (
            "format = \"csv\"",
            "format = \"tsv\"",
            &[
                "pipeline.toml:41: sinks[1].format: expected one of `json_lines`, `jsonl`, `ndjson`, `csv`, `lines`, found \"tsv\"",
            ],
        ),
        (
            "columns = [\"customer\", \"total\"]",
            "columns = \"customer\"",
            &["pipeline.toml:42: sinks[1].columns: expected a list, found \"customer\""],
        ),
        (
            "name = \"console\"",
            "nme = \"console\"",
            &["pipeline.toml:45: sinks[2].nme: unknown key `nme`; did you mean `name`?"],
        ),
        (
            "name = \"console\"",
            "colour = \"red\"",
            &[
                "pipeline.toml:44: sinks[2]: missing key `name`",
                "pipeline.toml:45: sinks[2].colour: unknown key `colour`; allowed keys: `type`, `name`",
            ],
        ),
        (
            "max_file_bytes = 1048576",
            "max_file_bytes = \"1MB\"",
            &["pipeline.toml:52: sinks[3].max_file_bytes: expected a whole number, found \"1MB\""],
        ),
        (
            "max_file_bytes = 1048576",
            "max_file_bytes = 10",
            &[
                "pipeline.toml:52: sinks[3].max_file_bytes: must be at least 4096 (4 KiB): each file of an epoch costs a rename and an fsync at its commit",
            ],
        ),
    ];
    for (from, to, expected) in cases {
        assert_eq!(&error_lines(&deep_with(from, to)), expected, "{from:?} -> {to:?}");
    }
    let e = error_lines(&deep_with("type = \"event_time\"", "type = \"eventtime\""));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("pipeline.toml:19: steps[2].type: expected one of `parse`, `validate`, `transform`,")
            && e[0].ends_with(", found \"eventtime\""),
        "{e:?}"
    );
}

/// Every mistake of a file is reported at once, in file order, one per line.
#[test]
fn every_error_of_a_file_is_reported_in_file_order() {
    let toml = DEEP
        .replacen("path = \"in\"", "path = \"in\"\ncolour = \"red\"", 1)
        .replacen("min_length = 1", "min_length = \"one\"", 1)
        .replacen("late = \"drop\"", "late = \"later\"", 1)
        .replacen(
            "aggregates = { total = \"sum(amount)\" }",
            "aggregates = { total = 1 }",
            1,
        )
        .replacen("format = \"csv\"", "format = \"tsv\"", 1)
        .replacen("name = \"console\"", "nme = \"console\"", 1)
        .replacen("max_file_bytes = 1048576", "max_file_bytes = -1", 1)
        + "\n[checkpoint]\nretain = \"three\"\ninterval = 5\n";
    assert_eq!(
        error_lines(&toml),
        [
            "pipeline.toml:6: source.colour: unknown key `colour`; allowed keys: `type`, `path`, `format`, `pattern`, `follow`, `poll_interval`",
            "pipeline.toml:16: steps[1].rules[1].min_length: expected a whole number, found \"one\"",
            "pipeline.toml:23: steps[2].late: expected one of `drop`, `dead_letter`, `keep`, found \"later\"",
            "pipeline.toml:28: steps[3].aggregates.total: expected a string, found 1",
            "pipeline.toml:42: sinks[1].format: expected one of `json_lines`, `jsonl`, `ndjson`, `csv`, `lines`, found \"tsv\"",
            "pipeline.toml:46: sinks[2].nme: unknown key `nme`; did you mean `name`?",
            "pipeline.toml:53: sinks[3].max_file_bytes: expected a whole number of 0 or more, found -1",
            "pipeline.toml:56: checkpoint.retain: expected a whole number, found \"three\"",
            "pipeline.toml:57: checkpoint.interval: expected a duration like \"1s\", or \"off\", found 5",
        ]
    );
}

/// Every missing key is reported, also several of one table and after a wrong `type`.
#[test]
fn every_missing_key_is_reported() {
    assert_eq!(
        error_lines("description = \"nothing yet\"\n"),
        [
            "pipeline.toml:1: missing key `name`",
            "pipeline.toml:1: missing key `source`",
            "pipeline.toml:1: missing key `sinks`",
        ]
    );
    assert_eq!(
        error_lines("name = \"t\"\n[source]\ntype = \"ftp\"\n\n[[steps]]\ntype = \"dedupe\"\n"),
        [
            "pipeline.toml:1: missing key `sinks`",
            "pipeline.toml:3: source.type: expected one of `files`, `generator`, `kafka`, `nats`, `redis_stream`, found \"ftp\"",
            "pipeline.toml:5: steps[0]: missing key `key`",
            "pipeline.toml:5: steps[0]: missing key `window`",
        ]
    );
}

/// TOML syntax errors are all reported too, each with its line.
#[test]
fn syntax_errors_are_reported_with_their_lines() {
    let toml = DEEP
        .replacen("path = \"in\"", "path = \"in", 1)
        .replacen("field = \"ts\"", "field = ts", 1);
    let e = error_lines(&toml);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("pipeline.toml:5: "), "{e:?}");
    assert!(e[1].starts_with("pipeline.toml:20: "), "{e:?}");
}

/// No message speaks Rust: bad values of every kind are described in the file's words.
#[test]
fn messages_use_no_rust_words() {
    let steps = "[[steps]]\ntype = \"parse\"\n";
    let base = crate::pipeline("json_lines", steps, "");
    let with = |from: &str, to: &str| {
        assert!(base.contains(from), "{from:?}");
        base.replacen(from, to, 1)
    };
    let tail = |extra: &str| format!("{base}\n{extra}\n");
    let files = [
        with("type = \"files\"\npath = \"in\"", "type = \"ftp\"\npath = \"in\""),
        with("path = \"in\"", "path = 5"),
        with("format = \"json_lines\"", "format = 1"),
        with("format = \"json_lines\"", "follow = \"yes\""),
        with("format = \"json_lines\"", "poll_interval = 5"),
        with("format = \"json_lines\"", "poll_interval = \"soon\""),
        with("name = \"t\"", "name = 1"),
        with("name = \"t\"", "name = [\"t\"]"),
        with("name = \"t\"", "nom = \"t\""),
        with("type = \"parse\"", "type = \"parse\"\ndelimiter = \";;\""),
        with("type = \"parse\"", "type = \"parse\"\ndelimiter = 1"),
        with("type = \"parse\"", "type = \"parse\"\ninfer_types = 1"),
        with("type = \"parse\"", "type = \"parse\"\ncolumns = [1, 2]"),
        with("type = \"parse\"", "type = \"parse\"\nempty_fields = \"none\""),
        with("type = \"parse\"", "type = 5"),
        with("type = \"parse\"", "kind = \"parse\""),
        format!("steps = 5\n{}", base.replacen(steps, "", 1)),
        format!("steps = [5]\n{}", base.replacen(steps, "", 1)),
        with("id_field = \"id\"", "id_field = \"id\"\nmax_segment_bytes = 1.5"),
        with("path = \"state\"", "path = \"state\"\nretain = -1"),
        with("path = \"state\"", "path = \"state\"\ninterval = true"),
        tail("[run]\nbatch_size = \"many\"\nmax_open_partitions = 1e3"),
        tail("[errors]\nexit_code_on_dead_letters = 300\nmax_record_bytes = \"1MB\"\ndead_letter_rate = \"fast\""),
        tail(
            "[errors.default]\ntransient = 5\npermanent = { action = \"retry\", initial = 5, jitter = \"some\", max_attempts = -2 }",
        ),
        tail("[errors.stages]\nparse = 5"),
        tail("[[errors.classify]]\nstatus = [\"x\"]\nclass = \"bad\"\nretry_after = 1"),
        tail("[errors.error_budget]\naction = \"stop\"\nmax_count = 1.5"),
        tail("[errors.sink_breaker]\nenabled = \"no\"\nfailures = -1\nopen_for = []"),
        tail("[ingest]\nconcurrency = \"4\"\nrehash = \"yes\"\nvalidators = \"non_empty\"\nmin_records = {}"),
        tail(
            "[[steps]]\ntype = \"validate\"\ntypes = { a = \"int\" }\nrules = [{ field = \"a\", reason = \"r\", max_length = 2.5, one_of = 5 }]",
        ),
        tail("[[steps]]\ntype = \"dedupe\"\nkey = 1\nwindow = 10\non_duplicate = \"keep\""),
        tail("[[steps]]\ntype = \"rename\"\nfields = [\"a\"]"),
        tail("[[steps]]\ntype = \"event_time\"\nfield = \"ts\"\nunit = \"minutes\"\nidle_timeout = 1"),
        tail(
            "[[steps]]\ntype = \"aggregate\"\nkey = \"c\"\naggregates = [\"count()\"]\nemit = \"yes\"\nfinal = \"out\"",
        ),
        tail(
            "[[sinks]]\nname = \"x\"\ntype = \"files\"\npath = \"x\"\nmax_file_bytes = \"big\"\nneutralize_formulas = 1",
        ),
        tail("[[sinks]]\nname = 1\ntype = \"stdout\""),
        format!(
            "sinks = 1\n{}",
            base.replacen("[[sinks]]\nname = \"out\"\ntype = \"files\"\npath = \"out\"\n", "", 1)
        ),
    ];
    let forbidden = [
        "usize",
        "isize",
        "u8",
        "u16",
        "u32",
        "u64",
        "u128",
        "i8",
        "i16",
        "i32",
        "i64",
        "i128",
        "f32",
        "f64",
        "char",
        "Duration",
        "String",
        "Option",
        "Vec",
        "IndexMap",
        "Value",
        "struct",
        "enum",
        "variant",
        "sequence",
        "map",
        "identifier",
        "invalid",
        "Config",
        "Toml",
    ];
    for toml in &files {
        let e = Case::new(toml, &[]).errors();
        assert!(!e.is_empty(), "no error for:\n{toml}");
        for line in e.lines() {
            let words: Vec<&str> = line.split(|c: char| !c.is_alphanumeric()).collect();
            for w in &forbidden {
                assert!(
                    !words.iter().any(|x| x == w || (w.len() > 5 && x.contains(w))),
                    "{w:?} in {line:?}"
                );
            }
            assert!(line.contains("pipeline.toml:"), "no line in {line:?}");
        }
    }
}

/// The tables of the broker, database and lake connectors are checked before any work,
/// each mistake at its key.
#[test]
fn connector_tables_are_checked_before_any_work() {
    let toml = r#"name = "t"

[source]
type = "nats"
url = "nats://127.0.0.1:4222"
stream = "S"

[[sinks]]
name = "a"
type = "nats"
url = "http://127.0.0.1:4222"
subject = "orders.*"

[[sinks]]
name = "b"
type = "postgres"
url = "postgres://keel@127.0.0.1/db"
table = ""
rows_per_statement = 0

[[sinks]]
name = "c"
type = "delta"
table = "lake/t"
columns = { id = "int128" }

[[sinks]]
name = "d"
type = "redis_stream"
url = "redis://127.0.0.1"
stream = "s"
chunk = 0

[dead_letter]
type = "postgres"
url = "postgres://keel@127.0.0.1/db"
subject = "x"
"#;
    let e = Case::new(toml, &[]).errors();
    for expected in [
        "sinks[0].url: a nats:// URL",
        "sinks[0].subject: a subject to publish to, without wildcards",
        "sinks[1].table: the table to write to",
        "sinks[1].rows_per_statement: at least 1 row per statement",
        "sinks[2].columns.id: `int128` is not a column type",
        "sinks[3].chunk: at least 1 entry per append",
        "dead_letter.subject: `subject` is for type = \"nats\"",
        "dead_letter.table: the dead-letter table (created if missing)",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
}

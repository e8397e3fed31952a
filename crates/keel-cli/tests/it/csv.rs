//! The crash test over CSV whose records span lines: the reference job reading CSV (quoted
//! notes that hold commas, quotes, LF and CRLF), killed with `kill -9` at random instants
//! and restarted; after every kill the visible output is exactly-once so far, at the end
//! every good record is in the output once and every bad one dead-lettered once with its
//! reason.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::refjob::{self, Input};

const JOB: &str = r#"
name = "reference-job-csv"

[source]
type = "files"
path = "${IN}"
format = "csv"

[[steps]]
type = "parse"
format = "csv"
infer_types = true

[[steps]]
type = "validate"
required = ["id", "ts", "customer", "amount"]
types = { id = "integer", ts = "integer", customer = "string", amount = "integer" }
rules = [{ field = "amount", min = 0, reason = "negative_amount" }]

[[steps]]
type = "aggregate"
name = "totals"
key = "customer"
aggregates = { running_total = "sum(amount)" }
final = { sink = "final", fields = { customer = "key", total = "running_total" } }

[[steps]]
type = "select"
fields = ["id", "customer", "running_total"]

[[sinks]]
name = "records"
type = "files"
path = "${OUT}/records"

[[sinks]]
name = "final"
type = "files"
path = "${OUT}/final"

[dead_letter]
path = "${OUT}/dead"
id_field = "id"

[checkpoint]
path = "${STATE}"
interval = "${KEEL_CHECKPOINT_INTERVAL:-1s}"
"#;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// `n` CSV records over `files` files; about `bad_per_mille`/1000 are bad (ragged rows,
/// a missing customer, a negative amount). Every note is quoted and spans lines.
fn generate(dir: &Path, n: u64, files: u64, customers: u64, bad_per_mille: u64, seed: u64) -> Input {
    fs::create_dir_all(dir).unwrap();
    let mut rng = seed | 1;
    let mut valid = HashMap::new();
    let mut bad = HashMap::new();
    for f in 0..files {
        let mut out = std::io::BufWriter::new(fs::File::create(dir.join(format!("part-{f:03}.csv"))).unwrap());
        out.write_all(b"id,ts,customer,amount,note\r\n").unwrap();
        for i in (f * n / files)..((f + 1) * n / files) {
            let id = i as i64;
            let cust = format!("c{}", xorshift(&mut rng) % customers);
            let amount = (xorshift(&mut rng) % 50_000) as i64 + 1;
            let ts = 1_699_923_600_000i64 + id;
            let brk = if i % 2 == 0 { "\n" } else { "\r\n" };
            let note = format!("\"n{}, said \"\"hi\"\"{brk}second line, é\"", i % 97);
            let kind = if xorshift(&mut rng) % 1000 < bad_per_mille {
                1 + xorshift(&mut rng) % 3
            } else {
                0
            };
            let rec = match kind {
                0 => {
                    valid.insert(id, (cust.clone(), amount));
                    format!("{id},{ts},{cust},{amount},{note}")
                }
                1 => format!("{id},{ts},{cust},{note}"),
                2 => format!("{id},{ts},,{amount},{note}"),
                _ => format!("{id},{ts},{cust},-{amount},{note}"),
            };
            if kind > 0 {
                bad.insert(
                    rec.clone(),
                    ["", "column_count", "missing_field", "negative_amount"][kind as usize],
                );
            }
            out.write_all(rec.as_bytes()).unwrap();
            out.write_all(if i % 3 == 0 { b"\n" } else { b"\r\n" }).unwrap();
        }
    }
    Input { valid, bad }
}

fn spawn(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", dir.join("job.toml").to_str().unwrap(), "--quiet"])
        .env("IN", dir.join("in"))
        .env("OUT", dir.join("out"))
        .env("STATE", dir.join("state"))
        .env("KEEL_CHECKPOINT_INTERVAL", "40ms")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn csv_records_spanning_lines_survive_kill_9_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = generate(&dir.join("in"), 50_000, 4, 2_000, 50, 11);
    fs::write(dir.join("job.toml"), JOB).unwrap();

    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut interrupted = 0;
    for k in 0..8 {
        let delay = Duration::from_millis(10 + xorshift(&mut rng) % 90);
        let mut child = spawn(dir);
        let started = Instant::now();
        while started.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match child.try_wait().unwrap() {
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                interrupted += 1;
            }
            // a run that ended by itself must have ended well: 0, or 1 for dead letters
            Some(status) => assert!(matches!(status.code(), Some(0 | 1)), "run {k}: {status:?}"),
        }
        let problems = refjob::check(&input, &dir.join("out"), false);
        assert!(problems.is_empty(), "kill {k} after {delay:?}: {problems:?}");
    }
    assert!(interrupted >= 2, "only {interrupted} kills hit a running job");

    let status = spawn(dir).wait().unwrap();
    assert!(matches!(status.code(), Some(0 | 1)), "final run: {status:?}");
    let problems = refjob::check(&input, &dir.join("out"), true);
    assert!(problems.is_empty(), "after the final run: {problems:?}");
}

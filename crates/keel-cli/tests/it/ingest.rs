//! Batch ingestion (`[ingest]`): kill -9 during a 200-file ingestion, two workers sharing a
//! PostgreSQL ledger, changed files, failed files and the `keel ledger` commands.
//!
//! Every input record has a unique id; valid ones must end up in `out/orders/<file>/`, bad
//! ones (negative amount) in `out/dead/<file>/`, each exactly once, and a file's output is
//! all or nothing: a published file directory holds exactly the ids of its input file.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

fn pipeline(ledger: Option<&str>, schema: &str) -> String {
    let ledger = ledger.map_or(String::new(), |l| format!("ledger = \"{l}\"\nschema = \"{schema}\"\n"));
    format!(
        r#"
name = "ingest-test"

[source]
type = "files"
path = "in"
format = "json_lines"

[[steps]]
type = "parse"
format = "json"

[[steps]]
type = "validate"
required = ["id", "customer", "amount"]
rules = [{{ field = "amount", min = 0, reason = "negative_amount" }}]

[[sinks]]
name = "orders"
type = "files"
path = "out/orders"

[dead_letter]
path = "out/dead"
id_field = "id"

[checkpoint]
path = "${{STATE}}"
interval = "20ms"

[ingest]
{ledger}lease = "10s"
max_bad_ratio = 0.5
validators = ["json_lines"]
"#
    )
}

/// The input: file name → ids, valid and bad.
#[derive(Default)]
struct Input {
    files: BTreeMap<String, (BTreeSet<u64>, BTreeSet<u64>)>,
}

/// Writes `files` input files; file `i` has `sizes(i)` records, every 17th record bad.
fn generate(dir: &Path, files: usize, sizes: impl Fn(usize) -> usize) -> Input {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let mut input = Input::default();
    let mut id = 0u64;
    for f in 0..files {
        let name = format!("batch-{f:04}.jsonl");
        let (mut good, mut bad) = (BTreeSet::new(), BTreeSet::new());
        let mut text = String::new();
        for _ in 0..sizes(f) {
            id += 1;
            let amount = if id % 17 == 0 {
                -(id as i64 % 90) - 1
            } else {
                (id % 500) as i64
            };
            text.push_str(&format!(
                "{{\"id\":{id},\"customer\":\"c{}\",\"amount\":{amount}}}\n",
                id % 31
            ));
            if amount < 0 {
                bad.insert(id)
            } else {
                good.insert(id)
            };
        }
        std::fs::write(dir.join("in").join(&name), text).unwrap();
        input.files.insert(name, (good, bad));
    }
    input
}

/// Ids in the visible files of a published unit directory (`None` if not published).
fn published_ids(unit_dir: &Path) -> Option<Vec<u64>> {
    if !unit_dir.join("_keel.json").exists() {
        return None;
    }
    let mut ids = Vec::new();
    for e in std::fs::read_dir(unit_dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            ids.push(v["id"].as_u64().unwrap());
        }
    }
    ids.sort_unstable();
    Some(ids)
}

/// Checks the visible output against the input and the ledger: every published file
/// directory is exact (all of its input's ids, once, in the right place); a file the ledger
/// calls completed has both its records and its dead letters published (the ledger's
/// `completed` is the commit point of the file's transaction: the outputs are published one
/// after the other before it, so a crash between them leaves the file in progress and the
/// next run publishes both again); with `complete`, every input file is completed.
fn check(dir: &Path, input: &Input, complete: bool) -> usize {
    let completed: BTreeSet<String> = ledger_json(dir, &["list", "--status", "completed"])
        .iter()
        .map(|u| {
            let key = u["key"].as_str().expect("a unit key");
            key.rsplit('/').next().unwrap_or(key).to_owned()
        })
        .collect();
    let mut published = 0;
    for (name, (good, bad)) in &input.files {
        let out = published_ids(&dir.join("out/orders").join(name));
        let dead = published_ids(&dir.join("out/dead").join(name));
        let done = completed.contains(name);
        match (out, dead) {
            (Some(out), Some(dead)) => {
                assert_eq!(out, good.iter().copied().collect::<Vec<_>>(), "{name}: records");
                assert_eq!(dead, bad.iter().copied().collect::<Vec<_>>(), "{name}: dead letters");
                published += 1;
            }
            (Some(out), None) => {
                assert_eq!(out, good.iter().copied().collect::<Vec<_>>(), "{name}: records");
                assert!(
                    !done,
                    "{name}: completed in the ledger without its dead letters published"
                );
            }
            (None, Some(dead)) => {
                assert_eq!(dead, bad.iter().copied().collect::<Vec<_>>(), "{name}: dead letters");
                assert!(!done, "{name}: completed in the ledger without its records published");
            }
            (None, None) => assert!(!done, "{name}: completed in the ledger but nothing published"),
        }
        assert!(done || !complete, "{name}: not completed");
    }
    // nothing else was published
    for sub in ["out/orders", "out/dead"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    name.starts_with('_') || input.files.contains_key(&name),
                    "{sub}/{name} is not an input file"
                );
            }
        }
    }
    published
}

fn keel(dir: &Path, state: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(args)
        .current_dir(dir)
        .env("STATE", dir.join(state))
        .env("RUST_LOG", "error");
    cmd
}

fn spawn_run(dir: &Path, crash_at: Option<&str>) -> Child {
    let mut cmd = keel(dir, "state", &["run", "pipeline.toml", "--quiet"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(c) = crash_at {
        cmd.env("KEEL_CRASH_AT", c);
    }
    cmd.spawn().unwrap()
}

fn run_json(dir: &Path, state: &str, worker: Option<&str>) -> (i32, serde_json::Value) {
    let mut cmd = keel(dir, state, &["run", "pipeline.toml", "--json"]);
    if let Some(w) = worker {
        cmd.env("KEEL_WORKER", w);
    }
    let out = cmd.output().unwrap();
    report(out)
}

fn report(out: Output) -> (i32, serde_json::Value) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn ledger_json(dir: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["ledger"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-f", "pipeline.toml", "--json"]);
    let out = keel(dir, "state", &all).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn staged_leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for sub in ["out/orders/_staging", "out/dead/_staging"] {
        let Ok(namespaces) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for ns in namespaces {
            let ns = ns.unwrap();
            if ns.file_name() == ".locks" {
                continue;
            }
            left.extend(std::fs::read_dir(ns.path()).unwrap().map(|e| e.unwrap().path()));
        }
    }
    left
}

#[test]
fn kill_9_during_a_200_file_ingestion_then_every_file_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // mostly small files; every 25th is large enough to span several checkpoints
    let input = generate(dir, 200, |f| if f % 25 == 7 { 12_000 } else { 300 });
    std::fs::write(dir.join("pipeline.toml"), pipeline(None, "")).unwrap();

    // deterministic crash points: inside a file's run (after a checkpoint manifest, so the
    // next run resumes it from there) and inside the commit of its transaction
    for point in [
        "after_manifest:9",
        "txn_before_publish:5",
        "txn_after_publish:6",
        "after_commit:11",
    ] {
        let status = spawn_run(dir, Some(point)).wait().unwrap();
        assert_eq!(status.signal(), Some(6), "{point}: expected an abort there: {status:?}");
        check(dir, &input, false);
    }
    // a crash inside a run leaves the file in progress with a checkpoint; the next run resumes it
    let status = spawn_run(dir, Some("after_manifest:30")).wait().unwrap();
    assert_eq!(status.signal(), Some(6), "after_manifest:30: {status:?}");
    check(dir, &input, false);
    // (up to `concurrency` = 4 files are in flight at once)
    let in_progress = ledger_json(dir, &["list", "--status", "in_progress"]);
    assert!(
        (1..=4).contains(&in_progress.len()),
        "files in progress after the crash: {in_progress:?}"
    );
    let out = keel(dir, "state", &["run", "pipeline.toml", "--quiet"])
        .env("RUST_LOG", "info")
        .env("KEEL_CRASH_AT", "txn_after_publish:2")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(6),
        "txn_after_publish:2: {:?} {log}",
        out.status
    );
    assert!(log.contains("why=ResumeOwn"), "the next run resumes the file: {log}");
    check(dir, &input, false);

    // kill -9 at 10 random instants
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut interrupted = 0;
    for _ in 0..10 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(20 + rng % 250);
        let mut child = spawn_run(dir, None);
        let started = Instant::now();
        while started.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            interrupted += 1;
        }
        child.wait().unwrap();
        check(dir, &input, false);
    }
    assert!(interrupted >= 5, "only {interrupted} kills hit a running ingestion");

    let (code, report) = run_json(dir, "state", None);
    // exit 1 for the dead letters, unless a run between the kills finished every file (a
    // loaded machine), in which case this run has nothing left to do
    let all_done_before = report["skipped"] == 200;
    assert!(
        code == 1 || (code == 0 && all_done_before),
        "the run ends with dead letters: {report}"
    );
    assert_eq!(check(dir, &input, true), 200);
    let stats = ledger_json(dir, &["stats"]);
    assert_eq!(stats[0]["completed"], 200, "{stats:?}");
    assert_eq!(stats[0]["total"], 200, "{stats:?}");
    assert!(staged_leftovers(dir).is_empty(), "{:?}", staged_leftovers(dir));

    // a rerun skips everything and changes nothing
    let (code, report) = run_json(dir, "state", None);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["skipped"], 200, "{report}");
    assert_eq!(check(dir, &input, true), 200);
}

#[test]
fn two_workers_sharing_a_postgres_ledger_process_every_file_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = generate(dir, 200, |_| 200);
    let schema = format!("ingest_{}_{}", std::process::id(), keel::util::now_ms() % 1_000_000);
    std::fs::write(dir.join("pipeline.toml"), pipeline(Some(PG), &schema)).unwrap();

    let workers: Vec<Child> = ["a", "b"]
        .iter()
        .map(|w| {
            keel(dir, &format!("state-{w}"), &["run", "pipeline.toml", "--json"])
                .env("KEEL_WORKER", format!("worker-{w}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let reports: Vec<serde_json::Value> = workers
        .into_iter()
        .map(|c| {
            let (code, r) = report(c.wait_with_output().unwrap());
            assert_eq!(code, 1, "dead letters, no failure: {r}");
            r
        })
        .collect();
    let completed: Vec<u64> = reports.iter().map(|r| r["completed"].as_u64().unwrap()).collect();
    assert_eq!(completed.iter().sum::<u64>(), 200, "{reports:?}");
    assert!(
        completed.iter().all(|&c| c > 0),
        "both workers took files: {completed:?}"
    );
    assert_eq!(check(dir, &input, true), 200);

    let units = ledger_json(dir, &["list"]);
    assert_eq!(units.len(), 200);
    for u in &units {
        assert_eq!(u["status"], "completed", "{u}");
        assert_eq!(u["attempts"], 1, "processed more than once: {u}");
    }
    let owners: BTreeSet<String> = units
        .iter()
        .filter_map(|u| u["metadata"]["worker"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(owners.len(), 2, "{owners:?}");
}

#[test]
fn a_changed_file_is_reported_by_verify_and_reprocessed_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut input = generate(dir, 5, |_| 40);
    std::fs::write(dir.join("pipeline.toml"), pipeline(None, "")).unwrap();
    let (code, report) = run_json(dir, "state", None);
    assert_eq!((code, report["completed"].as_u64()), (1, Some(5)), "{report}");
    let txid = |f: &str| {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("out/orders").join(f).join("_keel.json")).unwrap()).unwrap();
        m["txid"].as_str().unwrap().to_owned()
    };
    let before: Vec<String> = input.files.keys().map(|f| txid(f)).collect();

    // nothing changed yet
    let out = keel(dir, "state", &["ledger", "verify", "-f", "pipeline.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let changed = "batch-0002.jsonl";
    let path = dir.join("in").join(changed);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"id\":100000,\"customer\":\"new\",\"amount\":7}\n");
    std::fs::write(&path, text).unwrap();
    input.files.get_mut(changed).unwrap().0.insert(100_000);

    let out = keel(dir, "state", &["ledger", "verify", "-f", "pipeline.toml", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "verify finds a problem");
    let verdicts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let flagged: Vec<&str> = verdicts
        .iter()
        .filter(|v| v["verdict"] != "ok")
        .map(|v| v["key"].as_str().unwrap())
        .collect();
    assert_eq!(flagged, vec![changed]);
    assert_eq!(
        verdicts.iter().find(|v| v["key"] == changed).unwrap()["verdict"],
        "changed"
    );

    let (code, report) = run_json(dir, "state", None);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        (
            report["completed"].as_u64(),
            report["changed"].as_u64(),
            report["skipped"].as_u64()
        ),
        (Some(1), Some(1), Some(4)),
        "{report}"
    );
    assert_eq!(
        check(dir, &input, true),
        5,
        "the old output is replaced, not duplicated"
    );
    for (f, old) in input.files.keys().zip(&before) {
        assert_eq!(
            &txid(f) == old,
            f != changed,
            "{f}: only the changed file is published again"
        );
    }

    // the per-file dead letters are listed by `keel dlq`
    let out = keel(dir, "state", &["dlq", "list", "pipeline.toml", "--json"])
        .output()
        .unwrap();
    let bad: usize = input.files.values().map(|(_, b)| b.len()).sum();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), bad);

    // a deleted input shows up as missing
    std::fs::remove_file(dir.join("in/batch-0004.jsonl")).unwrap();
    let out = keel(dir, "state", &["ledger", "verify", "-f", "pipeline.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("missing") && text.contains("batch-0004.jsonl"), "{text}");
}

#[test]
fn failed_files_are_rolled_back_reported_retried_and_cleared_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut input = generate(dir, 4, |_| 30);
    // a file where every record is bad: over max_bad_ratio
    let bad = "batch-0001.jsonl";
    let text: String = (0..10)
        .map(|i| format!("{{\"id\":{},\"customer\":\"x\",\"amount\":-1}}\n", 50_000 + i))
        .collect();
    std::fs::write(dir.join("in").join(bad), text).unwrap();
    std::fs::write(dir.join("pipeline.toml"), pipeline(None, "")).unwrap();

    let (code, report) = run_json(dir, "state", None);
    assert_eq!(code, 4, "a failed file makes the batch exit 4: {report}");
    assert_eq!(report["completed"], 3, "{report}");
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["key"], bad);
    assert!(
        failed[0]["reason"].as_str().unwrap().contains("max_bad_ratio"),
        "{report}"
    );
    // rolled back: nothing of it published or left in staging
    assert!(!dir.join("out/orders").join(bad).exists());
    assert!(!dir.join("out/dead").join(bad).exists());
    assert!(staged_leftovers(dir).is_empty(), "{:?}", staged_leftovers(dir));

    let listed = ledger_json(dir, &["list-failed"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["key"], bad);
    assert!(listed[0]["last_error"].as_str().unwrap().contains("max_bad_ratio"));
    let stats = ledger_json(dir, &["stats"]);
    assert_eq!(
        (stats[0]["failed"].as_u64(), stats[0]["completed"].as_u64()),
        (Some(1), Some(3))
    );
    assert!((stats[0]["failure_rate"].as_f64().unwrap() - 0.25).abs() < 1e-9);

    // the next run retries it; fixed, it completes
    let fixed: String = (0..10)
        .map(|i| format!("{{\"id\":{},\"customer\":\"x\",\"amount\":{i}}}\n", 50_000 + i))
        .collect();
    std::fs::write(dir.join("in").join(bad), fixed).unwrap();
    input
        .files
        .insert(bad.into(), ((50_000..50_010).collect(), BTreeSet::new()));
    let (code, report) = run_json(dir, "state", None);
    assert!(code == 0 || code == 1, "{report}");
    assert_eq!(
        (report["completed"].as_u64(), report["retried"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(check(dir, &input, true), 4);

    // clear needs --confirm; cleared units are ingested again, their output replaced
    let out = keel(
        dir,
        "state",
        &["ledger", "clear", "-f", "pipeline.toml", "--key", "batch-0000.jsonl"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "clear without --confirm is refused");
    assert_eq!(ledger_json(dir, &["list"]).len(), 4);
    let cleared = ledger_json(dir, &["clear", "--key", "batch-0000.jsonl", "--confirm"]);
    assert_eq!(cleared[0]["cleared"], 1);
    // retry of completed units sends them back to pending
    let retried = ledger_json(dir, &["retry", "--status", "completed", "--key", "batch-0003.jsonl"]);
    assert_eq!(retried[0]["retried"], 1);
    let (_, report) = run_json(dir, "state", None);
    assert_eq!(
        (
            report["new"].as_u64(),
            report["retried"].as_u64(),
            report["skipped"].as_u64()
        ),
        (Some(1), Some(1), Some(2)),
        "{report}"
    );
    assert_eq!(check(dir, &input, true), 4);
}

#[test]
fn a_file_changed_while_its_worker_was_down_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut input = generate(dir, 1, |_| 20_000);
    std::fs::write(dir.join("pipeline.toml"), pipeline(None, "")).unwrap();
    // crash in the middle of the file, after some of its checkpoints
    let status = spawn_run(dir, Some("after_manifest:3")).wait().unwrap();
    assert_eq!(status.signal(), Some(6));
    assert_eq!(ledger_json(dir, &["list", "--status", "in_progress"]).len(), 1);
    // the file is rewritten with other records before the worker comes back
    let name = "batch-0000.jsonl";
    let text: String = (0..500)
        .map(|i| format!("{{\"id\":{},\"customer\":\"n\",\"amount\":{}}}\n", 900_000 + i, i))
        .collect();
    std::fs::write(dir.join("in").join(name), text).unwrap();
    input
        .files
        .insert(name.into(), ((900_000..900_500).collect(), Default::default()));
    let (code, report) = run_json(dir, "state", None);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["resumed"], 1, "{report}");
    assert_eq!(
        check(dir, &input, true),
        1,
        "only the new content, no record of the old"
    );
}

#[test]
fn two_runs_of_one_worker_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(dir, 1, |_| 200_000);
    std::fs::write(dir.join("pipeline.toml"), pipeline(None, "")).unwrap();
    let mut first = spawn_run(dir, None);
    // wait until the first run holds its lock and works on the file
    let started = Instant::now();
    while ledger_json(dir, &["list", "--status", "in_progress"]).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first run never started"
        );
        assert!(first.try_wait().unwrap().is_none(), "the first run ended too early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = keel(dir, "state", &["run", "pipeline.toml", "--quiet"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{err}");
    assert!(err.contains("another run of worker"), "{err}");
    first.kill().unwrap();
    first.wait().unwrap();
}

/// A worker killed with SIGKILL in the middle of a file holds it until its lease runs out:
/// another worker sharing the PostgreSQL ledger leaves the file alone while the lease holds
/// (`busy`), takes it over once it expired (`why=TakeOver`, attempt 2), and the file's output
/// is exactly its input, published once.
#[test]
fn a_dead_workers_file_is_taken_over_once_its_lease_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // one large file (many checkpoints) among small ones
    let input = generate(dir, 6, |f| if f == 0 { 40_000 } else { 200 });
    let schema = format!("takeover_{}_{}", std::process::id(), keel::util::now_ms() % 1_000_000);
    let text = pipeline(Some(PG), &schema).replace("lease = \"10s\"", "lease = \"4s\"");
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();

    let mut a = keel(dir, "state-a", &["run", "pipeline.toml", "--quiet"])
        .env("KEEL_WORKER", "worker-a")
        .env("KEEL_CRASH_AT", "after_manifest:3:hang")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // readiness: worker a holds the large file and has checkpointed it
    let held = |owner: &str| {
        ledger_json(dir, &["list", "--status", "in_progress"])
            .into_iter()
            .filter(|u| u["owner"] == owner)
            .count()
    };
    let started = Instant::now();
    while held("worker-a") == 0 || !dir.join("state-a").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "worker a never held a file"
        );
        assert!(a.try_wait().unwrap().is_none(), "worker a ended by itself");
        std::thread::sleep(Duration::from_millis(10));
    }
    a.kill().unwrap();
    a.wait().unwrap();
    let held_by_a = held("worker-a");
    assert!(held_by_a >= 1);

    // worker b right away: a's files are busy, the rest is done
    let (code, first) = run_json(dir, "state-b", Some("worker-b"));
    assert!(code == 0 || code == 1, "{first}");
    let mut busy = first["busy"].as_u64().unwrap_or(0);
    assert_eq!(
        busy as usize, held_by_a,
        "worker b leaves worker a's files alone: {first}"
    );
    assert_eq!(held("worker-a"), held_by_a, "still held");
    // then, once the lease ran out, worker b takes them over (bounded: a few lease lengths)
    let mut log = String::new();
    let started = Instant::now();
    while busy > 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "never taken over: {log}");
        std::thread::sleep(Duration::from_millis(250));
        let out = keel(dir, "state-b", &["run", "pipeline.toml", "--json"])
            .env("KEEL_WORKER", "worker-b")
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        log = String::from_utf8_lossy(&out.stderr).into_owned();
        let (code, report) = self::report(out);
        assert!(code == 0 || code == 1, "{report} {log}");
        busy = report["busy"].as_u64().unwrap_or(0);
    }
    assert!(log.contains("why=TakeOver"), "{log}");
    assert_eq!(check(dir, &input, true), 6);
    let units = ledger_json(dir, &["list"]);
    assert!(units.iter().all(|u| u["status"] == "completed"), "{units:?}");
    let taken_over = units
        .iter()
        .filter(|u| u["attempts"] == 2 && u["metadata"]["worker"] == "worker-b")
        .count();
    assert_eq!(taken_over, held_by_a, "{units:?}");
}

/// `[[notify]]` on a batch ingestion: a file that fails (rolled back) is announced once,
/// with its name.
#[test]
fn failed_files_are_announced_to_the_webhook() {
    let (url, got) = crate::notify::receiver();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generate(dir, 3, |_| 20);
    let bad = "batch-0001.jsonl";
    let text: String = (0..10)
        .map(|i| format!("{{\"id\":{},\"customer\":\"x\",\"amount\":-1}}\n", 70_000 + i))
        .collect();
    std::fs::write(dir.join("in").join(bad), text).unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        format!("{}\n[[notify]]\nurl = \"{url}/ingest\"\n", pipeline(None, "")),
    )
    .unwrap();
    let (code, report) = run_json(dir, "state", None);
    assert_eq!(code, 4, "{report}");
    let events: Vec<serde_json::Value> = got.lock().unwrap().iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "ingest_files_failed");
    assert_eq!(events[0]["failed"], 1);
    assert_eq!(events[0]["files"], serde_json::json!([bad]));
}

//! The `keel` command: exit codes, messages, checkpoints commands, signals.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::refjob;

fn keel(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A copy of the orders example in a temp dir.
fn example(tmp: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/orders");
    let dir = tmp.join("orders");
    std::fs::create_dir_all(dir.join("input")).unwrap();
    std::fs::copy(root.join("pipeline.toml"), dir.join("pipeline.toml")).unwrap();
    for e in std::fs::read_dir(root.join("input")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join("input").join(e.file_name())).unwrap();
    }
    dir
}

/// The orders example without its keyed state (no running totals): replays may go through
/// its steps.
fn stateless_example(tmp: &Path) -> PathBuf {
    let dir = example(tmp);
    let p = dir.join("pipeline.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let start = text.find("[[steps]]\ntype = \"aggregate\"").unwrap();
    let end = start + text[start..].find("\n\n").unwrap() + 2;
    let text = format!("{}{}", &text[..start], &text[end..]).replace(
        "fields = [\"id\", \"customer\", \"running_total\"]",
        "fields = [\"id\", \"customer\", \"amount\"]",
    );
    std::fs::write(&p, text).unwrap();
    dir
}

#[test]
fn run_then_rerun_then_from_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = example(tmp.path());
    let p = dir.join("pipeline.toml");
    let o = keel(&["run", p.to_str().unwrap(), "--quiet"], &[]);
    assert_eq!(o.status.code(), Some(1), "dead letters give exit code 1: {}", text(&o));
    assert!(text(&o).contains("dead-lettered"), "{}", text(&o));
    let records = refjob::visible_lines(&dir.join("out/records")).len();
    let dead = refjob::visible_lines(&dir.join("out/dead")).len();
    assert!(records > 1900 && dead > 10, "records={records} dead={dead}");
    assert_eq!(records + dead, 2000);

    let o = keel(&["run", p.to_str().unwrap(), "--quiet"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing to do"), "{}", text(&o));
    assert_eq!(refjob::visible_lines(&dir.join("out/records")).len(), records);

    // --from-scratch over existing output needs --confirm, and says what it would delete
    let o = keel(&["run", p.to_str().unwrap(), "--quiet", "--from-scratch"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--from-scratch would delete") && text(&o).contains("out/records"),
        "{}",
        text(&o)
    );
    assert_eq!(refjob::visible_lines(&dir.join("out/records")).len(), records);

    let o = keel(
        &[
            "run",
            p.to_str().unwrap(),
            "--quiet",
            "--from-scratch",
            "--confirm",
            "--json",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["records_in"], 2000);
    assert_eq!(summary["outcome"], "finished");
    assert_eq!(refjob::visible_lines(&dir.join("out/records")).len(), records);
    assert_eq!(refjob::visible_lines(&dir.join("out/dead")).len(), dead);

    // the checkpoint directory lost: the output is refused, not deleted (exit 3)
    std::fs::remove_dir_all(dir.join("state")).unwrap();
    let o = keel(&["run", p.to_str().unwrap(), "--quiet"], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("has no checkpoint"), "{}", text(&o));
    assert_eq!(refjob::visible_lines(&dir.join("out/records")).len(), records);

    // another pipeline pointed at this output is refused whatever it is asked
    let other = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("name = \"orders\"", "name = \"other\"", 1);
    let q = dir.join("other.toml");
    std::fs::write(&q, other.replace("path = \"state\"", "path = \"state-other\"")).unwrap();
    let o = keel(
        &["run", q.to_str().unwrap(), "--quiet", "--from-scratch", "--confirm"],
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("holds the output of pipeline `orders`, not `other`"),
        "{}",
        text(&o)
    );
    assert_eq!(refjob::visible_lines(&dir.join("out/records")).len(), records);
}

#[test]
fn validate_reports_the_line_and_key_of_each_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = example(tmp.path());
    let p = dir.join("pipeline.toml");
    let o = keel(&["validate", p.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("exactly-once"), "{}", text(&o));

    let bad = std::fs::read_to_string(&p)
        .unwrap()
        .replace("reason = \"negative_amount\"", "reason = \"Negative Amount\"")
        .replace(
            "aggregates = { running_total = \"sum(amount)\" }",
            "aggregates = { running_total = \"avg(amount)\" }",
        );
    std::fs::write(&p, bad).unwrap();
    let o = keel(&["validate", p.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("pipeline.toml:23: steps[1].rules[0].reason"), "{t}");
    assert!(
        t.contains("steps[3].aggregates.running_total") && t.contains("unknown function `avg`"),
        "{t}"
    );

    std::fs::write(
        &p,
        "name = \"x\"\n[source]\ntype = \"files\"\npath = \"in\"\ncolour = 1\n",
    )
    .unwrap();
    let o = keel(&["run", p.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("pipeline.toml:") && text(&o).contains("colour"),
        "{}",
        text(&o)
    );
}

/// A file with mistakes in several `[[steps]]` and `[[sinks]]` entries: `keel run` reports them
/// all, each with the line and path of its key, and exits 2 before any work starts.
#[test]
fn config_errors_are_all_reported_with_line_and_path() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("pipeline.toml");
    std::fs::write(
        &p,
        r#"name = "t"

[source]
type = "files"
path = "in"

[[steps]]
type = "parse"

[[steps]]
type = "event_time"
field = "ts"
lateness = 5

[[steps]]
type = "dedupe"
key = "id"
window = "1m"
on_duplicat = "drop"

[[sinks]]
name = "out"
type = "files"
path = "out"

[[sinks]]
name = "copy"
type = "files"
path = "copy"
max_file_bytes = "big"
"#,
    )
    .unwrap();
    let o = keel(&["run", p.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let f = p.display();
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "keel: config error: {f}:13: steps[1].lateness: expected a duration like \"5s\", found 5\n\
             keel: config error: {f}:19: steps[2].on_duplicat: unknown key `on_duplicat`; did you mean `on_duplicate`?\n\
             keel: config error: {f}:30: sinks[1].max_file_bytes: expected a whole number, found \"big\"\n"
        )
    );
    assert!(!tmp.path().join("state").exists(), "no work started");
}

#[test]
fn usage_errors_exit_2() {
    let o = keel(&["run"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = keel(&["frobnicate"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = keel(&["run", "/nonexistent/pipeline.toml"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("cannot read the pipeline file"), "{}", text(&o));
}

/// The visible output of the orders example: sorted record ids (duplicates kept), sorted raw
/// lines of the dead letters, sorted final totals.
fn complete_output(dir: &Path) -> (Vec<i64>, Vec<String>, Vec<String>) {
    let json = |l: &String| serde_json::from_str::<serde_json::Value>(l).unwrap();
    let mut ids: Vec<i64> = refjob::visible_lines(&dir.join("out/records"))
        .iter()
        .map(|l| json(l)["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    let mut dead: Vec<String> = refjob::visible_lines(&dir.join("out/dead"))
        .iter()
        .map(|l| json(l)["raw"].as_str().unwrap().to_owned())
        .collect();
    dead.sort();
    let mut totals = refjob::visible_lines(&dir.join("out/final"));
    totals.sort();
    (ids, dead, totals)
}

#[test]
fn checkpoints_commands_and_fallback_from_a_corrupt_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = example(tmp.path());
    let p = dir.join("pipeline.toml");
    let ps = p.to_str().unwrap();
    let o = keel(&["run", ps, "--quiet"], &[]);
    assert_eq!(o.status.code(), Some(1), "dead letters give exit code 1: {}", text(&o));
    let complete = complete_output(&dir);
    assert_eq!(
        complete.0.len() + complete.1.len(),
        2000,
        "every input line is a record or a dead letter"
    );
    let o = keel(&["checkpoints", "list", ps], &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).contains("finished"), "{}", text(&o));
    let o = keel(&["checkpoints", "show", ps], &[]);
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["pipeline"], "orders");
    assert_eq!(m["stats"]["records_in"], 2000);
    let o = keel(&["checkpoints", "verify", ps], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // corrupt the newest manifest: verify says so, and a run falls back to the previous state
    let ckpts = dir.join("state/checkpoints");
    let mut names: Vec<_> = std::fs::read_dir(&ckpts).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let newest = names.last().unwrap().clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    std::fs::write(&newest, bytes).unwrap();
    let o = keel(&["checkpoints", "verify", ps], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("CORRUPT"), "{}", text(&o));
    // the only checkpoint is corrupt: there is no previous one to fall back to, and the run
    // refuses to delete output that no usable checkpoint accounts for (exit 3), unchanged
    let o = keel(&["run", ps, "--quiet"], &[]);
    assert!(
        text(&o).contains("unusable"),
        "a warning names the skipped checkpoint: {}",
        text(&o)
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("has no checkpoint"), "{}", text(&o));
    assert_eq!(complete_output(&dir), complete, "the output after the refusal");

    // two checkpoints, the newest corrupt: the run falls back to the previous one, rolls back
    // the output of the newer epoch, produces it again and completes, every record once
    let job = tmp.path().join("refjob");
    let input = refjob::generate(&job.join("in"), 60_000, 2, 500, 50, 5);
    std::fs::write(job.join("job.toml"), refjob::JOB).unwrap();
    let run = |crash_at: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        cmd.args(["run", job.join("job.toml").to_str().unwrap(), "--quiet"])
            .env("IN", job.join("in"))
            .env("OUT", job.join("out"))
            .env("STATE", job.join("state"))
            .env("KEEL_CHECKPOINT_INTERVAL", "20ms")
            .env("RUST_LOG", "warn");
        if let Some(c) = crash_at {
            cmd.env("KEEL_CRASH_AT", c);
        }
        cmd.output().unwrap()
    };
    // each run aborts right after committing its first checkpoint: checkpoints 1 and 2
    for _ in 0..2 {
        let o = run(Some("after_commit:1"));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&o.status),
            Some(6),
            "{}",
            text(&o)
        );
    }
    let mut names: Vec<_> = std::fs::read_dir(job.join("state/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // (ids skip the epochs that were pending at each abort, I4)
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0], "ckpt-00000000000000000001.json");
    let newest = job.join("state/checkpoints").join(&names[1]);
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    std::fs::write(&newest, bytes).unwrap();
    let o = run(None);
    assert!(
        text(&o).contains("unusable"),
        "a warning names the fallback: {}",
        text(&o)
    );
    assert!(text(&o).contains("resumed from checkpoint 1"), "{}", text(&o));
    assert_eq!(o.status.code(), Some(1), "dead letters give exit code 1: {}", text(&o));
    let problems = refjob::check(&input, &job.join("out"), true);
    assert!(problems.is_empty(), "after the fallback: {problems:?}");

    let o = keel(&["checkpoints", "prune", ps, "--keep", "1"], &[]);
    assert_eq!(o.status.code(), Some(2), "prune needs --confirm");
    let o = keel(&["checkpoints", "prune", ps, "--keep", "1", "--confirm"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn sigterm_stops_gracefully_and_a_rerun_completes_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = refjob::generate(&dir.join("in"), 400_000, 2, 1_000, 3, 11);
    std::fs::write(dir.join("job.toml"), refjob::JOB).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", dir.join("job.toml").to_str().unwrap(), "--quiet"])
        .env("IN", dir.join("in"))
        .env("OUT", dir.join("out"))
        .env("STATE", dir.join("state"))
        .env("KEEL_CHECKPOINT_INTERVAL", "100ms")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // readiness: the run has committed a checkpoint, so it is processing (bounded wait)
    let ckpts = dir.join("state/checkpoints");
    for i in 0.. {
        let ready = std::fs::read_dir(&ckpts)
            .is_ok_and(|mut d| d.any(|e| e.unwrap().file_name().to_string_lossy().starts_with("ckpt-")));
        if ready {
            break;
        }
        assert!(i < 60_000, "no checkpoint after 60,000 polls");
        std::thread::sleep(Duration::from_millis(1));
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "graceful stop: {:?} {err}",
        out.status
    );
    assert!(err.contains("stopped"), "{err}");
    // the final checkpoint of the stop covers everything visible
    let problems = refjob::check(&input, &dir.join("out"), false);
    assert!(problems.is_empty(), "{problems:?}");
    let o = keel(
        &["run", dir.join("job.toml").to_str().unwrap(), "--quiet"],
        &[
            ("IN", &dir.join("in")),
            ("OUT", &dir.join("out")),
            ("STATE", &dir.join("state")),
        ],
    );
    assert!(text(&o).contains("resumed from checkpoint"), "{}", text(&o));
    let problems = refjob::check(&input, &dir.join("out"), true);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn dlq_commands_list_show_stats_replay_and_purge() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = stateless_example(tmp.path());
    let p = dir.join("pipeline.toml");
    let ps = p.to_str().unwrap();
    assert_eq!(keel(&["run", ps, "--quiet"], &[]).status.code(), Some(1));

    let o = keel(&["dlq", "stats", ps, "--json"], &[]);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["total"], 55);
    let neg = stats["by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "negative_amount")
        .unwrap()["count"]
        .as_u64()
        .unwrap();

    let o = keel(
        &["dlq", "list", ps, "--reason", "malformed", "--json", "--limit", "2"],
        &[],
    );
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|e| e["reason"] == "malformed" && e["stage"] == "parse")
    );
    // the text listing: oldest first, positions shown as byte offsets (`@1460`)
    let all: Vec<serde_json::Value> = String::from_utf8_lossy(&keel(&["dlq", "list", ps, "--json"], &[]).stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let times: Vec<u64> = all.iter().map(|e| e["last_failed_ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first: {times:?}");
    let o = keel(&["dlq", "list", ps], &[]);
    let text_lines: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect();
    assert_eq!(text_lines.len(), 55);
    for (line, e) in text_lines.iter().zip(&all) {
        let at = format!(" @{} ", e["position"]);
        assert!(line.contains(&at), "{line:?} shows {at:?}");
        assert!(
            line.starts_with(e["location"].as_str().unwrap()),
            "{line:?} in the order of --json"
        );
    }
    let loc = listed[0]["location"].as_str().unwrap().to_owned();
    let o = keel(&["dlq", "show", ps, &loc], &[]);
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["raw"], listed[0]["raw"]);

    // replay through the pipeline: the records fail again, the envelopes record the replay
    let o = keel(&["dlq", "replay", ps, "--reason", "negative_amount"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&format!("{neg} envelopes marked")), "{}", text(&o));
    let o = keel(&["dlq", "list", ps, "--replayed", "--json"], &[]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count() as u64, neg);
    // a second replay skips what was replayed: only the new dead letters of the first replay
    let o = keel(&["dlq", "replay", ps, "--reason", "negative_amount", "--dry-run"], &[]);
    assert!(
        text(&o).contains(&format!("{neg} dead letters would be replayed")),
        "{}",
        text(&o)
    );
    let o = keel(
        &[
            "dlq",
            "replay",
            ps,
            "--reason",
            "negative_amount",
            "--force",
            "--dry-run",
        ],
        &[],
    );
    assert!(
        text(&o).contains(&format!("{} dead letters would be replayed", 2 * neg)),
        "{}",
        text(&o)
    );

    // replay straight to a sink: the original bytes land in the records output
    let before = refjob::visible_lines(&dir.join("out/records")).len();
    let o = keel(
        &[
            "dlq",
            "replay",
            ps,
            "--reason",
            "malformed",
            "--to-sink",
            "records",
            "--limit",
            "1",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let after = refjob::visible_lines(&dir.join("out/records"));
    assert_eq!(after.len(), before + 1);
    assert_eq!(after.last().unwrap(), shown["raw"].as_str().unwrap());

    // purge needs --confirm
    let o = keel(&["dlq", "purge", ps, "--replayed"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = keel(&["dlq", "purge", ps, "--replayed", "--confirm"], &[]);
    assert!(
        text(&o).contains(&format!("deleted {} dead letters", neg + 1)),
        "{}",
        text(&o)
    );

    // a tampered line is reported as corrupt, never served
    let seg = std::fs::read_dir(dir.join("out/dead"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("dead-0"))
        .unwrap();
    let text_before = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(
        &seg,
        text_before.replacen("\"reason\":\"malformed\"", "\"reason\":\"malformeD\"", 1),
    )
    .unwrap();
    let o = keel(&["dlq", "stats", ps, "--json"], &[]);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["corrupt"], 1);
}

/// A replay interrupted between its run and the marking of its envelopes, then a purge that
/// moves lines, then the resumed replay: exactly the selected envelopes that are left are
/// marked (each once), and every selected record was replayed once.
#[test]
fn dlq_replay_resumed_after_a_purge_marks_the_right_envelopes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = example(tmp.path());
    let p = dir.join("pipeline.toml");
    let ps = p.to_str().unwrap();
    assert_eq!(keel(&["run", ps, "--quiet"], &[]).status.code(), Some(1));
    let list = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = vec!["dlq", "list", ps, "--json"];
        a.extend_from_slice(args);
        let o = keel(&a, &[]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let negative = list(&["--reason", "negative_amount"]);
    assert!(!negative.is_empty());
    let before = refjob::visible_lines(&dir.join("out/records")).len();

    // interrupted after the replay ran, before it marked anything
    let o = keel(
        &[
            "dlq",
            "replay",
            ps,
            "--reason",
            "negative_amount",
            "--to-sink",
            "records",
        ],
        &[("KEEL_CRASH_AT", Path::new("replay_before_mark:1"))],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(list(&["--replayed"]).is_empty());

    // a purge moves the lines of the selected envelopes
    let o = keel(&["dlq", "purge", ps, "--reason", "malformed", "--confirm"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(list(&["--reason", "malformed"]).is_empty());

    // resumed: the same envelopes are marked, and nothing is replayed twice
    let o = keel(
        &[
            "dlq",
            "replay",
            ps,
            "--reason",
            "negative_amount",
            "--to-sink",
            "records",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resumed"), "{}", text(&o));
    let replayed = list(&["--replayed"]);
    let key = |e: &serde_json::Value| {
        (
            e["raw"].to_string(),
            e["position"].to_string(),
            e["partition"].to_string(),
        )
    };
    let mut want: Vec<_> = negative.iter().map(key).collect();
    let mut got: Vec<_> = replayed.iter().map(key).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "exactly the selected envelopes are marked");
    assert!(
        replayed
            .iter()
            .all(|e| e["replays"].as_array().map(Vec::len) == Some(1))
    );
    let after = refjob::visible_lines(&dir.join("out/records"));
    assert_eq!(
        after.len(),
        before + negative.len(),
        "each selected record replayed once"
    );
}

/// CLI details a new user met (issue 10.7): a closed pipe ends `keel dlq list` quietly; a
/// checkpoints command without a target is a usage error (2); `--quiet` leaves only errors
/// on stderr (RUST_LOG unset); a stop says how to resume.
#[test]
fn pipes_usage_quiet_and_resume_hints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    refjob::generate(&dir.join("in"), 20_000, 2, 100, 100, 5);
    std::fs::write(dir.join("job.toml"), refjob::JOB).unwrap();
    let envs = [
        ("IN", dir.join("in")),
        ("OUT", dir.join("out")),
        ("STATE", dir.join("state")),
    ];
    let mut run = Command::new(env!("CARGO_BIN_EXE_keel"));
    run.args(["run", dir.join("job.toml").to_str().unwrap(), "--quiet"])
        .env_remove("RUST_LOG");
    for (k, v) in &envs {
        run.env(k, v);
    }
    let o = run.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("INFO") && !err.contains("WARN"),
        "--quiet printed logs: {err}"
    );

    // about 2,000 dead letters: far more than a pipe buffer
    let mut list = Command::new(env!("CARGO_BIN_EXE_keel"));
    list.args(["dlq", "list", dir.join("job.toml").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &envs {
        list.env(k, v);
    }
    let mut child = list.spawn().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
    assert!(!first.is_empty());
    let out = child.wait_with_output().unwrap(); // stdout was closed after one line
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let o = keel(&["checkpoints", "list"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("name a pipeline file or --state DIR"), "{}", text(&o));

    // `--dir`: the same dead letters without the pipeline file (issue 10.9)
    let dead = dir.join("out/dead");
    let by_pipeline = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["dlq", "stats", dir.join("job.toml").to_str().unwrap(), "--json"])
        .envs(envs.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    let by_dir = keel(&["dlq", "stats", "--dir", dead.to_str().unwrap(), "--json"], &[]);
    assert_eq!(by_dir.status.code(), Some(0), "{}", text(&by_dir));
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&by_pipeline.stdout).unwrap(),
        serde_json::from_slice(&by_dir.stdout).unwrap(),
    );
    assert!(a["total"].as_u64().unwrap() > 1000);
    assert_eq!(a, b);
    let first_loc = first.split_whitespace().next().unwrap();
    let o = keel(&["dlq", "show", "--dir", dead.to_str().unwrap(), first_loc], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = keel(&["dlq", "replay", "--dir", dead.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("replay needs the pipeline file"), "{}", text(&o));
}

/// A replay through a pipeline with keyed state is refused with what to do instead (issue
/// 10.2: it ran outside the state and wrote a second, wrong total); `--to-sink` works, and a
/// run from scratch removes the replays' output and checkpoints, so no replayed record is
/// both output and dead-lettered again.
#[test]
fn replays_of_stateful_pipelines_are_refused_and_from_scratch_removes_replays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = example(tmp.path());
    let p = dir.join("pipeline.toml");
    let ps = p.to_str().unwrap();
    assert_eq!(keel(&["run", ps, "--quiet"], &[]).status.code(), Some(1));
    let records = refjob::visible_lines(&dir.join("out/records")).len();
    let dead = refjob::visible_lines(&dir.join("out/dead")).len();
    let o = keel(&["dlq", "replay", ps], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("keeps keyed state (steps `totals`)") && text(&o).contains("--to-sink"),
        "{}",
        text(&o)
    );
    assert_eq!(
        refjob::visible_lines(&dir.join("out/records")).len(),
        records,
        "nothing was replayed"
    );

    let o = keel(
        &["dlq", "replay", ps, "--reason", "malformed", "--to-sink", "records"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(refjob::visible_lines(&dir.join("out/records")).len() > records);
    assert!(dir.join("state/replays").exists());

    let o = keel(&["run", ps, "--quiet", "--from-scratch", "--confirm"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!dir.join("state/replays").exists());
    let names: Vec<String> = std::fs::read_dir(dir.join("out/records"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("replay")), "{names:?}");
    assert_eq!(refjob::visible_lines(&dir.join("out/records")).len(), records);
    assert_eq!(refjob::visible_lines(&dir.join("out/dead")).len(), dead);
    assert!(
        keel(&["dlq", "list", ps, "--replayed"], &[]).stdout.is_empty(),
        "no replayed envelope is left"
    );
}

/// Runs the reference job in `dir` with `extra` TOML appended to its pipeline file.
fn refjob_run(dir: &Path, extra: &str, envs: &[(&str, &str)]) -> Output {
    std::fs::write(dir.join("job.toml"), format!("{}\n{extra}", refjob::JOB)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(["run", dir.join("job.toml").to_str().unwrap(), "--quiet"])
        .env("IN", dir.join("in"))
        .env("OUT", dir.join("out"))
        .env("STATE", dir.join("state"))
        .env("KEEL_CHECKPOINT_INTERVAL", "20ms");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Exit 3 means "failed, the last checkpoint is intact, run again to resume": a `fail`
/// policy and an error budget that aborts both end that way, their output is what their
/// checkpoints account for, and the run resumed with the default policies is exactly once.
#[test]
fn a_failed_or_aborted_pipeline_exits_3_and_a_rerun_resumes_exactly_once() {
    for (what, extra) in [
        ("fail", "[errors.default]\npermanent = \"fail\"\n"),
        (
            "abort",
            "[errors.error_budget]\nmax_percent = 0.01\naction = \"abort\"\n",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let input = refjob::generate(&dir.join("in"), 60_000, 2, 300, 3, 5);
        let o = refjob_run(dir, extra, &[]);
        assert_eq!(o.status.code(), Some(3), "{what}: {}", text(&o));
        let problems = refjob::check(&input, &dir.join("out"), false);
        assert!(problems.is_empty(), "{what}: {problems:?}");
        let o = refjob_run(dir, "", &[]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{what}: resumed, with dead letters: {}",
            text(&o)
        );
        let problems = refjob::check(&input, &dir.join("out"), true);
        assert!(problems.is_empty(), "{what}: {problems:?}");
    }
}

/// A second SIGINT exits at once (130) even when the final checkpoint of the first can never
/// finish (storage that hangs, simulated by a crash point in `hang` mode); nothing the last
/// durable checkpoint does not cover is visible, and a rerun completes exactly once.
#[test]
fn a_second_signal_exits_at_once_while_the_final_checkpoint_hangs() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = refjob::generate(&dir.join("in"), 400_000, 2, 1_000, 3, 13);
    std::fs::write(dir.join("job.toml"), refjob::JOB).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", dir.join("job.toml").to_str().unwrap()])
        .env("IN", dir.join("in"))
        .env("OUT", dir.join("out"))
        .env("STATE", dir.join("state"))
        .env("KEEL_CHECKPOINT_INTERVAL", "50ms")
        .env("KEEL_CRASH_AT", "after_prepare:3:hang")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let mut wait_for = |needle: &str| {
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                    if line.contains(needle) {
                        return;
                    }
                }
                Err(e) => panic!("no `{needle}` ({e}): {log}"),
            }
        }
    };
    let signal = |pid: u32| {
        let s = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
        assert!(s.success());
    };
    wait_for("after_prepare:3:hang reached");
    signal(child.id());
    wait_for("signal received");
    signal(child.id());
    wait_for("second signal");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}: {log}");
    let problems = refjob::check(&input, &dir.join("out"), false);
    assert!(problems.is_empty(), "{problems:?}");
    let o = keel(
        &["run", dir.join("job.toml").to_str().unwrap(), "--quiet"],
        &[
            ("IN", &dir.join("in")),
            ("OUT", &dir.join("out")),
            ("STATE", &dir.join("state")),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let problems = refjob::check(&input, &dir.join("out"), true);
    assert!(problems.is_empty(), "{problems:?}");
}

/// Follow mode across crashes: lines appended to followed files (and new files) while runs
/// are killed with SIGKILL and resumed are each committed exactly once; a final SIGTERM
/// stops the run gracefully with everything committed.
#[test]
fn follow_mode_resumes_after_kill_9_with_every_appended_line_once() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(
        dir.join("follow.toml"),
        r#"name = "follow"

[source]
type = "files"
path = "in"
format = "json_lines"
pattern = "*.txt"
follow = true
poll_interval = "10ms"

[[sinks]]
name = "out"
type = "files"
path = "out"

[checkpoint]
path = "state"
interval = "20ms"
"#,
    )
    .unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["run", "follow.toml", "--quiet"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let committed = || -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(dir.join("out")) else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !name.starts_with('_') {
                lines.extend(std::fs::read_to_string(e.path()).unwrap().lines().map(str::to_owned));
            }
        }
        lines.sort();
        lines
    };
    // bounded wait until `n` lines are committed
    let wait_for = |n: usize, child: &mut std::process::Child| {
        for _ in 0..6000 {
            if committed().len() >= n {
                return;
            }
            assert!(child.try_wait().unwrap().is_none(), "the run ended by itself");
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("only {} of {n} lines committed after 60 s", committed().len());
    };
    let append = |file: &str, from: usize, to: usize| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("in").join(file))
            .unwrap();
        for i in from..to {
            writeln!(f, "{{\"line\":\"{file}:{i}\"}}").unwrap();
        }
    };
    let mut want = Vec::new();
    let mut expect = |file: &str, from: usize, to: usize| {
        append(file, from, to);
        want.extend((from..to).map(|i| format!("{{\"line\":\"{file}:{i}\"}}")));
        want.len()
    };
    expect("a.txt", 0, 500);
    let mut n = expect("b.txt", 0, 500);
    for round in 0..4 {
        let mut child = spawn();
        wait_for(n, &mut child);
        // lines appended while the run follows, then a kill at an unknown point of their reading
        expect("a.txt", 500 + round * 1000, 1000 + round * 1000);
        expect(&format!("new-{round}.txt"), 0, 300);
        n = expect("b.txt", 500 + round * 1000, 1000 + round * 1000);
        std::thread::sleep(Duration::from_millis(5 * round as u64));
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(9), "round {round}: killed");
        // what is visible was committed by a checkpoint: never a duplicate
        let seen = committed();
        let unique: std::collections::BTreeSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "round {round}: a line is visible twice");
    }
    let total = expect("a.txt", 10_000, 10_100);
    let mut child = spawn();
    wait_for(total, &mut child);
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    want.sort();
    assert_eq!(committed(), want, "every appended line exactly once");
}

/// On a terminal (a pty from `script`), a log line written while the progress line is shown
/// starts on a cleared line instead of being glued onto the progress text.
#[test]
fn log_lines_clear_the_progress_line_first() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(dir.join("in/a.jsonl"), "{\"x\":1}\n".repeat(1000)).unwrap();
    std::fs::write(
        dir.join("follow.toml"),
        "name = \"tty\"\n[source]\ntype = \"files\"\npath = \"in\"\nfollow = true\n\n\
         [[sinks]]\nname = \"out\"\ntype = \"files\"\npath = \"out\"\n\n\
         [checkpoint]\npath = \"state\"\ninterval = \"50ms\"\n",
    )
    .unwrap();
    let cmd = format!("exec {} run follow.toml", env!("CARGO_BIN_EXE_keel"));
    let mut script = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = script.stdout.take().unwrap();
    let s2 = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            s2.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    // readiness: the progress line is on screen with a checkpoint
    for i in 0.. {
        if text().contains("checkpoint #") {
            break;
        }
        assert!(i < 6000, "no progress line: {:?}", text());
        std::thread::sleep(Duration::from_millis(10));
    }
    let pgrep = Command::new("pgrep")
        .args(["-P", &script.id().to_string()])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pgrep.stdout).trim().to_owned();
    assert!(!pid.is_empty(), "keel runs under script");
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = script.wait().unwrap();
    reader.join().unwrap();
    let out = text();
    assert_eq!(status.code(), Some(0), "{out:?}");
    let line = out
        .split('\n')
        .find(|l| l.contains("signal received"))
        .unwrap_or_else(|| panic!("no signal log: {out:?}"));
    let tail = line.rsplit("\x1b[K").next().unwrap_or(line);
    assert!(
        !tail.contains("checkpoint #") && !tail.contains("/s)"),
        "the log line is glued onto the progress line: {line:?}"
    );
}

/// A finished run is finished for the input it saw: a file added afterwards is read by the
/// next run, with the keyed state restored (running totals go on from the final totals), and
/// the run after that has nothing to do again.
#[test]
fn a_file_added_after_a_finished_run_is_read_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = example(tmp.path());
    let p = dir.join("pipeline.toml");
    let ps = p.to_str().unwrap();
    assert_eq!(keel(&["run", ps, "--quiet"], &[]).status.code(), Some(1));
    let before = refjob::visible_lines(&dir.join("out/records")).len();
    let finals: std::collections::HashMap<String, i64> = refjob::visible_lines(&dir.join("out/final"))
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["customer"].as_str().unwrap().to_owned(), v["total"].as_i64().unwrap())
        })
        .collect();
    let ts = 1_699_923_600_000i64 + 3_600_000;
    let added = [("c20", 7), ("c6", 11), ("c20", 5)];
    let lines_added: String = added
        .iter()
        .enumerate()
        .map(|(i, (c, a))| {
            format!(
                "{{\"id\": {}, \"ts\": {}, \"customer\": \"{c}\", \"amount\": {a}}}\n",
                90_000 + i,
                ts + i as i64
            )
        })
        .collect();
    std::fs::write(dir.join("input/orders-2.jsonl"), lines_added).unwrap();

    let o = keel(&["run", ps, "--quiet", "--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["records_in"], 3, "only the new file is read: {summary}");
    let records = refjob::visible_lines(&dir.join("out/records"));
    assert_eq!(records.len(), before + 3);
    let new: Vec<serde_json::Value> = records
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["id"].as_i64().unwrap() >= 90_000)
        .collect();
    assert_eq!(new.len(), 3);
    let mut totals = finals.clone();
    for (i, (c, a)) in added.iter().enumerate() {
        let t = totals.get_mut(*c).unwrap();
        *t += a;
        let row = new.iter().find(|v| v["id"] == 90_000 + i).unwrap();
        assert_eq!(
            row["running_total"], *t,
            "{row}: the total goes on from the restored state"
        );
    }

    let o = keel(&["run", ps, "--quiet"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing to do"), "{}", text(&o));
}

/// The fix-and-replay paths: `--transform JQ` fixes each original before it is replayed;
/// `export` writes the originals to fix by hand and `replay --from FILE` sends the fixed
/// records. Replayed envelopes are marked (a second replay finds nothing), and a program
/// that fails on a dead letter replays nothing.
#[test]
fn dlq_replay_with_a_transform_and_from_an_exported_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = stateless_example(tmp.path());
    let p = dir.join("pipeline.toml");
    let ps = p.to_str().unwrap();
    assert_eq!(keel(&["run", ps, "--quiet"], &[]).status.code(), Some(1));
    let records = || refjob::visible_lines(&dir.join("out/records"));
    let before = records().len();
    let count = |reason: &str| {
        let o = keel(
            &["dlq", "list", ps, "--reason", reason, "--not-replayed", "--json"],
            &[],
        );
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    let (negative, malformed) = (count("negative_amount"), count("malformed"));
    assert!(negative > 0 && malformed > 0);

    // a program that fails on the dead letters is refused before anything runs
    let o = keel(
        &[
            "dlq",
            "replay",
            ps,
            "--reason",
            "negative_amount",
            "--transform",
            ".amount | error(\"no\")",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--transform: dead letter"), "{}", text(&o));
    assert_eq!(records().len(), before);

    let o = keel(
        &[
            "dlq",
            "replay",
            ps,
            "--reason",
            "negative_amount",
            "--transform",
            ".amount |= -.",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(records().len(), before + negative, "every fixed record is output");
    assert_eq!(count("negative_amount"), 0, "and marked replayed");

    // export the malformed ones, fix them by hand, replay them from the file
    let fix = dir.join("fix.jsonl");
    let o = keel(
        &[
            "dlq",
            "export",
            ps,
            "--reason",
            "malformed",
            "-o",
            fix.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let exported: Vec<serde_json::Value> = std::fs::read_to_string(&fix)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), malformed);
    let fixed: String = exported
        .iter()
        .enumerate()
        .map(|(i, e)| {
            assert!(
                e["text"].is_string() && e["record"].is_null(),
                "malformed originals are text: {e}"
            );
            let mut e = e.clone();
            e.as_object_mut().unwrap().remove("text");
            e["record"] =
                serde_json::json!({"id": 800_000 + i, "ts": 1_699_924_600_000u64, "customer": "fixed", "amount": 1});
            format!("{e}\n")
        })
        .collect();
    std::fs::write(&fix, fixed).unwrap();
    let o = keel(&["dlq", "replay", ps, "--from", fix.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ids: std::collections::BTreeSet<i64> = records()
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .filter(|&id| id >= 800_000)
        .collect();
    assert_eq!(
        ids,
        (800_000..800_000 + malformed as i64).collect(),
        "each fixed record once"
    );
    assert_eq!(count("malformed"), 0);
    // replaying the file again finds them replayed already
    let o = keel(&["dlq", "replay", ps, "--from", fix.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing to replay"), "{}", text(&o));
    assert_eq!(records().len(), before + negative + malformed);
}

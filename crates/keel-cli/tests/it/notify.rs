//! `[[notify]]`: run-level events posted to a webhook, received by a local HTTP server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a receiver got: each POST's path and body.
pub(crate) type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A webhook receiver: every POST body, with its path.
pub(crate) fn receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            g.lock().unwrap().push((path, serde_json::from_slice(&body).unwrap()));
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (format!("http://{addr}"), got)
}

fn run(dir: &std::path::Path, file: &str, fail: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(["run", dir.join(file).to_str().unwrap(), "--quiet"])
        .env("RUST_LOG", "error");
    if let Some(f) = fail {
        cmd.env("KEEL_FAIL_AT", f);
    }
    cmd.output().unwrap()
}

fn write_input(dir: &std::path::Path, n: usize, bad_every: usize) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let text: String = (0..n)
        .map(|i| {
            let amount = if i % bad_every == bad_every - 1 { -1 } else { 1 };
            format!("{{\"id\":{i},\"amount\":{amount}}}\n")
        })
        .collect();
    std::fs::write(dir.join("in").join("a.jsonl"), text).unwrap();
}

fn pipeline(url: &str, extra: &str) -> String {
    format!(
        r#"name = "notified"
[source]
type = "files"
path = "in"
[[steps]]
type = "parse"
[[steps]]
type = "validate"
rules = [{{ field = "amount", min = 0, reason = "negative_amount" }}]
[[sinks]]
name = "out"
type = "files"
path = "out"
[dead_letter]
path = "dead"
[checkpoint]
path = "state"
interval = "200ms"
[[notify]]
url = "{url}/all"
[[notify]]
url = "{url}/slack"
format = "slack"
events = ["aborted"]
{extra}
"#
    )
}

/// A breaker pause and its end, a run finished with dead letters, then an aborted run:
/// each event reaches the JSON webhook once; the Slack one gets only the abort, as text.
#[test]
fn a_webhook_hears_of_a_breaker_pause_and_an_aborted_run() {
    let (url, got) = receiver();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_input(dir, 3000, 1000);
    std::fs::write(
        dir.join("pause.toml"),
        pipeline(&url, "[errors]\nsink_breaker = { failures = 3, open_for = \"500ms\" }\nsink_retry = { initial = \"20ms\", max_delay = \"50ms\" }\n"),
    )
    .unwrap();
    // sink writes 1 to 5 fail: the breaker opens, pauses the input, then closes
    let o = run(dir, "pause.toml", Some("sink_write:1:5"));
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let events = |path: &str| -> Vec<serde_json::Value> {
        got.lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let kinds: Vec<String> = events("/all")
        .iter()
        .map(|v| v["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["paused", "resumed", "finished_with_dead_letters"],
        "{:?}",
        events("/all")
    );
    let all = events("/all");
    assert_eq!(all[0]["cause"], "circuit breaker open");
    assert_eq!(all[0]["pipeline"], "notified");
    assert_eq!(all[2]["dead_letters"], 3);
    assert!(all[2]["at"].as_str().unwrap().ends_with('Z'));
    assert!(events("/slack").is_empty(), "the Slack hook takes aborts only");

    // an error budget of 5 dead letters a minute, with 20 bad records: aborted
    let d2 = dir.join("abort");
    write_input(&d2, 2000, 100);
    std::fs::write(
        d2.join("abort.toml"),
        pipeline(
            &url,
            "[errors]\nerror_budget = { max_count = 5, window = \"1m\", action = \"abort\" }\n",
        ),
    )
    .unwrap();
    let o = run(&d2, "abort.toml", None);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(200));
    let last = events("/all").last().cloned().unwrap();
    assert_eq!(last["event"], "aborted", "{last}");
    assert!(last["reason"].as_str().unwrap().contains("error budget"), "{last}");
    let slack = events("/slack");
    assert_eq!(slack.len(), 1, "{slack:?}");
    let text = slack[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("keel pipeline `notified` aborted: error budget"),
        "{text}"
    );
}

/// A `[[notify]]` table with a bad URL or an unknown event is refused before any work.
#[test]
fn a_bad_notify_table_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_input(dir, 10, 5);
    std::fs::write(
        dir.join("bad.toml"),
        pipeline("ftp://nowhere", "").replace("events = [\"aborted\"]", "events = [\"exploded\"]"),
    )
    .unwrap();
    let o = run(dir, "bad.toml", None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("notify[0].url") && err.contains("http:// or https://"),
        "{err}"
    );
    assert!(err.contains("unknown event `exploded`"), "{err}");
    assert!(!dir.join("state").exists(), "nothing ran");
}

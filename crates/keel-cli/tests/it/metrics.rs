//! The metrics endpoint, scraped by a real Prometheus server (Debian's `prometheus`, which
//! `.ci/run` installs): a running `keel run` with bad records and a sink that fails for a
//! while. Prometheus's own HTTP API must show the dead letters that are on disk, the
//! circuit breaker gauge going to 1 and back to 0, and checkpoints committed growing;
//! `promtool check metrics` must accept the exposition.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::refjob;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on `addr`, the body.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query that returns one series (None: no result yet).
fn query(prom: &str, q: &str) -> Option<f64> {
    let body = get(prom, &format!("/api/v1/query?query={}", encode(q)))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let r = v["data"]["result"].as_array()?.first()?.clone();
    r["value"][1].as_str()?.parse().ok()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "waited {secs} s for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(dir: &Path, target: &str) -> (Killed, String) {
    let port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: keel\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the metrics test runs a real Prometheus server (apt package `prometheus`; .ci/run installs it)");
    (Killed(child), format!("127.0.0.1:{port}"))
}

#[test]
fn prometheus_scrapes_dead_letters_the_breaker_and_checkpoints_of_a_running_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let (n, bad) = (20_000usize, 400usize);
    let mut text = String::new();
    for i in 0..n {
        let amount = if i % (n / bad) == 7 { -1 } else { i as i64 };
        text.push_str(&format!("{{\"id\":{i},\"amount\":{amount}}}\n"));
    }
    std::fs::write(dir.join("in").join("a.jsonl"), text).unwrap();
    std::fs::write(
        dir.join("p.toml"),
        r#"name = "scraped"
[source]
type = "files"
path = "in"
follow = true
[[steps]]
type = "parse"
[[steps]]
type = "validate"
rules = [{ field = "amount", min = 0, reason = "negative_amount" }]
[[sinks]]
name = "out"
type = "files"
path = "out"
[dead_letter]
path = "dead"
[errors]
sink_breaker = { failures = 3, open_for = "1s" }
sink_retry = { initial = "50ms", max_delay = "200ms" }
[checkpoint]
path = "state"
interval = "300ms"
[run]
batch_size = 200
"#,
    )
    .unwrap();
    // Prometheus first, so that it sees the run from its start
    let target = format!("127.0.0.1:{}", free_port());
    let (_prom, prom) = start_prometheus(dir, &target);
    wait_for("Prometheus to start", 60, || get(&prom, "/-/ready").is_some());
    // sink writes 1 to 8 fail (an unreachable store): the breaker opens after 3 failures,
    // its probes (one a second) fail 5 times more, then one succeeds and it closes
    let mut keel = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", dir.join("p.toml").to_str().unwrap(), "--metrics-addr", &target])
        .env("KEEL_FAIL_AT", "sink_write:1:8")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = keel.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("keel: metrics on http://") {
                let _ = tx.send(url.trim_end_matches("/metrics").to_owned());
            }
        }
    });
    let keel = Killed(keel);
    let announced = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("keel printed no metrics address");
    assert_eq!(announced, target);
    assert_eq!(get(&target, "/health").as_deref(), Some("ok\n"));

    let exposition = get(&target, "/metrics").unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt package `prometheus`; .ci/run installs it)");
    promtool.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let read = "sum(keel_records_read_total{job=\"keel\"})";
    wait_for("every record read, as Prometheus sees it", 120, || {
        query(&prom, read) == Some(n as f64)
    });
    wait_for("nothing uncommitted", 60, || {
        query(&prom, "keel_uncommitted_records{job=\"keel\"}") == Some(0.0)
    });
    wait_for("the ready endpoint", 30, || {
        get(&target, "/ready").as_deref() == Some("ready\n")
    });
    let dead_on_disk = refjob::visible_lines(&dir.join("dead")).len();
    assert_eq!(dead_on_disk, bad, "every bad record dead-lettered once");
    wait_for("the dead-letter counter", 30, || {
        query(&prom, "sum(keel_dead_letters_total{job=\"keel\"})") == Some(dead_on_disk as f64)
    });
    assert_eq!(
        query(&prom, "max_over_time(keel_circuit_breaker_state{breaker=\"out\"}[10m])"),
        Some(1.0),
        "the breaker opened"
    );
    assert_eq!(
        query(&prom, "keel_circuit_breaker_state{breaker=\"out\"}"),
        Some(0.0),
        "and closed again"
    );
    assert!(query(&prom, "sum(keel_circuit_breaker_opens_total)").unwrap_or(0.0) >= 1.0);
    let committed = "keel_checkpoints_total{outcome=\"committed\",job=\"keel\"}";
    let before = query(&prom, committed).unwrap();
    wait_for("checkpoints committed to grow", 30, || {
        query(&prom, committed).is_some_and(|now| now > before)
    });
    assert_eq!(
        query(&prom, "sum(keel_records_written_total{sink=\"out\"})"),
        Some((n - bad) as f64)
    );
    drop(keel);
}

/// `keel queue work --metrics-addr`: the attempts by outcome and the queue's gauges.
#[test]
fn a_queue_worker_serves_its_jobs_by_outcome_and_the_queue_gauges() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", tmp.path().join("q.db").display());
    let keel = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["queue", "--queue", &db, "--name", "mail"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    for i in 0..5 {
        keel(&["enqueue", "send", &format!("{{\"i\":{i}}}")]);
    }
    keel(&["enqueue", "broken", "{}"]);
    let addr = format!("127.0.0.1:{}", free_port());
    // `broken` jobs exit 2: permanent, straight to the dead set
    let worker = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "queue",
            "--queue",
            &db,
            "--name",
            "mail",
            "work",
            "--metrics-addr",
            &addr,
        ])
        .args(["--exec", "grep -q '\"i\"' && exit 0 || exit 2", "--concurrency", "2"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _worker = Killed(worker);
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    wait_for("the worker's metrics", 60, || {
        let Some(text) = get(&addr, "/metrics") else {
            return false;
        };
        value(
            &text,
            "keel_queue_jobs_total{queue=\"mail\",kind=\"send\",outcome=\"acked\"}",
        ) == Some(5.0)
            && value(
                &text,
                "keel_queue_jobs_total{queue=\"mail\",kind=\"broken\",outcome=\"dead\"}",
            ) == Some(1.0)
    });
    // the gauges are sampled every 5 s
    wait_for("the dead-set gauge", 30, || {
        get(&addr, "/metrics").is_some_and(|t| value(&t, "keel_queue_dead_jobs{queue=\"mail\"}") == Some(1.0))
    });
    let text = get(&addr, "/metrics").unwrap();
    assert_eq!(
        value(
            &text,
            "keel_queue_handler_duration_seconds_count{queue=\"mail\",kind=\"send\"}"
        ),
        Some(5.0)
    );
    assert_eq!(get(&addr, "/ready").as_deref(), Some("ready\n"));
}

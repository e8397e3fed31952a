//! The reference job between Kafka topics, killed at the crash points around the publish
//! (after the manifest, in the middle of a publish, between two sinks' commits) and with
//! `kill -9` at random instants: after every kill a Kafka consumer of the output topic sees
//! no record twice, and at the end the topics hold every good record once, with the right
//! totals, and the dead letters every bad one once. Needs the Kafka test broker
//! (`.ci/services`; `KEEL_KAFKA_BROKERS` overrides 127.0.0.1:9092).
//! `bench/crash/kafka_crash.py` is the long version.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::refjob;

const JOB: &str = include_str!("../../../../bench/crash/kafka_job.toml");
const PARTITIONS: i32 = 3;

fn brokers() -> String {
    std::env::var("KEEL_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

struct Topics {
    input: String,
    records: String,
    fin: String,
    dead: String,
}

fn create_topics(tag: &str) -> Topics {
    let t = |x: &str| format!("keel-cli-{tag}-{x}-{}", std::process::id());
    let topics = Topics {
        input: t("in"),
        records: t("records"),
        fin: t("final"),
        dead: t("dead"),
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let new: Vec<NewTopic<'_>> = [&topics.input, &topics.records, &topics.fin, &topics.dead]
        .iter()
        .map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    for r in rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("create topics (is the Kafka test broker up? .ci/services starts it)")
    {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
    topics
}

fn produce_lines(topic: &str, dir: &Path) -> usize {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "10")
        .create()
        .unwrap();
    let mut n = 0usize;
    for line in refjob::visible_lines(dir) {
        let mut rec = BaseRecord::<(), _>::to(topic)
            .partition((n % PARTITIONS as usize) as i32)
            .payload(&line);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        n += 1;
    }
    p.flush(Duration::from_secs(60)).unwrap();
    n
}

/// Every value of `topic`, up to each partition's end-of-partition event.
fn read_topic(topic: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "keel-cli-kafka-test")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut ended = HashSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended.len() < PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "reading {topic}: no end of partition in 60 s"
        );
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

fn spawn(dir: &Path, t: &Topics, crash_at: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(["run", dir.join("job.toml").to_str().unwrap(), "--quiet"])
        .env("BROKERS", brokers())
        .env("IN_TOPIC", &t.input)
        .env("RECORDS_TOPIC", &t.records)
        .env("FINAL_TOPIC", &t.fin)
        .env("DEAD_TOPIC", &t.dead)
        .env("OUT", dir.join("out"))
        .env("STATE", dir.join("state"))
        .env("KEEL_CHECKPOINT_INTERVAL", "60ms")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(c) = crash_at {
        cmd.env("KEEL_CRASH_AT", c);
    }
    cmd.spawn().unwrap()
}

/// No record id twice in the records topic, no bad line twice in the dead-letter topic;
/// returns how many records are there.
fn check_no_duplicates(t: &Topics, what: &str) -> usize {
    let mut ids = HashSet::new();
    for line in read_topic(&t.records) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {line:?}: {e}"));
        let id = v["id"].as_i64().unwrap_or(-1);
        assert!(ids.insert(id), "{what}: id {id} is in the output topic twice");
    }
    let mut dead = HashSet::new();
    for line in read_topic(&t.dead) {
        assert!(
            dead.insert(line.clone()),
            "{what}: {line:?} is in the dead-letter topic twice"
        );
    }
    ids.len()
}

/// The newest manifest's name (fixed width: names sort as ids do; old ones are pruned, so
/// counting them would not show a new one).
/// The output topics read out into `<dir>/out/{records,final}`, and the dead letters as
/// `keel dlq list --json` reads them from the dead-letter topic into `<dir>/out/dead`, as the
/// reference job's checker reads an output directory. Nothing may be left parked in the
/// fallback directory.
fn topics_as_output(dir: &Path, t: &Topics) -> std::path::PathBuf {
    let out = dir.join("out");
    for (sub, topic) in [("records", &t.records), ("final", &t.fin)] {
        std::fs::create_dir_all(out.join(sub)).unwrap();
        std::fs::write(
            out.join(sub).join("from-kafka.jsonl"),
            read_topic(topic).join("\n") + "\n",
        )
        .unwrap();
    }
    let parked: Vec<String> = std::fs::read_dir(out.join("dead"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    assert!(
        parked.iter().all(|n| n.starts_with('_')),
        "left in the fallback: {parked:?}"
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["dlq", "list", dir.join("job.toml").to_str().unwrap(), "--json"])
        .env("BROKERS", brokers())
        .env("IN_TOPIC", &t.input)
        .env("RECORDS_TOPIC", &t.records)
        .env("FINAL_TOPIC", &t.fin)
        .env("DEAD_TOPIC", &t.dead)
        .env("OUT", &out)
        .env("STATE", dir.join("state"))
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "keel dlq list: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let text = String::from_utf8(listed.stdout).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let at = v["location"].as_str().unwrap();
        assert!(at.starts_with(&format!("{}:", t.dead)), "listed from the topic: {at}");
    }
    std::fs::create_dir_all(out.join("dead")).unwrap();
    std::fs::write(out.join("dead").join("dead-0-from-kafka.jsonl"), text).unwrap();
    out
}

fn checkpoints(dir: &Path) -> String {
    std::fs::read_dir(dir.join("state").join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("ckpt-"))
                .max()
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// The tests that stop the broker or need it responsive run one at a time.
static BROKER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn kafka_to_kafka_survives_kill_9_and_crash_points_exactly_once() {
    let _one_at_a_time = BROKER.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = refjob::generate(&dir.join("in"), 120_000, 3, 2_000, 50, 11);
    // read at most 7 500 records a second, so that each of the 12 kills lands in a running
    // job with input left, however fast the broker
    std::fs::write(
        dir.join("job.toml"),
        format!("{JOB}\n[run]\nmax_records_per_second = 7500\n"),
    )
    .unwrap();
    let t = create_topics("crash");
    let produced = produce_lines(&t.input, &dir.join("in"));
    assert_eq!(produced, input.valid.len() + input.bad.len());

    for point in ["after_manifest:2", "mid_publish:2", "mid_commit:3", "after_prepare:3"] {
        let status = spawn(dir, &t, Some(point)).wait().unwrap();
        assert_eq!(status.signal(), Some(6), "{point}: expected to abort there: {status:?}");
        check_no_duplicates(&t, point);
    }
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for k in 0..12 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let before = checkpoints(dir);
        let mut child = spawn(dir, &t, None);
        // kill once the run has checkpointed (it is past its startup), at a random instant
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut exited = None;
        while exited.is_none() && checkpoints(dir) <= before {
            exited = child.try_wait().unwrap();
            assert!(
                Instant::now() < deadline,
                "kill {k}: no checkpoint and no exit in 120 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if exited.is_none() {
            std::thread::sleep(Duration::from_millis(rng % 150));
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "kill {k} found the run ended: {status:?}");
        check_no_duplicates(&t, &format!("kill {k}"));
    }
    let status = spawn(dir, &t, None).wait().unwrap();
    assert!(matches!(status.code(), Some(0 | 1)), "final run: {status:?}");

    let out = topics_as_output(dir, &t);
    let problems = refjob::check(&input, &out, true);
    assert!(problems.is_empty(), "after 12 kills: {problems:?}");
}

/// The broker process of the test broker (`tansu broker`), to stop and continue.
fn broker_pid() -> Option<i32> {
    let out = Command::new("pgrep").args(["-f", "tansu broker"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A broker outage mid-run (the broker process stopped with SIGSTOP for 15 s, then
/// continued): nothing lost, nothing dead-lettered by the outage, the run resumes by itself
/// and ends normally. (BENCHMARKS.md has the same with 60 s.)
#[test]
fn a_broker_outage_loses_nothing_and_dead_letters_nothing() {
    let _one_at_a_time = BROKER.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pid) = broker_pid() else {
        panic!("the outage test stops the test broker (tansu) of .ci/services, and none runs here");
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = refjob::generate(&dir.join("in"), 150_000, 3, 2_000, 20, 5);
    std::fs::write(dir.join("job.toml"), JOB).unwrap();
    let t = create_topics("outage");
    produce_lines(&t.input, &dir.join("in"));
    let mut child = spawn(dir, &t, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoints(dir).is_empty() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the outage");
        assert!(Instant::now() < deadline, "no checkpoint in 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stop = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    stop("-STOP");
    std::thread::sleep(Duration::from_secs(15));
    let during = child.try_wait().unwrap();
    stop("-CONT");
    assert!(during.is_none(), "the run ended during the outage: {during:?}");
    let status = child.wait().unwrap();
    assert!(matches!(status.code(), Some(0 | 1)), "after the outage: {status:?}");
    let out = topics_as_output(dir, &t);
    // every good record once, every bad one dead-lettered once, nothing else dead-lettered
    let problems = refjob::check(&input, &out, true);
    assert!(problems.is_empty(), "after the outage: {problems:?}");
}

/// `keel dlq` on a Kafka dead-letter topic: `stats` counts what the topic holds, `show`
/// finds one by `TOPIC:PARTITION:OFFSET`, `replay --transform` fixes and replays them
/// (recording the replays beside the fallback directory, since a topic cannot be edited),
/// after which `list --not-replayed` is empty and `purge` says it leaves the topic alone.
#[test]
fn keel_dlq_lists_shows_and_replays_the_dead_letters_of_a_topic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let t = create_topics("dlq");
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for i in 0..30 {
        let amount = if i % 10 == 3 { -5 } else { i };
        let line = format!(r#"{{"id":{i},"amount":{amount}}}"#);
        p.send(
            BaseRecord::<(), _>::to(&t.input)
                .partition(i % PARTITIONS)
                .payload(&line),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let job = dir.join("dlq.toml");
    std::fs::write(
        &job,
        format!(
            r#"name = "dlq-on-kafka"
[source]
type = "kafka"
brokers = "{b}"
topics = ["{input}"]
bounded = true
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
type = "kafka"
brokers = "{b}"
topic = "{dead}"
path = "dead"
[checkpoint]
path = "state"
"#,
            b = brokers(),
            input = t.input,
            dead = t.dead
        ),
    )
    .unwrap();
    let keel = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let js = job.to_str().unwrap();
    let o = keel(&["run", js, "--quiet"]);
    assert_eq!(o.status.code(), Some(1), "dead letters: exit 1: {}", text(&o));
    assert_eq!(read_topic(&t.dead).len(), 3);

    let o = keel(&["dlq", "stats", js, "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(stats["total"], 3, "{stats}");
    assert_eq!(stats["by_reason"][0]["reason"], "negative_amount", "{stats}");

    let o = keel(&["dlq", "list", js, "--json"]);
    let first: serde_json::Value = serde_json::from_str(text(&o).lines().next().unwrap()).unwrap();
    let at = first["location"].as_str().unwrap().to_owned();
    assert!(at.starts_with(&format!("{}:", t.dead)), "{at}");
    let o = keel(&["dlq", "show", js, &at]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["reason"], "negative_amount");
    assert!(shown["raw"].as_str().unwrap().contains("\"amount\":-5"), "{shown}");

    let o = keel(&["dlq", "replay", js, "--transform", ".amount |= -."]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("3 envelopes marked"), "{}", text(&o));
    let out = refjob::visible_lines(&dir.join("out"));
    assert_eq!(out.len(), 30, "27 from the run, 3 replayed: {out:?}");
    let o = keel(&["dlq", "list", js, "--not-replayed", "--json"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 0, "{}", text(&o));
    let o = keel(&["dlq", "replay", js, "--transform", ".amount |= -."]);
    assert!(text(&o).contains("nothing to replay"), "{}", text(&o));

    let o = keel(&["dlq", "purge", js, "--confirm"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("3 selected dead letters are on the Kafka topic"),
        "{}",
        text(&o)
    );
    assert_eq!(read_topic(&t.dead).len(), 3, "the topic is left as it is");
}

/// An output topic the broker refuses (here an invalid name; a missing topic on a cluster
/// that does not create them, or a refused authorization, go the same way) fails the run at
/// start, before anything is read, with the reason and the topic named: exit 3.
#[test]
fn a_refused_output_topic_fails_the_run_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let t = create_topics("refused");
    let job = tmp.path().join("p.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"refused\"\n[source]\ntype = \"kafka\"\nbrokers = \"{b}\"\ntopics = [\"{i}\"]\nbounded = true\n\
             [[sinks]]\nname = \"out\"\ntype = \"kafka\"\nbrokers = \"{b}\"\ntopic = \"no such topic!\"\n\
             [checkpoint]\npath = \"state\"\n",
            b = brokers(),
            i = t.input
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", job.to_str().unwrap(), "--quiet"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("invalid_topic") && err.contains("no such topic!"), "{err}");
    assert!(!tmp.path().join("state").join("checkpoints").exists(), "nothing ran");
}

//! The reference job with Redis Streams: files → Redis (both sinks and the dead letters on
//! streams; each epoch one atomic append), killed at the crash points and at random instants
//! ([`crate::brokers::crash_test`]); and a Redis server stopped for 60 s mid-run. Needs
//! redis-server (`.ci/services`; `KEEL_REDIS_URL` overrides redis://127.0.0.1:6379); the
//! outage test runs a redis-server of its own, with an append-only file so that a restart
//! keeps the streams.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::brokers::{self, Server, Target};

fn url() -> String {
    std::env::var("KEEL_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Field `name` of an entry, as text.
fn field(map: &std::collections::HashMap<String, redis::Value>, name: &str) -> String {
    match map.get(name) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

struct ToRedis {
    url: String,
    prefix: String,
}

impl ToRedis {
    fn new(url: String, tag: &str) -> Self {
        ToRedis {
            url,
            prefix: format!("keel-cli:{tag}:{}", std::process::id()),
        }
    }

    fn entries(&self, stream: &str) -> Vec<std::collections::HashMap<String, redis::Value>> {
        let mut con = redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .expect("redis (is it up? .ci/services starts it)");
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{}:{stream}", self.prefix))
            .arg("-")
            .arg("+")
            .query(&mut con)
            .unwrap();
        reply.ids.into_iter().map(|e| e.map).collect()
    }
}

impl Target for ToRedis {
    fn outputs_toml(&self) -> String {
        let (u, p) = (&self.url, &self.prefix);
        format!(
            "[[sinks]]\nname = \"records\"\ntype = \"redis_stream\"\nurl = \"{u}\"\nstream = \"{p}:records\"\nkey = \"customer\"\n\n\
             [[sinks]]\nname = \"final\"\ntype = \"redis_stream\"\nurl = \"{u}\"\nstream = \"{p}:final\"\n\n\
             [dead_letter]\ntype = \"redis_stream\"\nurl = \"{u}\"\nstream = \"{p}:dead\"\nid_field = \"id\"\n"
        )
    }

    fn seen(&self, dir: &Path, _what: &str) -> PathBuf {
        let records: Vec<String> = self.entries("records").iter().map(|e| field(e, "value")).collect();
        let fin: Vec<String> = self.entries("final").iter().map(|e| field(e, "value")).collect();
        let dead: Vec<(String, String)> = self
            .entries("dead")
            .iter()
            .map(|e| (field(e, "value"), field(e, "keel.error.reason")))
            .collect();
        brokers::write_seen(dir, &records, &fin, &dead)
    }
}

#[test]
fn files_to_redis_streams_survives_kill_9_and_crash_points_exactly_once() {
    let target = ToRedis::new(url(), "crash");
    brokers::crash_test(
        &target,
        120_000,
        &["after_manifest:2", "mid_commit:3", "after_prepare:3"],
    );
}

/// A redis-server of its own (append-only file, fsync always) stopped for 60 s while the
/// job appends to it: nothing lost, nothing dead-lettered by the outage, the run goes on by
/// itself when the server is back.
#[test]
fn a_redis_outage_of_60_s_loses_nothing_and_dead_letters_nothing() {
    let mut server = Server::start("redis-server", |port, data| {
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &data.display().to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    });
    let target = ToRedis::new(format!("redis://127.0.0.1:{}", server.port), "outage");
    brokers::outage_test(&target, &mut server, 150_000, Duration::from_secs(60));
}

//! The reference job into object storage: both sinks and the dead letters as objects per
//! epoch under prefixes of one bucket. Killed at the crash points and at random instants
//! ([`crate::brokers::crash_test`]); and the S3 server stopped for 60 s mid-run. Needs the
//! S3-compatible test server (s3s-fs on 127.0.0.1:9000, bucket `keel-test`; `.ci/services`
//! starts it); the outage test runs an s3s-fs of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::brokers::{self, Server, Target};

/// The s3s-fs program (`.ci/services` installs it).
pub fn s3s_fs() -> String {
    which("s3s-fs")
        .or_else(|| {
            let home = std::env::var("HOME").ok()?;
            let p = format!("{home}/.cargo/bin/s3s-fs");
            Path::new(&p).exists().then_some(p)
        })
        .expect("s3s-fs (.ci/services installs it)")
}

fn which(name: &str) -> Option<String> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| format!("{d}/{name}"))
        .find(|p| Path::new(p).exists())
}

struct ToS3 {
    endpoint: String,
    prefix: String,
}

impl ToS3 {
    fn new(endpoint: String, tag: &str) -> Self {
        ToS3 {
            endpoint,
            prefix: format!("cli-{tag}-{}", std::process::id()),
        }
    }

    fn table(&self, sub: &str) -> String {
        format!(
            "bucket = \"keel-test\"\nprefix = \"{}/{sub}\"\nendpoint = \"{}\"\naccess_key = \"K\"\nsecret_key = \"S\"\n",
            self.prefix, self.endpoint
        )
    }

    /// The lines of every object under `<prefix>/<sub>`.
    fn lines(&self, sub: &str) -> Vec<String> {
        let loc = keel_connectors::txn::S3Location {
            bucket: "keel-test".into(),
            prefix: String::new(),
            endpoint: Some(self.endpoint.clone()),
            region: None,
            access_key: Some("K".into()),
            secret_key: Some("S".into()),
        };
        let store = loc.store().unwrap();
        let prefix = object_store::path::Path::from(format!("{}/{sub}", self.prefix));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let metas: Vec<_> = store
                    .list(Some(&prefix))
                    .try_collect()
                    .await
                    .expect("listing the bucket");
                let mut out = Vec::new();
                for m in metas {
                    let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
                    out.extend(String::from_utf8_lossy(&bytes).lines().map(str::to_owned));
                }
                out
            })
    }
}

impl Target for ToS3 {
    fn outputs_toml(&self) -> String {
        format!(
            "[[sinks]]\nname = \"records\"\ntype = \"s3\"\n{}\n[[sinks]]\nname = \"final\"\ntype = \"s3\"\n{}\n[dead_letter]\ntype = \"s3\"\n{}id_field = \"id\"\n",
            self.table("records"),
            self.table("final"),
            self.table("dead")
        )
    }

    fn seen(&self, dir: &Path, _what: &str) -> PathBuf {
        let dead = self
            .lines("dead")
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["raw"].as_str().unwrap_or_default().to_owned(),
                    v["reason"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect::<Vec<_>>();
        brokers::write_seen(dir, &self.lines("records"), &self.lines("final"), &dead)
    }
}

#[test]
fn files_to_s3_survives_kill_9_and_crash_points_exactly_once() {
    let target = ToS3::new("http://127.0.0.1:9000".into(), "crash");
    brokers::crash_test(
        &target,
        120_000,
        &["after_manifest:2", "mid_commit:3", "after_prepare:3"],
    );
}

/// An s3s-fs of its own stopped for 60 s while the job uploads to it: nothing lost,
/// nothing dead-lettered by the outage, the run goes on by itself.
#[test]
fn an_s3_outage_of_60_s_loses_nothing_and_dead_letters_nothing() {
    let mut server = Server::start_as(
        &s3s_fs(),
        None,
        "-TERM",
        |data| std::fs::create_dir_all(data.join("keel-test")).unwrap(),
        |port, data| {
            [
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                "K",
                "--secret-key",
                "S",
                &data.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        },
    );
    let target = ToS3::new(format!("http://127.0.0.1:{}", server.port), "outage");
    brokers::outage_test(&target, &mut server, 150_000, Duration::from_secs(60));
}

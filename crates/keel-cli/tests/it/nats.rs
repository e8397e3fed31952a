//! The reference job with NATS JetStream: files → JetStream (both sinks and the dead letters
//! on subjects of one stream) and JetStream → files, each killed at the crash points and at
//! random instants ([`crate::brokers::crash_test`]); and a JetStream server stopped for 60 s
//! mid-run. Needs nats-server (`.ci/services`; `KEEL_NATS_URL` overrides
//! nats://127.0.0.1:4222); the outage test runs a nats-server of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, stream};
use futures_util::StreamExt;

use crate::brokers::{self, Server, Target};

fn url() -> String {
    std::env::var("KEEL_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A stream `keel_cli_<tag>_<pid>` capturing `<name>.>`.
fn create_stream(url: &str, tag: &str) -> String {
    let name = format!("keel_cli_{tag}_{}", std::process::id());
    let (u, n) = (url.to_owned(), name.clone());
    rt().block_on(async move {
        let js = jetstream::new(
            async_nats::connect(u)
                .await
                .expect("nats (is nats-server up? .ci/services starts it)"),
        );
        let _ = js.delete_stream(&n).await;
        js.create_stream(stream::Config {
            name: n.clone(),
            subjects: vec![format!("{n}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    name
}

/// Every message of `stream`: subject, payload, headers (name → first value).
fn read_stream(url: &str, stream: &str) -> Vec<(String, String, BTreeMap<String, String>)> {
    let (u, s) = (url.to_owned(), stream.to_owned());
    rt().block_on(async move {
        let js = jetstream::new(async_nats::connect(u).await.unwrap());
        let mut st = js.get_stream(&s).await.unwrap();
        if st.info().await.unwrap().state.messages == 0 {
            return Vec::new();
        }
        let c = st
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut msgs = c.messages().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = tokio::time::timeout(Duration::from_secs(30), msgs.next())
            .await
            .expect("reading the stream")
        {
            let m = m.unwrap();
            let headers = m
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| (k.to_string(), v[0].as_str().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.subject.to_string(),
                String::from_utf8_lossy(&m.payload).into_owned(),
                headers,
            ));
            if m.info().unwrap().pending == 0 {
                break;
            }
        }
        out
    })
}

/// Files in, both sinks and the dead letters on subjects of one stream.
struct ToNats {
    url: String,
    stream: String,
}

impl Target for ToNats {
    fn whole_epochs(&self) -> bool {
        false
    }

    fn outputs_toml(&self) -> String {
        let (u, s) = (&self.url, &self.stream);
        format!(
            "[[sinks]]\nname = \"records\"\ntype = \"nats\"\nurl = \"{u}\"\nsubject = \"{s}.records\"\nkey = \"customer\"\n\n\
             [[sinks]]\nname = \"final\"\ntype = \"nats\"\nurl = \"{u}\"\nsubject = \"{s}.final\"\n\n\
             [dead_letter]\ntype = \"nats\"\nurl = \"{u}\"\nsubject = \"{s}.dead\"\nid_field = \"id\"\n"
        )
    }

    fn seen(&self, dir: &Path, _what: &str) -> PathBuf {
        let (mut records, mut fin, mut dead) = (Vec::new(), Vec::new(), Vec::new());
        for (subject, payload, headers) in read_stream(&self.url, &self.stream) {
            match subject.rsplit('.').next() {
                Some("records") => records.push(payload),
                Some("final") => fin.push(payload),
                Some("dead") => dead.push((payload, headers.get("keel.error.reason").cloned().unwrap_or_default())),
                other => panic!("a message on {other:?}"),
            }
        }
        brokers::write_seen(dir, &records, &fin, &dead)
    }
}

/// The input on a stream, the outputs in files.
struct FromNats {
    url: String,
    stream: String,
}

impl Target for FromNats {
    fn source_toml(&self) -> String {
        format!(
            "[source]\ntype = \"nats\"\nurl = \"{}\"\nstream = \"{}\"\nbounded = true\n",
            self.url, self.stream
        )
    }

    fn load(&self, lines: &[String]) {
        let (u, subject, lines) = (self.url.clone(), format!("{}.in", self.stream), lines.to_vec());
        rt().block_on(async move {
            let js = jetstream::new(async_nats::connect(u).await.unwrap());
            for chunk in lines.chunks(1000) {
                let mut acks = Vec::with_capacity(chunk.len());
                for l in chunk {
                    acks.push(
                        js.publish(subject.clone(), bytes::Bytes::from(l.clone()))
                            .await
                            .unwrap(),
                    );
                }
                for a in acks {
                    a.await.unwrap();
                }
            }
        });
    }
}

/// Tests that stop or load the server run one at a time.
static SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn files_to_jetstream_survives_kill_9_and_crash_points_exactly_once() {
    let _one = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let target = ToNats {
        url: url(),
        stream: create_stream(&url(), "to"),
    };
    brokers::crash_test(
        &target,
        120_000,
        &["after_manifest:2", "mid_publish:2", "mid_commit:3", "after_prepare:3"],
    );
}

#[test]
fn jetstream_to_files_survives_kill_9_and_crash_points_exactly_once() {
    let _one = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let target = FromNats {
        url: url(),
        stream: create_stream(&url(), "from"),
    };
    brokers::crash_test(
        &target,
        120_000,
        &["after_manifest:2", "mid_commit:3", "after_prepare:3"],
    );
}

/// A nats-server of its own (JetStream on a temporary directory) stopped for 60 s while
/// the job publishes to it: nothing lost, nothing dead-lettered by the outage, the run
/// goes on by itself when the server is back.
#[test]
fn a_jetstream_outage_of_60_s_loses_nothing_and_dead_letters_nothing() {
    let mut server = Server::start("/usr/sbin/nats-server", |port, data| {
        vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            data.display().to_string(),
        ]
    });
    let url = format!("nats://127.0.0.1:{}", server.port);
    let target = ToNats {
        stream: create_stream(&url, "outage"),
        url,
    };
    brokers::outage_test(&target, &mut server, 150_000, Duration::from_secs(60));
}

/// The same outage while the job reads its input from JetStream: the source's consumer is
/// made again where it stopped once the server is back; nothing is lost or read twice.
#[test]
fn a_jetstream_outage_of_60_s_while_reading_loses_nothing() {
    let mut server = Server::start("/usr/sbin/nats-server", |port, data| {
        vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            data.display().to_string(),
        ]
    });
    let url = format!("nats://127.0.0.1:{}", server.port);
    let target = FromNats {
        stream: create_stream(&url, "outage_in"),
        url,
    };
    brokers::outage_test(&target, &mut server, 150_000, Duration::from_secs(60));
}

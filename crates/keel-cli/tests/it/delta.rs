//! The reference job into Delta Lake tables (both sinks and the dead letters), each epoch
//! one Delta commit. Killed at the crash points and at random instants
//! ([`crate::brokers::crash_test`]), the tables read after every kill by an independent
//! reader, the `deltalake` Python package (`KEEL_PYTHON`, default the tools venv
//! `.ci/services` makes); and, with the tables on S3, the S3 server stopped for 60 s
//! mid-run (an s3s-fs of its own).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::brokers::{self, Server, Target};

fn python() -> String {
    std::env::var("KEEL_PYTHON").unwrap_or_else(|_| "/opt/keel-kafka/bin/python".into())
}

struct ToDelta {
    /// Where the tables are: a local directory or `s3://bucket/prefix`.
    root: String,
    options: Vec<(String, String)>,
}

impl ToDelta {
    fn table(&self, name: &str) -> String {
        let mut t = format!("table = \"{}/{name}\"\n", self.root);
        if !self.options.is_empty() {
            t.push_str("storage_options = { ");
            let o: Vec<String> = self.options.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
            t.push_str(&o.join(", "));
            t.push_str(" }\n");
        }
        t
    }

    /// Every row of each table, as the `deltalake` Python package reads them (a table not
    /// created yet has none).
    fn rows(&self) -> serde_json::Value {
        let script = r#"
import json, os, sys
from deltalake import DeltaTable
root, options = sys.argv[1], json.loads(sys.argv[2])
out = {}
for name in ("records", "final", "dead"):
    try:
        dt = DeltaTable(f"{root}/{name}", storage_options=options or None)
    except Exception as e:
        if "no log files" in str(e).lower() or "not a delta table" in str(e).lower() or "no files in log segment" in str(e).lower():
            out[name] = []
            continue
        raise
    out[name] = dt.to_pyarrow_table().to_pylist()
sys.stdout.write(json.dumps(out))
sys.stdout.flush()
# skip the interpreter's teardown: pyarrow 26 with deltalake 1.6 aborts there about one
# exit in three ("terminate called without an active exception"), after the reading is done
os._exit(0)
"#;
        let options: serde_json::Map<String, serde_json::Value> = self
            .options
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let out = Command::new(python())
            .args([
                "-c",
                script,
                &self.root,
                &serde_json::Value::Object(options).to_string(),
            ])
            .output()
            .expect("python with deltalake (.ci/services installs it)");
        assert!(out.status.success(), "reader: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Target for ToDelta {
    fn outputs_toml(&self) -> String {
        format!(
            "[[sinks]]\nname = \"records\"\ntype = \"delta\"\n{}\n[[sinks]]\nname = \"final\"\ntype = \"delta\"\n{}\n[dead_letter]\ntype = \"delta\"\n{}id_field = \"id\"\n",
            self.table("records"),
            self.table("final"),
            self.table("dead")
        )
    }

    fn seen(&self, dir: &Path, _what: &str) -> PathBuf {
        let all = self.rows();
        let lines = |name: &str| -> Vec<String> {
            all[name]
                .as_array()
                .map(|rows| rows.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default()
        };
        let dead: Vec<(String, String)> = all["dead"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r["raw"].as_str().unwrap_or_default().to_owned(),
                            r["reason"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        brokers::write_seen(dir, &lines("records"), &lines("final"), &dead)
    }
}

#[test]
fn files_to_delta_survives_kill_9_and_crash_points_exactly_once() {
    let tables = tempfile::tempdir().unwrap();
    let target = ToDelta {
        root: tables.path().display().to_string(),
        options: Vec::new(),
    };
    brokers::crash_test(
        &target,
        60_000,
        &["after_manifest:2", "mid_commit:3", "after_prepare:3"],
    );
}

/// Delta tables on an s3s-fs of its own, stopped for 60 s while the job commits: nothing
/// lost, nothing dead-lettered by the outage, the run goes on by itself.
#[test]
fn an_s3_outage_under_delta_tables_loses_nothing_and_dead_letters_nothing() {
    let s3s = crate::s3::s3s_fs();
    let mut server = Server::start_as(
        &s3s,
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
    let options = [
        ("aws_endpoint_url", format!("http://127.0.0.1:{}", server.port)),
        ("aws_access_key_id", "K".into()),
        ("aws_secret_access_key", "S".into()),
        ("aws_region", "us-east-1".into()),
        ("aws_allow_http", "true".into()),
        ("aws_conditional_put", "etag".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let target = ToDelta {
        root: format!("s3://keel-test/delta-outage-{}", std::process::id()),
        options,
    };
    brokers::outage_test(&target, &mut server, 100_000, Duration::from_secs(60));
}

//! The reference job into PostgreSQL: both sinks and the dead letters are tables, each
//! epoch one transaction. Killed at the crash points and at random instants
//! ([`crate::brokers::crash_test`]); and a PostgreSQL server stopped for 60 s mid-run.
//! Needs the machine's server (`.ci/services`; `KEEL_PG_URL` overrides
//! postgres://postgres@127.0.0.1:5432/test); the outage test runs a server of its own
//! (initdb in a temporary directory, as the `postgres` user).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::brokers::{self, Server, Target};

fn url() -> String {
    std::env::var("KEEL_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn query(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            // a server that has just started answers "starting up" for a moment
            let mut tries = 0;
            let (client, conn) = loop {
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok(c) => break c,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("postgres (is it up? .ci/services starts it): {e}"),
                }
            };
            tokio::spawn(conn);
            let mut out = Vec::new();
            for s in sql.split(';').filter(|s| !s.trim().is_empty()) {
                out = client
                    .simple_query(s)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"))
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                        }
                        _ => None,
                    })
                    .collect();
            }
            out
        })
}

struct ToPostgres {
    url: String,
    prefix: String,
}

impl ToPostgres {
    fn new(url: String, tag: &str) -> Self {
        let prefix = format!("keel_cli_{tag}_{}", std::process::id());
        query(
            &url,
            &format!(
                "DROP TABLE IF EXISTS {p}_records, {p}_final, {p}_dead, keel_sink_progress;
                 CREATE TABLE {p}_records (id BIGINT NOT NULL, customer TEXT NOT NULL, running_total BIGINT NOT NULL);
                 CREATE TABLE {p}_final (customer TEXT PRIMARY KEY, total BIGINT NOT NULL)",
                p = prefix
            ),
        );
        ToPostgres { url, prefix }
    }
}

impl Target for ToPostgres {
    fn outputs_toml(&self) -> String {
        let (u, p) = (&self.url, &self.prefix);
        format!(
            "[[sinks]]\nname = \"records\"\ntype = \"postgres\"\nurl = \"{u}\"\ntable = \"{p}_records\"\n\n\
             [[sinks]]\nname = \"final\"\ntype = \"postgres\"\nurl = \"{u}\"\ntable = \"{p}_final\"\n\n\
             [dead_letter]\ntype = \"postgres\"\nurl = \"{u}\"\ntable = \"{p}_dead\"\nid_field = \"id\"\n"
        )
    }

    fn seen(&self, dir: &Path, _what: &str) -> PathBuf {
        let p = &self.prefix;
        let lines = |sql: &str| -> Vec<String> {
            query(&self.url, sql)
                .into_iter()
                .map(|r| r[0].clone().unwrap_or_default())
                .collect()
        };
        let records = lines(&format!(
            "SELECT json_build_object('id', id, 'customer', customer, 'running_total', running_total)::text FROM {p}_records"
        ));
        let fin = lines(&format!(
            "SELECT json_build_object('customer', customer, 'total', total)::text FROM {p}_final"
        ));
        let exists = !query(&self.url, &format!("SELECT 1 FROM pg_class WHERE relname = '{p}_dead'")).is_empty();
        let dead = if exists {
            query(&self.url, &format!("SELECT raw, reason FROM {p}_dead"))
                .into_iter()
                .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
                .collect()
        } else {
            Vec::new()
        };
        brokers::write_seen(dir, &records, &fin, &dead)
    }
}

/// The tests that create the progress table run one at a time.
static TABLES: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn files_to_postgres_survives_kill_9_and_crash_points_exactly_once() {
    let _one = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    let target = ToPostgres::new(url(), "crash");
    brokers::crash_test(
        &target,
        120_000,
        &["after_manifest:2", "mid_commit:3", "after_prepare:3"],
    );
}

/// The `postgres` user's uid and gid, and the server's binaries.
fn postgres_user_and_bin() -> ((u32, u32), PathBuf) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("a postgres user (Debian's postgresql package)");
    let f: Vec<&str> = line.split(':').collect();
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .max()
        .expect("a PostgreSQL version");
    ((f[2].parse().unwrap(), f[3].parse().unwrap()), bin)
}

/// A PostgreSQL server of its own stopped (fast shutdown) for 60 s while the job commits
/// to it: nothing lost, nothing dead-lettered by the outage, the run goes on by itself.
#[test]
fn a_postgres_outage_of_60_s_loses_nothing_and_dead_letters_nothing() {
    let (user, bin) = postgres_user_and_bin();
    let mut server = Server::start_as(
        bin.join("postgres").to_str().unwrap(),
        Some(user),
        "-INT",
        |data| {
            use std::os::unix::process::CommandExt;
            let ok = Command::new(bin.join("initdb"))
                .args(["-D", data.join("db").to_str().unwrap(), "-A", "trust", "-U", "postgres"])
                .uid(user.0)
                .gid(user.1)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "initdb");
        },
        |port, data| {
            vec![
                "-D".into(),
                data.join("db").display().to_string(),
                "-p".into(),
                port.to_string(),
                "-k".into(),
                data.display().to_string(),
                "-c".into(),
                "listen_addresses=127.0.0.1".into(),
            ]
        },
    );
    let target = ToPostgres::new(
        format!("postgres://postgres@127.0.0.1:{}/postgres", server.port),
        "outage",
    );
    brokers::outage_test(&target, &mut server, 150_000, Duration::from_secs(60));
}

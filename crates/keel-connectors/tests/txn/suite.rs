//! The staged-transaction contract (see `keel::txn`), store by store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use keel::txn::{Committed, JsonLines, Transaction, Txn, TxnError, TxnStore};

use crate::stores::{Place, Store, open};

type Files = BTreeMap<String, String>;

fn files(list: &[(&str, &str)]) -> Files {
    list.iter().map(|(n, d)| (n.to_string(), d.to_string())).collect()
}

/// A generation of a dataset: three files that all say which generation they belong to.
fn generation(i: u64) -> Files {
    ["a.jsonl", "b.jsonl", "c.jsonl"]
        .iter()
        .map(|n| (n.to_string(), format!("{{\"gen\":{i},\"file\":\"{n}\"}}\n").repeat(50)))
        .collect()
}

async fn write(store: &dyn TxnStore, dataset: &str, content: &Files) -> Result<Committed, TxnError> {
    let mut t = Transaction::begin(store, dataset).await?.validate_with(JsonLines);
    for (name, data) in content {
        t.stage(name, data.clone()).await?;
    }
    t.commit().await
}

/// What a reader sees: the files of the current version, read through the store.
async fn read_all(store: &dyn TxnStore, dataset: &str) -> Option<(u64, Files)> {
    let v = store.current(dataset).await.unwrap()?;
    let mut out = Files::new();
    for f in &v.files {
        let data = store.read(&v, &f.name).await.unwrap();
        assert_eq!(data.len() as u64, f.size, "{} has the size its version lists", f.name);
        out.insert(f.name.clone(), String::from_utf8(data.to_vec()).unwrap());
    }
    Some((v.version, out))
}

/// Nothing staged remains: on a file system the staging namespace is empty; on object
/// storage every data object belongs to a version that has a manifest.
async fn no_staged_leftovers(s: &Store) {
    let all = s.everything().await;
    match &s.place {
        Place::Dir(_) => {
            let staged: Vec<_> = all.iter().filter(|p| p.starts_with("_staging/default/")).collect();
            assert!(staged.is_empty(), "staged leftovers: {staged:?}");
        }
        Place::S3 { prefix, raw } => {
            use object_store::ObjectStoreExt;
            let mut live = BTreeSet::new();
            for m in all.iter().filter(|p| p.contains("/_manifests/")) {
                let path = object_store::path::Path::parse(format!("{prefix}/{m}")).unwrap();
                let raw = raw.get(&path).await.unwrap().bytes().await.unwrap();
                let v: keel::txn::Version = serde_json::from_slice(&raw).unwrap();
                live.insert(v.txid);
            }
            for p in all.iter().filter(|p| p.contains("/data/")) {
                let txid = p.split("/data/").nth(1).unwrap().split('/').next().unwrap();
                assert!(live.contains(txid), "unreferenced object {p}");
            }
        }
    }
}

pub async fn commit_publishes_every_file_and_replaces_the_old_version(s: &Store) {
    let st = &*s.store;
    assert!(read_all(st, "orders").await.is_none());
    let v1 = files(&[("a.jsonl", "{\"a\":1}\n"), ("b.jsonl", "{\"b\":1}\n")]);
    let c1 = write(st, "orders", &v1).await.unwrap();
    assert_eq!((c1.version.version, c1.already), (1, false));
    assert_eq!(read_all(st, "orders").await, Some((1, v1)));
    let v2 = files(&[("a.jsonl", "{\"a\":2}\n"), ("c.jsonl", "{\"c\":2}\n")]);
    let c2 = write(st, "orders", &v2).await.unwrap();
    assert_eq!(c2.version.version, 2);
    assert_eq!(
        read_all(st, "orders").await,
        Some((2, v2)),
        "b.jsonl is gone with version 1"
    );
    // nested dataset names
    let d = files(&[("x.jsonl", "1\n")]);
    write(st, "daily/2026-11-23", &d).await.unwrap();
    assert_eq!(read_all(st, "daily/2026-11-23").await, Some((1, d)));
    no_staged_leftovers(s).await;
}

pub async fn committing_twice_is_a_no_op(s: &Store) {
    let st = &*s.store;
    let txn = st.begin("d").await.unwrap();
    st.stage(&txn, "f.jsonl", Bytes::from_static(b"{}\n")).await.unwrap();
    let first = st.commit(&txn).await.unwrap();
    let second = st.commit(&txn).await.unwrap();
    assert!(!first.already && second.already);
    assert_eq!(first.version, second.version);
    // a later version does not make the old transaction commit again
    write(st, "d", &files(&[("g.jsonl", "{}\n")])).await.unwrap();
    let third = st.commit(&txn).await.unwrap();
    assert!(third.already);
    assert_eq!(third.version.version, 1);
    assert_eq!(read_all(st, "d").await.unwrap().0, 2);
}

pub async fn a_failed_validation_leaves_no_partial_output(s: &Store) {
    let st = &*s.store;
    let v1 = files(&[("a.jsonl", "{}\n")]);
    write(st, "d", &v1).await.unwrap();
    let before = s.everything().await;
    let bad = files(&[("a.jsonl", "{}\n"), ("b.jsonl", "{}\n{oops\n")]);
    match write(st, "d", &bad).await {
        Err(TxnError::Validation { validator, message }) => {
            assert_eq!(validator, "json_lines");
            assert!(message.starts_with("b.jsonl:2: not JSON"), "{message}");
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert_eq!(read_all(st, "d").await, Some((1, v1)));
    assert_eq!(
        s.everything().await,
        before,
        "nothing of the failed transaction remains"
    );
}

pub async fn rollback_discards_and_refuses_once_committed(s: &Store) {
    let st = &*s.store;
    let before = s.everything().await;
    let txn = st.begin("d").await.unwrap();
    st.stage(&txn, "a.jsonl", Bytes::from_static(b"{}\n")).await.unwrap();
    assert_eq!(st.staged(&txn).await.unwrap().len(), 1);
    st.rollback(&txn).await.unwrap();
    st.rollback(&txn).await.unwrap();
    assert!(matches!(st.commit(&txn).await, Err(TxnError::NotStaged(_))));
    assert!(read_all(st, "d").await.is_none());
    let after: Vec<_> = s
        .everything()
        .await
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(after.iter().all(|p| !p.contains("a.jsonl")), "{after:?}");
    let c = write(st, "d", &files(&[("a.jsonl", "{}\n")])).await.unwrap();
    let committed = Txn {
        dataset: "d".into(),
        id: c.version.txid.clone(),
    };
    assert!(matches!(st.rollback(&committed).await, Err(TxnError::Committed(_))));
    assert_eq!(read_all(st, "d").await.unwrap().0, 1);
}

pub async fn store_errors_at_any_step_leave_old_or_new(s: &Store) {
    let v1 = generation(1);
    write(&*s.store, "d", &v1).await.unwrap();
    let mut failures = 0;
    for fail_from in 0.. {
        let failing = s.failing_from(fail_from);
        let current = read_all(&*s.store, "d").await.unwrap();
        let next = generation(current.0 + 1);
        let result = write(&*failing, "d", &next).await;
        let seen = read_all(&*s.store, "d").await.unwrap();
        match &result {
            Ok(c) => assert_eq!(seen, (c.version.version, next.clone())),
            Err(_) => {
                failures += 1;
                assert!(
                    seen == current || seen.1 == next,
                    "step {fail_from}: old or new, never a mix"
                );
            }
        }
        // what a failed rollback left behind is hidden, and recovery removes it
        s.store.recover(Duration::ZERO).await.unwrap();
        no_staged_leftovers(s).await;
        if result.is_ok() {
            break;
        }
    }
    assert!(failures >= 5, "only {failures} steps failed");
}

pub async fn concurrent_commits_get_distinct_versions(s: &Store) {
    if let Place::S3 { prefix, raw } = &s.place {
        // s3s-fs checks If-None-Match before writing, not atomically with the write, so truly
        // concurrent writers can both "win" on it (real S3 and MinIO are atomic). The lost
        // race is made deterministic instead: another writer's manifest lands just before ours.
        return lost_race_takes_the_next_version(s, prefix, raw.clone()).await;
    }
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        let store = s.store.clone();
        tasks.push(tokio::spawn(async move {
            write(&*store, "shared", &generation(100 + i))
                .await
                .unwrap()
                .version
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=6).collect::<Vec<_>>());
    let (v, content) = read_all(&*s.store, "shared").await.unwrap();
    assert_eq!(v, 6);
    assert!((100..106).any(|i| content == generation(i)));
}

async fn lost_race_takes_the_next_version(s: &Store, prefix: &str, raw: std::sync::Arc<dyn object_store::ObjectStore>) {
    // the other writer's version 1, committed by a second store on the same place
    let other = crate::stores::open(&s.spec());
    let theirs = {
        let t = other.begin("shared").await.unwrap();
        other.stage(&t, "a.jsonl", Bytes::from_static(b"{}\n")).await.unwrap();
        t
    };
    let racing: std::sync::Arc<dyn object_store::ObjectStore> =
        std::sync::Arc::new(crate::faulty::Racing::new(raw, other, theirs.clone()));
    let ours = keel_connectors::txn::ObjectTxnStore::new(racing, prefix, "racing s3");
    let c = write(&ours, "shared", &generation(7)).await.unwrap();
    assert_eq!(c.version.version, 2, "version 1 went to the other writer");
    let v1 = s.store.commit(&theirs).await.unwrap();
    assert!(v1.already && v1.version.version == 1);
    assert_eq!(read_all(&*s.store, "shared").await, Some((2, generation(7))));
}

pub async fn recovery_rolls_back_abandoned_transactions(s: &Store) {
    let st = &*s.store;
    write(st, "d", &generation(1)).await.unwrap();
    let txn = st.begin("d").await.unwrap();
    st.stage(&txn, "a.jsonl", Bytes::from_static(b"{}\n")).await.unwrap();
    let kept = st.recover(Duration::from_secs(3600)).await.unwrap();
    assert!(
        kept.rolled_back.is_empty(),
        "a recent transaction is left to its writer"
    );
    assert_eq!(st.staged(&txn).await.unwrap().len(), 1);
    let r = st.recover(Duration::ZERO).await.unwrap();
    assert_eq!(r.rolled_back, vec![txn.id.clone()]);
    assert!(matches!(st.commit(&txn).await, Err(TxnError::NotStaged(_))));
    assert_eq!(read_all(st, "d").await, Some((1, generation(1))));
    no_staged_leftovers(s).await;
}

/// Runs the child: `KEEL_TXN_CHILD=<spec>|<dataset>|<mode>`. `once` commits the next
/// generation; `loop` commits generations forever. It reports each step on stdout (line
/// buffered), so the parent knows where a kill landed: `TXID <id>` after begin, `COMMIT <id>`
/// right before the commit, `DONE <id> <version>` once it returned.
pub async fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let store = open(parts[0]);
    let dataset = parts[1];
    loop {
        let next = read_all(&*store, dataset).await.map_or(1, |(v, _)| v + 1);
        let mut t = Transaction::begin(&*store, dataset).await.unwrap();
        let id = t.txn().id.clone();
        println!("TXID {id}");
        for (name, data) in generation(next) {
            t.stage(&name, data).await.unwrap();
        }
        println!("COMMIT {id}");
        t.commit().await.unwrap();
        println!("DONE {id} {next}");
        if parts[2] == "once" {
            return;
        }
    }
}

fn child_command(s: &Store, mode: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child_commit", "--nocapture", "--test-threads=1"])
        .env("KEEL_TXN_CHILD", format!("{}|d|{mode}", s.spec()))
        .env_remove("KEEL_CRASH_AT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// A reader's check after a crash: some generation, whole, with the matching version.
async fn consistent(st: &dyn TxnStore) -> u64 {
    let (v, content) = read_all(st, "d").await.expect("the first version was committed");
    assert_eq!(content, generation(v), "version {v} is one whole generation");
    v
}

/// Where the child was when it died, from its stdout.
#[derive(Debug, Default)]
struct ChildProgress {
    /// The transaction begun after the last completed commit, if any.
    open: Option<String>,
    /// `COMMIT` was printed for `open`: the kill landed inside `commit`.
    committing: bool,
    /// The version of the last commit that returned.
    done: Option<u64>,
}

impl ChildProgress {
    fn feed(&mut self, line: &str) {
        // libtest may print its own text before the first line (`test child_commit ... `)
        let at = ["TXID ", "COMMIT ", "DONE "].iter().filter_map(|m| line.find(m)).min();
        let Some(at) = at else { return };
        let mut words = line[at..].split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("TXID"), Some(id), _) => (self.open, self.committing) = (Some(id.to_owned()), false),
            (Some("COMMIT"), Some(id), _) => {
                assert_eq!(self.open.as_deref(), Some(id), "COMMIT of the open transaction");
                self.committing = true;
            }
            (Some("DONE"), Some(_), Some(v)) => {
                (self.open, self.committing) = (None, false);
                self.done = Some(v.parse().unwrap());
            }
            _ => {}
        }
    }
}

/// The deterministic crash points inside `commit`: the child must die exactly there (an abort
/// with keel's message naming the point, after `COMMIT` and before `DONE`), and the outcome is
/// exact: before publish the old version stays, after publish the new one is visible; the
/// writer's repeated commit then completes (or finds it already done) at exactly the new one.
pub async fn death_mid_commit_leaves_old_or_new(s: &Store) {
    use std::os::unix::process::ExitStatusExt;
    write(&*s.store, "d", &generation(1)).await.unwrap();
    for point in ["txn_before_publish", "txn_after_publish"] {
        let before = consistent(&*s.store).await;
        let out = child_command(s, "once")
            .env("KEEL_CRASH_AT", format!("{point}:1"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(6),
            "{point}: an abort, not {:?}: {stderr}",
            out.status
        );
        assert!(
            stderr.contains(&format!("KEEL_CRASH_AT={point}:1 reached")),
            "{point}: the abort is the crash point's: {stderr}"
        );
        let mut progress = ChildProgress::default();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .for_each(|l| progress.feed(l));
        assert!(
            progress.committing && progress.done.is_none(),
            "{point}: died inside commit: {progress:?}"
        );
        let txid = progress.open.clone().expect("a transaction was open");
        let after = consistent(&*s.store).await;
        let expect = if point == "txn_before_publish" {
            before
        } else {
            before + 1
        };
        assert_eq!(after, expect, "crash at {point}");
        // the writer restarts and repeats its commit
        let txn = Txn {
            dataset: "d".into(),
            id: txid,
        };
        let again = s.store.commit(&txn).await.unwrap();
        assert_eq!(again.already, point == "txn_after_publish");
        assert_eq!(consistent(&*s.store).await, before + 1);
        s.store.recover(Duration::ZERO).await.unwrap();
        no_staged_leftovers(s).await;
    }
}

/// kill -9 of a writer committing in a loop, at random instants and right after it announced
/// a commit. Where each kill landed is known from the child's own progress lines, and each
/// place has its exact outcome: killed outside `commit`, the version is that of its last
/// returned commit; killed inside it, the old or the new version, and the writer's repeated
/// commit makes it exactly the new one. Kills must land inside `commit` at least twice.
pub async fn kill_9_at_random_instants_leaves_old_or_new(s: &Store) {
    write(&*s.store, "d", &generation(1)).await.unwrap();
    let mut seed = keel::util::now_ms() | 1;
    let (mut mid_commit, mut rounds) = (0, 0);
    while rounds < 10 || (mid_commit < 2 && rounds < 60) {
        rounds += 1;
        let start = consistent(&*s.store).await;
        let mut child = child_command(s, "loop").stderr(Stdio::null()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut progress = ChildProgress {
            done: Some(start),
            ..Default::default()
        };
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        // even rounds: a random instant once it is writing; odd rounds: as soon as it
        // announces a commit
        let wanted = if rounds % 2 == 0 { "TXID " } else { "COMMIT " };
        for line in lines.by_ref() {
            let line = line.unwrap();
            progress.feed(&line);
            if line.contains(wanted) {
                break;
            }
        }
        if wanted == "TXID " {
            std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 300));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for line in lines {
            progress.feed(&line.unwrap());
        }
        let last = progress.done.expect("a version");
        let v = consistent(&*s.store).await;
        if progress.committing {
            mid_commit += 1;
            assert!(
                v == last || v == last + 1,
                "round {rounds}: killed in commit: {v} after {last}"
            );
            let txn = Txn {
                dataset: "d".into(),
                id: progress.open.clone().expect("open"),
            };
            let again = s.store.commit(&txn).await.unwrap();
            assert_eq!(again.already, v == last + 1, "round {rounds}: repeated commit");
            assert_eq!(
                consistent(&*s.store).await,
                last + 1,
                "round {rounds}: after the repeated commit"
            );
        } else {
            assert_eq!(v, last, "round {rounds}: killed outside commit ({progress:?})");
        }
        s.store.recover(Duration::ZERO).await.unwrap();
        no_staged_leftovers(s).await;
    }
    eprintln!("{mid_commit} of {rounds} kills landed inside commit");
    assert!(
        mid_commit >= 2,
        "only {mid_commit} of {rounds} kills landed inside commit"
    );
    assert!(consistent(&*s.store).await > 1, "the child committed something");
}

/// Datasets whose names nest (`a`, `a/b`, and names that look like the store's own layout)
/// are independent: committing or rolling back one never deletes another.
pub async fn nested_dataset_names_never_touch_each_other(s: &Store) {
    let st = &*s.store;
    let a_b = files(&[("x.jsonl", "{\"d\":\"a/b\"}\n")]);
    write(st, "a/b", &a_b).await.unwrap();
    let a1 = files(&[("x.jsonl", "{\"d\":\"a\",\"v\":1}\n")]);
    let c = write(st, "a", &a1).await.unwrap();
    // a dataset named like the data directory of `a`'s transaction
    let lookalike = format!("a/data/{}", c.version.txid);
    let look = files(&[("x.jsonl", "{\"d\":\"lookalike\"}\n")]);
    write(st, &lookalike, &look).await.unwrap();
    // replacing `a` (twice: the first version is displaced, then pruned on object stores)
    for v in 2..=5 {
        let next = files(&[("x.jsonl", &format!("{{\"d\":\"a\",\"v\":{v}}}\n"))]);
        write(st, "a", &next).await.unwrap();
        let t = st.begin("a").await.unwrap();
        st.stage(&t, "y.jsonl", Bytes::from_static(b"{}\n")).await.unwrap();
        st.rollback(&t).await.unwrap();
    }
    assert_eq!(read_all(st, "a").await.unwrap().0, 5);
    assert_eq!(read_all(st, "a/b").await, Some((1, a_b.clone())));
    assert_eq!(read_all(st, &lookalike).await, Some((1, look)));
    // and the other way round
    write(st, "a/b", &files(&[("z.jsonl", "{}\n")])).await.unwrap();
    assert_eq!(
        read_all(st, "a").await.unwrap().1,
        files(&[("x.jsonl", "{\"d\":\"a\",\"v\":5}\n")])
    );
    st.recover(Duration::ZERO).await.unwrap();
    assert_eq!(read_all(st, "a/b").await.unwrap().0, 2);
    no_staged_leftovers(s).await;
}

/// A rollback of a transaction racing with its commit (recovery of a writer thought gone,
/// or a second process): either the commit wins and the rollback is refused, or the rollback
/// wins and the commit fails; a published version never lists deleted data.
pub async fn a_rollback_racing_a_commit_never_deletes_published_data(s: &Store) {
    let content = generation(1);
    let (committed, rolled_back) = match &s.place {
        Place::S3 { prefix, raw } => {
            // the rollback runs exactly when the commit is about to write its manifest
            let other = crate::stores::open(&s.spec());
            let t = other.begin("race").await.unwrap();
            for (n, d) in &content {
                other.stage(&t, n, Bytes::from(d.clone())).await.unwrap();
            }
            let racing = std::sync::Arc::new(crate::faulty::RollbackRacing::new(raw.clone(), other, t.clone()));
            let ours = keel_connectors::txn::ObjectTxnStore::new(racing.clone(), prefix, "racing s3");
            let committed = ours.commit(&t).await.map_err(|e| e.to_string());
            let rolled_back = racing.result.lock().await.clone().expect("the rollback ran");
            (committed.map(|_| ()), rolled_back)
        }
        Place::Dir(_) => {
            let t = s.store.begin("race").await.unwrap();
            for (n, d) in &content {
                s.store.stage(&t, n, Bytes::from(d.clone())).await.unwrap();
            }
            let (c, r) = tokio::join!(s.store.commit(&t), s.store.rollback(&t));
            (c.map(|_| ()).map_err(|e| e.to_string()), r.map_err(|e| e.to_string()))
        }
    };
    assert!(
        committed.is_ok() != rolled_back.is_ok(),
        "exactly one wins: commit {committed:?}, rollback {rolled_back:?}"
    );
    let seen = read_all(&*s.store, "race").await;
    if committed.is_ok() {
        assert_eq!(seen, Some((1, content)), "the published version is whole");
    } else {
        assert_eq!(seen, None);
    }
    s.store.recover(Duration::ZERO).await.unwrap();
    no_staged_leftovers(s).await;
}

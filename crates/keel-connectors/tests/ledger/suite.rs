//! The ledger contract (see `keel::ledger::Ledger`), backend by backend.

use std::collections::BTreeMap;
use std::time::Duration;

use keel::ledger::{Claim, ClaimRequest, Filter, Fingerprint, LedgerError, Stats, Status, UnitRef, Why};
use serde_json::json;

use crate::backends::Backend;

const LEASE: Duration = Duration::from_secs(60);

fn unit(key: &str) -> UnitRef {
    UnitRef::new("orders", "file", key)
}

fn fp(content: &str, mtime_ns: i64) -> Fingerprint {
    Fingerprint {
        checksum: Some(keel::ledger::Algorithm::Blake3.of_bytes(content.as_bytes())),
        size: content.len() as u64,
        mtime_ns,
    }
}

fn req(key: &str, content: &str) -> ClaimRequest {
    ClaimRequest {
        unit: unit(key),
        fingerprint: fp(content, 1),
    }
}

async fn claim1(b: &Backend, r: ClaimRequest, worker: &str, lease: Duration) -> Claim {
    let mut c = b.ledger.claim(&[r], worker, lease).await.unwrap();
    assert_eq!(c.len(), 1);
    c.remove(0)
}

async fn get(b: &Backend, key: &str) -> keel::ledger::Unit {
    let f = Filter {
        pipeline: Some("orders".into()),
        key: Some(key.into()),
        ..Filter::default()
    };
    let mut units = b.ledger.list(&f).await.unwrap();
    assert_eq!(units.len(), 1, "unit {key}");
    units.remove(0)
}

async fn complete(b: &Backend, key: &str, worker: &str) {
    let lost = b
        .ledger
        .complete(&[(unit(key), json!({"records": 3}))], worker)
        .await
        .unwrap();
    assert!(lost.is_empty(), "{lost:?}");
}

pub async fn new_units_are_taken_once(b: &Backend) {
    let c = claim1(b, req("a", "1\n2\n"), "w1", LEASE).await;
    assert_eq!(
        c,
        Claim::Process {
            attempt: 1,
            why: Why::New
        }
    );
    let u = get(b, "a").await;
    assert_eq!(u.status, Status::InProgress);
    assert_eq!(u.owner.as_deref(), Some("w1"));
    assert_eq!(u.attempts, 1);
    assert_eq!(u.fingerprint, fp("1\n2\n", 1));
    assert!(u.lease_until_ms.unwrap() > u.updated_ms);
    assert!(u.started_ms.is_some() && u.finished_ms.is_none());
    match claim1(b, req("a", "1\n2\n"), "w2", LEASE).await {
        Claim::Busy { owner, until_ms } => {
            assert_eq!(owner, "w1");
            assert_eq!(Some(until_ms), u.lease_until_ms);
        }
        other => panic!("w2 got {other:?}"),
    }
}

pub async fn completed_units_are_skipped_unless_changed(b: &Backend) {
    claim1(b, req("a", "x"), "w1", LEASE).await;
    complete(b, "a", "w1").await;
    let u = get(b, "a").await;
    assert_eq!(u.status, Status::Completed);
    assert_eq!(u.metadata, json!({"records": 3}));
    assert!(u.owner.is_none() && u.lease_until_ms.is_none() && u.finished_ms.is_some());
    assert_eq!(claim1(b, req("a", "x"), "w2", LEASE).await, Claim::Skip);
    assert_eq!(get(b, "a").await.status, Status::Completed);
    let changed = claim1(b, req("a", "y"), "w2", LEASE).await;
    assert_eq!(
        changed,
        Claim::Process {
            attempt: 2,
            why: Why::Changed
        }
    );
    let u = get(b, "a").await;
    assert_eq!((u.status, u.owner.as_deref()), (Status::InProgress, Some("w2")));
    assert_eq!(u.fingerprint, fp("y", 1));
}

pub async fn touched_units_record_their_new_mtime(b: &Backend) {
    claim1(b, req("a", "x"), "w1", LEASE).await;
    complete(b, "a", "w1").await;
    let touched = ClaimRequest {
        unit: unit("a"),
        fingerprint: fp("x", 7),
    };
    assert_eq!(claim1(b, touched, "w1", LEASE).await, Claim::Skip);
    let u = get(b, "a").await;
    assert_eq!(
        (u.status, u.fingerprint.mtime_ns, u.attempts),
        (Status::Completed, 7, 1)
    );
}

pub async fn failed_units_are_retried(b: &Backend) {
    claim1(b, req("a", "x"), "w1", LEASE).await;
    b.ledger
        .fail(&unit("a"), "w1", "line 3: bad json", json!({"line": 3}))
        .await
        .unwrap();
    let u = get(b, "a").await;
    assert_eq!(u.status, Status::Failed);
    assert_eq!(u.last_error.as_deref(), Some("line 3: bad json"));
    assert_eq!(u.metadata, json!({"line": 3}));
    assert!(u.owner.is_none());
    let again = claim1(b, req("a", "x"), "w2", LEASE).await;
    assert_eq!(
        again,
        Claim::Process {
            attempt: 2,
            why: Why::Failed
        }
    );
    complete(b, "a", "w2").await;
    let u = get(b, "a").await;
    assert_eq!((u.status, u.attempts, u.last_error), (Status::Completed, 2, None));
}

pub async fn own_units_are_resumed(b: &Backend) {
    claim1(b, req("a", "x"), "w1", LEASE).await;
    // the same worker restarting after a crash, lease still valid
    let c = claim1(b, req("a", "x"), "w1", LEASE).await;
    assert_eq!(
        c,
        Claim::Process {
            attempt: 2,
            why: Why::ResumeOwn
        }
    );
    assert_eq!(get(b, "a").await.owner.as_deref(), Some("w1"));
}

pub async fn expired_leases_are_taken_over_and_fenced(b: &Backend) {
    claim1(b, req("a", "x"), "w1", Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let c = claim1(b, req("a", "x"), "w2", LEASE).await;
    assert_eq!(
        c,
        Claim::Process {
            attempt: 2,
            why: Why::TakeOver
        }
    );
    // the first worker wakes up: it cannot complete, fail or renew the unit any more
    let lost = b.ledger.complete(&[(unit("a"), json!({}))], "w1").await.unwrap();
    assert_eq!(lost, vec![unit("a")]);
    let err = b.ledger.fail(&unit("a"), "w1", "late", json!({})).await.unwrap_err();
    assert!(matches!(err, LedgerError::LostLease(ref k) if k == "a"), "{err}");
    assert_eq!(
        b.ledger.renew(&[unit("a")], "w1", LEASE).await.unwrap(),
        vec![unit("a")]
    );
    let u = get(b, "a").await;
    assert_eq!((u.status, u.owner.as_deref()), (Status::InProgress, Some("w2")));
    complete(b, "a", "w2").await;
}

pub async fn renewals_extend_leases(b: &Backend) {
    claim1(b, req("a", "x"), "w1", Duration::from_millis(1)).await;
    claim1(b, req("b", "x"), "w2", LEASE).await;
    let lost = b.ledger.renew(&[unit("a"), unit("b")], "w1", LEASE).await.unwrap();
    assert_eq!(lost, vec![unit("b")]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    // renewed: still w1's
    assert!(matches!(
        claim1(b, req("a", "x"), "w2", LEASE).await,
        Claim::Busy { .. }
    ));
}

async fn populate(b: &Backend) {
    // a, c completed; b, d failed; e in progress; another pipeline's unit
    let reqs: Vec<_> = ["a", "b", "c", "d", "e"].iter().map(|k| req(k, k)).collect();
    b.ledger.claim(&reqs, "w1", LEASE).await.unwrap();
    let lost = b
        .ledger
        .complete(&[(unit("a"), json!({})), (unit("c"), json!({}))], "w1")
        .await
        .unwrap();
    assert!(lost.is_empty());
    b.ledger.fail(&unit("b"), "w1", "boom b", json!({})).await.unwrap();
    b.ledger.fail(&unit("d"), "w1", "boom d", json!({})).await.unwrap();
    let other = ClaimRequest {
        unit: UnitRef::new("billing", "model", "a"),
        fingerprint: fp("z", 1),
    };
    b.ledger.claim(&[other], "w1", LEASE).await.unwrap();
}

fn keys(units: &[keel::ledger::Unit]) -> Vec<String> {
    units.iter().map(|u| u.unit.key.clone()).collect()
}

pub async fn filters_select_units(b: &Backend) {
    populate(b).await;
    let all = b.ledger.list(&Filter::default()).await.unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(
        all[0].unit,
        UnitRef::new("billing", "model", "a"),
        "ordered by pipeline first"
    );
    let orders = Filter {
        pipeline: Some("orders".into()),
        ..Filter::default()
    };
    assert_eq!(keys(&b.ledger.list(&orders).await.unwrap()), ["a", "b", "c", "d", "e"]);
    let failed = Filter {
        status: Some(Status::Failed),
        ..orders.clone()
    };
    let f = b.ledger.list(&failed).await.unwrap();
    assert_eq!(keys(&f), ["b", "d"]);
    assert_eq!(f[0].last_error.as_deref(), Some("boom b"));
    let limited = Filter {
        limit: Some(2),
        ..orders.clone()
    };
    assert_eq!(keys(&b.ledger.list(&limited).await.unwrap()), ["a", "b"]);
    let scope = Filter {
        scope: Some("model".into()),
        ..Filter::default()
    };
    assert_eq!(b.ledger.list(&scope).await.unwrap().len(), 1);
    let future = keel::util::now_ms() + 60_000;
    let older = Filter {
        updated_before_ms: Some(future),
        ..orders.clone()
    };
    assert_eq!(b.ledger.list(&older).await.unwrap().len(), 5);
    let none = Filter {
        updated_before_ms: Some(1),
        ..orders
    };
    assert!(b.ledger.list(&none).await.unwrap().is_empty());
}

pub async fn retry_and_clear(b: &Backend) {
    populate(b).await;
    let orders = Filter {
        pipeline: Some("orders".into()),
        ..Filter::default()
    };
    let one = Filter {
        limit: Some(1),
        ..orders.clone()
    };
    // retry without a status means failed units; the limit counts in key order
    assert_eq!(b.ledger.retry(&one).await.unwrap(), 1);
    assert_eq!(get(b, "b").await.status, Status::Pending);
    assert_eq!(get(b, "d").await.status, Status::Failed);
    assert_eq!(b.ledger.retry(&orders).await.unwrap(), 1);
    assert_eq!(get(b, "d").await.status, Status::Pending);
    let c = claim1(b, req("b", "b"), "w2", LEASE).await;
    assert_eq!(
        c,
        Claim::Process {
            attempt: 2,
            why: Why::Pending
        }
    );
    // a stuck unit is released only when asked for by status
    let stuck = Filter {
        status: Some(Status::InProgress),
        key: Some("e".into()),
        ..orders.clone()
    };
    assert_eq!(b.ledger.retry(&stuck).await.unwrap(), 1);
    let e = get(b, "e").await;
    assert_eq!((e.status, e.owner), (Status::Pending, None));
    let completed = Filter {
        status: Some(Status::Completed),
        ..orders.clone()
    };
    assert_eq!(b.ledger.clear(&completed).await.unwrap(), 2);
    assert_eq!(keys(&b.ledger.list(&orders).await.unwrap()), ["b", "d", "e"]);
    // a cleared unit is new again
    let again = claim1(b, req("a", "a"), "w1", LEASE).await;
    assert_eq!(
        again,
        Claim::Process {
            attempt: 1,
            why: Why::New
        }
    );
    assert_eq!(b.ledger.clear(&Filter::default()).await.unwrap(), 5);
    assert!(b.ledger.list(&Filter::default()).await.unwrap().is_empty());
}

pub async fn stats_count_by_status(b: &Backend) {
    assert_eq!(b.ledger.stats(&Filter::default()).await.unwrap(), Stats::default());
    populate(b).await;
    let orders = Filter {
        pipeline: Some("orders".into()),
        ..Filter::default()
    };
    let s = b.ledger.stats(&orders).await.unwrap();
    assert_eq!(
        s,
        Stats {
            pending: 0,
            in_progress: 1,
            completed: 2,
            failed: 2,
            attempts: 5
        }
    );
    assert_eq!(s.failure_rate(), 0.5);
    assert_eq!(b.ledger.stats(&Filter::default()).await.unwrap().total(), 6);
}

pub async fn concurrent_workers_never_share_a_unit(b: &Backend) {
    const UNITS: usize = 200;
    const WORKERS: usize = 4;
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let ledger = b.another().await;
        handles.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut taken = Vec::new();
            // each worker walks the units from a different start, in small batches
            let order: Vec<usize> = (0..UNITS).map(|i| (i + w * UNITS / WORKERS) % UNITS).collect();
            for chunk in order.chunks(7) {
                let reqs: Vec<_> = chunk.iter().map(|i| req(&format!("u{i:03}"), "same")).collect();
                let claims = ledger.claim(&reqs, &worker, LEASE).await.unwrap();
                let mut done = Vec::new();
                for (r, c) in reqs.iter().zip(claims) {
                    if let Claim::Process { .. } = c {
                        taken.push(r.unit.key.clone());
                        done.push((r.unit.clone(), json!({ "by": worker })));
                    }
                }
                let lost = ledger.complete(&done, &worker).await.unwrap();
                assert!(lost.is_empty(), "{lost:?}");
            }
            taken
        }));
    }
    let mut by_unit: BTreeMap<String, usize> = BTreeMap::new();
    for h in handles {
        for k in h.await.unwrap() {
            *by_unit.entry(k).or_default() += 1;
        }
    }
    assert_eq!(by_unit.len(), UNITS, "every unit processed");
    assert!(by_unit.values().all(|&n| n == 1), "no unit twice: {by_unit:?}");
    let s = b.ledger.stats(&Filter::default()).await.unwrap();
    assert_eq!((s.completed, s.attempts), (UNITS as u64, UNITS as u64));
}

pub async fn a_newer_schema_is_refused(b: &Backend) {
    let err = b.reopen_with_newer_schema().await.unwrap_err();
    assert!(matches!(err, LedgerError::Schema { found: 99, known: 1 }), "{err}");
}

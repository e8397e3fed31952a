//! The backends' atomic operations under races, each side on its own connection: a lease
//! reclaimed by a new worker while its old owner acks, extends or fails the job, and many
//! enqueues of one idempotency key at once. The outcome of every race must be one of the
//! outcomes of the two orders, and the backend's records must agree with each other (the
//! suite checks that after each case).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keel::queue::{Disposition, JobError, JobState, NewJob, QueueError};
use keel::util::now_ms;
use serde_json::json;

use crate::backends::Backend;

const LONG: Duration = Duration::from_secs(3600);
const ROUNDS: usize = 25;
const PER_ROUND: usize = 4;

/// What the old owner does with its job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Settle {
    Ack,
    Extend,
    Retry,
    Bury,
}

const SETTLES: [Settle; 4] = [Settle::Ack, Settle::Extend, Settle::Retry, Settle::Bury];

fn owner_error() -> JobError {
    JobError {
        attempt: 1,
        class: keel::Class::Transient,
        reason: "old_owner".into(),
        message: "failed by the old owner".into(),
        at_ms: now_ms(),
    }
}

/// In each round, jobs taken by `old` with a lease that has run out are settled by `old`
/// (ack, extend, fail with a retry, fail to the dead set), each on its own task, while `new`
/// takes jobs, which puts the expired ones back first. For every job, either the old owner's
/// call won (and did what it says) or the new worker's take won (and the old call was fenced
/// with `LostLease`, changing nothing).
pub async fn a_lease_reclaimed_while_its_old_owner_acks_extends_or_fails_has_one_owner(b: &Backend) {
    let new = b.another().await;
    let mut olds = Vec::new();
    for _ in 0..PER_ROUND {
        olds.push(b.another().await);
    }
    let mut outcomes: BTreeMap<(Settle, bool), usize> = BTreeMap::new();
    for round in 0..ROUNDS {
        let jobs: Vec<NewJob> = (0..PER_ROUND)
            .map(|i| NewJob::new("k", json!({ "round": round, "i": i })))
            .collect();
        b.queue.enqueue_many(&jobs).await.unwrap();
        let taken = b.queue.take("old", Duration::from_millis(1), PER_ROUND).await.unwrap();
        assert_eq!(taken.len(), PER_ROUND);
        let until = taken.iter().filter_map(|j| j.lease_until_ms).max().unwrap();
        b.wait_past(until).await;

        // every fifth round the new worker takes first, every fifth after it the old owner
        // settles first (so that both outcomes are seen); the other rounds are races
        let order = round % 5;
        let first_take = if order == 0 {
            Some(new.take("new", LONG, PER_ROUND).await.unwrap())
        } else {
            None
        };
        let mut settles = tokio::task::JoinSet::new();
        for (i, job) in taken.iter().enumerate() {
            let old = olds[i].clone();
            let (id, lease) = (job.id.clone(), job.lease);
            let how = SETTLES[(i + round) % SETTLES.len()];
            settles.spawn(async move {
                let r = match how {
                    Settle::Ack => old.ack(&id, "old", lease).await,
                    Settle::Extend => old.extend(&id, "old", lease, LONG).await,
                    Settle::Retry => {
                        old.fail(
                            &id,
                            "old",
                            lease,
                            &owner_error(),
                            Disposition::Retry { at_ms: now_ms() },
                        )
                        .await
                    }
                    Settle::Bury => old.fail(&id, "old", lease, &owner_error(), Disposition::Dead).await,
                };
                let won = match r {
                    Ok(()) => true,
                    Err(QueueError::LostLease(_)) => false,
                    Err(e) => panic!("{how:?} of job {id}: {e}"),
                };
                (id, how, won)
            });
        }
        let mut results = Vec::new();
        if order == 1 {
            while let Some(r) = settles.join_next().await {
                results.push(r.unwrap());
            }
        }
        let taker = new.clone();
        let takes = tokio::spawn(async move {
            match first_take {
                Some(jobs) => jobs,
                None => taker.take("new", LONG, PER_ROUND).await.unwrap(),
            }
        });
        while let Some(r) = settles.join_next().await {
            results.push(r.unwrap());
        }
        let mut by_new: Vec<String> = takes.await.unwrap().into_iter().map(|j| j.id).collect();
        // a job the old owner retried is ready again: the new worker takes it now
        by_new.extend(
            new.take("new", LONG, PER_ROUND)
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.id),
        );
        let taken_by_new: BTreeSet<&String> = by_new.iter().collect();
        assert_eq!(
            taken_by_new.len(),
            by_new.len(),
            "round {round}: a job taken twice: {by_new:?}"
        );

        for (id, how, won) in results {
            *outcomes.entry((how, won)).or_default() += 1;
            let job = b.queue.get(&id).await.unwrap();
            let reasons = |j: &keel::queue::Job| j.errors.iter().map(|e| e.reason.clone()).collect::<Vec<_>>();
            let ctx = format!("round {round}, job {id}, {how:?} (old owner won: {won}): {job:?}");
            if !won {
                // fenced: the new worker holds the job, whose first lease expired
                let j = job.expect(&ctx);
                assert!(taken_by_new.contains(&id), "{ctx}");
                assert_eq!(
                    (j.state, j.worker.as_deref(), j.attempts, j.lease),
                    (JobState::Active, Some("new"), 2, 2),
                    "{ctx}"
                );
                assert_eq!(reasons(&j), ["lease_expired"], "{ctx}");
                continue;
            }
            match how {
                Settle::Ack => {
                    assert!(job.is_none(), "{ctx}");
                    assert!(!taken_by_new.contains(&id), "{ctx}");
                }
                Settle::Extend => {
                    let j = job.expect(&ctx);
                    assert!(!taken_by_new.contains(&id), "{ctx}");
                    assert_eq!(
                        (j.state, j.worker.as_deref(), j.lease),
                        (JobState::Active, Some("old"), 1),
                        "{ctx}"
                    );
                    assert!(j.errors.is_empty(), "{ctx}");
                }
                Settle::Retry => {
                    let j = job.expect(&ctx);
                    assert!(taken_by_new.contains(&id), "{ctx}");
                    assert_eq!(
                        (j.state, j.worker.as_deref(), j.attempts),
                        (JobState::Active, Some("new"), 2),
                        "{ctx}"
                    );
                    assert_eq!(reasons(&j), ["old_owner"], "{ctx}");
                }
                Settle::Bury => {
                    let j = job.expect(&ctx);
                    assert!(!taken_by_new.contains(&id), "{ctx}");
                    assert_eq!(j.state, JobState::Dead, "{ctx}");
                    assert_eq!(reasons(&j), ["old_owner"], "{ctx}");
                }
            }
        }
        // nothing of this round is left for later: every job is settled one way
        assert!(new.take("new", LONG, 100).await.unwrap().is_empty(), "round {round}");
    }
    // (both sides won some races: the ordered rounds make sure of it)
    let old_won: usize = outcomes.iter().filter(|((_, w), _)| *w).map(|(_, n)| n).sum();
    let new_won: usize = outcomes.iter().filter(|((_, w), _)| !*w).map(|(_, n)| n).sum();
    assert!(old_won > 0 && new_won > 0, "{outcomes:?}");
}

/// 8 clients enqueue the same key at once, 20 keys: one job per key, and every client gets
/// its id, all but one as a duplicate.
pub async fn concurrent_enqueues_of_one_key_make_one_job(b: &Backend) {
    const CLIENTS: usize = 8;
    const KEYS: usize = 20;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(b.another().await);
    }
    for k in 0..KEYS {
        let key = format!("race-{k}");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let mut set = tokio::task::JoinSet::new();
        for (c, q) in clients.iter().enumerate() {
            let (q, key, barrier) = (q.clone(), key.clone(), barrier.clone());
            set.spawn(async move {
                barrier.wait().await;
                keel::queue::enqueue(&*q, NewJob::new("k", json!({ "client": c })).key(key))
                    .await
                    .unwrap()
            });
        }
        let mut got = Vec::new();
        while let Some(r) = set.join_next().await {
            got.push(r.unwrap());
        }
        let ids: BTreeSet<&str> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), 1, "key {key}: {got:?}");
        assert_eq!(got.iter().filter(|e| !e.duplicate).count(), 1, "key {key}: {got:?}");
    }
    let all = b.queue.list(None, 1000).await.unwrap();
    assert_eq!(all.len(), KEYS, "one job per key");
}

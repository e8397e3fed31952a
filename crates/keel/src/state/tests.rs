use std::collections::HashMap;

use super::*;

fn totals() -> StateSpec<i64> {
    StateSpec::new("totals")
}

/// Writes every snapshot into a map of files and keeps the chain, like the checkpoint
/// thread does.
fn checkpoint(store: &mut StateStore, id: u64, files: &mut HashMap<String, Vec<u8>>, chain: &mut Vec<String>) {
    if let Some(snap) = store.snapshot(id).unwrap() {
        if snap.kind == Kind::Full {
            chain.clear();
        }
        chain.push(snap.name.clone());
        files.insert(snap.name, snap.bytes);
    }
}

fn restore(chain: &[String], files: &HashMap<String, Vec<u8>>) -> StateStore {
    let mut s = StateStore::new(SnapshotPolicy::default());
    s.restore(chain, |n| {
        files.get(n).cloned().ok_or_else(|| std::io::Error::other("missing"))
    })
    .unwrap();
    s
}

#[test]
fn update_put_get_delete() {
    let mut s = StateStore::new(SnapshotPolicy::default());
    let t = totals();
    assert_eq!(s.get(&t, b"a").unwrap(), None);
    let v = s
        .update(&t, b"a", |v| {
            let t = v.get_or_insert(0);
            *t += 5;
            *t
        })
        .unwrap();
    assert_eq!(v, 5);
    s.update(&t, b"a", |v| *v.as_mut().unwrap() += 2).unwrap();
    assert_eq!(s.get(&t, b"a").unwrap(), Some(7));
    s.put(&t, b"b", 1).unwrap();
    assert_eq!(s.delete(&t, b"b").unwrap(), Some(1));
    assert_eq!(s.get(&t, b"b").unwrap(), None);
    s.update(&t, b"a", |v| *v = None).unwrap();
    assert!(s.is_empty());
}

#[test]
fn deltas_and_full_snapshots_restore_the_same_state() {
    let mut files = HashMap::new();
    let mut s = StateStore::new(SnapshotPolicy { max_deltas: 3 });
    let t = totals();
    let mut expected: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut chain = Vec::new();
    for epoch in 1..=12u64 {
        for i in 0..50u64 {
            let key = format!("k{}", (i * 7 + epoch * 13) % 40).into_bytes();
            if (i + epoch) % 11 == 0 {
                s.delete(&t, &key).unwrap();
                expected.remove(&key);
            } else {
                s.update(&t, &key, |v| *v.get_or_insert(0) += i as i64).unwrap();
                *expected.entry(key).or_insert(0) += i as i64;
            }
        }
        checkpoint(&mut s, epoch, &mut files, &mut chain);
        if chain.len() > 4 {
            // what the checkpoint thread does in the background: fold the chain
            let snap = compact(epoch, &chain, |n| {
                files.get(n).cloned().ok_or_else(|| std::io::Error::other("missing"))
            })
            .unwrap();
            assert_eq!(snap.kind, Kind::Full);
            files.insert(snap.name.clone(), snap.bytes);
            chain = vec![snap.name];
        }
        assert!(chain.len() <= 4, "chain too long: {chain:?}");
        assert!(chain[0].ends_with(".full"));
        let mut r = restore(&chain, &files);
        let got: HashMap<Vec<u8>, i64> = r
            .entries(&t)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v))
            .collect();
        assert_eq!(got, expected, "epoch {epoch}");
    }
    assert!(chain.iter().any(|c| c.ends_with(".delta")));
}

#[test]
fn unchanged_state_writes_nothing() {
    let mut s = StateStore::new(SnapshotPolicy::default());
    assert!(s.snapshot(1).unwrap().is_none());
    s.put(&totals(), b"a", 1).unwrap();
    assert!(s.snapshot(2).unwrap().is_some());
    assert!(s.snapshot(3).unwrap().is_none());
}

#[test]
fn restored_raw_tables_survive_snapshots_before_first_typed_use() {
    let mut files = HashMap::new();
    let mut s = StateStore::new(SnapshotPolicy { max_deltas: 0 });
    s.put(&totals(), b"a", 41).unwrap();
    let mut chain = Vec::new();
    checkpoint(&mut s, 1, &mut files, &mut chain);
    // restored store: table not touched by a typed step, then a snapshot of another table
    let mut r = restore(&chain, &files);
    r.put(&StateSpec::<String>::new("other"), b"x", "y".to_string())
        .unwrap();
    checkpoint(&mut r, 2, &mut files, &mut chain);
    let mut r2 = restore(&chain, &files);
    assert_eq!(r2.get(&totals(), b"a").unwrap(), Some(41));
    // and folded into one full snapshot
    let snap = compact(2, &chain, |n| Ok(files[n].clone())).unwrap();
    files.insert(snap.name.clone(), snap.bytes);
    let mut r3 = restore(&[snap.name], &files);
    assert_eq!(r3.get(&totals(), b"a").unwrap(), Some(41));
    assert_eq!(
        r3.get(&StateSpec::<String>::new("other"), b"x").unwrap(),
        Some("y".into())
    );
}

#[test]
fn type_clash_is_an_error_not_a_panic() {
    let mut s = StateStore::new(SnapshotPolicy::default());
    s.put(&totals(), b"a", 1).unwrap();
    let err = s
        .put(&StateSpec::<String>::new("totals"), b"a", "x".into())
        .unwrap_err();
    assert!(matches!(err, StateError::TypeClash(_)));
}

/// Found by the `state_file` fuzz target: a restored value that does not decode as the
/// requested type failed the first access but emptied the table, so the next access saw no
/// keys at all and a later snapshot could build on the loss.
#[test]
fn a_value_that_does_not_decode_fails_every_access_and_loses_nothing() {
    let mut w = StateFileWriter::new(Kind::Full, 1);
    w.table("totals");
    w.put(b"good", &postcard::to_allocvec(&7i64).unwrap());
    w.put(b"bad", &[0xff; 12]); // not a varint: no i64 decodes from it
    let files = HashMap::from([("1.full".to_string(), w.finish())]);
    let chain = vec!["1.full".to_string()];
    let mut s = restore(&chain, &files);
    for _ in 0..3 {
        let err = s.get(&totals(), b"good").unwrap_err();
        assert!(matches!(err, StateError::Decode { .. }), "{err}");
    }
    // nothing was dropped: the table still has both keys
    s.put(&StateSpec::<u8>::new("other"), b"k", 1).unwrap();
    assert_eq!(s.len(), 3);
}

#[test]
fn a_corrupt_state_file_fails_restore() {
    let mut files = HashMap::new();
    let mut s = StateStore::new(SnapshotPolicy::default());
    s.put(&totals(), b"a", 1).unwrap();
    let mut chain = Vec::new();
    checkpoint(&mut s, 1, &mut files, &mut chain);
    files.get_mut(&chain[0]).unwrap()[12] ^= 1;
    let mut r = StateStore::new(SnapshotPolicy::default());
    let err = r.restore(&chain, |n| Ok(files[n].clone())).unwrap_err();
    assert!(matches!(err, RestoreError::File(_, StateFileError::Checksum)));
}

#[test]
fn retain_records_deletions() {
    let mut files = HashMap::new();
    let mut s = StateStore::new(SnapshotPolicy::default());
    let t = totals();
    for i in 0..10 {
        s.put(&t, format!("{i}").as_bytes(), i).unwrap();
    }
    let mut chain = Vec::new();
    checkpoint(&mut s, 1, &mut files, &mut chain);
    assert_eq!(s.retain(&t, |_, v| *v >= 5).unwrap(), 5);
    checkpoint(&mut s, 2, &mut files, &mut chain);
    let mut r = restore(&chain, &files);
    assert_eq!(r.entries(&t).unwrap().len(), 5);
}

/// A delta costs what changed: only the keys touched in the epoch are visited and written,
/// however large the table (issue 9.12: every checkpoint scanned every key).
#[test]
fn a_delta_holds_only_the_keys_changed_in_its_epoch() {
    let mut s = StateStore::new(SnapshotPolicy::default());
    let t = totals();
    for i in 0..10_000u32 {
        s.put(&t, &i.to_be_bytes(), 1).unwrap();
    }
    let full = s.snapshot(1).unwrap().unwrap();
    s.update(&t, &7u32.to_be_bytes(), |v| *v.as_mut().unwrap() += 1)
        .unwrap();
    s.update(&t, &7u32.to_be_bytes(), |v| *v.as_mut().unwrap() += 1)
        .unwrap();
    s.delete(&t, &8u32.to_be_bytes()).unwrap();
    s.put(&t, &8u32.to_be_bytes(), 5).unwrap();
    let delta = s.snapshot(2).unwrap().unwrap();
    let mut entries = Vec::new();
    file::read(&delta.bytes, |_, e| {
        entries.push(match e {
            Entry::Put(k, _) => ("put", k.to_vec()),
            Entry::Delete(k) => ("delete", k.to_vec()),
        })
    })
    .unwrap();
    assert_eq!(
        entries,
        vec![
            ("delete", 8u32.to_be_bytes().to_vec()),
            ("put", 7u32.to_be_bytes().to_vec()),
            ("put", 8u32.to_be_bytes().to_vec())
        ]
    );
    assert!(delta.bytes.len() * 100 < full.bytes.len());
    assert!(s.snapshot(3).unwrap().is_none(), "nothing is dirty after a delta");
}

/// State kept by 4 workers (each its own key groups and its own chain of full snapshots and
/// deltas) restores onto 2, 3 or 1 workers, and back: every key exactly once, on the worker
/// that owns its group, with its latest value; deletes in deltas stay deleted.
#[test]
fn state_of_n_workers_restores_onto_any_other_number() {
    use super::key_group::{key_group, worker_groups};
    let t = totals();
    let mut files = HashMap::new();
    let mut expected: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut workers: Vec<StateStore> = (0..4)
        .map(|_| StateStore::new(SnapshotPolicy { max_deltas: 8 }))
        .collect();
    let mut chains: Vec<Vec<String>> = vec![Vec::new(); 4];
    for epoch in 1..=5u64 {
        for i in 0..400u64 {
            let key = format!("customer-{}", (i * 7 + epoch * 13) % 300).into_bytes();
            let w = (0..4)
                .find(|&w| worker_groups(w, 4).contains(&key_group(&key)))
                .unwrap();
            if (i + epoch) % 9 == 0 {
                workers[w].delete(&t, &key).unwrap();
                expected.remove(&key);
            } else {
                workers[w]
                    .update(&t, &key, |v| *v.get_or_insert(0) += i as i64)
                    .unwrap();
                *expected.entry(key).or_insert(0) += i as i64;
            }
        }
        for (w, store) in workers.iter_mut().enumerate() {
            // each worker names its files apart, as one chain each
            if let Some(mut snap) = store.snapshot(epoch).unwrap() {
                snap.name = format!("w{w}-{}", snap.name);
                if snap.kind == Kind::Full {
                    chains[w].clear();
                }
                chains[w].push(snap.name.clone());
                files.insert(snap.name, snap.bytes);
            }
        }
    }
    assert!(chains.iter().all(|c| c.len() > 1), "deltas were written: {chains:?}");
    let read = |n: &str| files.get(n).cloned().ok_or_else(|| std::io::Error::other("missing"));
    for n in [1usize, 2, 3, 8] {
        let mut seen: HashMap<Vec<u8>, i64> = HashMap::new();
        for w in 0..n {
            let groups = worker_groups(w, n);
            let mut s = StateStore::new(SnapshotPolicy::default());
            s.restore_groups(&chains, groups.clone(), read).unwrap();
            for (k, v) in s.entries(&t).unwrap() {
                assert!(
                    groups.contains(&key_group(&k)),
                    "{n} workers: worker {w} got a key of another"
                );
                assert!(
                    seen.insert(k.to_vec(), v).is_none(),
                    "{n} workers: a key restored twice"
                );
            }
            // rescaled state is written in full at the next checkpoint, changed or not, and
            // restores from that one file alone
            let snap = s.snapshot(9).unwrap().expect("a full snapshot after rescaling");
            assert_eq!(snap.kind, Kind::Full);
            let mut again = StateStore::new(SnapshotPolicy::default());
            again.restore(&["x".to_string()], |_| Ok(snap.bytes.clone())).unwrap();
            assert_eq!(again.entries(&t).unwrap().len(), s.entries(&t).unwrap().len());
            assert!(s.snapshot(10).unwrap().is_none(), "then deltas again");
        }
        assert_eq!(seen, expected, "{n} workers");
    }
}

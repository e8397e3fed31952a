use std::collections::HashMap;

use super::*;

fn totals() -> StateSpec<i64> {
    StateSpec::new("totals")
}

/// Writes every snapshot into a map of files, like a checkpoint store would.
fn checkpoint(store: &mut StateStore, id: u64, files: &mut HashMap<String, Vec<u8>>) -> Vec<String> {
    if let Some(snap) = store.snapshot(id).unwrap() {
        files.insert(snap.name, snap.bytes);
    }
    store.chain().to_vec()
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
        chain = checkpoint(&mut s, epoch, &mut files);
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
    assert_eq!(s.chain().len(), 1);
}

#[test]
fn restored_raw_tables_survive_snapshots_before_first_typed_use() {
    let mut files = HashMap::new();
    let mut s = StateStore::new(SnapshotPolicy { max_deltas: 0 });
    s.put(&totals(), b"a", 41).unwrap();
    let chain = checkpoint(&mut s, 1, &mut files);
    // restored store: table not touched by a typed step, then a full snapshot of another table
    let mut r = restore(&chain, &files);
    r.put(&StateSpec::<String>::new("other"), b"x", "y".to_string())
        .unwrap();
    let chain = checkpoint(&mut r, 2, &mut files);
    let mut r2 = restore(&chain, &files);
    assert_eq!(r2.get(&totals(), b"a").unwrap(), Some(41));
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

#[test]
fn a_corrupt_state_file_fails_restore() {
    let mut files = HashMap::new();
    let mut s = StateStore::new(SnapshotPolicy::default());
    s.put(&totals(), b"a", 1).unwrap();
    let chain = checkpoint(&mut s, 1, &mut files);
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
    checkpoint(&mut s, 1, &mut files);
    assert_eq!(s.retain(&t, |_, v| *v >= 5).unwrap(), 5);
    let chain = checkpoint(&mut s, 2, &mut files);
    let mut r = restore(&chain, &files);
    assert_eq!(r.entries(&t).unwrap().len(), 5);
}

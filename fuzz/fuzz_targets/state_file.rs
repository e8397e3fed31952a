//! State files over arbitrary bytes: `state::file::read`, `state::compact` and
//! `StateStore::restore` never panic. The input is a chain of files, split before each
//! `KEELSTAT` magic. The first byte picks the mode: files as they are, or each with a correct
//! CRC-32C trailer appended (so the fuzzer gets past the checksum to the sections).
//! Properties: a file that reads is rewritten by `StateFileWriter` into one that reads the
//! same entries; `compact` succeeds exactly when `restore` does, and its snapshot holds what
//! applying the chain's entries in order gives.
#![no_main]

use std::collections::BTreeMap;

use keel::state::file::{self, Entry, Kind, StateFileWriter};
use keel::state::{SnapshotPolicy, StateSpec, StateStore, compact};
use libfuzzer_sys::fuzz_target;

fn read_all(bytes: &[u8]) -> Result<(Kind, u64, Vec<(String, Vec<u8>, Option<Vec<u8>>)>), file::StateFileError> {
    let mut out = Vec::new();
    let (kind, id) = file::read(bytes, |t, e| match e {
        Entry::Put(k, v) => out.push((t.to_owned(), k.to_vec(), Some(v.to_vec()))),
        Entry::Delete(k) => out.push((t.to_owned(), k.to_vec(), None)),
    })?;
    Ok((kind, id, out))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // split before every magic after the first byte
    let mut files: Vec<Vec<u8>> = Vec::new();
    let mut start = 0;
    for i in 1..rest.len() {
        if rest[i..].starts_with(b"KEELSTAT") {
            files.push(rest[start..i].to_vec());
            start = i;
        }
    }
    files.push(rest[start..].to_vec());
    files.truncate(4);
    if mode & 1 == 1 {
        for f in &mut files {
            let crc = crc32c::crc32c(f);
            f.extend_from_slice(&crc.to_le_bytes());
        }
    }

    // each file: read, rewrite, read back the same
    for f in &files {
        if let Ok((kind, id, entries)) = read_all(f) {
            let mut w = StateFileWriter::new(kind, id);
            let mut table: Option<&str> = None;
            for (t, k, v) in &entries {
                if table != Some(t.as_str()) {
                    w.table(t);
                    table = Some(t);
                }
                match v {
                    Some(v) => w.put(k, v),
                    None => w.delete(k),
                }
            }
            let again = read_all(&w.finish()).expect("a rewritten state file reads");
            assert_eq!(again, (kind, id, entries));
        }
    }

    let names: Vec<String> = (0..files.len()).map(|i| format!("{i}.state")).collect();
    let read_file = |name: &str| -> std::io::Result<Vec<u8>> {
        let i: usize = name.split('.').next().unwrap().parse().unwrap();
        Ok(files[i].clone())
    };

    let compacted = compact(99, &names, read_file);
    let mut store = StateStore::new(SnapshotPolicy::default());
    let restored = store.restore(&names, read_file);
    assert_eq!(compacted.is_ok(), restored.is_ok(), "{compacted:?} / {restored:?}");
    if let Err(e) = &restored {
        let _ = e.is_corruption();
    }

    if let Ok(snap) = compacted {
        // the model: every entry of the chain applied in order
        let mut model: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        for f in &files {
            let (_, _, entries) = read_all(f).expect("restored files read");
            for (t, k, v) in entries {
                let table = model.entry(t).or_default();
                match v {
                    Some(v) => {
                        table.insert(k, v);
                    }
                    None => {
                        table.remove(&k);
                    }
                }
            }
        }
        let (kind, id, entries) = read_all(&snap.bytes).expect("a compacted snapshot reads");
        assert_eq!((kind, id), (Kind::Full, 99));
        let mut got: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        for (t, k, v) in entries {
            got.entry(t)
                .or_default()
                .insert(k, v.expect("a full snapshot holds puts only"));
        }
        model.retain(|_, t| !t.is_empty());
        got.retain(|_, t| !t.is_empty());
        assert_eq!(got, model);

        // typed access to the restored tables decodes or fails with a typed error
        for (i, t) in model.keys().enumerate() {
            // a value that does not decode fails every access, and loses no entry on the way
            if i % 2 == 0 {
                let spec = StateSpec::<String>::new(t.as_str());
                let first = store.entries(&spec);
                let second = store.entries(&spec);
                assert_eq!(first.is_ok(), second.is_ok(), "table {t:?}: {first:?} then {second:?}");
                let _ = store.put(&spec, b"k", "v".to_owned());
            } else {
                let spec = StateSpec::<(u64, Vec<i32>)>::new(t.as_str());
                let first = store.entries(&spec);
                let second = store.entries(&spec);
                assert_eq!(first.is_ok(), second.is_ok(), "table {t:?}: {first:?} then {second:?}");
                let _ = store.delete(&spec, b"k");
            }
        }
        if let Ok(Some(s)) = store.snapshot(100) {
            read_all(&s.bytes).expect("a snapshot reads");
        }
    }
});

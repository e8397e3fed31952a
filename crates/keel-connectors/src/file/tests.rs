use std::fs;

use keel::checkpoint::recovery::SinkRecovery;
use keel::sink::{Framing, OutBatch, Sink};
use keel::{PartitionReader, ReadStatus, Source, SourceBatch};

use super::*;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn read_all(src: &mut FileSource, part: &str, from: Option<u64>, max: usize) -> Vec<(String, u64)> {
    block_on(async {
        let mut r = src.open(part, from).await.unwrap();
        let mut out = Vec::new();
        loop {
            let mut b = SourceBatch::default();
            match r.next_batch(&mut b, max).await.unwrap() {
                ReadStatus::End => return out,
                ReadStatus::Idle => return out,
                ReadStatus::Records => {
                    for (rec, pos) in b.records.iter().zip(&b.positions) {
                        out.push((String::from_utf8(rec.value.to_vec()).unwrap(), *pos));
                    }
                }
            }
        }
    })
}

#[test]
fn lines_positions_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.jsonl"), "{\"a\":1}\n\n{\"a\":2}\r\n{\"a\":3}").unwrap();
    fs::write(dir.path().join("_skip.jsonl"), "x\n").unwrap();
    fs::write(dir.path().join(".hidden.jsonl"), "x\n").unwrap();
    fs::write(dir.path().join("b.txt"), "x\n").unwrap();
    let mut src = FileSource::new(FileSourceConfig::new(dir.path(), FileFormat::JsonLines));
    assert_eq!(block_on(src.discover()).unwrap(), vec!["a.jsonl".to_string()]);
    let all = read_all(&mut src, "a.jsonl", None, 2);
    assert_eq!(
        all,
        vec![
            ("{\"a\":1}".into(), 8),
            ("".into(), 9),
            ("{\"a\":2}\r".into(), 18),
            ("{\"a\":3}".into(), 25),
        ]
    );
    // resuming at every position yields exactly the rest
    for (i, (_, pos)) in all.iter().enumerate() {
        let rest = read_all(&mut src, "a.jsonl", Some(*pos), 1);
        assert_eq!(rest, all[i + 1..].to_vec());
    }
}

#[test]
fn lines_longer_than_a_chunk_are_whole() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(3 << 20);
    fs::write(dir.path().join("a.txt"), format!("{long}\nshort\n")).unwrap();
    let mut src = FileSource::new(FileSourceConfig::new(dir.path(), FileFormat::Lines));
    let all = read_all(&mut src, "a.txt", None, 10);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].0.len(), 3 << 20);
    assert_eq!(all[1], ("short".into(), (3 << 20) + 7));
}

#[test]
fn csv_header_is_attached_and_skipped_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.csv"), "id,name\r\n1,x\r\n2,y\r\n").unwrap();
    let mut src = FileSource::new(FileSourceConfig::new(dir.path(), FileFormat::Csv));
    let all = read_all(&mut src, "a.csv", None, 10);
    assert_eq!(all, vec![("1,x".into(), 14), ("2,y".into(), 19)]);
    assert_eq!(read_all(&mut src, "a.csv", Some(14), 10), vec![("2,y".into(), 19)]);
    block_on(async {
        let mut r = src.open("a.csv", None).await.unwrap();
        let mut b = SourceBatch::default();
        r.next_batch(&mut b, 10).await.unwrap();
        assert_eq!(b.records[0].headers[0].1.as_ref(), b"id,name");
    });
}

#[test]
fn follow_mode_waits_for_complete_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.jsonl");
    fs::write(&p, "1\n2").unwrap();
    let mut cfg = FileSourceConfig::new(dir.path(), FileFormat::JsonLines);
    cfg.follow = true;
    let mut src = FileSource::new(cfg);
    assert!(!src.is_bounded());
    block_on(async {
        let mut r = src.open("a.jsonl", None).await.unwrap();
        let mut b = SourceBatch::default();
        assert_eq!(r.next_batch(&mut b, 10).await.unwrap(), ReadStatus::Records);
        assert_eq!(b.len(), 1);
        b.clear();
        assert_eq!(r.next_batch(&mut b, 10).await.unwrap(), ReadStatus::Idle);
        fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut fs::OpenOptions::new().append(true).open(&p).unwrap(), b"2\n3\n").unwrap();
        assert_eq!(r.next_batch(&mut b, 10).await.unwrap(), ReadStatus::Records);
        let got: Vec<_> = b.records.iter().map(|r| r.value.to_vec()).collect();
        assert_eq!(got, vec![b"22".to_vec(), b"3".to_vec()]);
        assert_eq!(b.positions, vec![5, 7]);
    });
}

#[test]
fn a_truncated_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.jsonl"), "1\n").unwrap();
    let mut src = FileSource::new(FileSourceConfig::new(dir.path(), FileFormat::JsonLines));
    let err = block_on(src.open("a.jsonl", Some(100))).unwrap_err();
    assert!(err.to_string().contains("truncated or replaced"), "{err}");
}

fn visible(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn batch(lines: &[&str]) -> OutBatch {
    let mut b = OutBatch::new(Framing::Lines);
    for l in lines {
        b.push(None, l.as_bytes());
    }
    b
}

#[test]
fn sink_stages_then_commits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut sink = FileSink::new(FileSinkConfig::new(&out, FileFormat::JsonLines));
    block_on(async {
        assert_eq!(sink.highest_epoch().await.unwrap(), None);
        sink.recover(&SinkRecovery::default()).await.unwrap();
        sink.write(1, &batch(&["a", "b"])).await.unwrap();
        let mut sealed = sink.seal(1).await.unwrap();
        assert_eq!(visible(&out), vec![".part-000000000001-000.jsonl.pending".to_string()]);
        let pre = sealed.prepare().unwrap();
        assert_eq!(pre["files"][0][1], 4);
        sealed.commit().unwrap();
        sealed.commit().unwrap(); // idempotent
        assert_eq!(visible(&out), vec!["part-000000000001-000.jsonl".to_string()]);
        assert_eq!(
            fs::read_to_string(out.join("part-000000000001-000.jsonl")).unwrap(),
            "a\nb\n"
        );
        // an empty epoch leaves no file
        let mut sealed = sink.seal(2).await.unwrap();
        sealed.prepare().unwrap();
        sealed.commit().unwrap();
        assert_eq!(visible(&out).len(), 1);
        assert_eq!(sink.highest_epoch().await.unwrap(), Some(1));
    });
}

#[test]
fn sink_recovery_commits_covered_aborts_newer_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join(".part-000000000004-000.jsonl.pending"), "4\n").unwrap();
    fs::write(out.join(".part-000000000005-000.jsonl.pending"), "5\n").unwrap();
    fs::write(out.join("part-000000000003-000.jsonl"), "3\n").unwrap();
    fs::write(out.join("part-000000000006-000.jsonl"), "6\n").unwrap();
    fs::write(out.join("unrelated.txt"), "keep me").unwrap();
    let mut sink = FileSink::new(FileSinkConfig::new(&out, FileFormat::JsonLines));
    block_on(async {
        assert_eq!(sink.highest_epoch().await.unwrap(), Some(6));
        let pre = serde_json::json!({"files": [["part-000000000004-000.jsonl", 2]]});
        let r = sink
            .recover(&SinkRecovery {
                last_checkpoint: Some(4),
                precommit: Some(pre),
            })
            .await
            .unwrap();
        assert_eq!((r.committed, r.aborted, r.rolled_back), (1, 1, 1));
    });
    assert_eq!(
        visible(&out),
        vec![
            "part-000000000003-000.jsonl".to_string(),
            "part-000000000004-000.jsonl".into(),
            "unrelated.txt".into()
        ]
    );
}

#[test]
fn sink_refuses_a_staged_file_whose_size_differs_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join(".part-000000000004-000.jsonl.pending"), "4").unwrap();
    let mut sink = FileSink::new(FileSinkConfig::new(&out, FileFormat::JsonLines));
    let pre = serde_json::json!({"files": [["part-000000000004-000.jsonl", 2]]});
    let err = block_on(sink.recover(&SinkRecovery {
        last_checkpoint: Some(4),
        precommit: Some(pre),
    }))
    .unwrap_err();
    assert!(err.to_string().contains("checkpoint says 2"), "{err}");
}

#[test]
fn sink_rolls_files_and_writes_headers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cfg = FileSinkConfig::new(&out, FileFormat::Csv);
    cfg.max_file_bytes = 10;
    cfg.header = Some("id,name".into());
    let mut sink = FileSink::new(cfg);
    block_on(async {
        sink.write(7, &batch(&["1,abcdef"])).await.unwrap();
        sink.write(7, &batch(&["2,x"])).await.unwrap();
        let mut s = sink.seal(7).await.unwrap();
        s.prepare().unwrap();
        s.commit().unwrap();
    });
    assert_eq!(
        visible(&out),
        vec![
            "part-000000000007-000.csv".to_string(),
            "part-000000000007-001.csv".into()
        ]
    );
    assert_eq!(
        fs::read_to_string(out.join("part-000000000007-001.csv")).unwrap(),
        "id,name\n2,x\n"
    );
}

/// A keyed record written with `lines` framing: the file holds the value only, never the
/// key glued onto it.
#[test]
fn lines_sink_writes_values_without_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut sink = FileSink::new(FileSinkConfig::new(&out, FileFormat::Lines));
    let mut b = OutBatch::new(Framing::Lines);
    b.push(Some(b"key-1"), b"first");
    b.push(None, b"second");
    b.push(Some(b"key-3"), b"third");
    block_on(async {
        sink.write(1, &b).await.unwrap();
        let mut s = sink.seal(1).await.unwrap();
        s.prepare().unwrap();
        s.commit().unwrap();
    });
    let files = visible(&out);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        fs::read_to_string(out.join(&files[0])).unwrap(),
        "first\nsecond\nthird\n"
    );
    // the keys are still there for sinks that send messages
    let keys: Vec<_> = b.records().map(|r| r.key).collect();
    assert_eq!(keys, vec![Some(&b"key-1"[..]), None, Some(&b"key-3"[..])]);
    b.truncate(2);
    assert_eq!(b.data(), b"first\nsecond\n");
    assert_eq!(b.records().last().unwrap().key, None);
}

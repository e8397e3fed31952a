use std::fs;

use keel::checkpoint::recovery::SinkRecovery;
use keel::sink::{Framing, OutBatch, Sink};
use keel::{PartitionReader, ReadStatus, Source, SourceBatch};

use super::source::ReadStats;
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
    let mut cfg = FileSourceConfig::new(dir.path(), FileFormat::Lines);
    cfg.max_record_bytes = 4 << 20;
    let mut src = FileSource::new(cfg);
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

/// A record read: value, failure reason, position.
type Read = (Vec<u8>, Option<String>, u64);

/// Every record of `part` read from `from` in batches of `max`: (value, failure reason, position).
fn read_full(src: &mut FileSource, part: &str, from: Option<u64>, max: usize) -> (Vec<Read>, ReadStats) {
    block_on(async {
        let mut r = src.open(part, from).await.unwrap();
        let mut out = Vec::new();
        loop {
            let mut b = SourceBatch::default();
            match r.next_batch(&mut b, max).await.unwrap() {
                ReadStatus::End | ReadStatus::Idle => return (out, r.stats()),
                ReadStatus::Records => {
                    for (rec, pos) in b.records.iter().zip(&b.positions) {
                        let reason = rec.source_failure().map(|f| f.reason.to_string());
                        out.push((rec.value.to_vec(), reason, *pos));
                    }
                }
            }
        }
    })
}

fn csv_source(dir: &std::path::Path, max_record_bytes: usize) -> FileSource {
    let mut cfg = FileSourceConfig::new(dir, FileFormat::Csv);
    cfg.max_record_bytes = max_record_bytes;
    FileSource::new(cfg)
}

/// Reads `text` as a CSV file: every record (value as text, failure reason), and checks
/// that resuming at every position, in batches of one and of many, gives exactly the rest.
fn csv_records(text: &[u8], max_record_bytes: usize) -> Vec<(String, Option<String>)> {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.csv"), text).unwrap();
    let mut src = csv_source(dir.path(), max_record_bytes);
    let (all, _) = read_full(&mut src, "a.csv", None, 3);
    for (i, (_, _, pos)) in all.iter().enumerate() {
        let (rest, _) = read_full(&mut src, "a.csv", Some(*pos), 1);
        assert_eq!(rest, all[i + 1..].to_vec(), "resuming at {pos}");
    }
    let mut last = 0;
    for (_, _, pos) in &all {
        assert!(*pos > last, "positions grow");
        last = *pos;
    }
    all.into_iter()
        .map(|(v, r, _)| (String::from_utf8(v).unwrap(), r))
        .collect()
}

fn ok(v: &str) -> (String, Option<String>) {
    (v.to_owned(), None)
}

#[test]
fn csv_quoted_newlines_are_one_record_lf_and_crlf() {
    let got = csv_records(
        b"id,note\n1,\"two\nlines\"\r\n2,\"crlf\r\ninside\"\r\n3,\"a, \"\"quoted\"\" word\"\n4,plain\n",
        1 << 20,
    );
    assert_eq!(
        got,
        vec![
            ok("1,\"two\nlines\""),
            ok("2,\"crlf\r\ninside\""),
            ok("3,\"a, \"\"quoted\"\" word\""),
            ok("4,plain"),
        ]
    );
}

#[test]
fn csv_bom_blank_lines_unicode_and_a_missing_final_line_break() {
    let got = csv_records(
        "\u{feff}id,name\r\n\r\n1,\"Zoë\nß\"\r\n\n2,日本\r\n3,\"x\"".as_bytes(),
        1 << 20,
    );
    assert_eq!(got, vec![ok("1,\"Zoë\nß\""), ok("2,日本"), ok("3,\"x\"")]);
    // the header is the first record after the BOM
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.csv"), "\u{feff}\"i\nd\",n\r\n1,2\r\n").unwrap();
    let mut src = csv_source(dir.path(), 1 << 20);
    block_on(async {
        let mut r = src.open("a.csv", None).await.unwrap();
        let mut b = SourceBatch::default();
        r.next_batch(&mut b, 10).await.unwrap();
        assert_eq!(b.records[0].headers[0].1.as_ref(), b"\"i\nd\",n");
        assert_eq!(b.records[0].value.as_ref(), b"1,2");
    });
}

#[test]
fn csv_without_header_reads_the_first_line_and_skips_a_bom() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.csv"), "\u{feff}1,a\n2,b\n").unwrap();
    let mut cfg = FileSourceConfig::new(dir.path(), FileFormat::Csv);
    cfg.csv.header = false;
    let mut src = FileSource::new(cfg);
    let (all, _) = read_full(&mut src, "a.csv", None, 10);
    assert_eq!(all, vec![(b"1,a".to_vec(), None, 7), (b"2,b".to_vec(), None, 11)]);
}

#[test]
fn csv_an_unclosed_quote_at_the_end_dead_letters_one_line_and_reads_on() {
    let got = csv_records(b"h\n1,\"open\n2,x\n3,y\n", 1 << 20);
    assert_eq!(
        got,
        vec![
            ("1,\"open".to_owned(), Some("malformed".to_owned())),
            ok("2,x"),
            ok("3,y"),
        ]
    );
}

#[test]
fn csv_a_quote_never_closed_within_the_limit_is_oversized_and_reading_resumes_at_the_next_line() {
    let mut text = b"h\n1,\"stray\n".to_vec();
    let mut want = vec![("1,\"stray".to_owned(), Some("oversized".to_owned()))];
    for i in 0..50 {
        text.extend_from_slice(format!("{i},row\n").as_bytes());
        want.push(ok(&format!("{i},row")));
    }
    // a closing quote far later: that line is then read as a record of its own
    text.extend_from_slice(b"\"x\n");
    let got = csv_records(&text, 64);
    assert_eq!(got[..51], want[..]);
    // a record that ends but is too long: dead-lettered, reading resumes after it
    let got = csv_records(b"h\n1,\"aaaa\naaaaaaaa\"\r\n2,b\n", 16);
    assert_eq!(
        got,
        vec![
            ("1,\"aaaa\naaaaaaaa".to_owned(), Some("oversized".to_owned())),
            ok("2,b")
        ]
    );
}

#[test]
fn an_oversized_line_is_dead_lettered_with_a_prefix_in_linear_time_and_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let long = 24usize << 20;
    let mut text = Vec::with_capacity(long + 100);
    text.extend_from_slice(b"first\n");
    text.resize(6 + long, b'x');
    text.extend_from_slice(b"\nnext\nlast");
    fs::write(dir.path().join("a.txt"), &text).unwrap();
    let mut cfg = FileSourceConfig::new(dir.path(), FileFormat::Lines);
    cfg.max_record_bytes = 4096;
    let mut src = FileSource::new(cfg);
    let (all, stats) = read_full(&mut src, "a.txt", None, 100);
    assert_eq!(all.len(), 4);
    assert_eq!(all[0], (b"first".to_vec(), None, 6));
    assert_eq!(all[1].0, vec![b'x'; 4096], "a bounded prefix");
    assert_eq!(all[1].1.as_deref(), Some("oversized"));
    assert_eq!(all[1].2, 6 + long as u64 + 1);
    assert_eq!(all[2], (b"next".to_vec(), None, 6 + long as u64 + 6));
    assert_eq!(all[3], (b"last".to_vec(), None, text.len() as u64));
    // linear: each byte read and scanned once; only the allowed record length copied
    let n = text.len() as u64;
    assert_eq!(stats.read, n);
    assert!(stats.scanned <= n, "{stats:?}");
    assert!(stats.copied <= 4096 + 2 + 16, "{stats:?}");
    assert!(stats.max_pending <= 4096 + 2, "{stats:?}");

    // the same as CSV: an unquoted line without a line break for 24 MiB
    fs::write(dir.path().join("a.csv"), [b"h\n".as_slice(), &text].concat()).unwrap();
    let mut src = csv_source(dir.path(), 4096);
    let (all, stats) = read_full(&mut src, "a.csv", None, 100);
    let reasons: Vec<_> = all.iter().map(|r| r.1.as_deref()).collect();
    assert_eq!(reasons, vec![None, Some("oversized"), None, None]);
    assert!(stats.scanned <= n + 2 && stats.copied <= 4096 + 2 + 16, "{stats:?}");
}

#[test]
fn csv_runaway_quotes_cost_linear_time() {
    // every 100 lines a quote that is never closed: each is rescanned once at most
    let dir = tempfile::tempdir().unwrap();
    let mut text = b"h\n".to_vec();
    for i in 0..20_000 {
        if i % 100 == 0 {
            text.extend_from_slice(b"\"open\n");
        } else {
            text.extend_from_slice(format!("{i},row,\"\"\n").as_bytes());
        }
    }
    fs::write(dir.path().join("a.csv"), &text).unwrap();
    let mut src = csv_source(dir.path(), 256);
    let (all, stats) = read_full(&mut src, "a.csv", None, 1000);
    assert_eq!(all.len(), 20_000);
    assert_eq!(all.iter().filter(|r| r.1.is_some()).count(), 200);
    let n = text.len() as u64;
    assert!(stats.scanned <= 2 * n, "{stats:?} for {n} bytes");
    assert_eq!(stats.read, n - 2, "read once (the header is read apart)");
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

//! The bad-record corpus (tests/corpus): more than 20 kinds of bad lines, each dead-lettered
//! with its own reason and stage, nothing panics, every good line reaches the output once.

use std::path::Path;

use crate::lines;

#[test]
fn every_kind_of_bad_record_gets_its_reason_and_stage() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(corpus.join("records.jsonl"), input.join("records.jsonl")).unwrap();
    std::fs::copy(corpus.join("schema.json"), tmp.path().join("schema.json")).unwrap();
    let toml = std::fs::read_to_string(corpus.join("pipeline.toml"))
        .unwrap()
        .replace("${CORPUS_IN}", input.to_str().unwrap())
        .replace("${CORPUS_OUT}", tmp.path().to_str().unwrap());
    std::fs::write(tmp.path().join("pipeline.toml"), toml).unwrap();
    let loaded = keel_declare::load(&tmp.path().join("pipeline.toml")).unwrap();
    let summary = keel_declare::build(&loaded, |_| {}).unwrap().run().unwrap();

    let raw = std::fs::read(corpus.join("records.jsonl")).unwrap();
    let all: Vec<&[u8]> = raw.split(|&b| b == b'\n').collect();
    let expected: Vec<(usize, String, String, String)> = std::fs::read_to_string(corpus.join("expected.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '\t').collect();
            (f[0].parse().unwrap(), f[1].to_owned(), f[2].to_owned(), f[3].to_owned())
        })
        .collect();
    assert!(expected.len() >= 20, "at least 20 kinds of bad records");
    let kinds: std::collections::BTreeSet<&str> = expected.iter().map(|e| e.3.as_str()).collect();
    assert_eq!(kinds.len(), expected.len());

    let dead: Vec<keel::dead_letter::Envelope> = lines(&tmp.path().join("dead"))
        .iter()
        .map(|l| keel::dead_letter::Envelope::decode(l.as_bytes()).expect("every dead letter verifies"))
        .collect();
    assert_eq!(dead.len(), expected.len(), "one dead letter per bad line");
    for (line, reason, stage, what) in &expected {
        let original = all[line - 1];
        let found: Vec<_> = dead
            .iter()
            .filter(|d| match d.original_value() {
                // an oversized record keeps a prefix of its bytes
                Some(v) if d.reason == "oversized" => !v.is_empty() && original.starts_with(&v),
                v => v.as_deref() == Some(original),
            })
            .collect();
        assert_eq!(found.len(), 1, "line {line} ({what}) dead-lettered once");
        assert_eq!(
            (found[0].reason.as_str(), found[0].stage.as_str()),
            (reason.as_str(), stage.as_str()),
            "line {line}: {what}"
        );
    }
    let good = all.len() - 1 - expected.len();
    assert_eq!(summary.records_out as usize, good);
    let out = lines(&tmp.path().join("out"));
    assert_eq!(out.len(), good, "every good line in the output");
    let bad_lines: std::collections::BTreeSet<usize> = expected.iter().map(|e| e.0).collect();
    for (i, l) in all.iter().enumerate() {
        if !l.is_empty() && !bad_lines.contains(&(i + 1)) {
            let id = serde_json::from_slice::<serde_json::Value>(l).unwrap()["id"].clone();
            assert_eq!(
                out.iter()
                    .filter(|o| serde_json::from_str::<serde_json::Value>(o).unwrap()["id"] == id)
                    .count(),
                1
            );
        }
    }
}

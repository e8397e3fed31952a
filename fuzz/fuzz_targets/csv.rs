//! CSV and the file source's record framing over arbitrary bytes.
//!
//! Input: three control bytes (dialect and format, `max_record_bytes`, chunk size), then the
//! file. Properties:
//! - `Framer` finds the same record ends however the input is split into pieces;
//! - a record the framer ends parses with `CsvParser` (one record, no open quote), and the
//!   unterminated rest parses exactly when `Framer::finish` says it is complete;
//! - `CsvParser::parse` never panics and its fields cover its output;
//! - the file source (every format) gives strictly growing positions within the file, and
//!   reading on from any position it gave yields exactly the records after it.
#![no_main]

use std::cell::RefCell;
use std::path::PathBuf;

use keel::{PartitionReader, ReadStatus, Source, SourceBatch};
use keel_connectors::file::csv::{CsvDialect, CsvFields, CsvParseError, CsvParser, Framer};
use keel_connectors::file::{FileFormat, FileSource, FileSourceConfig};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static DIR: tempfile::TempDir = tempfile::tempdir().unwrap();
    static RT: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    static FIELDS: RefCell<CsvFields> = RefCell::new(CsvFields::default());
}

fn dialect(c: u8) -> CsvDialect {
    CsvDialect {
        delimiter: [b',', b';', b'\t', b'|'][usize::from(c & 3)],
        quote: [b'"', b'\''][usize::from((c >> 2) & 1)],
        escape: if c & 8 != 0 { Some(b'\\') } else { None },
        header: c & 16 != 0,
    }
}

fn frame(d: &CsvDialect, data: &[u8], chunk: usize) -> (Vec<usize>, bool) {
    let mut f = Framer::new(d);
    let mut ends = Vec::new();
    let mut start = 0; // start of the record in progress
    let mut at = start;
    while at < data.len() {
        let end = (at + chunk).min(data.len());
        match f.scan(&data[at..end]) {
            Some(n) => {
                at += n;
                ends.push(at);
                start = at;
            }
            None => at = end,
        }
    }
    // only line breaks left: no record in progress (the file source skips them before framing)
    let complete = data[start..].iter().all(|&b| b == b'\n' || b == b'\r') || f.finish();
    (ends, complete)
}

fn parse(p: &mut CsvParser, raw: &[u8]) -> Result<(), CsvParseError> {
    FIELDS.with_borrow_mut(|fields| {
        let r = p.parse(raw, fields);
        let mut total = 0;
        for i in 0..fields.len() {
            total += fields.get(i).expect("a counted field").0.len();
        }
        assert!(fields.get(fields.len()).is_none());
        if r.is_ok() {
            assert_eq!(total, fields.data.len());
        }
        r
    })
}

type Read = Vec<(Vec<u8>, Vec<(String, Vec<u8>)>, u64)>;

/// Every record from `from` on; `None` when the file cannot be opened as a partition (a
/// typed error, such as a CSV header longer than `max_record_bytes`).
fn read_all(src: &mut FileSource, part: &str, from: Option<u64>) -> Option<Read> {
    RT.with(|rt| {
        rt.block_on(async {
            let mut r = src.open(part, from).await.ok()?;
            let mut out = Vec::new();
            loop {
                let mut b = SourceBatch::default();
                match r.next_batch(&mut b, 7).await.expect("read") {
                    ReadStatus::End | ReadStatus::Idle => return Some(out),
                    ReadStatus::Records => {
                        for (rec, pos) in b.records.iter().zip(&b.positions) {
                            let headers = rec.headers.iter().map(|(n, v)| (n.clone(), v.to_vec())).collect();
                            out.push((rec.value.to_vec(), headers, *pos));
                        }
                    }
                }
            }
        })
    })
}

fuzz_target!(|input: &[u8]| {
    let [c, max, chunk, data @ ..] = input else {
        return;
    };
    let d = dialect(*c);

    // the parser on the whole input
    let mut p = CsvParser::new(&d);
    let _ = parse(&mut p, data);

    // framing does not depend on how the input is split
    let (ends, complete) = frame(&d, data, data.len().max(1));
    let chunk = usize::from(*chunk % 16) + 1;
    assert_eq!(frame(&d, data, chunk), (ends.clone(), complete), "chunk {chunk}");

    // framed records parse as one record each
    let mut start = 0;
    for &end in &ends {
        let rec = &data[start..end];
        let body = &rec[rec.iter().position(|&b| b != b'\n' && b != b'\r').unwrap_or(rec.len())..];
        assert_eq!(parse(&mut p, body), Ok(()), "record {:?}", String::from_utf8_lossy(rec));
        start = end;
    }
    let rest = &data[start..];
    let r = parse(&mut p, rest);
    assert_eq!(r.is_ok(), complete, "rest {:?}: {r:?}", String::from_utf8_lossy(rest));

    // the file source
    let format = [
        FileFormat::Csv,
        FileFormat::Lines,
        FileFormat::JsonLines,
        FileFormat::Csv,
    ][usize::from(c >> 6)];
    let dir: PathBuf = DIR.with(|d| d.path().to_owned());
    let name = format!("f.{}", format.extension());
    std::fs::write(dir.join(&name), data).unwrap();
    let mut config = FileSourceConfig::new(&dir, format);
    config.csv = d;
    config.max_record_bytes = usize::from(*max) + 1;
    let mut src = FileSource::new(config);
    let Some(all) = read_all(&mut src, &name, None) else {
        return;
    };
    let mut last = 0;
    for (_, _, pos) in &all {
        assert!(*pos > last, "positions grow: {all:?}");
        last = *pos;
    }
    assert!(last <= data.len() as u64);
    if let Some(i) = all.len().checked_sub(1).map(|n| usize::from(*max) % (n + 1)) {
        let from = all[i].2;
        let rest = read_all(&mut src, &name, Some(from)).expect("a file that opened opens at a position");
        assert_eq!(rest, all[i + 1..].to_vec(), "from {from}");
    }
});

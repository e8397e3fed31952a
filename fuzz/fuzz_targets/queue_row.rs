//! Job rows as the queue backends store them, decoded into `Job`: never panics.
//!
//! - Redis: `keel_connectors::queue::redis::job_of` over a hash of arbitrary fields (the
//!   input split at `\n` into name/value pairs; a line starting with `!` is an entry of the
//!   job's error list).
//! - SQLite: `keel_connectors::queue::sqlite::job_of` over one row of a table with
//!   untyped columns, each holding NULL, an integer, a real, text or a blob cut from the
//!   input, read back through the backend's own column list.
//!
//! Whatever decodes from Redis serialises to JSON and back unchanged (payload aside).
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;

use keel::queue::Job;
use keel_connectors::queue::{redis, sqlite};
use libfuzzer_sys::fuzz_target;
use rusqlite::types::Value;

thread_local! {
    static DB: RefCell<rusqlite::Connection> = RefCell::new({
        let c = rusqlite::Connection::open_in_memory().unwrap();
        // no declared types: no affinity, every value is stored as given
        c.execute_batch(&format!("CREATE TABLE keel_jobs ({})", sqlite::COLUMNS)).unwrap();
        c
    });
}

fn redis_row(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut h = HashMap::new();
    let mut errors = Vec::new();
    for line in text.split('\n') {
        if let Some(e) = line.strip_prefix('!') {
            errors.push(e.to_owned());
        } else {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            h.insert(k.to_owned(), v.to_owned());
        }
    }
    let job = redis::job_of("1", &h, &errors);
    let json = serde_json::to_string(&job).expect("a job serialises");
    let mut back: Job = serde_json::from_str(&json).expect("a serialised job reads back");
    // serde_json's float parsing is not exact: payload numbers may move by an ulp
    back.payload = job.payload.clone();
    assert_eq!(back, job);
}

fn sqlite_row(data: &[u8]) {
    let ncols = sqlite::COLUMNS.split(", ").count();
    let mut values = Vec::with_capacity(ncols);
    let mut rest = data;
    for _ in 0..ncols {
        let (tag, tail) = match rest.split_first() {
            Some((&t, tail)) => (t, tail),
            None => (0, rest),
        };
        let len = usize::from(tag >> 3).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        let mut n = [0u8; 8];
        n[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
        values.push(match tag & 7 {
            0 => Value::Null,
            1 => Value::Integer(i64::from_le_bytes(n)),
            2 => Value::Integer(i64::from(tag >> 3) - 8),
            3 => Value::Real(f64::from_le_bytes(n)),
            4 | 5 => Value::Text(String::from_utf8_lossy(bytes).into_owned()),
            _ => Value::Blob(bytes.to_vec()),
        });
    }
    DB.with_borrow_mut(|c| {
        c.execute("DELETE FROM keel_jobs", []).unwrap();
        let marks = vec!["?"; ncols].join(", ");
        c.execute(
            &format!("INSERT INTO keel_jobs ({}) VALUES ({marks})", sqlite::COLUMNS),
            rusqlite::params_from_iter(values.iter()),
        )
        .unwrap();
        let mut stmt = c
            .prepare_cached(&format!("SELECT {} FROM keel_jobs", sqlite::COLUMNS))
            .unwrap();
        let _ = stmt.query_row([], |r| sqlite::job_of(r));
    });
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&m, rest)) if m & 1 == 0 => redis_row(rest),
        Some((_, rest)) => sqlite_row(rest),
        None => {}
    }
});

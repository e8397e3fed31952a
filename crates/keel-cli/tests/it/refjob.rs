//! The reference job (../shared/bench/JOB.md) for tests: an input generator with the same
//! kinds of bad lines as gen.py, the job as a pipeline file, and a checker with the rules of
//! check.py (exactly-once records, consistent running totals, final totals, dead letters).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::Path;

pub const JOB: &str = include_str!("../../../../bench/keel/job.toml");

/// What the generator wrote.
pub struct Input {
    /// id -> (customer, amount) of valid lines
    pub valid: HashMap<i64, (String, i64)>,
    /// raw bad line -> reason category
    pub bad: HashMap<String, &'static str>,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Writes `n` lines over `files` files into `dir`; about `bad_per_mille`/1000 are bad.
pub fn generate(dir: &Path, n: u64, files: u64, customers: u64, bad_per_mille: u64, seed: u64) -> Input {
    fs::create_dir_all(dir).unwrap();
    let mut rng = seed | 1;
    let mut valid = HashMap::new();
    let mut bad = HashMap::new();
    for f in 0..files {
        let mut out = std::io::BufWriter::new(fs::File::create(dir.join(format!("part-{f:03}.jsonl"))).unwrap());
        for i in (f * n / files)..((f + 1) * n / files) {
            let id = i as i64;
            let cust = format!("c{}", xorshift(&mut rng) % customers);
            let amount = (xorshift(&mut rng) % 50_000) as i64 + 1;
            let ts = 1_699_923_600_000i64 + id;
            let kind = if xorshift(&mut rng) % 1000 < bad_per_mille {
                1 + xorshift(&mut rng) % 3
            } else {
                0
            };
            let line = match kind {
                0 => {
                    valid.insert(id, (cust.clone(), amount));
                    format!(
                        r#"{{"id": {id}, "ts": {ts}, "customer": "{cust}", "amount": {amount}, "note": "n{}"}}"#,
                        i % 97
                    )
                }
                1 => format!(r#"{{"id": {id}, "ts": {ts}, "customer": "{cust}", "amou"#),
                2 => format!(r#"{{"id": {id}, "ts": {ts}, "amount": {amount}}}"#),
                _ => format!(r#"{{"id": {id}, "ts": {ts}, "customer": "{cust}", "amount": -{amount}}}"#),
            };
            if kind > 0 {
                bad.insert(
                    line.clone(),
                    ["", "malformed", "missing_field", "negative_amount"][kind as usize],
                );
            }
            writeln!(out, "{line}").unwrap();
        }
    }
    Input { valid, bad }
}

/// Lines of every visible file (name not starting with `.` or `_`) under `dir`.
pub fn visible_lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    let mut names: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') || !p.is_file() {
            continue;
        }
        out.extend(fs::read_to_string(&p).unwrap().lines().map(str::to_owned));
    }
    out
}

/// Epochs of the visible files of a file sink directory: record files are named
/// `part-<epoch>-<seq>.<ext>`, dead-letter files `dead-<epoch>-<seq>.<ext>`. Any other visible
/// file is a failure, so that no output escapes the epoch check.
pub fn visible_epochs(dir: &Path) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                return None;
            }
            let epoch = name
                .strip_prefix("part-")
                .or_else(|| name.strip_prefix("dead-"))
                .and_then(|rest| rest.split('-').next()?.parse().ok());
            assert!(
                epoch.is_some(),
                "visible file {name:?} in {} has no epoch in its name",
                dir.display()
            );
            epoch
        })
        .collect()
}

/// Problems with the records visible in `out` (empty when none). With `complete`, every
/// valid input line must be there, the final totals must be complete and every bad line must
/// be dead-lettered; without it (a snapshot after a crash), only duplicates, unknown ids and
/// inconsistent running totals are problems.
pub fn check(input: &Input, out: &Path, complete: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: HashMap<i64, i64> = HashMap::new();
    let mut per_customer: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for line in visible_lines(&out.join("records")) {
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("unparsable record line {line:?}: {e}"));
                continue;
            }
        };
        let id = v["id"].as_i64().unwrap_or(-1);
        let rt = v["running_total"].as_i64().unwrap_or(-1);
        let cust = v["customer"].as_str().unwrap_or_default().to_owned();
        match input.valid.get(&id) {
            None => problems.push(format!("record with unknown or bad id {id}")),
            Some((c, amount)) => {
                if *c != cust {
                    problems.push(format!("id {id}: customer {cust}, expected {c}"));
                }
                if seen.insert(id, rt).is_some() {
                    problems.push(format!("id {id} DUPLICATED"));
                }
                per_customer.entry(cust).or_default().push((rt, *amount));
            }
        }
    }
    // running totals: consistent with some serial order per customer
    for (c, mut v) in per_customer {
        v.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut prev = 0;
        let mut gaps = false;
        for (rt, amount) in &v {
            if rt - prev != *amount {
                gaps = true;
            }
            prev = *rt;
        }
        // after a crash a reader may see only a prefix of the stream per customer, which
        // is still a prefix of one serial order: totals must then be consistent too
        if gaps {
            problems.push(format!(
                "customer {c}: running totals inconsistent with any serial order"
            ));
        }
    }
    if complete {
        let missing = input.valid.keys().filter(|id| !seen.contains_key(id)).count();
        if missing > 0 {
            problems.push(format!("{missing} valid ids MISSING"));
        }
        let mut expected: BTreeMap<String, i64> = BTreeMap::new();
        for (c, a) in input.valid.values() {
            *expected.entry(c.clone()).or_default() += a;
        }
        let mut got: BTreeMap<String, i64> = BTreeMap::new();
        for line in visible_lines(&out.join("final")) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let c = v["customer"].as_str().unwrap().to_owned();
            if got.insert(c.clone(), v["total"].as_i64().unwrap()).is_some() {
                problems.push(format!("final: customer {c} twice"));
            }
        }
        if got != expected {
            problems.push(format!(
                "final totals differ: {} customers expected, {} found",
                expected.len(),
                got.len()
            ));
        }
    }
    // dead letters: each bad line at most once (exactly once when complete), right reason
    let mut dead: HashMap<String, usize> = HashMap::new();
    for line in visible_lines(&out.join("dead")) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let raw = v["raw"].as_str().unwrap_or_default().to_owned();
        let reason = v["reason"]
            .as_str()
            .unwrap_or_default()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        match input.bad.get(&raw) {
            None => problems.push(format!("dead letter that is not a bad input line: {raw:?}")),
            Some(exp) if *exp != reason => {
                problems.push(format!("dead letter reason {reason}, expected {exp}: {raw:?}"))
            }
            _ => {}
        }
        *dead.entry(raw).or_default() += 1;
    }
    let dup_dead = dead.values().filter(|&&n| n > 1).count();
    if dup_dead > 0 {
        problems.push(format!("{dup_dead} bad lines dead-lettered more than once"));
    }
    if complete && dead.len() != input.bad.len() {
        problems.push(format!("{} of {} bad lines dead-lettered", dead.len(), input.bad.len()));
    }
    problems
}

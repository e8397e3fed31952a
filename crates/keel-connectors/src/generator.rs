//! A deterministic generator of synthetic order records, for demos and benchmarks.
//!
//! Records have the shape of the reference job's input:
//! `{"id": 7, "ts": 1699923600007, "customer": "c42", "amount": 1999, "note": "blue fox"}`.
//! A configurable fraction is bad (malformed JSON, a missing field, a negative amount).
//! Record `id` is a pure function of `(seed, id)`, so a partition can resume at any position
//! and produce exactly the same records again. Partition `p` of `P` holds ids `p, p + P, ...`.

use std::time::{Duration, Instant};

use keel::{PartitionReader, ReadStatus, Record, Source, SourceBatch, SourceError};

/// Settings of the generator.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorConfig {
    /// Number of partitions.
    pub partitions: u32,
    /// Total records over all partitions; `None` generates forever.
    pub records: Option<u64>,
    /// Records per second over all partitions; `None` is as fast as possible.
    pub rate: Option<f64>,
    /// Seed of the pseudo-random content.
    pub seed: u64,
    /// Number of distinct customers.
    pub customers: u64,
    /// Fraction of bad records, from 0 to 1.
    pub bad_fraction: f64,
    /// Event time of id 0, ms since the Unix epoch; id `i` has `start_ts + i`.
    pub start_ts: i64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            partitions: 4,
            records: Some(1_000_000),
            rate: None,
            seed: 42,
            customers: 10_000,
            bad_fraction: 0.001,
            start_ts: 1_699_923_600_000,
        }
    }
}

/// The generator source.
#[derive(Clone, Debug)]
pub struct GeneratorSource {
    config: GeneratorConfig,
}

impl GeneratorSource {
    /// A generator with the given settings.
    pub fn new(config: GeneratorConfig) -> Result<Self, SourceError> {
        if config.partitions == 0 || config.customers == 0 {
            return Err(SourceError::Config(
                "generator: partitions and customers must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&config.bad_fraction) {
            return Err(SourceError::Config(
                "generator: bad_fraction must be between 0 and 1".into(),
            ));
        }
        if config.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return Err(SourceError::Config("generator: rate must be positive".into()));
        }
        Ok(GeneratorSource { config })
    }
}

/// Reads one partition of the generator.
#[derive(Debug)]
pub struct GeneratorReader {
    config: GeneratorConfig,
    partition: u64,
    /// Records of this partition emitted so far (the position).
    next: u64,
    /// Records in this partition, if bounded.
    limit: Option<u64>,
    started: Instant,
    emitted_since_open: u64,
    line: Vec<u8>,
}

impl Source for GeneratorSource {
    type Position = u64;
    type Reader = GeneratorReader;

    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "generator ({} partitions, {} records{})",
            c.partitions,
            c.records.map_or("unbounded".to_string(), |n| n.to_string()),
            c.rate.map_or(String::new(), |r| format!(", {r}/s"))
        )
    }

    fn is_bounded(&self) -> bool {
        self.config.records.is_some()
    }

    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        Ok((0..self.config.partitions).map(|p| format!("gen-{p}")).collect())
    }

    async fn open(&mut self, partition: &str, from: Option<u64>) -> Result<GeneratorReader, SourceError> {
        let p: u64 = partition
            .strip_prefix("gen-")
            .and_then(|n| n.parse().ok())
            .filter(|p| *p < u64::from(self.config.partitions))
            .ok_or_else(|| SourceError::Config(format!("generator has no partition {partition}")))?;
        let parts = u64::from(self.config.partitions);
        let limit = self.config.records.map(|n| n / parts + u64::from(p < n % parts));
        Ok(GeneratorReader {
            config: self.config.clone(),
            partition: p,
            next: from.unwrap_or(0),
            limit,
            started: Instant::now(),
            emitted_since_open: 0,
            line: Vec::with_capacity(128),
        })
    }
}

const WORDS: [&str; 16] = [
    "alpha", "blue", "coffee", "delta", "fox", "green", "ink", "jade", "lime", "mango", "oak", "pear", "red", "sun",
    "tea", "wolf",
];

/// A stateless pseudo-random function (SplitMix64).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes the record with id `id` into `out`.
pub fn generate(config: &GeneratorConfig, id: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    let r0 = mix(config.seed ^ mix(id));
    let r1 = mix(r0);
    let r2 = mix(r1);
    let customer = r0 % config.customers;
    let amount = (r1 % 50_000) as i64 + 1;
    let ts = config.start_ts + id as i64;
    let note = format!("{} {}", WORDS[(r2 & 15) as usize], WORDS[((r2 >> 4) & 15) as usize]);
    let bad = ((r2 >> 11) as f64 / (1u64 << 53) as f64) < config.bad_fraction;
    let _ = if !bad {
        write!(
            out,
            r#"{{"id": {id}, "ts": {ts}, "customer": "c{customer}", "amount": {amount}, "note": "{note}"}}"#
        )
    } else {
        match (r2 >> 8) % 3 {
            0 => write!(out, r#"{{"id": {id}, "ts": {ts}, "customer": "c{customer}", "amou"#),
            1 => write!(
                out,
                r#"{{"id": {id}, "ts": {ts}, "amount": {amount}, "note": "{note}"}}"#
            ),
            _ => write!(
                out,
                r#"{{"id": {id}, "ts": {ts}, "customer": "c{customer}", "amount": -{amount}, "note": "{note}"}}"#
            ),
        }
    };
}

impl PartitionReader for GeneratorReader {
    type Position = u64;

    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, max: usize) -> Result<ReadStatus, SourceError> {
        let mut n = max as u64;
        if let Some(limit) = self.limit {
            if self.next >= limit {
                return Ok(ReadStatus::End);
            }
            n = n.min(limit - self.next);
        }
        if let Some(rate) = self.config.rate {
            let per_partition = rate / f64::from(self.config.partitions);
            let due = (self.started.elapsed().as_secs_f64() * per_partition) as u64;
            let allowed = due.saturating_sub(self.emitted_since_open);
            if allowed == 0 {
                let wait = Duration::from_secs_f64((1.0 / per_partition).min(0.1));
                tokio::time::sleep(wait).await;
                return Ok(ReadStatus::Idle);
            }
            n = n.min(allowed);
        }
        let parts = u64::from(self.config.partitions);
        for _ in 0..n {
            let id = self.next * parts + self.partition;
            generate(&self.config, id, &mut self.line);
            self.next += 1;
            batch.push(Record::from_value(self.line.clone()), self.next);
        }
        self.emitted_since_open += n;
        Ok(ReadStatus::Records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_a_function_of_seed_and_id() {
        let c = GeneratorConfig {
            bad_fraction: 0.1,
            ..Default::default()
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for id in [0, 1, 99, 123_456] {
            generate(&c, id, &mut a);
            generate(&c, id, &mut b);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn bad_fraction_is_roughly_respected() {
        let c = GeneratorConfig {
            bad_fraction: 0.05,
            ..Default::default()
        };
        let mut line = Vec::new();
        let mut bad = 0;
        for id in 0..20_000 {
            generate(&c, id, &mut line);
            let ok = serde_json::from_slice::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| Some(v.get("customer")?.is_string() && v.get("amount")?.as_i64()? >= 0))
                .unwrap_or(false);
            bad += usize::from(!ok);
        }
        assert!((700..1300).contains(&bad), "bad = {bad}");
    }
}

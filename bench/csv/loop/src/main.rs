//! Reads every `*.csv` file of a directory with the `csv` crate (byte records, header
//! skipped), sums the `amount` column per record that parses and counts records: the
//! cost of CSV framing and splitting alone, without checkpoints, steps or output.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: csv-loop DIR")?;
    let started = Instant::now();
    let (mut records, mut sum, mut bytes) = (0u64, 0i64, 0u64);
    let mut names: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    names.sort();
    for path in names {
        bytes += std::fs::metadata(&path)?.len();
        let mut r = csv::ReaderBuilder::new().flexible(true).from_path(&path)?;
        let mut rec = csv::ByteRecord::new();
        while r.read_byte_record(&mut rec)? {
            records += 1;
            if let Some(a) = rec.get(3).and_then(|a| std::str::from_utf8(a).ok()).and_then(|a| a.parse::<i64>().ok()) {
                sum += a;
            }
        }
    }
    let s = started.elapsed().as_secs_f64();
    println!("{records} records, {bytes} bytes in {s:.3} s: {:.2}M records/s (sum {sum})", records as f64 / s / 1e6);
    Ok(())
}

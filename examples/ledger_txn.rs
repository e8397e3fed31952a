//! The ledger and staged transactions as a library, without a pipeline: a loader that turns
//! CSV files into JSON-lines datasets, each file exactly once.
//!
//! Every file is a unit in a SQLite ledger. A claimed file is converted into a staged
//! transaction; validators check it; the commit publishes `warehouse/<file>/` at once, and
//! the ledger records the file completed. A file that fails validation is rolled back (nothing
//! of it is visible) and recorded failed; the next pass skips completed files, retries the
//! failed one, and processes a file again only when its content changed.
//!
//! ```text
//! cargo run -p keel-examples --example ledger_txn
//! ```

use std::path::Path;
use std::time::Duration;

use keel::ledger::{Algorithm, Claim, ClaimRequest, Fingerprint, Ledger, Status, UnitRef};
use keel::txn::{FsTxnStore, JsonLines, MinRecords, Transaction, TxnStore};
use keel_examples::out_dir;

const WORKER: &str = "example-loader";

/// What one pass did to each file.
async fn pass(ledger: &dyn Ledger, store: &dyn TxnStore, input: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut names: Vec<String> = std::fs::read_dir(input)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    let mut done = Vec::new();
    for name in names {
        let path = input.join(&name);
        let unit = UnitRef::new("csv-loader", "file", &name);
        let request = ClaimRequest {
            unit: unit.clone(),
            fingerprint: Fingerprint::of_file(&path, Algorithm::Blake3)?,
        };
        let claim = ledger.claim(&[request], WORKER, Duration::from_secs(60)).await?;
        let what = match claim.into_iter().next() {
            Some(Claim::Process { attempt, why }) => {
                let mut txn = Transaction::begin(store, &name)
                    .await?
                    .validate_with(MinRecords(1))
                    .validate_with(JsonLines);
                txn.stage("rows.jsonl", csv_to_json_lines(&std::fs::read_to_string(&path)?))
                    .await?;
                match txn.commit().await {
                    Ok(c) => {
                        let meta = serde_json::json!({ "version": c.version.version });
                        ledger.complete(&[(unit, meta)], WORKER).await?;
                        format!("committed version {} (attempt {attempt}, {why:?})", c.version.version)
                    }
                    Err(e) => {
                        ledger
                            .fail(&unit, WORKER, &e.to_string(), serde_json::json!({}))
                            .await?;
                        format!("rolled back (attempt {attempt}): {e}")
                    }
                }
            }
            Some(Claim::Skip) => "skipped: completed and unchanged".into(),
            Some(Claim::Busy { owner, .. }) => format!("held by {owner}"),
            None => "no claim".into(),
        };
        println!("  {name}: {what}");
        done.push((name, what));
    }
    Ok(done)
}

/// `id,amount` rows (after a header) as JSON lines.
fn csv_to_json_lines(csv: &str) -> String {
    csv.lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .map(|(id, amount)| format!("{{\"id\":{},\"amount\":{}}}\n", id.trim(), amount.trim()))
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let out = out_dir("ledger_txn");
    let input = out.join("in");
    std::fs::create_dir_all(&input)?;
    std::fs::write(input.join("jan.csv"), "id,amount\n1,10\n2,20\n")?;
    std::fs::write(input.join("feb.csv"), "id,amount\n3,30\n")?;
    std::fs::write(input.join("mar.csv"), "id,amount\n")?; // no rows: fails MinRecords(1)

    let ledger = keel_connectors::ledger::open(&format!("sqlite:{}", out.join("ledger.db").display()), "keel").await?;
    let store = FsTxnStore::new(out.join("warehouse"));

    println!("pass 1:");
    pass(&*ledger, &store, &input).await?;
    assert!(store.current_version("jan.csv")?.is_some());
    assert!(
        store.current_version("mar.csv")?.is_none(),
        "a rolled-back file publishes nothing"
    );

    println!("pass 2 (nothing changed: completed files are skipped, the failed one is retried):");
    let second = pass(&*ledger, &store, &input).await?;
    assert!(second[1].1.starts_with("skipped"), "{second:?}");

    std::fs::write(input.join("mar.csv"), "id,amount\n4,40\n")?;
    std::fs::write(input.join("jan.csv"), "id,amount\n1,10\n2,25\n")?;
    println!("pass 3 (mar.csv fixed, jan.csv corrected: both processed, jan.csv's old version replaced):");
    pass(&*ledger, &store, &input).await?;
    assert_eq!(store.current_version("jan.csv")?.map(|v| v.version), Some(2));

    let stats = ledger.stats(&keel::ledger::Filter::default()).await?;
    println!(
        "ledger: {} completed, {} failed, {} attempts; warehouse/jan.csv/rows.jsonl:\n{}",
        stats.completed,
        stats.failed,
        stats.attempts,
        std::fs::read_to_string(out.join("warehouse/jan.csv/rows.jsonl"))?
    );
    assert_eq!((stats.completed, stats.failed), (3, 0));
    let units = ledger.list(&keel::ledger::Filter::default()).await?;
    assert!(units.iter().all(|u| u.status == Status::Completed));
    Ok(())
}

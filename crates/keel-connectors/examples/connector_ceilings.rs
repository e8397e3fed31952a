//! What each service takes from a plain client loop, without keel: the ceiling the
//! connector benchmarks (`bench/connectors/bench.sh`) compare keel's sinks and sources with.
//! Every loop moves `N` records of the reference job's size (about 90 bytes of JSON) and
//! prints `<records>/s`.
//!
//! ```text
//! connector_ceilings nats-stream   NAME 0      (re)creates stream NAME capturing NAME.>
//! connector_ceilings nats-publish  SUBJECT N   JetStream publishes, 4096 acks in flight
//! connector_ceilings nats-consume  STREAM N    an ordered consumer reading N messages
//! connector_ceilings redis-xadd    KEY N       XADD, pipelined 1000 at a time
//! connector_ceilings redis-xread   KEY N       XREAD COUNT 1000 from the start
//! connector_ceilings pg-copy       TABLE N     COPY of N rows (id, customer, amount)
//! connector_ceilings s3-put        PREFIX N    N records in 1 MiB objects, one PUT each
//! connector_ceilings delta-write   PATH N      deltalake's own JSON writer, one commit
//! ```
//! Locations from `KEEL_NATS_URL`, `KEEL_REDIS_URL`, `KEEL_PG_URL`, `KEEL_S3_ENDPOINT`
//! (bucket keel-test, keys K/S), defaulting to the test services of `.ci/services`.

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

fn record(i: u64) -> String {
    format!(
        r#"{{"id":{i},"ts":{},"customer":"c{}","amount":{},"currency":"EUR","note":"x"}}"#,
        1_700_000_000_000u64 + i,
        i % 2000,
        i % 1000
    )
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

type Result = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn nats_publish(subject: &str, n: u64) -> Result {
    let js = async_nats::jetstream::new(async_nats::connect(env("KEEL_NATS_URL", "nats://127.0.0.1:4222")).await?);
    let mut acks = std::collections::VecDeque::new();
    for i in 0..n {
        if acks.len() >= 4096
            && let Some(a) = acks.pop_front()
        {
            let a: async_nats::jetstream::context::PublishAckFuture = a;
            a.await?;
        }
        acks.push_back(js.publish(subject.to_owned(), Bytes::from(record(i))).await?);
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

async fn nats_stream(name: &str) -> Result {
    let js = async_nats::jetstream::new(async_nats::connect(env("KEEL_NATS_URL", "nats://127.0.0.1:4222")).await?);
    let _ = js.delete_stream(name).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.>")],
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn nats_consume(stream: &str, n: u64) -> Result {
    let js = async_nats::jetstream::new(async_nats::connect(env("KEEL_NATS_URL", "nats://127.0.0.1:4222")).await?);
    let st = js.get_stream(stream).await?;
    let c = st
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut msgs = c.messages().await?;
    let mut seen = 0;
    while seen < n {
        match msgs.next().await {
            Some(m) => {
                m?;
                seen += 1;
            }
            None => break,
        }
    }
    Ok(())
}

async fn redis_xadd(key: &str, n: u64) -> Result {
    let client = redis::Client::open(env("KEEL_REDIS_URL", "redis://127.0.0.1:6379"))?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let mut i = 0;
    while i < n {
        let mut p = redis::pipe();
        for j in i..(i + 1000).min(n) {
            p.cmd("XADD").arg(key).arg("*").arg("value").arg(record(j)).ignore();
        }
        p.query_async::<()>(&mut con).await?;
        i += 1000;
    }
    Ok(())
}

async fn redis_xread(key: &str, n: u64) -> Result {
    let client = redis::Client::open(env("KEEL_REDIS_URL", "redis://127.0.0.1:6379"))?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let (mut after, mut seen) = ("0-0".to_owned(), 0u64);
    while seen < n {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg(key)
            .arg(&after)
            .query_async(&mut con)
            .await?;
        let Some(k) = reply.keys.into_iter().next() else { break };
        if k.ids.is_empty() {
            break;
        }
        seen += k.ids.len() as u64;
        after = k.ids.last().map(|e| e.id.clone()).unwrap_or(after);
    }
    Ok(())
}

async fn pg_copy(table: &str, n: u64) -> Result {
    let (client, conn) = tokio_postgres::connect(
        &env("KEEL_PG_URL", "postgres://postgres@127.0.0.1:5432/test"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGINT, customer TEXT, amount BIGINT)"
        ))
        .await?;
    let sink = client
        .copy_in(&format!("COPY {table} (id, customer, amount) FROM STDIN"))
        .await?;
    let mut sink = std::pin::pin!(sink);
    let mut buf = Vec::with_capacity(1 << 20);
    for i in 0..n {
        use std::io::Write;
        writeln!(buf, "{i}\tc{}\t{}", i % 2000, i % 1000)?;
        if buf.len() > 1 << 20 {
            futures_util::SinkExt::send(&mut sink, Bytes::from(std::mem::take(&mut buf))).await?;
        }
    }
    futures_util::SinkExt::send(&mut sink, Bytes::from(buf)).await?;
    sink.finish().await?;
    Ok(())
}

async fn s3_put(prefix: &str, n: u64) -> Result {
    use object_store::ObjectStoreExt;
    let loc = keel_connectors::txn::S3Location {
        bucket: "keel-test".into(),
        prefix: String::new(),
        endpoint: Some(env("KEEL_S3_ENDPOINT", "http://127.0.0.1:9000")),
        region: None,
        access_key: Some("K".into()),
        secret_key: Some("S".into()),
    };
    let store = loc.store()?;
    let (mut buf, mut part) = (Vec::with_capacity(1 << 20), 0);
    for i in 0..n {
        buf.extend_from_slice(record(i).as_bytes());
        buf.push(b'\n');
        if buf.len() >= 1 << 20 || i + 1 == n {
            let path = object_store::path::Path::from(format!("{prefix}/part-{part:06}.jsonl"));
            store.put(&path, Bytes::from(std::mem::take(&mut buf)).into()).await?;
            part += 1;
        }
    }
    Ok(())
}

async fn delta_write(path: &str, n: u64) -> Result {
    use deltalake::writer::DeltaWriter;
    std::fs::create_dir_all(path)?;
    let url = url::Url::from_directory_path(std::path::absolute(path)?).map_err(|()| "not a directory path")?;
    let table = deltalake::DeltaTable::try_from_url(url).await?;
    let fields = vec![
        deltalake::StructField::new(
            "id",
            deltalake::DataType::Primitive(deltalake::PrimitiveType::Long),
            true,
        ),
        deltalake::StructField::new(
            "customer",
            deltalake::DataType::Primitive(deltalake::PrimitiveType::String),
            true,
        ),
        deltalake::StructField::new(
            "amount",
            deltalake::DataType::Primitive(deltalake::PrimitiveType::Long),
            true,
        ),
    ];
    let mut table = table.create().with_columns(fields).await?;
    let mut writer = deltalake::writer::JsonWriter::for_table(&table)?;
    let rows: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"id": i, "customer": format!("c{}", i % 2000), "amount": i % 1000}))
        .collect();
    writer.write(rows).await?;
    writer.flush_and_commit(&mut table).await?;
    Ok(())
}

fn main() -> Result {
    let args: Vec<String> = std::env::args().collect();
    let (Some(what), Some(target), Some(n)) = (
        args.get(1),
        args.get(2),
        args.get(3).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        eprintln!(
            "usage: connector_ceilings <nats-publish|nats-consume|redis-xadd|redis-xread|pg-copy|s3-put|delta-write> TARGET N"
        );
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let started = Instant::now();
    rt.block_on(async {
        match what.as_str() {
            "nats-stream" => nats_stream(target).await,
            "nats-publish" => nats_publish(target, n).await,
            "nats-consume" => nats_consume(target, n).await,
            "redis-xadd" => redis_xadd(target, n).await,
            "redis-xread" => redis_xread(target, n).await,
            "pg-copy" => pg_copy(target, n).await,
            "s3-put" => s3_put(target, n).await,
            "delta-write" => delta_write(target, n).await,
            other => Err(format!("unknown loop {other}").into()),
        }
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!("{what}: {n} records in {secs:.2} s: {:.0}/s", n as f64 / secs.max(1e-9));
    Ok(())
}

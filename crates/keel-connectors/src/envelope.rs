//! Dead letters as messages: the original record, its provenance in `keel.error.*` headers
//! (Kafka and NATS headers, Redis stream entry fields). The table of headers is in
//! [`crate::kafka::dead_letters`]'s documentation when Kafka is built; it is the same for
//! every broker:
//!
//! `keel.error.v`, `reason`, `class`, `stage`, `message`, `field`, `chain` (JSON), `id`
//! (JSON), `pipeline`, `epoch`, `attempts`, `first_failed_ms`, `last_failed_ms`,
//! `source.partition`, `source.position` (JSON), for a record read from Kafka `topic`,
//! `partition`, `offset`, then `metadata` (JSON) and `identity`.

use std::collections::BTreeMap;

use keel::dead_letter::{ENVELOPE_VERSION, Envelope, Header};

/// The prefix of the envelope's headers.
pub const ERROR_HEADER_PREFIX: &str = "keel.error.";
/// The header holding the identity of a dead letter.
pub const IDENTITY_HEADER: &str = "keel.error.identity";
const VERSION_HEADER: &str = "keel.error.v";

/// A dead letter as a message (Kafka, NATS) or a stream entry (Redis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterMessage {
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original value (none when the envelope does not have it).
    pub value: Option<Vec<u8>>,
    /// The original headers, then the envelope's.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The dead letter's identity (also in [`IDENTITY_HEADER`]).
    pub identity: String,
}

impl DeadLetterMessage {
    /// Bytes this message takes on the wire, roughly (key, value, headers).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
    }
}

fn json(v: &impl serde::Serialize) -> Vec<u8> {
    // plain data with string keys always serialises
    serde_json::to_vec(v).unwrap_or_default()
}

/// The message of dead letter `env`.
pub fn message_of(env: &Envelope) -> DeadLetterMessage {
    let identity = env.identity();
    let mut headers: Vec<(String, Vec<u8>)> = env.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
    let mut put = |name: &str, value: Vec<u8>| headers.push((format!("{ERROR_HEADER_PREFIX}{name}"), value));
    put("v", env.v.to_string().into_bytes());
    put("reason", env.reason.clone().into_bytes());
    put("class", env.class.to_string().into_bytes());
    put("stage", env.stage.clone().into_bytes());
    put("message", env.message.clone().into_bytes());
    if let Some(f) = &env.field {
        put("field", f.clone().into_bytes());
    }
    if !env.chain.is_empty() {
        put("chain", json(&env.chain));
    }
    if let Some(id) = &env.id {
        put("id", json(id));
    }
    put("pipeline", env.pipeline.clone().into_bytes());
    put("epoch", env.epoch.to_string().into_bytes());
    put("attempts", env.attempts.to_string().into_bytes());
    put("first_failed_ms", env.first_failed_ms.to_string().into_bytes());
    put("last_failed_ms", env.last_failed_ms.to_string().into_bytes());
    put("source.partition", env.partition.clone().into_bytes());
    put("source.position", json(&env.position));
    if let (Some((topic, p)), Some(next)) = (kafka_partition(&env.partition), env.position.as_u64()) {
        // a Kafka source's position is the offset after the record
        put("topic", topic.as_bytes().to_vec());
        put("partition", p.to_string().into_bytes());
        put("offset", next.saturating_sub(1).to_string().into_bytes());
    }
    if !env.metadata.is_empty() {
        put("metadata", json(&env.metadata));
    }
    put("identity", identity.clone().into_bytes());
    DeadLetterMessage {
        key: env.original_key(),
        value: env.original_value(),
        headers,
        identity,
    }
}

/// The envelope of a dead-letter message (`headers` in order, `None` values as empty).
pub fn envelope_of<'a>(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Envelope, String> {
    let headers: Vec<(&str, &[u8])> = headers.into_iter().collect();
    let start = headers
        .iter()
        .rposition(|(k, _)| *k == VERSION_HEADER)
        .ok_or("no keel.error.v header: not a keel dead letter")?;
    let mut fields: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for (k, v) in &headers[start..] {
        if let Some(name) = k.strip_prefix(ERROR_HEADER_PREFIX) {
            fields.insert(name, v);
        }
    }
    let text = |name: &str| -> Result<String, String> {
        let v = fields.get(name).ok_or_else(|| format!("no keel.error.{name} header"))?;
        String::from_utf8(v.to_vec()).map_err(|_| format!("keel.error.{name} is not UTF-8"))
    };
    let number = |name: &str| -> Result<u64, String> {
        text(name)?
            .parse()
            .map_err(|_| format!("keel.error.{name} is not a number"))
    };
    let parsed = |name: &str| -> Result<Option<serde_json::Value>, String> {
        match fields.get(name) {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v)
                .map(Some)
                .map_err(|e| format!("keel.error.{name}: {e}")),
        }
    };
    let class = serde_json::from_value(serde_json::Value::String(text("class")?))
        .map_err(|e| format!("keel.error.class: {e}"))?;
    let chain = match parsed("chain")? {
        None => Vec::new(),
        Some(v) => serde_json::from_value(v).map_err(|e| format!("keel.error.chain: {e}"))?,
    };
    let metadata = match parsed("metadata")? {
        None => BTreeMap::new(),
        Some(v) => serde_json::from_value(v).map_err(|e| format!("keel.error.metadata: {e}"))?,
    };
    let split = |b: Option<&[u8]>| match b {
        None => (None, None),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => {
                use base64::Engine as _;
                (None, Some(base64::engine::general_purpose::STANDARD.encode(b)))
            }
        },
    };
    let (key, key_b64) = split(key);
    let (raw, raw_b64) = split(value);
    Ok(Envelope {
        v: u32::try_from(number("v")?).unwrap_or(ENVELOPE_VERSION),
        id: parsed("id")?,
        reason: text("reason")?,
        field: fields.contains_key("field").then(|| text("field")).transpose()?,
        class,
        stage: text("stage")?,
        message: text("message")?,
        chain,
        pipeline: text("pipeline")?,
        partition: text("source.partition")?,
        position: parsed("source.position")?.unwrap_or(serde_json::Value::Null),
        epoch: number("epoch")?,
        attempts: u32::try_from(number("attempts")?).unwrap_or(u32::MAX),
        first_failed_ms: number("first_failed_ms")?,
        last_failed_ms: number("last_failed_ms")?,
        key,
        key_b64,
        headers: headers[..start]
            .iter()
            .map(|(k, v)| Header {
                name: (*k).to_owned(),
                value: v.to_vec(),
            })
            .collect(),
        raw,
        raw_b64,
        metadata,
        replays: Vec::new(),
    })
}

/// The columns of a dead letter as a table row ([`row_of`]), in order.
pub const ROW_COLUMNS: &[&str] = &[
    "identity",
    "pipeline",
    "reason",
    "class",
    "stage",
    "message",
    "field",
    "partition",
    "position",
    "epoch",
    "attempts",
    "first_failed_ms",
    "last_failed_ms",
    "raw",
    "raw_b64",
    "envelope",
];

/// A dead letter (its envelope as a JSON line) as a table row: a JSON object of
/// [`ROW_COLUMNS`]. `position` and `envelope` are JSON values, or their text with
/// `json_as_text` (for tables without a JSON type). Bytes that are no envelope are
/// returned as they are.
pub fn row_of(envelope: &[u8], json_as_text: bool) -> Vec<u8> {
    let Ok(env) = Envelope::decode(envelope) else {
        return envelope.to_vec();
    };
    let whole: serde_json::Value = serde_json::from_slice(envelope).unwrap_or(serde_json::Value::Null);
    let json = |v: serde_json::Value| {
        if json_as_text {
            serde_json::Value::String(v.to_string())
        } else {
            v
        }
    };
    serde_json::json!({
        "identity": env.identity(),
        "pipeline": env.pipeline,
        "reason": env.reason,
        "class": env.class.to_string(),
        "stage": env.stage,
        "message": env.message,
        "field": env.field,
        "partition": env.partition,
        "position": json(env.position),
        "epoch": env.epoch,
        "attempts": env.attempts,
        "first_failed_ms": env.first_failed_ms,
        "last_failed_ms": env.last_failed_ms,
        "raw": env.raw,
        "raw_b64": env.raw_b64,
        "envelope": json(whole),
    })
    .to_string()
    .into_bytes()
}

/// `topic:N`, a Kafka source's partition name.
pub(crate) fn kafka_partition(name: &str) -> Option<(&str, i32)> {
    let (topic, p) = name.rsplit_once(':')?;
    Some((topic, p.parse().ok()?))
}

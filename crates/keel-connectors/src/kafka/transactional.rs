//! `transactional = true`: each epoch published in one Kafka transaction (KIP-98).
//!
//! ```text
//!  recover  init_transactions with transactional.id `keel-<pipeline>-<sink>`: an older
//!           producer with that id (a killed run) is fenced and its open transaction aborted
//!  commit   begin; publish the epoch's records (headers as without transactions);
//!           send_offsets_to_transaction: group `keel-txn-<pipeline>-<sink>`,
//!             partition <topic>:0, offset = the epoch        (the epoch's progress record)
//!           commit_transaction
//!  recovery the group's committed offset says whether the restored epoch's transaction
//!           committed: if it is the epoch (or later) nothing is published again, else the
//!           whole epoch is published again in a new transaction
//! ```
//!
//! A read_committed consumer sees each epoch whole or not at all, never a torn one, and an
//! epoch's records once: the aborted attempt of an interrupted commit stays hidden. That
//! last point is the broker's: the tansu broker of the tests shows aborted records to
//! read_committed consumers, so there the tests check the transaction's commit, the fencing
//! of a killed producer and the progress record, and the hidden-abort test runs only against
//! a broker named by `KEEL_KAFKA_TXN_BROKERS`. Without transactions, the default protocol
//! (read back, publish the rest) is exactly-once on any broker.

use std::time::{Duration, Instant};

use keel::sink::SinkError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::sink::{KafkaPreCommit, Outgoing, Publisher};

/// The client parts of transactional publishing.
pub(super) struct Transactions {
    /// The marker group's consumer: its group metadata, and the committed marker.
    consumer: BaseConsumer,
    group: String,
}

/// The transactional id and marker group of a writer (`<pipeline>/<sink>`).
pub(super) fn names(writer: &str) -> (String, String) {
    let safe: String = writer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    (format!("keel-{safe}"), format!("keel-txn-{safe}"))
}

impl Transactions {
    pub(super) fn new(publisher: &Publisher, group: String) -> Result<Self, SinkError> {
        let consumer: BaseConsumer = publisher
            .config
            .reader()
            .set("group.id", &group)
            .create()
            .map_err(|e| publisher.failure(&e, "creating the transaction marker's consumer for"))?;
        Ok(Transactions { consumer, group })
    }
}

impl Publisher {
    fn txn(&self) -> Result<&Transactions, SinkError> {
        self.transactions
            .as_deref()
            .ok_or_else(|| SinkError::Fatal("kafka sink: transactions not set up".into()))
    }

    /// The newest epoch whose transaction committed (0: none).
    pub(super) fn committed_epoch(&self) -> Result<u64, SinkError> {
        let t = self.txn()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.topic, 0);
        let got = t
            .consumer
            .committed_offsets(tpl, self.config.patience())
            .map_err(|e| self.failure(&e, &format!("reading group {}'s progress on", t.group)))?;
        Ok(match got.find_partition(&self.config.topic, 0).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o > 0 => o as u64,
            _ => 0,
        })
    }

    /// Publishes `outgoing` as epoch `pre` in one transaction with its progress record.
    pub(super) fn publish_in_transaction(
        &self,
        pre: &KafkaPreCommit,
        outgoing: &[Outgoing<'_>],
    ) -> Result<(), SinkError> {
        let t = self.txn()?;
        let producer = self.producer();
        let patience = self.config.patience();
        let fail = |doing: &str, e: &dyn std::fmt::Display| {
            // the open transaction must not stay open: abort it, and let the next start
            // publish the epoch again (its aborted records are hidden from read_committed
            // consumers by the broker)
            let _ = producer.abort_transaction(Duration::from_secs(10));
            SinkError::Fatal(format!(
                "kafka sink: {doing} the transaction of epoch {} on topic {}: {e}",
                pre.epoch, self.config.topic
            ))
        };
        producer
            .begin_transaction()
            .map_err(|e| self.failure(&e, "beginning a transaction on"))?;
        let deadline = Instant::now() + patience;
        self.send_all(pre, outgoing, None, deadline)
            .map_err(|e| fail("publishing in", &e))?;
        let group = t
            .consumer
            .group_metadata()
            .ok_or_else(|| fail("reading the marker group of", &t.group))?;
        let mut marker = TopicPartitionList::new();
        marker
            .add_partition_offset(&self.config.topic, 0, Offset::Offset(pre.epoch as i64))
            .map_err(|e| fail("marking", &e))?;
        producer
            .send_offsets_to_transaction(&marker, &group, patience)
            .map_err(|e| fail("sending the progress record of", &e))?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        producer.commit_transaction(left).map_err(|e| fail("committing", &e))?;
        // a failed delivery fails the commit above; nothing is left to report
        if let Ok(mut f) = producer.context().failed.lock() {
            f.take();
        }
        tracing::debug!(epoch = pre.epoch, records = outgoing.len(), topic = %self.config.topic, "epoch published in a transaction");
        Ok(())
    }
}

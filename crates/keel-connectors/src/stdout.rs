//! Printing records on standard output, one line each, when their epoch commits.
//!
//! Output of an epoch is held in memory and printed at commit, so nothing that could be
//! rolled back is ever printed. A crash during the printing of an epoch can print part of it
//! again after the restart: the guarantee is at-least-once.

use std::io::Write;

use keel::checkpoint::CheckpointId;
use keel::checkpoint::recovery::SinkRecovery;
use keel::sink::{Guarantee, OutBatch, RecoveryReport, SealedEpoch, Sink, SinkError};

/// Prints committed records on standard output.
#[derive(Debug, Default)]
pub struct StdoutSink {
    epoch_data: Vec<u8>,
}

impl StdoutSink {
    /// A new sink.
    pub fn new() -> Self {
        Self::default()
    }
}

struct SealedStdout(Vec<u8>);

impl SealedEpoch for SealedStdout {
    fn prepare(&mut self) -> Result<serde_json::Value, SinkError> {
        Ok(serde_json::Value::Null)
    }
    fn commit(&mut self) -> Result<(), SinkError> {
        let data = std::mem::take(&mut self.0);
        let mut out = std::io::stdout().lock();
        out.write_all(&data)
            .and_then(|_| out.flush())
            .map_err(|e| SinkError::io("writing to stdout", e))
    }
}

impl Sink for StdoutSink {
    fn describe(&self) -> String {
        "stdout".into()
    }
    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }
    async fn recover(&mut self, _r: &SinkRecovery) -> Result<RecoveryReport, SinkError> {
        Ok(RecoveryReport::default())
    }
    async fn write(&mut self, _epoch: CheckpointId, batch: &OutBatch) -> Result<(), SinkError> {
        self.epoch_data.extend_from_slice(batch.data());
        Ok(())
    }
    async fn seal(&mut self, _epoch: CheckpointId) -> Result<Box<dyn SealedEpoch>, SinkError> {
        Ok(Box::new(SealedStdout(std::mem::take(&mut self.epoch_data))))
    }
}

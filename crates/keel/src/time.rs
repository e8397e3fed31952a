//! Event time and watermarks.
//!
//! Each partition tracks the highest event time it has seen. Its watermark is that maximum
//! minus the allowed lateness; the pipeline watermark is the minimum over partitions that are
//! neither finished nor idle (no record for `idle_timeout`), so one quiet partition does not
//! hold event time back forever. The watermark never goes backwards. A record whose event
//! time is below the pipeline watermark is *late* and goes to the [`LatePolicy`].
//! Watermarks are saved in checkpoints and restored with them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to do with a record that arrives behind the watermark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Drop it and count it.
    Drop,
    /// Send it to the dead-letter output with reason `late`.
    #[default]
    DeadLetter,
    /// Process it anyway.
    Keep,
}

/// How watermarks are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatermarkConfig {
    /// How far behind the highest event time records may still arrive.
    pub lateness: Duration,
    /// A partition with no record for this long is left out of the pipeline watermark.
    pub idle_timeout: Duration,
    /// What to do with late records.
    pub late: LatePolicy,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            lateness: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            late: LatePolicy::DeadLetter,
        }
    }
}

impl WatermarkConfig {
    /// The watermark of a partition whose highest event time is `max_event_time`.
    pub fn partition_watermark(&self, max_event_time: i64) -> i64 {
        max_event_time.saturating_sub(self.lateness.as_millis().min(i64::MAX as u128) as i64)
    }
}

/// What the pipeline watermark is computed from, for one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionTime {
    /// Highest event time seen.
    pub max_event_time: Option<i64>,
    /// True when the partition ended or is idle: it does not hold the watermark back.
    pub inactive: bool,
}

/// The pipeline watermark: the minimum partition watermark over active partitions that have
/// seen event time, never below `previous`. `None` until some partition has event time.
pub fn pipeline_watermark(
    config: &WatermarkConfig,
    partitions: impl IntoIterator<Item = PartitionTime>,
    previous: Option<i64>,
) -> Option<i64> {
    let min = partitions
        .into_iter()
        .filter(|p| !p.inactive)
        .filter_map(|p| p.max_event_time)
        .map(|m| config.partition_watermark(m))
        .min();
    match (min, previous) {
        (Some(m), Some(p)) => Some(m.max(p)),
        (m, p) => m.or(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WatermarkConfig {
        WatermarkConfig {
            lateness: Duration::from_millis(100),
            ..Default::default()
        }
    }

    fn p(max: Option<i64>, inactive: bool) -> PartitionTime {
        PartitionTime {
            max_event_time: max,
            inactive,
        }
    }

    #[test]
    fn minimum_over_active_partitions_minus_lateness() {
        let wm = pipeline_watermark(&cfg(), [p(Some(1000), false), p(Some(500), false)], None);
        assert_eq!(wm, Some(400));
    }

    #[test]
    fn idle_and_finished_partitions_are_excluded() {
        let wm = pipeline_watermark(&cfg(), [p(Some(1000), false), p(Some(500), true)], None);
        assert_eq!(wm, Some(900));
    }

    #[test]
    fn partitions_without_event_time_do_not_count() {
        assert_eq!(
            pipeline_watermark(&cfg(), [p(None, false), p(Some(300), false)], None),
            Some(200)
        );
        assert_eq!(pipeline_watermark(&cfg(), [p(None, false)], None), None);
    }

    #[test]
    fn watermark_never_goes_back() {
        assert_eq!(pipeline_watermark(&cfg(), [p(Some(300), false)], Some(900)), Some(900));
        assert_eq!(pipeline_watermark(&cfg(), [p(Some(300), true)], Some(900)), Some(900));
    }
}

//! Event time and watermarks.
//!
//! Each partition tracks the highest event time it has seen. Its watermark is that maximum
//! minus the allowed lateness; the pipeline watermark is the minimum over partitions that are
//! neither finished nor idle (no record for `idle_timeout`), so one quiet partition does not
//! hold event time back forever. The watermark never goes backwards. A record whose event
//! time is below the pipeline watermark is *late* and goes to the [`LatePolicy`]. A record
//! whose event time is more than [`WatermarkConfig::max_future_skew`] ahead of the wall clock
//! fails with reason `future_event_time` (and is dead-lettered by default) without touching
//! event time: otherwise one wrong timestamp would raise the watermark for ever and make
//! every later record late.
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
    /// How far ahead of the wall clock an event time may be (default 1 h); a record further
    /// ahead fails with `future_event_time` and does not move the watermark. `None` accepts
    /// any event time.
    pub max_future_skew: Option<Duration>,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            lateness: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            late: LatePolicy::DeadLetter,
            max_future_skew: Some(Duration::from_secs(3600)),
        }
    }
}

impl WatermarkConfig {
    /// By how many ms `event_time` is beyond the allowed skew ahead of `now_ms` (the wall
    /// clock), or `None` when it is acceptable.
    pub fn too_far_ahead(&self, event_time: i64, now_ms: i64) -> Option<i64> {
        let skew = self.max_future_skew?.as_millis().min(i64::MAX as u128) as i64;
        let limit = now_ms.saturating_add(skew);
        (event_time > limit).then(|| event_time - limit)
    }

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
    fn event_times_too_far_ahead_of_the_clock_are_refused() {
        let c = WatermarkConfig::default();
        let now = 1_000_000_000;
        assert_eq!(c.too_far_ahead(now + 3_600_000, now), None);
        assert_eq!(c.too_far_ahead(now + 3_600_001, now), Some(1));
        assert_eq!(c.too_far_ahead(i64::MAX, now), Some(i64::MAX - now - 3_600_000));
        let off = WatermarkConfig {
            max_future_skew: None,
            ..c
        };
        assert_eq!(off.too_far_ahead(i64::MAX, now), None);
    }

    #[test]
    fn watermark_never_goes_back() {
        assert_eq!(pipeline_watermark(&cfg(), [p(Some(300), false)], Some(900)), Some(900));
        assert_eq!(pipeline_watermark(&cfg(), [p(Some(300), true)], Some(900)), Some(900));
    }
}

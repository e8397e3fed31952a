//! What happens to a failure: classification rules, then an action chosen by stage and class.
//!
//! A record that fails anywhere in its flow is classified once more by the user's rules
//! ([`Classifier`]), shown to the failure hook, and handled by the [`Action`] configured for
//! its stage and class ([`Policies::action`]):
//!
//! | action | what happens |
//! |---|---|
//! | `fail` | the pipeline stops with the error, after a final checkpoint (exit 3) |
//! | `skip` | the record is dropped and counted |
//! | `dead_letter` | the record goes to the dead-letter output with its provenance |
//! | `retry` | the record is run through the flow again after a backoff, then `then` |
//! | `pause` | input stops everywhere, a checkpoint is taken, and after the retry-after (or the duration) the record is retried |
//! | `abort` | graceful shutdown with a final checkpoint, exit 3 |
//!
//! Defaults: permanent failures are dead-lettered (or fail the pipeline when it has no
//! dead-letter output), transient ones are retried with backoff then dead-lettered,
//! throttled ones pause the pipeline for their retry-after (up to 10 times) then are
//! dead-lettered, fatal ones fail the pipeline.
//!
//! Retrying a record runs its whole flow again, so it is only done when the failed attempt
//! changed no keyed state (outputs are always discarded): put steps that call other systems
//! before stateful steps. A record that cannot be retried takes the `then` action at once.
//! Retries hold back only their own partition: other partitions keep flowing, and the
//! waiting partition still takes part in checkpoints.
//!
//! Sinks are protected by a [`CircuitBreaker`]: while it is open the runtime stops reading
//! input instead of dead-lettering healthy records, and resumes when a probe succeeds.

pub mod breaker;
pub mod call;
pub mod retry;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use self::breaker::{BreakerConfig, BreakerState, BreakerStats, CircuitBreaker, Permit};
pub use self::retry::{
    Backoff, GiveUp, Jitter, RandomSource, RetryBudget, RetryConfigError, RetryPolicy, RetryState, SplitMix,
};
use crate::failure::{Class, Failure};

/// What to do with a failure.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Stop the pipeline with the error (after a final checkpoint when it is consistent).
    Fail,
    /// Drop the record, count it, log it.
    Skip,
    /// Send the record to the dead-letter output.
    DeadLetter,
    /// Run the record again after a backoff; `then` when retries run out or are refused.
    Retry {
        /// The schedule.
        policy: RetryPolicy,
        /// What to do when retries run out (never another retry).
        then: Box<Action>,
    },
    /// Stop input pipeline-wide, checkpoint, wait, then retry the record; `then` after
    /// `max_pauses` pauses for the same record.
    Pause {
        /// How long, when the failure has no retry-after.
        duration: Duration,
        /// Pauses per record before `then`.
        max_pauses: u32,
        /// What to do after that.
        then: Box<Action>,
    },
    /// Graceful shutdown with a final checkpoint, then a non-zero exit.
    Abort,
}

impl Action {
    /// The name used in configuration and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Fail => "fail",
            Action::Skip => "skip",
            Action::DeadLetter => "dead_letter",
            Action::Retry { .. } => "retry",
            Action::Pause { .. } => "pause",
            Action::Abort => "abort",
        }
    }
}

/// An action per failure class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassActions {
    /// For transient failures.
    pub transient: Action,
    /// For throttled failures.
    pub throttled: Action,
    /// For permanent failures.
    pub permanent: Action,
    /// For fatal failures.
    pub fatal: Action,
}

impl ClassActions {
    /// The action for `class`.
    pub fn get(&self, class: Class) -> &Action {
        match class {
            Class::Transient => &self.transient,
            Class::Throttled => &self.throttled,
            Class::Permanent => &self.permanent,
            Class::Fatal => &self.fatal,
        }
    }

    /// Replaces the action for `class`.
    pub fn set(&mut self, class: Class, action: Action) {
        match class {
            Class::Transient => self.transient = action,
            Class::Throttled => self.throttled = action,
            Class::Permanent => self.permanent = action,
            Class::Fatal => self.fatal = action,
        }
    }
}

impl Default for ClassActions {
    fn default() -> Self {
        ClassActions {
            transient: Action::Retry {
                policy: RetryPolicy::default(),
                then: Box::new(Action::DeadLetter),
            },
            throttled: Action::Pause {
                duration: Duration::from_secs(1),
                max_pauses: 10,
                then: Box::new(Action::DeadLetter),
            },
            permanent: Action::DeadLetter,
            fatal: Action::Fail,
        }
    }
}

/// One classification rule: when every given matcher matches, the failure gets `class`
/// (and optionally a new reason or a retry-after).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRule {
    /// Match this reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Match this stage.
    #[serde(default)]
    pub stage: Option<String>,
    /// Match these HTTP-style status codes.
    #[serde(default)]
    pub status: Option<Vec<u16>>,
    /// Match when the message contains this text.
    #[serde(default)]
    pub message: Option<String>,
    /// The class to give.
    pub class: Class,
    /// A new reason (snake_case).
    #[serde(default, rename = "as")]
    pub rename: Option<String>,
    /// A retry-after to give when the failure has none.
    #[serde(default, with = "opt_duration_ms")]
    pub retry_after_ms: Option<Duration>,
}

impl Default for ClassifyRule {
    /// A rule that matches everything and makes failures permanent.
    fn default() -> Self {
        ClassifyRule {
            reason: None,
            stage: None,
            status: None,
            message: None,
            class: Class::Permanent,
            rename: None,
            retry_after_ms: None,
        }
    }
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

impl ClassifyRule {
    fn matches(&self, f: &Failure) -> bool {
        self.reason.as_deref().is_none_or(|r| r == f.reason)
            && self.stage.as_deref().is_none_or(|s| s == f.stage)
            && self
                .status
                .as_ref()
                .is_none_or(|codes| f.status.is_some_and(|s| codes.contains(&s)))
            && self.message.as_deref().is_none_or(|m| f.message.contains(m))
    }
}

/// A user classifier written in Rust; it may change the class, reason or retry-after.
pub type ClassifyFn = Arc<dyn Fn(&mut Failure) + Send + Sync>;

/// Reclassifies failures: rules first (the first match wins), then the Rust classifier.
#[derive(Clone, Default)]
pub struct Classifier {
    rules: Vec<ClassifyRule>,
    custom: Option<ClassifyFn>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("rules", &self.rules)
            .field("custom", &self.custom.is_some())
            .finish()
    }
}

impl Classifier {
    /// A classifier with these rules.
    pub fn new(rules: Vec<ClassifyRule>) -> Self {
        Classifier { rules, custom: None }
    }

    /// Adds a Rust classifier, applied after the rules.
    pub fn with(mut self, f: impl Fn(&mut Failure) + Send + Sync + 'static) -> Self {
        self.custom = Some(Arc::new(f));
        self
    }

    /// Applies the rules and the custom classifier.
    pub fn apply(&self, f: &mut Failure) {
        if let Some(rule) = self.rules.iter().find(|r| r.matches(f)) {
            f.class = rule.class;
            if let Some(r) = &rule.rename {
                f.reason = r.clone().into();
            }
            if f.retry_after.is_none() {
                f.retry_after = rule.retry_after_ms;
            }
        }
        if let Some(c) = &self.custom {
            c(f);
        }
    }
}

/// What the failure hook is shown.
#[derive(Debug)]
pub struct FailureEvent<'a> {
    /// The failure, after classification.
    pub failure: &'a Failure,
    /// The partition of the record.
    pub partition: &'a str,
    /// Attempts made for this record so far.
    pub attempts: u32,
    /// The action taken.
    pub action: &'static str,
}

/// A hook that sees every failure (for alerts). Panics in it are caught and logged.
pub type FailureHook = Arc<dyn Fn(&FailureEvent<'_>) + Send + Sync>;

/// What an exceeded error budget does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    /// Pause input for the window, then go on.
    Pause,
    /// Stop gracefully with a final checkpoint and a non-zero exit.
    Abort,
}

/// At most this many dead letters per window (as a fraction of records, or a count).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorBudget {
    /// Largest fraction of dead letters among records of the window.
    pub max_ratio: Option<f64>,
    /// Largest number of dead letters in the window.
    pub max_count: Option<u64>,
    /// The window.
    pub window: Duration,
    /// Records needed in the window before `max_ratio` applies.
    pub min_records: u64,
    /// What to do when exceeded.
    pub action: BudgetAction,
}

/// Every failure-handling setting of a pipeline.
#[derive(Clone)]
pub struct Policies {
    /// Actions for any stage without its own.
    pub default: ClassActions,
    /// Actions for named stages (step names, sink names, `source`).
    pub stages: BTreeMap<String, ClassActions>,
    /// Reclassification.
    pub classifier: Classifier,
    /// The retry budget shared by all retries of the pipeline (`None`: unlimited).
    pub budget: Option<RetryBudget>,
    /// Dead letters allowed per window.
    pub error_budget: Option<ErrorBudget>,
    /// Sees every failure.
    pub hook: Option<FailureHook>,
    /// Circuit breaker settings for sinks (`None`: no breaker).
    pub sink_breaker: Option<BreakerConfig>,
    /// Retry schedule of failed sink writes.
    pub sink_retry: RetryPolicy,
    /// Largest record (bytes) accepted from a source; larger ones fail with `oversized`.
    pub max_record_bytes: Option<usize>,
    /// Most dead letters written per second; above it, input slows down (nothing is dropped).
    pub dead_letter_rate: Option<f64>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies")
            .field("default", &self.default)
            .field("stages", &self.stages)
            .field("classifier", &self.classifier)
            .field("error_budget", &self.error_budget)
            .field("sink_breaker", &self.sink_breaker)
            .finish()
    }
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            default: ClassActions::default(),
            stages: BTreeMap::new(),
            classifier: Classifier::default(),
            budget: Some(RetryBudget::new(0.2, 10.0, Duration::from_secs(10))),
            error_budget: None,
            hook: None,
            sink_breaker: Some(BreakerConfig::default()),
            sink_retry: RetryPolicy::new(
                Backoff::Exponential {
                    initial: Duration::from_millis(50),
                    multiplier: 2.0,
                    max_delay: Duration::from_secs(5),
                },
                Jitter::Full,
                10,
                None,
            )
            .unwrap_or_default(),
            max_record_bytes: None,
            dead_letter_rate: None,
        }
    }
}

impl Policies {
    /// The action for a failure of `class` at `stage`.
    pub fn action(&self, stage: &str, class: Class) -> &Action {
        self.stages.get(stage).unwrap_or(&self.default).get(class)
    }

    /// Shows `event` to the hook; a panicking hook is logged, never propagated.
    pub fn notify(&self, event: &FailureEvent<'_>) {
        if let Some(h) = &self.hook
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(event))).is_err()
        {
            tracing::error!(reason = %event.failure.reason, "the failure hook panicked; ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_reclassify_and_rename() {
        let c = Classifier::new(vec![
            ClassifyRule {
                status: Some(vec![409]),
                class: Class::Transient,
                rename: Some("conflict".into()),
                ..Default::default()
            },
            ClassifyRule {
                stage: Some("enrich".into()),
                message: Some("quota".into()),
                class: Class::Throttled,
                retry_after_ms: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        ]);
        let mut f = Failure::permanent("step_error", "x").with_status(409);
        c.apply(&mut f);
        assert_eq!((f.class, f.reason.as_ref()), (Class::Transient, "conflict"));
        let mut f = Failure::permanent("step_error", "daily quota reached").with_stage("enrich");
        c.apply(&mut f);
        assert_eq!(
            (f.class, f.retry_after),
            (Class::Throttled, Some(Duration::from_secs(2)))
        );
        let mut f = Failure::permanent("step_error", "daily quota reached").with_stage("other");
        c.apply(&mut f);
        assert_eq!(f.class, Class::Permanent);
    }

    #[test]
    fn rust_classifier_runs_after_rules() {
        let c = Classifier::new(vec![]).with(|f| {
            if f.message.contains("deadlock") {
                f.class = Class::Transient;
            }
        });
        let mut f = Failure::permanent("step_error", "deadlock detected");
        c.apply(&mut f);
        assert_eq!(f.class, Class::Transient);
    }

    #[test]
    fn stage_actions_override_defaults() {
        let mut p = Policies::default();
        let mut enrich = ClassActions::default();
        enrich.set(Class::Permanent, Action::Skip);
        p.stages.insert("enrich".into(), enrich);
        assert_eq!(p.action("enrich", Class::Permanent), &Action::Skip);
        assert_eq!(p.action("parse", Class::Permanent), &Action::DeadLetter);
        assert_eq!(p.action("parse", Class::Fatal), &Action::Fail);
        assert_eq!(p.action("x", Class::Transient).name(), "retry");
    }

    #[test]
    fn a_panicking_hook_does_not_propagate() {
        let p = Policies {
            hook: Some(Arc::new(|_| panic!("boom"))),
            ..Default::default()
        };
        let f = Failure::permanent("x", "y");
        p.notify(&FailureEvent {
            failure: &f,
            partition: "p",
            attempts: 1,
            action: "skip",
        });
    }
}

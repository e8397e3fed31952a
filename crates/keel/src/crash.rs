//! Deterministic crash points for crash tests.
//!
//! Random `kill -9` finds most crash windows, but the narrow ones (between the manifest write
//! and the commits, between two renames of one commit) deserve to be hit on purpose. When the
//! environment variable `KEEL_CRASH_AT` is `<point>:<n>`, the process aborts (no destructors,
//! no flushing: the same as `kill -9` for everything on disk) the `n`-th time it reaches
//! `<point>`. Points: `after_prepare`, `after_state`, `after_manifest`, `mid_commit`,
//! `after_commit`, in the Kafka, NATS and Redis sinks `mid_publish` (half an epoch sent and stored; for Redis, after its first chunk), in staged transactions `txn_before_publish`, `txn_after_publish`, and in
//! dead-letter replays `replay_before_mark`. Unset, a crash point costs one relaxed atomic load.
//!
//! `<point>:<n>:hang` blocks the thread there for good instead (storage that never answers,
//! as a hung network file system does): what a stop and a second signal do then is testable.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Plan {
    point: String,
    nth: u64,
    hang: bool,
    seen: AtomicU64,
}

fn plan() -> Option<&'static Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let v = std::env::var("KEEL_CRASH_AT").ok()?;
        let (point, rest) = v.split_once(':')?;
        let (nth, hang) = match rest.split_once(':') {
            Some((nth, "hang")) => (nth, true),
            Some(_) => return None,
            None => (rest, false),
        };
        Some(Plan {
            point: point.to_owned(),
            nth: nth.parse().ok()?,
            hang,
            seen: AtomicU64::new(0),
        })
    })
    .as_ref()
}

/// True when `KEEL_CRASH_AT` names `point`: code that prepares a crash window (a flush
/// before the point) runs only in crash tests.
pub fn armed_at(point: &str) -> bool {
    plan().is_some_and(|p| p.point == point)
}

/// Aborts the process (or blocks this thread for good, in `hang` mode) if `KEEL_CRASH_AT`
/// names this point and this is the chosen visit.
pub fn crash_point(point: &str) {
    if let Some(p) = plan()
        && p.point == point
    {
        let n = p.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n == p.nth {
            if p.hang {
                eprintln!("keel: KEEL_CRASH_AT={point}:{n}:hang reached, hanging");
                loop {
                    std::thread::park();
                }
            }
            eprintln!("keel: KEEL_CRASH_AT={point}:{n} reached, aborting");
            std::process::abort();
        }
    }
}

/// A fault window for tests of failure handling: when `KEEL_FAIL_AT` is
/// `<point>:<from>:<count>`, the visits `from .. from + count` of `<point>` fail (the caller
/// turns that into the error the point stands for). Points: `sink_write` (a transient I/O
/// error from the sink, as an unreachable store gives). Unset, this costs one relaxed load.
pub fn fail_at(point: &str) -> bool {
    struct Window {
        point: String,
        from: u64,
        count: u64,
        seen: AtomicU64,
    }
    static WINDOW: OnceLock<Option<Window>> = OnceLock::new();
    let window = WINDOW.get_or_init(|| {
        let v = std::env::var("KEEL_FAIL_AT").ok()?;
        let mut parts = v.splitn(3, ':');
        Some(Window {
            point: parts.next()?.to_owned(),
            from: parts.next()?.parse().ok()?,
            count: parts.next()?.parse().ok()?,
            seen: AtomicU64::new(0),
        })
    });
    match window {
        Some(w) if w.point == point => {
            let n = w.seen.fetch_add(1, Ordering::Relaxed) + 1;
            n >= w.from && n < w.from + w.count
        }
        _ => false,
    }
}

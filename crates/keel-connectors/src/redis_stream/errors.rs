//! What a Redis error means for the policies.

use keel::Failure;
use keel::failure::reason;

/// Classifies `e`; `doing` says what failed.
pub(crate) fn classify(e: &redis::RedisError, doing: &str) -> Failure {
    let message = format!("{doing}: {}", keel::util::redact_url(&e.to_string()));
    if e.is_connection_refusal() || e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        return Failure::transient(reason::IO, message);
    }
    match e.code() {
        Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN") => Failure::transient(reason::IO, message),
        Some("OOM") => Failure::throttled("out_of_memory", message, None),
        Some("NOAUTH" | "WRONGPASS") => Failure::fatal(
            "authentication",
            format!("{message} (check the user and password in the URL)"),
        ),
        Some("NOPERM") => Failure::fatal("not_authorized", message),
        Some("WRONGTYPE") => Failure::fatal("wrong_type", format!("{message} (the key is not a stream)")),
        _ => Failure::fatal("redis_error", message),
    }
}

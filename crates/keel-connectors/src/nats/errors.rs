//! What a NATS error means for the policies.

use keel::Failure;
use keel::failure::reason;

/// Classifies a connection failure: a refused or timed-out connection is transient (the
/// server may be restarting), a refused authorization or a bad address is fatal.
pub fn classify_connect(e: &async_nats::ConnectError, shown: &str) -> Failure {
    use async_nats::ConnectErrorKind as K;
    let message = format!("connecting to {shown}: {e}");
    match e.kind() {
        K::Authentication | K::AuthorizationViolation => Failure::fatal(
            "authentication",
            format!("{message} (check the user and password or token in the URL)"),
        ),
        K::ServerParse | K::Tls => Failure::fatal("config", message),
        K::Dns | K::TimedOut | K::Io | K::MaxReconnects => Failure::transient(reason::IO, message),
    }
}

/// Classifies a failed publish.
pub(crate) fn classify_publish(e: &async_nats::jetstream::context::PublishError, doing: &str) -> Failure {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let message = format!("{doing}: {e}");
    match e.kind() {
        K::MaxPayloadExceeded => Failure::permanent(reason::OVERSIZED, message),
        K::StreamNotFound => Failure::fatal(
            "unknown_stream",
            format!("{message} (no stream captures the subject; keel does not create streams)"),
        ),
        K::WrongLastMessageId | K::WrongLastSequence => Failure::fatal("conflict", message),
        K::TimedOut | K::BrokenPipe | K::MaxAckPending | K::Other => Failure::transient(reason::IO, message),
    }
}

/// A request to the JetStream API that failed: transient unless the server said the
/// stream does not exist.
pub(crate) fn classify_request(e: &dyn std::fmt::Display, doing: &str) -> Failure {
    let message = format!("{doing}: {e}");
    let text = message.to_ascii_lowercase();
    if text.contains("stream not found") || text.contains("not found") && text.contains("stream") {
        Failure::fatal("unknown_stream", format!("{message} (keel does not create streams)"))
    } else if text.contains("authorization") || text.contains("permissions violation") {
        Failure::fatal("not_authorized", message)
    } else {
        Failure::transient(reason::IO, message)
    }
}

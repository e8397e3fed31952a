//! What a Kafka error means for the policies: broker trouble is transient (retried, the
//! breaker pauses input, nothing is lost), an oversized message is `oversized`, a missing
//! topic or a refused authorization is fatal with a message that says so.

use keel::failure::reason;
use keel::{Failure, FailureError, SourceError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

/// The error code a Kafka error carries, if any.
fn code(e: &KafkaError) -> Option<Code> {
    match e {
        KafkaError::AdminOp(c) => Some(*c),
        other => other.rdkafka_error_code(),
    }
}

/// Classifies `e`; `doing` says what failed (`reading orders:3`).
pub fn classify(e: &KafkaError, doing: &str) -> Failure {
    let message = format!("{doing}: {e}");
    let Some(c) = code(e) else {
        return Failure::transient(reason::IO, message);
    };
    match c {
        Code::MessageSizeTooLarge | Code::InvalidMessageSize => Failure::permanent(reason::OVERSIZED, message),
        Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition => Failure::fatal(
            "unknown_topic",
            format!("{message} (keel does not create topics: create it, or fix the name)"),
        ),
        Code::InvalidTopic => Failure::fatal("invalid_topic", format!("{message} (not a valid topic name)")),
        Code::TopicAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::TransactionalIdAuthorizationFailed => Failure::fatal(
            "not_authorized",
            format!("{message} (check the ACLs of the principal in [options])"),
        ),
        Code::SaslAuthenticationFailed | Code::Authentication => Failure::fatal(
            "authentication",
            format!("{message} (check sasl.* / ssl.* in [options])"),
        ),
        Code::Fenced | Code::ProducerFenced | Code::InvalidProducerEpoch => Failure::fatal(
            "fenced",
            format!("{message} (another producer with the same transactional id took over)"),
        ),
        Code::InvalidConfig | Code::InvalidArgument | Code::UnsupportedFeature => Failure::fatal("config", message),
        Code::RequestTimedOut | Code::OperationTimedOut | Code::MessageTimedOut => {
            Failure::transient(reason::TIMEOUT, message)
        }
        // brokers down, leaders moving, full queues, network errors: wait and retry
        _ => Failure::transient(reason::IO, message),
    }
}

/// A source error carrying the classified failure.
pub fn source_error(e: &KafkaError, doing: &str) -> SourceError {
    SourceError::Failed(FailureError(classify(e, doing)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::Class;

    #[test]
    fn broker_trouble_is_transient_and_refusals_are_fatal() {
        let c = |code| classify(&KafkaError::MessageProduction(code), "x").class;
        assert_eq!(c(Code::AllBrokersDown), Class::Transient);
        assert_eq!(c(Code::BrokerTransportFailure), Class::Transient);
        assert_eq!(c(Code::NotLeaderForPartition), Class::Transient);
        assert_eq!(c(Code::MessageTimedOut), Class::Transient);
        assert_eq!(c(Code::QueueFull), Class::Transient);
        assert_eq!(c(Code::MessageSizeTooLarge), Class::Permanent);
        assert_eq!(c(Code::TopicAuthorizationFailed), Class::Fatal);
        assert_eq!(c(Code::UnknownTopicOrPartition), Class::Fatal);
        assert_eq!(c(Code::SaslAuthenticationFailed), Class::Fatal);
        assert_eq!(c(Code::InvalidTopic), Class::Fatal);
        let f = classify(&KafkaError::MessageProduction(Code::MessageSizeTooLarge), "publishing");
        assert_eq!(f.reason, reason::OVERSIZED);
        assert!(f.message.starts_with("publishing: "), "{}", f.message);
    }
}

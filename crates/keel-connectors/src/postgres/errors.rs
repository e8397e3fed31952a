//! What a PostgreSQL error means for the policies.

use keel::Failure;
use keel::failure::reason;
use tokio_postgres::error::SqlState;

/// Classifies `e`; `doing` says what failed. Lost connections, a server shutting down or
/// starting, serialization failures and deadlocks are transient; a refused login is fatal;
/// anything else the server refuses is fatal for a decided epoch (it cannot be committed
/// as it is), with the server's message.
pub(crate) fn classify(e: &tokio_postgres::Error, doing: &str) -> Failure {
    let message = keel::util::redact_url(&format!("{doing}: {}", describe(e)));
    let Some(code) = e.code() else {
        // no SQLSTATE: the connection failed or closed
        return Failure::transient(reason::IO, message);
    };
    let class = &code.code()[..2];
    match class {
        "08" | "53" | "57" => Failure::transient(reason::IO, message),
        "28" => Failure::fatal(
            "authentication",
            format!("{message} (check the user and password of the URL)"),
        ),
        "42" if *code == SqlState::UNDEFINED_TABLE => Failure::fatal("unknown_table", message),
        _ if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED => {
            Failure::transient(reason::IO, message)
        }
        "23" => Failure::fatal(
            "constraint_violation",
            format!(
                "{message} (the epoch's rows break a constraint of the table: an upsert key, or a fix of the rows, is needed)"
            ),
        ),
        _ => Failure::fatal("postgres_error", message),
    }
}

/// The server's message with its detail, or the client's.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

//! One behaviour, two backends: every case of `suite` runs against SQLite and PostgreSQL.

mod backends;
mod fence;
mod suite;

macro_rules! suite_for {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let b = crate::backends::$backend().await;
                    crate::suite::$case(&b).await;
                    b.cleanup().await;
                }
            )*
        }
    };
}

macro_rules! cases {
    ($($backend:ident),*) => {
        $(suite_for!($backend:
            new_units_are_taken_once,
            completed_units_are_skipped_unless_changed,
            touched_units_record_their_new_mtime,
            failed_units_are_retried,
            own_units_are_resumed,
            expired_leases_are_taken_over_and_fenced,
            renewals_extend_leases,
            filters_select_units,
            retry_and_clear,
            stats_count_by_status,
            concurrent_workers_never_share_a_unit,
            a_newer_schema_is_refused,
        );)*
    };
}

cases!(sqlite, postgres);

/// The password of a PostgreSQL location never shows in `describe`, `Debug` or errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_locations_are_shown_without_their_password() {
    use keel::ledger::Ledger as _;
    use keel_connectors::ledger::PostgresLedger;
    // trust authentication: the password is sent and ignored
    let ledger = PostgresLedger::connect("postgres://postgres:s3cretpw@127.0.0.1:5432/test", "keel")
        .await
        .unwrap();
    for shown in [ledger.describe(), format!("{ledger:?}")] {
        assert!(
            !shown.contains("s3cretpw") && shown.contains("postgres:***@"),
            "{shown}"
        );
    }
    for url in [
        "postgres://postgres:s3cretpw@127.0.0.1:1/test",
        "host=127.0.0.1 port=1 user=postgres password=s3cretpw dbname=test",
    ] {
        let err = PostgresLedger::connect(url, "keel").await.unwrap_err().to_string();
        assert!(!err.contains("s3cretpw"), "{err}");
    }
}

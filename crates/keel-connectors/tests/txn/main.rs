//! Staged transactions behave the same on a local file system and on an S3-compatible server
//! (s3s-fs on 127.0.0.1:9000, started by `.ci/services`): every case of `suite` runs on both.
//!
//! Crash cases run this test binary again as a child (`child_commit`), which commits and
//! aborts at a crash point or gets killed with SIGKILL at a random instant; the parent then
//! checks that readers see the old or the new version, whole, and that recovery leaves no
//! staged data behind.

mod faulty;
mod stores;
mod suite;

macro_rules! suite_for {
    ($store:ident: $($case:ident),* $(,)?) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let s = crate::stores::$store().await;
                    crate::suite::$case(&s).await;
                }
            )*
        }
    };
}

macro_rules! cases {
    ($($store:ident),*) => {
        $(suite_for!($store:
            commit_publishes_every_file_and_replaces_the_old_version,
            committing_twice_is_a_no_op,
            a_failed_validation_leaves_no_partial_output,
            rollback_discards_and_refuses_once_committed,
            store_errors_at_any_step_leave_old_or_new,
            concurrent_commits_get_distinct_versions,
            recovery_rolls_back_abandoned_transactions,
            death_mid_commit_leaves_old_or_new,
            kill_9_at_random_instants_leaves_old_or_new,
            nested_dataset_names_never_touch_each_other,
            a_rollback_racing_a_commit_never_deletes_published_data,
        );)*
    };
}

cases!(fs, s3);

/// Not a test by itself: the child process of the crash cases (does nothing unless the
/// parent set `KEEL_TXN_CHILD`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_commit() {
    if let Ok(spec) = std::env::var("KEEL_TXN_CHILD") {
        suite::child(&spec).await;
    }
}

//! One behaviour, two backends: every case of `suite` runs against SQLite and Redis.

mod backends;
mod redis_only;
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
            higher_priority_first_then_fifo,
            delayed_jobs_never_run_early,
            idempotency_keys_return_the_first_job,
            expired_leases_put_jobs_back_and_count_the_attempt,
            extended_leases_hold_and_stale_workers_are_fenced,
            retries_follow_the_disposition_and_keep_every_error,
            the_last_attempt_and_permanent_failures_go_to_the_dead_set,
            dead_jobs_are_retried_and_purged,
            released_jobs_run_again_without_counting_the_attempt,
            lease_tokens_are_never_reused,
            stats_report_sizes_by_priority_and_the_oldest_wait,
            concurrent_workers_never_share_a_job,
            a_worker_acks_retries_and_buries_by_class,
            a_worker_shuts_down_gracefully,
            mixed_priorities_at_scale_never_start_a_lower_one_first,
            a_worker_that_cannot_extend_its_lease_cancels_the_handler_in_time,
        );)*
    };
}

cases!(sqlite, redis);

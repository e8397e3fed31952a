//! One behaviour, two backends: every case of `suite`, `lifecycle` and `races` runs against
//! SQLite and Redis, and each ends with a check that the backend's own records agree with
//! each other (`Backend::check_consistency`).

mod backends;
mod lifecycle;
mod races;
mod redis_only;
mod suite;

macro_rules! suite_for {
    ($backend:ident: $($module:ident :: $case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let b = crate::backends::$backend().await;
                    crate::$module::$case(&b).await;
                    b.check_consistency().await;
                    b.cleanup().await;
                }
            )*
        }
    };
}

macro_rules! cases {
    ($($backend:ident),*) => {
        $(suite_for!($backend:
            suite::higher_priority_first_then_fifo,
            suite::delayed_jobs_never_run_early,
            suite::idempotency_keys_return_the_first_job,
            suite::expired_leases_put_jobs_back_and_count_the_attempt,
            suite::extended_leases_hold_and_stale_workers_are_fenced,
            suite::retries_follow_the_disposition_and_keep_every_error,
            suite::the_last_attempt_and_permanent_failures_go_to_the_dead_set,
            suite::dead_jobs_are_retried_and_purged,
            suite::released_jobs_run_again_without_counting_the_attempt,
            suite::lease_tokens_are_never_reused,
            suite::stats_report_sizes_by_priority_and_the_oldest_wait,
            suite::concurrent_workers_never_share_a_job,
            suite::a_worker_acks_retries_and_buries_by_class,
            suite::a_worker_shuts_down_gracefully,
            suite::mixed_priorities_at_scale_never_start_a_lower_one_first,
            suite::a_worker_that_cannot_extend_its_lease_cancels_the_handler_in_time,
            lifecycle::a_job_is_found_by_id_in_every_state,
            lifecycle::a_retried_job_keeps_counting_attempts_with_a_fresh_budget,
            lifecycle::stats_count_leases_that_ran_out_until_a_take_puts_them_back,
            lifecycle::the_worker_extends_the_lease_while_its_handler_runs,
            races::a_lease_reclaimed_while_its_old_owner_acks_extends_or_fails_has_one_owner,
            races::concurrent_enqueues_of_one_key_make_one_job,
        );)*
    };
}

cases!(sqlite, redis);

//! The job stores, one test binary: the `JobStore` contract written once (`conformance`) and
//! run against SQLite (`sqlite_backend::*`, always) and PostgreSQL (`postgres_backend::*`), plus
//! what only one backend has (`sqlite::*`; `postgres::*`, several instances on one database).
//!
//! PostgreSQL is `VIDGATE_TEST_DATABASE_URL`, else a testcontainer; with neither the
//! PostgreSQL tests fail saying what to set, they never skip. Every test has its own storage
//! (a temporary directory, a schema of its own), so the suite runs in parallel.
//! `cargo test --test store postgres` runs the PostgreSQL half, `... sqlite` the SQLite half.

#[path = "../support/mod.rs"]
mod support;

mod conformance;
mod fixture;
mod postgres;
mod sqlite;
mod webhooks;

/// Instantiates each named test of [`conformance`] once per backend: `sqlite_backend::name`
/// and `postgres_backend::name`. Each runs on a fresh store and removes its storage afterwards,
/// also when the test fails.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        conformance!(@backend sqlite_backend, Sqlite, conformance; $($name),*);
        conformance!(@backend postgres_backend, Postgres, conformance; $($name),*);
    };
    (webhooks: $($name:ident),* $(,)?) => {
        conformance!(@backend sqlite_webhooks, Sqlite, webhooks; $($name),*);
        conformance!(@backend postgres_webhooks, Postgres, webhooks; $($name),*);
    };
    (@backend $module:ident, $backend:ident, $suite:ident; $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $name() {
                    use futures::FutureExt;
                    let mut fixture = crate::fixture::Fixture::open(
                        crate::fixture::Backend::$backend,
                        stringify!($name),
                    )
                    .await;
                    let outcome =
                        std::panic::AssertUnwindSafe(crate::$suite::$name(&mut fixture))
                            .catch_unwind()
                            .await;
                    fixture.cleanup().await;
                    if let Err(panic) = outcome {
                        std::panic::resume_unwind(panic);
                    }
                }
            )*
        }
    };
}

conformance! {
    create_then_get_round_trips_every_field,
    same_request_id_and_fingerprint_returns_the_existing_job_without_an_event,
    same_request_id_with_another_fingerprint_is_refused,
    request_ids_are_per_tenant_and_jobs_without_one_never_collide,
    concurrent_creates_share_commits_and_get_unique_increasing_sequences,
    duplicate_keys_inside_one_batch_create_exactly_one_job,
    a_refused_create_does_not_fail_the_others_of_its_batch,
    a_failed_job_round_trips_its_error_and_upstream_id,
    updates_are_refused_on_stale_versions_and_append_events_when_asked,
    concurrent_updates_of_one_version_let_exactly_one_win,
    labels_follow_updates,
    list_pages_newest_first_each_job_once_with_filters,
    claim_due_takes_only_due_live_jobs_soonest_first,
    a_lease_holds_a_job_until_it_ends_and_then_another_claim_takes_it,
    a_paused_owner_whose_lease_was_taken_over_cannot_write,
    a_cancel_of_an_unowned_job_applies_at_once_and_an_owned_one_waits_for_its_owner,
    a_cancel_racing_a_completion_ends_in_exactly_one_outcome,
    next_due_is_none_when_nothing_is_scheduled,
    events_after_filters_by_tenant_and_job_from_a_cursor,
    subscribers_receive_committed_events_in_order,
    pruning_deletes_old_events_and_records_pruned_through,
    everything_survives_closing_and_reopening,
    a_batch_of_one_is_enough_when_max_batch_is_one,
    cursors_are_saved_replaced_and_survive_reopening,
    count_by_status_counts_live_jobs_by_wire_name,
    event_rows_do_not_copy_the_request_and_labels_and_reads_put_them_back,
    event_rows_written_with_the_whole_job_still_read_back_as_they_are,
}

conformance! {
    webhooks:
    endpoints_round_trip_list_per_tenant_and_refuse_stale_versions,
    a_fan_out_moves_its_cursor_once_and_writes_each_delivery_once,
    claims_take_due_deliveries_once_bounded_per_endpoint,
    attempts_are_recorded_retried_and_listed_newest_first,
    an_endpoint_failing_too_long_or_gone_is_disabled_and_its_pending_deliveries_fail,
    a_replay_makes_a_delivery_pending_again_and_pruning_removes_finished_ones,
    callbacks_are_made_once_by_the_fan_out_and_the_tenant_secret_is_stable,
    a_fan_out_can_claim_what_it_writes_in_the_same_commit,
}

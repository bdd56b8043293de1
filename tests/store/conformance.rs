//! The `JobStore` contract, written once and run against every backend (see `main.rs` for
//! the instantiation): idempotent creates, optimistic versions, one global event sequence in
//! commit order, group commit, leases, requests recorded for owners, the event log and its
//! pruning, and durability across a reopen. Every test gets a fresh, empty store of its own
//! ([`Fixture`]).
//!
//! Tests that prove batching run on tokio's current-thread runtime (the `#[tokio::test]`
//! default): there, tasks spawned together all send their command before the writer task runs
//! again, so they deterministically share a batch without any timing assumption. Both stores'
//! writers take what is queued when they start a batch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use vidgate::job::{ContentFacts, FailureReason, Job, JobError, JobStatus, Phase, Record};
use vidgate::store::{
    CreateOutcome, EventQuery, JobStore, LeaseEnd, ListQuery, OwnerRequest, RequestOutcome,
    StoreError, StoredEvent,
};

use crate::fixture::{
    Fixture, all_events, claimed, completed, created, edit, ids, new_job, processing, wait_past,
};

pub async fn create_then_get_round_trips_every_field(f: &mut Fixture) {
    let store = f.store();
    let mut new = new_job("acme", Some("req-1"), "fp-1", 1_700_000_000_123);
    new.job = edit(&new.job, |r| {
        r.labels = BTreeMap::from([
            ("team".to_owned(), "video".to_owned()),
            ("env".to_owned(), "prod".to_owned()),
        ]);
        r.status = JobStatus::Completed;
        r.phase = Phase::Finished;
        r.upstream_status = "completed".to_owned();
        r.upstream_id = Some("task_42".to_owned());
        r.progress = Some(37);
        r.update_time_ms = 1_700_000_000_999;
        r.complete_time_ms = Some(1_700_000_001_000);
        r.content = Some(ContentFacts {
            size_bytes: 123_456,
            sha256: "ab".repeat(32),
            mime_type: "video/mp4".to_owned(),
            duration_seconds: 8.0,
            width: 1280,
            height: 720,
            has_audio: true,
            has_last_frame: true,
            matches_request: false,
            mismatch: "duration 8 != 6".to_owned(),
            blob_key: "acme/vid/video.mp4".to_owned(),
            last_frame_key: Some("acme/vid/last.png".to_owned()),
            last_frame_size: Some(999),
            last_frame_dropped: None,
        });
        r.next_action_ms = Some(1_700_000_005_000);
        r.attempts = 3;
        r.polls = 11;
        r.trace_context = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    });
    let submitted = new.clone();

    let job = created(store.create(new).await);

    assert_eq!(job.version, 1, "a new job starts at version 1");
    assert!(job.last_sequence > 0);
    let mut expected = submitted.job.clone();
    expected.version = job.version;
    expected.last_sequence = job.last_sequence;
    assert_eq!(job, expected, "create returns the job as given, versioned");
    let stored = store.get(&job.id).await.expect("get").expect("job exists");
    assert_eq!(stored, job);
    let submission = store.submission(&job.id).await.expect("submission");
    assert_eq!(submission, Some(submitted.submission));
    let events = all_events(&*store).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].sequence, job.last_sequence);
    assert_eq!(events[0].job_id, job.id);
    assert_eq!(events[0].tenant, "acme");
    assert_eq!(events[0].job, job, "the event carries the job as created");
    assert_eq!(
        store.latest_sequence().await.expect("latest"),
        job.last_sequence
    );
    assert_eq!(store.get("vid_missing").await.expect("get"), None);
    assert_eq!(
        store.submission("vid_missing").await.expect("submission"),
        None
    );
}

pub async fn same_request_id_and_fingerprint_returns_the_existing_job_without_an_event(
    f: &mut Fixture,
) {
    let store = f.store();
    let first = created(
        store
            .create(new_job("acme", Some("key"), "fp", 1_000))
            .await,
    );
    let sequence = store.latest_sequence().await.expect("latest");

    let retry = new_job("acme", Some("key"), "fp", 2_000);
    let retry_id = retry.job.id.clone();
    let outcome = store.create(retry).await.expect("idempotent retry");

    assert_eq!(outcome, CreateOutcome::Existing(first.clone()));
    assert_eq!(store.latest_sequence().await.expect("latest"), sequence);
    assert_eq!(
        all_events(&*store).await.len(),
        1,
        "a retry writes no event"
    );
    assert_eq!(store.get(&retry_id).await.expect("get"), None);
}

pub async fn same_request_id_with_another_fingerprint_is_refused(f: &mut Fixture) {
    let store = f.store();
    let first = created(
        store
            .create(new_job("acme", Some("key"), "fp-a", 1_000))
            .await,
    );

    let outcome = store
        .create(new_job("acme", Some("key"), "fp-b", 2_000))
        .await;

    match outcome {
        Err(StoreError::RequestIdReused {
            request_id,
            existing_id,
        }) => {
            assert_eq!(request_id, "key");
            assert_eq!(existing_id, first.id);
        }
        other => panic!("expected RequestIdReused, got {other:?}"),
    }
    assert_eq!(all_events(&*store).await.len(), 1);
}

pub async fn request_ids_are_per_tenant_and_jobs_without_one_never_collide(f: &mut Fixture) {
    let store = f.store();
    let a = created(
        store
            .create(new_job("acme", Some("key"), "fp", 1_000))
            .await,
    );
    let b = created(
        store
            .create(new_job("globex", Some("key"), "other", 1_000))
            .await,
    );
    let c = created(store.create(new_job("acme", None, "fp", 1_000)).await);
    let d = created(store.create(new_job("acme", None, "fp", 1_000)).await);

    let ids = BTreeSet::from([&a.id, &b.id, &c.id, &d.id]);
    assert_eq!(ids.len(), 4);
}

pub async fn concurrent_creates_share_commits_and_get_unique_increasing_sequences(f: &mut Fixture) {
    const CREATES: usize = 200;
    let store = f.store();
    let batches_before = f.batches_committed();

    let tasks: Vec<_> = (0..CREATES)
        .map(|i| {
            let store = store.clone();
            let key = format!("req-{i}");
            tokio::spawn(async move {
                store
                    .create(new_job("acme", Some(&key), "fp", 1_000 + i as i64))
                    .await
            })
        })
        .collect();
    let mut jobs = Vec::new();
    for task in tasks {
        jobs.push(created(task.await.expect("task")));
    }

    let batches = f.batches_committed() - batches_before;
    assert!(batches >= 1);
    assert!(
        batches < CREATES as u64,
        "{CREATES} creates took {batches} commits"
    );
    let mut sequences: Vec<i64> = jobs.iter().map(|j| j.last_sequence).collect();
    sequences.sort_unstable();
    assert_eq!(
        sequences,
        (1..=CREATES as i64).collect::<Vec<_>>(),
        "one sequence each, no duplicates, no gaps"
    );
    let events = all_events(&*store).await;
    assert_eq!(events.len(), CREATES);
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    for event in &events {
        assert_eq!(event.job.last_sequence, event.sequence);
        let stored = store.get(&event.job_id).await.expect("get").expect("job");
        assert_eq!(stored.last_sequence, event.sequence);
    }
}

pub async fn duplicate_keys_inside_one_batch_create_exactly_one_job(f: &mut Fixture) {
    const RETRIES: usize = 50;
    let store = f.store();
    let batches_before = f.batches_committed();

    let tasks: Vec<_> = (0..RETRIES)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create(new_job("acme", Some("same"), "fp", 1_000))
                    .await
            })
        })
        .collect();
    let mut created_jobs = Vec::new();
    let mut existing = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(CreateOutcome::Created(job)) => created_jobs.push(job),
            Ok(CreateOutcome::Existing(job)) => existing.push(job),
            Err(e) => panic!("a duplicate must not fail: {e}"),
        }
    }

    // Fewer commits than creates: some batch held at least two of these same-key creates.
    assert!(f.batches_committed() - batches_before < RETRIES as u64);
    assert_eq!(created_jobs.len(), 1, "exactly one create wins");
    assert_eq!(existing.len(), RETRIES - 1);
    assert!(existing.iter().all(|job| *job == created_jobs[0]));
    let listed = store
        .list(&ListQuery {
            tenant: "acme".into(),
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(all_events(&*store).await.len(), 1);
}

pub async fn a_refused_create_does_not_fail_the_others_of_its_batch(f: &mut Fixture) {
    let store = f.store();
    let first = created(
        store
            .create(new_job("acme", Some("taken"), "fp-a", 1_000))
            .await,
    );

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let new = if i % 2 == 0 {
                    new_job("acme", Some("taken"), "fp-b", 2_000)
                } else {
                    new_job("acme", Some(&format!("fresh-{i}")), "fp", 2_000)
                };
                (i, store.create(new).await)
            })
        })
        .collect();

    for task in tasks {
        match task.await.expect("task") {
            (i, Err(StoreError::RequestIdReused { existing_id, .. })) if i % 2 == 0 => {
                assert_eq!(existing_id, first.id)
            }
            (i, Ok(CreateOutcome::Created(_))) if i % 2 == 1 => {}
            (i, other) => panic!("create {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(all_events(&*store).await.len(), 11);
}

pub async fn a_failed_job_round_trips_its_error_and_upstream_id(f: &mut Fixture) {
    let store = f.store();
    let mut new = new_job("acme", None, "fp-failed", 1_700_000_000_123);
    new.job = edit(&new.job, |r| {
        r.status = JobStatus::Failed;
        r.phase = Phase::Finished;
        r.upstream_id = Some("task_43".to_owned());
        r.complete_time_ms = Some(1_700_000_001_000);
        r.error = Some(JobError {
            reason: FailureReason::UpstreamFailed,
            message: "upstream said failed".to_owned(),
            retryable: true,
            upstream_message: "moderation".to_owned(),
            upstream_http_status: Some(200),
        });
    });
    let job = created(store.create(new).await);
    let stored = store.get(&job.id).await.expect("get").expect("job exists");
    assert_eq!(stored, job);
    assert_eq!(
        stored.error().map(|e| e.reason),
        Some(FailureReason::UpstreamFailed)
    );
    assert_eq!(stored.upstream_id(), Some("task_43"));
}

pub async fn updates_are_refused_on_stale_versions_and_append_events_when_asked(f: &mut Fixture) {
    let store = f.store();
    let job = created(store.create(new_job("acme", None, "fp", 1_000)).await);

    let mut next = job.clone();
    next = edit(&next, |r| {
        processing(r);
        r.upstream_id = Some("task_1".into());
        r.update_time_ms = 5_000;
    });
    let updated = store
        .update(next.clone(), Record::Event)
        .await
        .expect("fresh update");
    assert_eq!(updated.version, job.version + 1);
    assert!(updated.last_sequence > job.last_sequence);
    assert_eq!(
        updated.update_time_ms(),
        5_000,
        "update_time_ms is kept as given"
    );
    assert_eq!(
        store.get(&job.id).await.expect("get"),
        Some(updated.clone())
    );
    let events = all_events(&*store).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].sequence, updated.last_sequence);
    assert_eq!(events[1].job, updated);

    // `next` still carries the version `updated` replaced.
    match store.update(next, Record::Event).await {
        Err(StoreError::VersionConflict { id, expected }) => {
            assert_eq!(id, job.id);
            assert_eq!(expected, job.version);
        }
        other => panic!("expected VersionConflict, got {other:?}"),
    }

    // Without an event: the version moves, the log does not, and the stored last_sequence
    // wins over whatever the caller's copy says.
    let mut quiet = updated.clone();
    quiet = edit(&quiet, |r| r.polls = 7);
    quiet.last_sequence = 999;
    let quiet = store
        .update(quiet, Record::Quiet)
        .await
        .expect("quiet update");
    assert_eq!(quiet.version, updated.version + 1);
    assert_eq!(quiet.last_sequence, updated.last_sequence);
    assert_eq!(quiet.polls(), 7);
    assert_eq!(store.get(&job.id).await.expect("get"), Some(quiet.clone()));
    assert_eq!(all_events(&*store).await.len(), 2);

    let mut ghost = quiet.clone();
    ghost.id = "vid_ghost".into();
    assert!(matches!(
        store.update(ghost, Record::Event).await,
        Err(StoreError::NotFound(id)) if id == "vid_ghost"
    ));
}

pub async fn concurrent_updates_of_one_version_let_exactly_one_win(f: &mut Fixture) {
    let store = f.store();
    let job = created(store.create(new_job("acme", None, "fp", 1_000)).await);

    let tasks: Vec<_> = (0..10u32)
        .map(|i| {
            let store = store.clone();
            let mut job = job.clone();
            job = edit(&job, |r| r.polls = i);
            tokio::spawn(async move { store.update(job, Record::Event).await })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => wins += 1,
            Err(StoreError::VersionConflict { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }

    assert_eq!(wins, 1);
    assert_eq!(all_events(&*store).await.len(), 2);
    assert_eq!(
        store.get(&job.id).await.expect("get").map(|j| j.version),
        Some(2)
    );
}

pub async fn labels_follow_updates(f: &mut Fixture) {
    let store = f.store();
    let mut new = new_job("acme", None, "fp", 1_000);
    new.job.labels.insert("team".into(), "a".into());
    let job = created(store.create(new).await);
    let by_label = |key: &str, value: &str| ListQuery {
        tenant: "acme".into(),
        labels: BTreeMap::from([(key.to_owned(), value.to_owned())]),
        limit: 10,
        ..ListQuery::default()
    };

    let mut relabelled = job.clone();
    relabelled.labels = BTreeMap::from([("team".to_owned(), "b".to_owned())]);
    store
        .update(relabelled, Record::Quiet)
        .await
        .expect("update");

    assert!(
        store
            .list(&by_label("team", "a"))
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store
            .list(&by_label("team", "b"))
            .await
            .expect("list")
            .len(),
        1
    );
}

pub async fn list_pages_newest_first_each_job_once_with_filters(f: &mut Fixture) {
    const JOBS: i64 = 120;
    let store = f.store();
    let mut all = Vec::new();
    for i in 0..JOBS {
        // Three jobs per millisecond: ties on create_time_ms are broken by id.
        let mut new = new_job("acme", None, "fp", 10_000 + i / 3);
        if i % 4 == 0 {
            new.job.model = "doubao-seedance-2-0-260128".into();
        }
        if i % 5 == 0 {
            new.job.labels.insert("team".into(), "red".into());
        }
        if i % 10 == 0 {
            new.job.labels.insert("env".into(), "prod".into());
        }
        let mut job = created(store.create(new).await);
        if i % 3 == 0 {
            job = edit(&job, processing);
            job = store.update(job, Record::Event).await.expect("update");
        }
        all.push(job);
    }
    // Noise that no listing below may return: another tenant, and a deleted job.
    created(store.create(new_job("globex", None, "fp", 20_000)).await);
    let mut gone = created(store.create(new_job("acme", None, "fp", 20_000)).await);
    gone = edit(&gone, |r| r.deleted = true);
    store.update(gone, Record::Event).await.expect("delete");

    let pages = |query: ListQuery| {
        let store = &store;
        async move {
            let mut query = query;
            let mut pages = Vec::new();
            loop {
                let page = store.list(&query).await.expect("list");
                if page.is_empty() {
                    return pages;
                }
                let last = page.last().map(|j| (j.create_time_ms, j.id.clone()));
                pages.push(page);
                query.after = last;
            }
        }
    };
    let newest_first = |jobs: &mut Vec<Job>| {
        jobs.sort_by(|a, b| (b.create_time_ms, &b.id).cmp(&(a.create_time_ms, &a.id)));
    };

    let everything = pages(ListQuery {
        tenant: "acme".into(),
        limit: 50,
        ..ListQuery::default()
    })
    .await;
    assert_eq!(
        everything.iter().map(Vec::len).collect::<Vec<_>>(),
        [50, 50, 20]
    );
    let listed: Vec<Job> = everything.into_iter().flatten().collect();
    let mut expected = all.clone();
    newest_first(&mut expected);
    assert_eq!(listed, expected, "each job exactly once, newest first");

    let filtered = |keep: &dyn Fn(&Job) -> bool| {
        let mut jobs: Vec<Job> = all.iter().filter(|j| keep(j)).cloned().collect();
        newest_first(&mut jobs);
        jobs
    };
    let processing = pages(ListQuery {
        tenant: "acme".into(),
        statuses: vec![JobStatus::Processing, JobStatus::Completed],
        limit: 7,
        ..ListQuery::default()
    })
    .await;
    assert_eq!(
        processing.concat(),
        filtered(&|j| j.status() == JobStatus::Processing)
    );
    let seedance = pages(ListQuery {
        tenant: "acme".into(),
        model: Some("doubao-seedance-2-0-260128".into()),
        limit: 50,
        ..ListQuery::default()
    })
    .await;
    assert_eq!(
        seedance.concat(),
        filtered(&|j| j.model.starts_with("doubao"))
    );
    let red_prod_processing = pages(ListQuery {
        tenant: "acme".into(),
        statuses: vec![JobStatus::Processing],
        labels: BTreeMap::from([
            ("team".to_owned(), "red".to_owned()),
            ("env".to_owned(), "prod".to_owned()),
        ]),
        limit: 2,
        ..ListQuery::default()
    })
    .await;
    let expected = filtered(&|j| {
        j.status() == JobStatus::Processing
            && j.labels.get("team").map(String::as_str) == Some("red")
            && j.labels.get("env").map(String::as_str) == Some("prod")
    });
    assert_eq!(expected.len(), 4, "i in {{0, 30, 60, 90}}");
    assert_eq!(red_prod_processing.concat(), expected);
    let other_tenant = store
        .list(&ListQuery {
            tenant: "initech".into(),
            limit: 50,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert!(other_tenant.is_empty());
}

pub async fn claim_due_takes_only_due_live_jobs_soonest_first(f: &mut Fixture) {
    let store = f.store();
    let schedule = [Some(300), Some(100), None, Some(5_000), Some(200)];
    let mut jobs = Vec::new();
    for next_action_ms in schedule {
        let mut new = new_job("acme", None, "fp", 1_000);
        new.job = edit(&new.job, |r| r.next_action_ms = next_action_ms);
        jobs.push(created(store.create(new).await));
    }
    let mut deleted = jobs[1].clone();
    deleted = edit(&deleted, |r| r.deleted = true);
    store.update(deleted, Record::Event).await.expect("delete");
    let mut earliest_deleted = new_job("acme", None, "fp", 1_000);
    earliest_deleted.job = edit(&earliest_deleted.job, |r| r.next_action_ms = Some(1));
    earliest_deleted.job = edit(&earliest_deleted.job, |r| r.deleted = true);
    created(store.create(earliest_deleted).await);

    assert!(
        store
            .claim_due(150, 10_000, 10)
            .await
            .expect("claim")
            .1
            .is_empty()
    );
    assert_eq!(store.next_due_ms().await.expect("next"), Some(200));
    let (_, first) = store.claim_due(1_000, 10_000, 1).await.expect("claim");
    assert_eq!(ids(&first), [jobs[4].id.clone()]);
    let (_, rest) = store.claim_due(1_000, 10_000, 10).await.expect("claim");
    assert_eq!(
        ids(&rest),
        [jobs[0].id.clone()],
        "a claimed job is not claimed again"
    );
}

pub async fn a_lease_holds_a_job_until_it_ends_and_then_another_claim_takes_it(f: &mut Fixture) {
    let store = f.store();
    // next_due_ms reads the clock: this test's times are around now.
    let now = vidgate::job::now_ms();
    let (first, job) = claimed(&*store, now - 1_000, now + 60_000).await;
    let (_, none) = store
        .claim_due(now + 59_999, now + 90_000, 10)
        .await
        .expect("claim");
    assert!(none.is_empty());
    assert_eq!(
        store.next_due_ms().await.expect("next"),
        Some(now + 60_000),
        "the lease's end"
    );
    let (second, again) = store
        .claim_due(now + 60_001, now + 90_000, 10)
        .await
        .expect("claim");
    assert_eq!(ids(&again), vec![job.id.clone()]);
    assert_ne!(first.token, second.token, "every claim is a new owner");
}

pub async fn a_paused_owner_whose_lease_was_taken_over_cannot_write(f: &mut Fixture) {
    let store = f.store();
    let (paused, job) = claimed(&*store, 100, 1_000).await;
    let (owner, _) = store.claim_due(2_000, 9_000, 1).await.expect("takeover");

    let mut stale = job.clone();
    let _ = stale.retry_later(2_100, 3_000).expect("a retry");
    assert!(matches!(
        store.save(&paused, stale.clone(), Record::Quiet, LeaseEnd::Release).await,
        Err(StoreError::LeaseLost(id)) if id == job.id
    ));
    assert!(matches!(
        store.renew(&job.id, &paused, 5_000).await,
        Err(StoreError::LeaseLost(_))
    ));
    let saved = store
        .save(&owner, stale, Record::Quiet, LeaseEnd::Release)
        .await
        .expect("the new owner writes");
    assert_eq!(saved.job.attempts(), 1);
    assert_eq!(saved.applied, None);
    // Released: due again at its own time, claimable by anyone.
    let (_, again) = store.claim_due(3_000, 9_000, 1).await.expect("claim");
    assert_eq!(ids(&again), vec![job.id.clone()]);
}

pub async fn a_cancel_of_an_unowned_job_applies_at_once_and_an_owned_one_waits_for_its_owner(
    f: &mut Fixture,
) {
    let store = f.store();
    let free = created(store.create(new_job("acme", None, "fp", 1_000)).await);
    match store
        .request(&free.id, "acme", OwnerRequest::Cancel, 1_500)
        .await
        .expect("request")
    {
        RequestOutcome::Applied(job) => {
            assert_eq!(job.status(), JobStatus::Cancelled);
            assert_eq!(job.version, free.version + 1);
        }
        other => panic!("expected Applied, got {other:?}"),
    }
    assert!(matches!(
        store.request(&free.id, "acme", OwnerRequest::Cancel, 1_600).await,
        Ok(RequestOutcome::Refused(job)) if job.status() == JobStatus::Cancelled
    ));
    assert!(
        matches!(
            store
                .request(&free.id, "globex", OwnerRequest::Cancel, 1_600)
                .await,
            Err(StoreError::NotFound(_))
        ),
        "another tenant's job does not exist for this caller"
    );

    let (lease, owned) = claimed(&*store, 100, 10_000).await;
    match store
        .request(&owned.id, "acme", OwnerRequest::Cancel, 2_000)
        .await
        .expect("request")
    {
        RequestOutcome::Recorded {
            job,
            lease_until_ms,
        } => {
            assert_eq!(lease_until_ms, 10_000);
            assert_eq!(
                job.status(),
                JobStatus::Queued,
                "not applied behind the owner"
            );
        }
        other => panic!("expected Recorded, got {other:?}"),
    }
    assert_eq!(
        store.renew(&owned.id, &lease, 12_000).await.expect("renew"),
        Some(OwnerRequest::Cancel),
        "the owner learns of it while it works"
    );
    let before = store.latest_sequence().await.expect("latest");
    let mut step = owned.clone();
    let _ = step.retry_later(2_100, 3_000).expect("a retry");
    let saved = store
        .save(&lease, step, Record::Quiet, LeaseEnd::Keep)
        .await
        .expect("owner's save");
    assert_eq!(saved.applied, Some(OwnerRequest::Cancel));
    assert_eq!(saved.job.status(), JobStatus::Cancelled);
    assert_eq!(
        saved.job.attempts(),
        0,
        "the owner's change is in, then the cancel"
    );
    let events = all_events(&*store).await;
    assert_eq!(events.last().map(|e| e.sequence), Some(before + 1));
    assert_eq!(store.get(&owned.id).await.expect("get"), Some(saved.job));
    // A finished job has no owner any more: the lease ended with it.
    assert!(
        store
            .claim_due(20_000, 30_000, 10)
            .await
            .expect("claim")
            .1
            .is_empty()
    );
}

pub async fn a_cancel_racing_a_completion_ends_in_exactly_one_outcome(f: &mut Fixture) {
    let store = f.store();
    let mut new = new_job("acme", None, "fp", 1_000);
    new.job = edit(&new.job, |r| {
        r.status = JobStatus::Processing;
        r.phase = Phase::Downloading;
        r.upstream_id = Some("task_9".into());
        r.next_action_ms = Some(100);
    });
    created(store.create(new).await);
    let (lease, jobs) = store.claim_due(100, 10_000, 1).await.expect("claim");
    let downloading = jobs.into_iter().next().expect("claimed");
    assert!(matches!(
        store
            .request(&downloading.id, "acme", OwnerRequest::Cancel, 200)
            .await,
        Ok(RequestOutcome::Recorded { .. })
    ));
    let mut done = downloading.clone();
    let _ = done
        .complete(
            300,
            edit(&downloading, completed)
                .content()
                .cloned()
                .expect("facts"),
        )
        .expect("complete");
    let saved = store
        .save(&lease, done, Record::Event, LeaseEnd::Release)
        .await
        .expect("completion");
    assert_eq!(
        saved.job.status(),
        JobStatus::Completed,
        "the completion won"
    );
    assert_eq!(saved.applied, None, "the cancel did not take");
    assert!(matches!(
        store.request(&downloading.id, "acme", OwnerRequest::Cancel, 400).await,
        Ok(RequestOutcome::Refused(job)) if job.status() == JobStatus::Completed
    ));
    match store
        .request(&downloading.id, "acme", OwnerRequest::Delete, 500)
        .await
        .expect("delete")
    {
        RequestOutcome::Applied(job) => assert!(job.is_deleted()),
        other => panic!("expected Applied, got {other:?}"),
    }
}

pub async fn next_due_is_none_when_nothing_is_scheduled(f: &mut Fixture) {
    let store = f.store();
    created(store.create(new_job("acme", None, "fp", 1_000)).await);
    assert_eq!(store.next_due_ms().await.expect("next"), None);
}

pub async fn events_after_filters_by_tenant_and_job_from_a_cursor(f: &mut Fixture) {
    let store = f.store();
    let a1 = created(store.create(new_job("acme", None, "fp", 1_000)).await);
    let b1 = created(store.create(new_job("globex", None, "fp", 1_000)).await);
    let a2 = created(store.create(new_job("acme", None, "fp", 1_000)).await);
    let mut a1_next = a1.clone();
    a1_next = edit(&a1_next, processing);
    let a1_next = store.update(a1_next, Record::Event).await.expect("update");
    let mut b1_next = b1.clone();
    b1_next = edit(&b1_next, completed);
    store.update(b1_next, Record::Event).await.expect("update");

    let query = |after_sequence, tenant: Option<&str>, job_id: Option<&str>, limit| EventQuery {
        after_sequence,
        tenant: tenant.map(str::to_owned),
        job_id: job_id.map(str::to_owned),
        limit,
    };
    let sequences =
        |events: Vec<StoredEvent>| events.iter().map(|e| e.sequence).collect::<Vec<_>>();

    let acme = store
        .events_after(&query(0, Some("acme"), None, 10))
        .await
        .expect("events");
    assert!(
        acme.iter()
            .all(|e| e.tenant == "acme" && e.job.tenant == "acme")
    );
    assert_eq!(
        sequences(acme),
        [a1.last_sequence, a2.last_sequence, a1_next.last_sequence]
    );
    let one_job = store
        .events_after(&query(0, None, Some(&a1.id), 10))
        .await
        .expect("events");
    assert_eq!(one_job.len(), 2);
    assert_eq!(one_job[0].job, a1);
    assert_eq!(one_job[1].job, a1_next);
    let resumed = store
        .events_after(&query(a1.last_sequence, Some("acme"), Some(&a1.id), 10))
        .await
        .expect("events");
    assert_eq!(sequences(resumed), [a1_next.last_sequence]);
    let limited = store
        .events_after(&query(0, None, None, 2))
        .await
        .expect("events");
    assert_eq!(sequences(limited), [1, 2]);
    let crossed = store
        .events_after(&query(0, Some("globex"), Some(&a1.id), 10))
        .await
        .expect("events");
    assert!(crossed.is_empty(), "filters combine");
}

pub async fn subscribers_receive_committed_events_in_order(f: &mut Fixture) {
    let store = f.store();
    let mut live = store.subscribe();

    let a = created(store.create(new_job("acme", Some("a"), "fp", 1_000)).await);
    let b = created(store.create(new_job("globex", None, "fp", 1_000)).await);
    let mut a_next = a.clone();
    a_next = edit(&a_next, processing);
    let a_next = store.update(a_next, Record::Event).await.expect("update");
    // Writes that commit nothing publish nothing.
    store
        .create(new_job("acme", Some("a"), "fp", 1_000))
        .await
        .expect("retry");
    assert!(store.update(a.clone(), Record::Event).await.is_err());
    store
        .update(a_next.clone(), Record::Quiet)
        .await
        .expect("quiet update");

    // How live events are awaited is backend-specific (see `Fixture::live_events`).
    let received = f.live_events(&mut live, 3).await;
    let sequences: Vec<i64> = received.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        [a.last_sequence, b.last_sequence, a_next.last_sequence]
    );
    let logged = all_events(&*store).await;
    let received: Vec<StoredEvent> = received.iter().map(|e| (**e).clone()).collect();
    assert_eq!(received, logged, "live events are exactly the logged ones");
}

pub async fn pruning_deletes_old_events_and_records_pruned_through(f: &mut Fixture) {
    let store = f.store();
    for _ in 0..3 {
        created(store.create(new_job("acme", None, "fp", 1_000)).await);
    }
    let old = all_events(&*store).await;
    let old_newest_time = old.iter().map(|e| e.time_ms).max().expect("events");
    wait_past(old_newest_time).await;
    let recent = created(store.create(new_job("acme", None, "fp", 1_000)).await);
    let recent_time = all_events(&*store).await[3].time_ms;
    assert!(recent_time > old_newest_time);

    assert_eq!(store.pruned_through().await.expect("pruned"), 0);
    assert_eq!(store.prune_events(0).await.expect("prune nothing"), 0);
    let deleted = store.prune_events(recent_time).await.expect("prune");

    assert_eq!(deleted, 3);
    assert_eq!(store.pruned_through().await.expect("pruned"), 3);
    let left = all_events(&*store).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].sequence, recent.last_sequence);

    // Pruning everything never lets a sequence be handed out twice.
    assert_eq!(store.prune_events(i64::MAX).await.expect("prune all"), 1);
    assert_eq!(store.pruned_through().await.expect("pruned"), 4);
    assert_eq!(store.latest_sequence().await.expect("latest"), 4);
    let next = created(store.create(new_job("acme", None, "fp", 1_000)).await);
    assert_eq!(next.last_sequence, 5);
    assert_eq!(store.pruned_through().await.expect("pruned"), 4);
}

pub async fn everything_survives_closing_and_reopening(f: &mut Fixture) {
    let (jobs, events, latest) = {
        let store = f.store();
        let mut jobs = Vec::new();
        for i in 0..5 {
            let mut new = new_job("acme", Some(&format!("k{i}")), "fp", 1_000 + i);
            new.job.labels.insert("n".into(), i.to_string());
            jobs.push(created(store.create(new).await));
        }
        let mut first = jobs[0].clone();
        first = edit(&first, completed);
        jobs[0] = store.update(first, Record::Event).await.expect("update");
        let events = all_events(&*store).await;
        let latest = store.latest_sequence().await.expect("latest");
        f.close().await;
        assert!(matches!(
            store.create(new_job("acme", None, "fp", 1)).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(store.health().await.is_err());
        (jobs, events, latest)
    };

    let check = |store: Arc<dyn JobStore>| {
        let jobs = jobs.clone();
        let events = events.clone();
        async move {
            for job in &jobs {
                assert_eq!(store.get(&job.id).await.expect("get").as_ref(), Some(job));
            }
            assert_eq!(all_events(&*store).await[..events.len()], events[..]);
            store.health().await.expect("healthy");
        }
    };
    f.reopen().await;
    check(f.store()).await;
    let store = f.store();
    assert_eq!(store.latest_sequence().await.expect("latest"), latest);
    // The idempotency keys survive too.
    let retry = store
        .create(new_job("acme", Some("k1"), "fp", 1))
        .await
        .expect("retry");
    assert_eq!(retry, CreateOutcome::Existing(jobs[1].clone()));
    let later = created(store.create(new_job("acme", None, "fp", 1)).await);
    assert_eq!(later.last_sequence, latest + 1);
    // Dropped without close: still nothing lost.
    drop(store);
    f.drop_and_reopen().await;
    check(f.store()).await;
    let store = f.store();
    assert_eq!(store.get(&later.id).await.expect("get"), Some(later));
    f.close().await;
}

pub async fn a_batch_of_one_is_enough_when_max_batch_is_one(f: &mut Fixture) {
    f.reopen_with_max_batch(1).await;
    let store = f.store();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.create(new_job("acme", None, "fp", 1)).await })
        })
        .collect();
    for task in tasks {
        created(task.await.expect("task"));
    }
    assert_eq!(f.batches_committed(), 10, "max_batch bounds every batch");
}

pub async fn cursors_are_saved_replaced_and_survive_reopening(f: &mut Fixture) {
    let store = f.store();
    assert_eq!(store.load_cursor("relay").await.expect("load"), None);
    store.save_cursor("relay", 7).await.expect("save");
    store.save_cursor("other", 3).await.expect("save");
    store.save_cursor("relay", 42).await.expect("save again");
    assert!(store.save_cursor("relay", -1).await.is_err());
    assert_eq!(store.load_cursor("relay").await.expect("load"), Some(42));
    drop(store);
    f.reopen().await;
    let store = f.store();
    assert_eq!(store.load_cursor("relay").await.expect("load"), Some(42));
    assert_eq!(store.load_cursor("other").await.expect("load"), Some(3));
    assert_eq!(store.load_cursor("never").await.expect("load"), None);
}

pub async fn count_by_status_counts_live_jobs_by_wire_name(f: &mut Fixture) {
    let store = f.store();
    assert!(store.count_by_status().await.expect("count").is_empty());
    for _ in 0..3 {
        created(store.create(new_job("acme", None, "fp", 1_000)).await);
    }
    for _ in 0..2 {
        let job = created(store.create(new_job("globex", None, "fp", 1_000)).await);
        store
            .update(edit(&job, processing), Record::Event)
            .await
            .expect("update");
    }
    let done = created(store.create(new_job("acme", None, "fp", 1_000)).await);
    store
        .update(edit(&done, completed), Record::Quiet)
        .await
        .expect("update");
    let gone = created(store.create(new_job("acme", None, "fp", 1_000)).await);
    store
        .update(edit(&gone, |r| r.deleted = true), Record::Event)
        .await
        .expect("delete");

    let mut expected = vec![
        (JobStatus::Queued.as_str().to_owned(), 3),
        (JobStatus::Processing.as_str().to_owned(), 2),
        (JobStatus::Completed.as_str().to_owned(), 1),
    ];
    expected.sort();
    let mut counted = store.count_by_status().await.expect("count");
    counted.sort();
    assert_eq!(counted, expected, "deleted jobs are not counted");
}

/// A job as large as the API accepts in its immutable parts: a 1 MiB request (a stand-in for
/// a long prompt and inline input) and 64 labels of 256 characters.
fn fat_new_job() -> vidgate::job::NewJob {
    let mut new = new_job("acme", None, "fp", 1_000);
    new.job = edit(&new.job, |r| {
        r.request = bytes::Bytes::from(vec![0x5a; 1024 * 1024]);
        r.labels = (0..64)
            .map(|i| (format!("label-{i:02}"), "v".repeat(256)))
            .collect();
    });
    new
}

pub async fn event_rows_do_not_copy_the_request_and_labels_and_reads_put_them_back(
    f: &mut Fixture,
) {
    const UPDATES: usize = 10;
    let store = f.store();
    let mut live = store.subscribe();
    let mut job = created(store.create(fat_new_job()).await);
    for i in 0..UPDATES {
        let next = edit(&job, |r| r.upstream_status = format!("step {i}"));
        job = store.update(next, Record::Event).await.expect("update");
    }

    // Stored: the request once (in the job's row), a few hundred bytes per event.
    let rows = f.event_rows().await;
    assert_eq!(rows.len(), UPDATES + 1);
    let logged: usize = rows.iter().map(|(_, json)| json.len()).sum();
    assert!(
        rows.iter().all(|(_, json)| json.len() < 4 * 1024),
        "an event row holds no request: {:?}",
        rows.iter().map(|(_, json)| json.len()).collect::<Vec<_>>()
    );
    assert!(logged < 64 * 1024, "{UPDATES} events take {logged} bytes");

    // Read back: every event shows the job's request and labels, from the log by every filter
    // and live.
    let by_job = EventQuery {
        job_id: Some(job.id.clone()),
        limit: 100,
        ..EventQuery::default()
    };
    let by_tenant = EventQuery {
        tenant: Some("acme".into()),
        limit: 100,
        ..EventQuery::default()
    };
    for events in [
        all_events(store.as_ref()).await,
        store
            .events_after(&by_job)
            .await
            .expect("events of the job"),
        store
            .events_after(&by_tenant)
            .await
            .expect("events of the tenant"),
    ] {
        assert_eq!(events.len(), UPDATES + 1);
        for event in &events {
            assert_eq!(event.job.request, job.request, "event {}", event.sequence);
            assert_eq!(event.job.labels, job.labels, "event {}", event.sequence);
        }
        assert_eq!(events.last().map(|e| &e.job), Some(&job));
    }
    let received = f.live_events(&mut live, UPDATES + 1).await;
    assert_eq!(received.len(), UPDATES + 1);
    assert!(
        received
            .iter()
            .all(|e| e.job.request == job.request && e.job.labels == job.labels)
    );
}

pub async fn event_rows_written_with_the_whole_job_still_read_back_as_they_are(f: &mut Fixture) {
    let store = f.store();
    let current = created(store.create(new_job("acme", None, "fp", 1_000)).await);
    // An earlier version's row: the whole job, request and labels included, of a job whose
    // own row is not there (so nothing can have been put back from it).
    let mut old = fat_new_job().job;
    old = edit(&old, |r| r.last_sequence = current.last_sequence + 1);
    let json = serde_json::to_string(&old).expect("job JSON");
    f.insert_event_row(old.last_sequence, &old, 2_000, &json)
        .await;

    let events = all_events(store.as_ref()).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].job, current);
    assert_eq!(events[1].job, old, "the old row reads back whole");
}

//! The `WebhookStore` contract, run against both backends like `conformance`: endpoints with
//! optimistic versions, a fan-out that writes deliveries and moves its cursor in one commit
//! (and only from where it was), claims bounded per endpoint, attempts fenced by their lease,
//! disabling, replays, listings, pruning.

use std::collections::BTreeMap;

use vidgate::store::StoreError;
use vidgate::store::webhooks::{
    DeliveryState, Disabled, Endpoint, EndpointFilter, EndpointHealth, EndpointKind, Finish,
    Finished, NewDelivery, Next, WebhookStore,
};
use vidgate::webhooks::signing::SigningSecret;

use crate::fixture::Fixture;

const T0: i64 = 1_800_000_000_000;

fn endpoint(id: &str, tenant: &str) -> Endpoint {
    Endpoint {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        kind: EndpointKind::Endpoint,
        url: format!("https://hooks.example.com/{id}"),
        description: "a receiver".to_owned(),
        filter: EndpointFilter {
            event_types: vec!["video.completed".to_owned(), "video.failed".to_owned()],
            model: Some("veo-3.1".to_owned()),
            labels: BTreeMap::from([("team".to_owned(), "ads".to_owned())]),
            job_id: None,
        },
        secret: SigningSecret::generate(),
        previous_secret: None,
        disabled: None,
        failing_since_ms: None,
        create_time_ms: T0,
        update_time_ms: T0,
        version: 1,
    }
}

fn delivery(endpoint_id: &str, sequence: i64, due_ms: i64) -> NewDelivery {
    NewDelivery {
        id: vidgate::webhooks::webhook_id(endpoint_id, sequence),
        endpoint_id: endpoint_id.to_owned(),
        sequence,
        event_type: "video.completed".to_owned(),
        job_id: format!("vid_{sequence}"),
        event_time_ms: due_ms,
        body: format!("{{\"sequence\":{sequence}}}"),
        due_ms,
    }
}

fn failure(id: &str, token: &str, at: i64, next: Next, health: EndpointHealth) -> Finish {
    Finish {
        delivery_id: id.to_owned(),
        lease_token: token.to_owned(),
        attempt: vidgate::store::webhooks::Attempt {
            number: 0,
            time_ms: at,
            status: Some(503),
            error: Some("503 Service Unavailable".to_owned()),
            duration_ms: 12,
        },
        next,
        health,
    }
}

fn success(id: &str, token: &str, at: i64) -> Finish {
    Finish {
        delivery_id: id.to_owned(),
        lease_token: token.to_owned(),
        attempt: vidgate::store::webhooks::Attempt {
            number: 0,
            time_ms: at,
            status: Some(204),
            error: None,
            duration_ms: 3,
        },
        next: Next::Delivered,
        health: EndpointHealth::Healthy,
    }
}

async fn fanned(store: &dyn WebhookStore, cursor: &str, from: i64, to: i64, d: &[NewDelivery]) {
    assert!(store.fan_out(cursor, from, to, &[], d).await.unwrap());
}

pub async fn endpoints_round_trip_list_per_tenant_and_refuse_stale_versions(f: &mut Fixture) {
    let store = f.webhooks();
    let mut a = endpoint("whe_a", "acme");
    a.previous_secret = Some((SigningSecret::generate(), T0 + 60_000));
    store.create_endpoint(&a).await.unwrap();
    store
        .create_endpoint(&endpoint("whe_b", "acme"))
        .await
        .unwrap();
    store
        .create_endpoint(&endpoint("whe_c", "other"))
        .await
        .unwrap();
    assert_eq!(store.endpoint("whe_a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.endpoint("whe_missing").await.unwrap(), None);

    let page = store.list_endpoints("acme", None, 1).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["whe_a"]
    );
    let next = store
        .list_endpoints("acme", Some("whe_a"), 10)
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["whe_b"]
    );

    let mut changed = a.clone();
    changed.url = "https://hooks.example.com/moved".to_owned();
    changed.update_time_ms = T0 + 5;
    let stored = store.update_endpoint(&changed).await.unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(stored.url, "https://hooks.example.com/moved");
    // The same base version again: someone else changed it first.
    assert!(matches!(
        store.update_endpoint(&changed).await,
        Err(StoreError::VersionConflict { .. })
    ));
    assert!(store.delete_endpoint("whe_a").await.unwrap());
    assert!(!store.delete_endpoint("whe_a").await.unwrap());
    assert!(matches!(
        store.update_endpoint(&stored).await,
        Err(StoreError::NotFound(_))
    ));
    let active = store.active_endpoints(10).await.unwrap();
    assert_eq!(active.len(), 2);
}

pub async fn a_fan_out_moves_its_cursor_once_and_writes_each_delivery_once(f: &mut Fixture) {
    let store = f.webhooks();
    store
        .create_endpoint(&endpoint("whe_a", "acme"))
        .await
        .unwrap();
    let first = [delivery("whe_a", 1, T0), delivery("whe_a", 2, T0)];
    fanned(store.as_ref(), "webhooks", 0, 2, &first).await;
    // A second fan-out from the same position (another instance) writes nothing.
    let again = [delivery("whe_a", 1, T0), delivery("whe_a", 3, T0)];
    assert!(!store.fan_out("webhooks", 0, 3, &[], &again).await.unwrap());
    assert_eq!(f.store().load_cursor("webhooks").await.unwrap(), Some(2));
    // An event fanned out twice (a replay racing) stays one delivery; a delivery for an
    // endpoint deleted meanwhile is dropped without failing the others.
    let next = [
        delivery("whe_a", 2, T0),
        delivery("whe_a", 3, T0),
        delivery("whe_gone", 3, T0),
    ];
    fanned(store.as_ref(), "webhooks", 2, 3, &next).await;
    let listed = store.list_deliveries("whe_a", None, 10).await.unwrap();
    let mut ids: Vec<i64> = listed.iter().map(|r| r.delivery.sequence).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(
        store.list_deliveries("whe_gone", None, 10).await.unwrap(),
        []
    );
}

pub async fn claims_take_due_deliveries_once_bounded_per_endpoint(f: &mut Fixture) {
    let store = f.webhooks();
    store
        .create_endpoint(&endpoint("whe_a", "acme"))
        .await
        .unwrap();
    store
        .create_endpoint(&endpoint("whe_b", "acme"))
        .await
        .unwrap();
    let mut all: Vec<NewDelivery> = (1..=5).map(|s| delivery("whe_a", s, T0)).collect();
    all.push(delivery("whe_b", 6, T0));
    all.push(delivery("whe_b", 7, T0 + 60_000)); // not due yet
    fanned(store.as_ref(), "webhooks", 0, 7, &all).await;

    let now = T0 + 1_000;
    let first = store
        .claim_deliveries(now, now + 30_000, "one", 100, 2)
        .await
        .unwrap();
    let taken: Vec<(&str, i64)> = first
        .iter()
        .map(|d| (d.endpoint_id.as_str(), d.sequence))
        .collect();
    // Two of whe_a (its bound), the due one of whe_b; soonest first, then by id.
    assert_eq!(taken.len(), 3, "{taken:?}");
    assert_eq!(taken.iter().filter(|(e, _)| *e == "whe_a").count(), 2);
    assert!(taken.contains(&("whe_b", 6)));
    // Another claimer meanwhile: whe_a is at its bound, whe_b has nothing else due.
    let second = store
        .claim_deliveries(now, now + 30_000, "two", 100, 2)
        .await
        .unwrap();
    assert_eq!(second, []);
    // One of whe_a finishes: exactly one more of whe_a can go.
    let done = first.iter().find(|d| d.endpoint_id == "whe_a").unwrap();
    assert_eq!(
        store
            .finish_delivery(&success(&done.id, "one", now), now)
            .await
            .unwrap(),
        Finished::Recorded { disabled: None }
    );
    let third = store
        .claim_deliveries(now, now + 30_000, "three", 100, 2)
        .await
        .unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].endpoint_id, "whe_a");
    // A lease that ended can be claimed again; its first holder's write is then refused.
    let late = now + 60_000;
    let retaken = store
        .claim_deliveries(late, late + 30_000, "four", 100, 10)
        .await
        .unwrap();
    assert!(retaken.iter().any(|d| d.sequence == 7), "now due");
    let stale = first.iter().find(|d| d.endpoint_id == "whe_b").unwrap();
    assert!(retaken.iter().any(|d| d.id == stale.id));
    assert_eq!(
        store
            .finish_delivery(&success(&stale.id, "one", late), late)
            .await
            .unwrap(),
        Finished::LeaseLost
    );
}

pub async fn attempts_are_recorded_retried_and_listed_newest_first(f: &mut Fixture) {
    let store = f.webhooks();
    store
        .create_endpoint(&endpoint("whe_a", "acme"))
        .await
        .unwrap();
    fanned(
        store.as_ref(),
        "webhooks",
        0,
        1,
        &[delivery("whe_a", 1, T0)],
    )
    .await;
    let id = vidgate::webhooks::webhook_id("whe_a", 1);
    let keep_going = EndpointHealth::Failing {
        disable_if_failing_since: T0 - 1,
    };
    let claimed = store
        .claim_deliveries(T0, T0 + 30_000, "t1", 10, 4)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let retry_at = T0 + 5_000;
    store
        .finish_delivery(
            &failure(&id, "t1", T0, Next::Retry(retry_at), keep_going.clone()),
            T0,
        )
        .await
        .unwrap();
    // Not due before its retry time.
    assert_eq!(
        store
            .claim_deliveries(T0 + 10, T0 + 30_000, "t2", 10, 4)
            .await
            .unwrap(),
        []
    );
    assert_eq!(store.next_delivery_due_ms().await.unwrap(), Some(retry_at));
    let backlog = store.backlog(retry_at + 1_000).await.unwrap();
    assert_eq!(
        (backlog.pending, backlog.oldest_due_ms),
        (1, Some(retry_at))
    );
    store
        .claim_deliveries(retry_at, retry_at + 30_000, "t3", 10, 4)
        .await
        .unwrap();
    store
        .finish_delivery(&success(&id, "t3", retry_at), retry_at)
        .await
        .unwrap();
    let record = store.delivery(&id).await.unwrap().unwrap();
    assert_eq!(record.delivery.state, DeliveryState::Delivered);
    assert_eq!(record.delivery.attempts, 2);
    assert_eq!(record.delivery.last_status, Some(204));
    assert_eq!(record.delivery.body, None, "a delivered body is not kept");
    let statuses: Vec<(u32, Option<u16>)> = record
        .attempts
        .iter()
        .map(|a| (a.number, a.status))
        .collect();
    assert_eq!(statuses, [(2, Some(204)), (1, Some(503))]);
    assert_eq!(
        record.attempts[1].error.as_deref(),
        Some("503 Service Unavailable")
    );
    // The endpoint failed once and then succeeded: not failing.
    let a = store.endpoint("whe_a").await.unwrap().unwrap();
    assert_eq!(a.failing_since_ms, None);
    assert_eq!(store.backlog(retry_at).await.unwrap().pending, 0);
}

pub async fn an_endpoint_failing_too_long_or_gone_is_disabled_and_its_pending_deliveries_fail(
    f: &mut Fixture,
) {
    let store = f.webhooks();
    store
        .create_endpoint(&endpoint("whe_a", "acme"))
        .await
        .unwrap();
    store
        .create_endpoint(&endpoint("whe_b", "acme"))
        .await
        .unwrap();
    let all = [
        delivery("whe_a", 1, T0),
        delivery("whe_a", 2, T0 + 3_600_000),
        delivery("whe_b", 3, T0),
    ];
    fanned(store.as_ref(), "webhooks", 0, 3, &all).await;
    let claimed = store
        .claim_deliveries(T0, T0 + 30_000, "t", 10, 4)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    // whe_a: its first failure starts the clock; failing since T0 is not yet too long.
    let a1 = vidgate::webhooks::webhook_id("whe_a", 1);
    let outcome = store
        .finish_delivery(
            &failure(
                &a1,
                "t",
                T0,
                Next::Retry(T0 + 1_000),
                EndpointHealth::Failing {
                    disable_if_failing_since: T0 - 1,
                },
            ),
            T0,
        )
        .await
        .unwrap();
    assert_eq!(outcome, Finished::Recorded { disabled: None });
    let later = T0 + 2_000;
    store
        .claim_deliveries(later, later + 30_000, "t2", 10, 4)
        .await
        .unwrap();
    let outcome = store
        .finish_delivery(
            &failure(
                &a1,
                "t2",
                later,
                Next::Retry(later + 1_000),
                EndpointHealth::Failing {
                    disable_if_failing_since: T0,
                },
            ),
            later,
        )
        .await
        .unwrap();
    let Finished::Recorded {
        disabled: Some(reason),
    } = outcome
    else {
        panic!("disabled expected: {outcome:?}")
    };
    assert!(reason.contains("every attempt failed"), "{reason}");
    let a = store.endpoint("whe_a").await.unwrap().unwrap();
    assert!(a.disabled.is_some());
    // Its pending deliveries failed, naming why; it is no longer claimed.
    let two = store
        .delivery(&vidgate::webhooks::webhook_id("whe_a", 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(two.delivery.state, DeliveryState::Failed);
    assert!(
        two.delivery
            .last_error
            .as_deref()
            .unwrap()
            .contains("disabled"),
        "{two:?}"
    );
    // whe_b: 410 Gone disables at once.
    let b3 = vidgate::webhooks::webhook_id("whe_b", 3);
    let outcome = store
        .finish_delivery(
            &failure(
                &b3,
                "t",
                T0,
                Next::Failed,
                EndpointHealth::Gone("410 Gone".into()),
            ),
            T0,
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Finished::Recorded {
            disabled: Some("410 Gone".into())
        }
    );
    assert_eq!(store.backlog(T0).await.unwrap().disabled_endpoints, 2);
    assert_eq!(store.active_endpoints(10).await.unwrap(), []);
    // Enabled again by its owner: the failing clock restarts.
    let mut b = store.endpoint("whe_b").await.unwrap().unwrap();
    b.disabled = None;
    b.update_time_ms = T0 + 10;
    let b = store.update_endpoint(&b).await.unwrap();
    assert_eq!((b.disabled.clone(), b.failing_since_ms), (None, None));
    // Disabling by hand fails what was pending.
    store
        .requeue(&[delivery("whe_b", 3, T0 + 20)], T0 + 20)
        .await
        .unwrap();
    let mut b = b;
    b.disabled = Some(Disabled {
        reason: "disabled by its owner".into(),
        time_ms: T0 + 30,
    });
    store.update_endpoint(&b).await.unwrap();
    let three = store.delivery(&b3).await.unwrap().unwrap();
    assert_eq!(three.delivery.state, DeliveryState::Failed);
}

pub async fn a_replay_makes_a_delivery_pending_again_and_pruning_removes_finished_ones(
    f: &mut Fixture,
) {
    let store = f.webhooks();
    store
        .create_endpoint(&endpoint("whe_a", "acme"))
        .await
        .unwrap();
    fanned(
        store.as_ref(),
        "webhooks",
        0,
        2,
        &[delivery("whe_a", 1, T0), delivery("whe_a", 2, T0)],
    )
    .await;
    store
        .claim_deliveries(T0, T0 + 30_000, "t", 10, 4)
        .await
        .unwrap();
    let one = vidgate::webhooks::webhook_id("whe_a", 1);
    store
        .finish_delivery(&success(&one, "t", T0), T0)
        .await
        .unwrap();
    // A replay: pending again with its body back, its attempts kept.
    let replayed = store
        .requeue(&[delivery("whe_a", 1, T0 + 100)], T0 + 100)
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    let record = store.delivery(&one).await.unwrap().unwrap();
    assert_eq!(record.delivery.state, DeliveryState::Pending);
    assert_eq!(record.delivery.attempts, 0);
    assert!(record.delivery.body.is_some());
    assert_eq!(record.attempts.len(), 1);
    let claimed = store
        .claim_deliveries(T0 + 100, T0 + 30_000, "r", 10, 4)
        .await
        .unwrap();
    assert!(claimed.iter().any(|d| d.id == one));
    store
        .finish_delivery(&success(&one, "r", T0 + 100), T0 + 100)
        .await
        .unwrap();
    let record = store.delivery(&one).await.unwrap().unwrap();
    let numbers: Vec<u32> = record.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, [2, 1], "attempt numbers go on after a replay");
    // Pruning: finished deliveries before the bound go, pending ones stay.
    assert_eq!(store.prune_deliveries(T0 + 1_000_000).await.unwrap(), 1);
    assert!(store.delivery(&one).await.unwrap().is_none());
    let two = vidgate::webhooks::webhook_id("whe_a", 2);
    assert!(store.delivery(&two).await.unwrap().is_some());
}

pub async fn callbacks_are_made_once_by_the_fan_out_and_the_tenant_secret_is_stable(
    f: &mut Fixture,
) {
    let store = f.webhooks();
    let mut callback = endpoint("whc_vid_1", "acme");
    callback.kind = EndpointKind::Callback;
    callback.filter = EndpointFilter {
        job_id: Some("vid_1".into()),
        ..EndpointFilter::default()
    };
    let d = delivery("whc_vid_1", 1, T0);
    assert!(
        store
            .fan_out(
                "webhooks",
                0,
                1,
                std::slice::from_ref(&callback),
                std::slice::from_ref(&d)
            )
            .await
            .unwrap()
    );
    let d2 = delivery("whc_vid_1", 2, T0);
    assert!(
        store
            .fan_out("webhooks", 1, 2, std::slice::from_ref(&callback), &[d2])
            .await
            .unwrap()
    );
    assert_eq!(store.endpoint("whc_vid_1").await.unwrap(), Some(callback));
    // Callbacks are not the tenant's listed endpoints.
    assert_eq!(store.list_endpoints("acme", None, 10).await.unwrap(), []);
    let secret = store.tenant_secret("acme").await.unwrap();
    assert_eq!(store.tenant_secret("acme").await.unwrap(), secret);
    assert_ne!(store.tenant_secret("other").await.unwrap(), secret);
    f.reopen().await;
    assert_eq!(f.webhooks().tenant_secret("acme").await.unwrap(), secret);
}

pub async fn a_fan_out_can_claim_what_it_writes_in_the_same_commit(f: &mut Fixture) {
    let store = f.webhooks();
    store
        .create_endpoint(&endpoint("whe_a", "acme"))
        .await
        .unwrap();
    store
        .create_endpoint(&endpoint("whe_b", "acme"))
        .await
        .unwrap();
    let rows: Vec<NewDelivery> = (1..=6)
        .map(|s| delivery(if s % 2 == 0 { "whe_a" } else { "whe_b" }, s, T0))
        .collect();
    let claim = vidgate::store::webhooks::Claim {
        now_ms: T0,
        until_ms: T0 + 30_000,
        token: "fan".into(),
        limit: 5,
        per_endpoint: 2,
    };
    let claimed = store
        .fan_out_claiming("webhooks", 0, 6, &[], &rows, &claim)
        .await
        .unwrap()
        .expect("the cursor was where it was said to be");
    // Two per endpoint (the bound), though the limit allowed five.
    assert_eq!(claimed.len(), 4, "{claimed:?}");
    for id in ["whe_a", "whe_b"] {
        assert_eq!(claimed.iter().filter(|d| d.endpoint_id == id).count(), 2);
    }
    // Held: another claim gets nothing until one finishes.
    assert_eq!(
        store
            .claim_deliveries(T0, T0 + 30_000, "other", 10, 2)
            .await
            .unwrap(),
        []
    );
    store
        .finish_delivery(&success(&claimed[0].id, "fan", T0), T0)
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_deliveries(T0, T0 + 30_000, "other", 10, 2)
            .await
            .unwrap()
            .len(),
        1
    );
    // From a stale position: nothing written, nothing claimed.
    assert_eq!(
        store
            .fan_out_claiming("webhooks", 0, 7, &[], &[delivery("whe_a", 7, T0)], &claim)
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .delivery(&vidgate::webhooks::webhook_id("whe_a", 7))
            .await
            .unwrap()
            .is_none()
    );
}

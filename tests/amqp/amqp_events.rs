//! The outbox relay against a real RabbitMQ: events made while vidgate cannot reach the broker
//! arrive once it can again, in order, none missing; after a restart the relay continues from
//! its durable record instead of starting over.
//!
//! vidgate reaches the broker through a TCP proxy the test owns; cutting the proxy cuts only
//! this test's vidgate connections. The test's own consumer connects to the broker directly.

use crate::support::amqp::*;
use crate::support::*;
use lapin::message::Delivery;
use vidgate::intake::amqp::{AmqpConfig, AmqpHandle};
use vidgate::pb;
use vidgate::store::EventQuery;

fn handle(t: &TestApp) -> AmqpHandle {
    t.app().amqp().expect("AMQP is configured").clone()
}

async fn wait(
    handle: &AmqpHandle,
    what: &str,
    predicate: impl FnMut(&vidgate::intake::amqp::AmqpStatus) -> bool,
) {
    assert!(
        handle.wait_for(WAIT, predicate).await,
        "{what}: {:?}",
        handle.status()
    );
}

/// Creates a video over gRPC and drives it to completion.
async fn make_video(t: &mut TestApp, prompt: &str) -> pb::Video {
    let v = t
        .client
        .create_video(req(ACME, veo(prompt)))
        .await
        .expect("create")
        .into_inner();
    let done = t.drive(ACME, &v.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    done
}

/// The sequences of the tenant's logged events after `after`, in log order.
async fn logged(t: &TestApp, after: i64) -> Vec<i64> {
    t.app()
        .store()
        .events_after(&EventQuery {
            after_sequence: after,
            tenant: Some("acme".into()),
            job_id: None,
            limit: 10_000,
        })
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.sequence)
        .collect()
}

/// Checks each delivery against its body, and returns the sequences in first-arrival order.
fn first_arrivals(deliveries: &[Delivery]) -> Vec<i64> {
    let mut seen = std::collections::BTreeSet::new();
    let mut order = Vec::new();
    for d in deliveries {
        let e = event_of(d);
        assert_eq!(prop(d.properties.message_id()), e.sequence.to_string());
        let Some(pb::video_event::Kind::Video(v)) = &e.kind else {
            panic!("a state event: {e:?}");
        };
        let status = format!("{:?}", v.status()).to_lowercase();
        assert_eq!(d.routing_key.as_str(), format!("acme.video.{status}"));
        assert_eq!(prop(d.properties.kind()), format!("video.{status}"));
        assert_eq!(prop(d.properties.content_type()), "application/json");
        if seen.insert(e.sequence) {
            order.push(e.sequence);
        }
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_while_the_broker_is_unreachable_arrive_afterwards_in_order_and_none_missing() {
    let broker = broker().await;
    let n = names("outage");
    let proxy = Proxy::start(broker.addr().await).await;
    let config = amqp_config(&proxy.url(&broker.url), &n);
    let c = client(&broker.url, &n.connection_name).await;
    let mut t = spawn_app_with(move |cfg| cfg.amqp = config).await;
    let h = handle(&t);
    wait(&h, "relay connected", |s| s.relay_connected).await;
    let events = c
        .temp_queue(Some((&n.events_exchange, "acme.video.#")))
        .await;
    let mut rx = c.consume(&events).await;

    // Before the outage: one video, published.
    let start = t.app().store().latest_sequence().await.expect("latest");
    make_video(&mut t, &unique("before outage")).await;
    let before = logged(&t, start).await;
    let got = collect_sequences(&mut rx, &before, "events before the outage").await;
    assert_eq!(first_arrivals(&got), before);

    // The outage: vidgate cannot reach the broker; jobs go on and their events wait.
    proxy.cut().await;
    wait(&h, "the relay notices", |s| !s.relay_connected).await;
    let mid = t.app().store().latest_sequence().await.expect("latest");
    for i in 0..2 {
        make_video(&mut t, &unique(&format!("during outage {i}"))).await;
    }
    let during = logged(&t, mid).await;
    assert!(!during.is_empty());
    let latest = *during.last().expect("events");
    assert!(
        h.status().relay_confirmed < latest,
        "nothing can be confirmed while the broker is unreachable: {:?}",
        h.status()
    );

    // Back: every event of the outage arrives, in log order, none missing.
    proxy.restore();
    wait(&h, "the relay catches up", |s| s.relay_confirmed >= latest).await;
    let got = collect_sequences(&mut rx, &during, "events of the outage").await;
    // An event published just before the cut whose confirm the cut lost is published again
    // (at least once, as after the blip below): only the outage's own events are checked.
    let order = first_arrivals(&got);
    let fresh: Vec<i64> = order.into_iter().filter(|s| *s > mid).collect();
    assert_eq!(fresh, during, "in order and complete");
    // The intake, cut as well, is rebuilt too.
    wait(&h, "the intake consumes again", |s| s.consuming).await;

    // A short blip (lapin's own recovery may ride it out): events still arrive, in order.
    proxy.cut().await;
    proxy.restore();
    let blip = t.app().store().latest_sequence().await.expect("latest");
    make_video(&mut t, &unique("after blip")).await;
    let after = logged(&t, blip).await;
    let got = collect_sequences(&mut rx, &after, "events after the blip").await;
    let order = first_arrivals(&got);
    let fresh: Vec<i64> = order.into_iter().filter(|s| *s > blip).collect();
    assert_eq!(fresh, after, "in order and complete after the blip");
    let latest = *after.last().expect("events");

    // The cursor is durable: saved once idle.
    let saved = t
        .app()
        .store()
        .load_cursor(&AmqpConfig::default().relay_cursor)
        .await
        .expect("cursor");
    let mut saved = saved.unwrap_or_default();
    for _ in 0..100 {
        if saved >= latest {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        saved = t
            .app()
            .store()
            .load_cursor(&AmqpConfig::default().relay_cursor)
            .await
            .expect("cursor")
            .unwrap_or_default();
    }
    assert!(saved >= latest, "cursor {saved} saved up to {latest}");
    eprintln!("status after the outage: {:?}", h.status());

    if let Some(app) = t.app.take() {
        app.shutdown().await;
    }
    c.cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_relay_continues_from_its_record() {
    let broker = broker().await;
    let n = names("restart");
    let config = amqp_config(&broker.url, &n);
    let c = client(&broker.url, &n.connection_name).await;
    let amqp = config.clone();
    let mut t = spawn_app_with(move |cfg| cfg.amqp = amqp).await;
    let h = handle(&t);
    wait(&h, "relay connected", |s| s.relay_connected).await;
    let events = c
        .temp_queue(Some((&n.events_exchange, "acme.video.#")))
        .await;
    let mut rx = c.consume(&events).await;

    let start = t.app().store().latest_sequence().await.expect("latest");
    make_video(&mut t, &unique("first run")).await;
    let first = logged(&t, start).await;
    let got = collect_sequences(&mut rx, &first, "events of the first run").await;
    assert_eq!(first_arrivals(&got), first);
    let last_first = *first.last().expect("events");

    // A run without AMQP: its events stay in the log only.
    let mut t = t.restart(|_| {}).await;
    assert!(t.app().amqp().is_none());
    let mid = t.app().store().latest_sequence().await.expect("latest");
    make_video(&mut t, &unique("offline run")).await;
    let offline = logged(&t, mid).await;
    assert!(!offline.is_empty());

    // AMQP again: the relay starts from its record: the offline events, and nothing older.
    let amqp = config.clone();
    let t = t.restart(move |cfg| cfg.amqp = amqp).await;
    let got = collect_sequences(&mut rx, &offline, "events of the offline run").await;
    let order = first_arrivals(&got);
    assert!(
        order.iter().all(|s| *s > last_first),
        "nothing already confirmed is published again: {order:?} after {last_first}"
    );
    assert_eq!(order, offline);

    let mut t = t;
    if let Some(app) = t.app.take() {
        app.shutdown().await;
    }
    c.cleanup(&n).await;
}

//! The AMQP intake against a real RabbitMQ (`VIDGATE_TEST_AMQP_URL`, else testcontainers):
//! messages become durable jobs through the same path as gRPC, duplicates and redeliveries
//! are one job, invalid messages are dead-lettered with reasons and rejected on `reply_to`,
//! and a cut connection comes back with every message exactly one job.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::amqp::*;
use crate::support::*;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use prost::Message as _;
use vidgate::intake::amqp::topology;
use vidgate::intake::amqp::{AmqpConfig, AmqpHandle};
use vidgate::pb;

async fn spawn(config: AmqpConfig) -> (TestApp, AmqpHandle) {
    let t = spawn_app_with(move |c| c.amqp = config).await;
    let handle = t.app().amqp().expect("AMQP is configured").clone();
    assert!(
        handle
            .wait_for(WAIT, |s| s.consuming && s.relay_connected)
            .await,
        "vidgate did not start consuming and relaying: {:?}",
        handle.status()
    );
    (t, handle)
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

fn body(request: &pb::CreateVideoRequest) -> Vec<u8> {
    serde_json::to_vec(request).expect("json")
}

/// Every video of `acme`, all pages.
async fn all_videos(t: &mut TestApp) -> Vec<pb::Video> {
    all_videos_of(&mut t.client, ACME).await
}

async fn stop(mut t: TestApp) {
    if let Some(app) = t.app.take() {
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_becomes_a_job_whose_events_reach_the_events_exchange_and_reply_to() {
    let broker = broker().await;
    let n = names("publish");
    let user = broker.user();
    let mut config = amqp_config(&broker.url, &n);
    // The tenant comes from the broker-checked user_id.
    config.tenant = None;
    config.users = BTreeMap::from([(user.clone(), "acme".to_owned())]);
    let (mut t, handle) = spawn(config).await;
    let c = client(&broker.url, &n.connection_name).await;
    let replies = c.temp_queue(None).await;
    let events = c
        .temp_queue(Some((&n.events_exchange, "acme.video.#")))
        .await;
    let mut reply_rx = c.consume(&replies).await;
    let mut event_rx = c.consume(&events).await;

    let prompt = unique("amqp cat playing piano");
    let mut request = veo(&prompt);
    request.labels.insert("source".into(), "amqp".into());
    let message_id = format!("m-{}", uuid::Uuid::now_v7().simple());
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(traceparent)),
    );
    c.publish(
        &n.jobs_exchange,
        "video.create",
        &body(&request),
        job_properties(Some(&message_id))
            .with_reply_to(short(&replies))
            .with_correlation_id(short("corr-json"))
            .with_user_id(short(&user))
            .with_headers(headers),
    )
    .await;

    // The first reply is the job as accepted: QUEUED, the message_id as its request_id.
    let first = next(&mut reply_rx, "first reply").await;
    assert_eq!(prop(first.properties.correlation_id()), "corr-json");
    assert_eq!(prop(first.properties.kind()), "video.queued");
    let first_event = event_of(&first);
    assert_eq!(
        prop(first.properties.message_id()),
        first_event.sequence.to_string()
    );
    let Some(pb::video_event::Kind::Video(video)) = first_event.kind else {
        panic!("a state event: {first_event:?}");
    };
    assert_eq!(video.request_id, message_id);
    assert_eq!(video.status(), pb::VideoStatus::Queued);
    assert_eq!(video.labels.get("source").map(String::as_str), Some("amqp"));
    let id = video.id.clone();

    let done = t.drive(ACME, &id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    assert_eq!(done.request_id, message_id);

    // On the events exchange: every state of the job, in order, ending with COMPLETED.
    let mut sequences = Vec::new();
    loop {
        let d = next(&mut event_rx, "events of the job").await;
        let e = event_of(&d);
        let Some(pb::video_event::Kind::Video(v)) = &e.kind else {
            panic!("a state event: {e:?}");
        };
        let status = format!("{:?}", v.status()).to_lowercase();
        assert_eq!(d.routing_key.as_str(), format!("acme.video.{status}"));
        assert_eq!(prop(d.properties.kind()), format!("video.{status}"));
        assert_eq!(prop(d.properties.content_type()), "application/json");
        assert_eq!(prop(d.properties.message_id()), e.sequence.to_string());
        assert_eq!(header(&d, "traceparent").as_deref(), Some(traceparent));
        assert_eq!(e.video_id, id);
        assert!(v.content.is_none() || v.content.as_ref().is_some_and(|c| c.size_bytes > 0));
        sequences.push(e.sequence);
        if v.status() == pb::VideoStatus::Completed {
            assert!(v.content.is_some(), "completed carries the content facts");
            break;
        }
    }
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "in order: {sequences:?}"
    );

    // On reply_to: the same events with the correlation id, up to COMPLETED.
    loop {
        let d = next(&mut reply_rx, "replies up to completed").await;
        assert_eq!(prop(d.properties.correlation_id()), "corr-json");
        if prop(d.properties.kind()) == "video.completed" {
            break;
        }
    }

    // The same schema in binary protobuf.
    let message_id_pb = format!("m-pb-{}", uuid::Uuid::now_v7().simple());
    c.publish(
        &n.jobs_exchange,
        "video.create",
        &seedance(&unique("amqp binary")).encode_to_vec(),
        job_properties(Some(&message_id_pb))
            .with_content_type(short("application/x-protobuf"))
            .with_reply_to(short(&replies))
            .with_correlation_id(short("corr-pb"))
            .with_user_id(short(&user)),
    )
    .await;
    let d = next(&mut reply_rx, "reply to the binary message").await;
    assert_eq!(prop(d.properties.correlation_id()), "corr-pb");
    let Some(pb::video_event::Kind::Video(v)) = event_of(&d).kind else {
        panic!("a state event");
    };
    assert_eq!(v.request_id, message_id_pb);
    assert_eq!(v.model, SEEDANCE);

    wait(&handle, "two jobs created", |s| s.created == 2).await;
    assert_eq!(handle.status().dead_lettered, 0);
    stop(t).await;
    c.cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_id_twice_and_redelivered_is_one_job_and_one_upstream_create() {
    let broker = broker().await;
    let n = names("dedup");
    let config = amqp_config(&broker.url, &n);
    let c = client(&broker.url, &n.connection_name).await;
    // The topology exists before vidgate runs, so the messages wait in the queue.
    topology::declare_all(&c.channel, &config)
        .await
        .expect("topology");
    let prompt = unique("amqp dedup");
    let message_id = format!("m-{}", uuid::Uuid::now_v7().simple());
    let json = body(&veo(&prompt));
    for _ in 0..2 {
        c.publish(
            &n.jobs_exchange,
            "k",
            &json,
            job_properties(Some(&message_id)),
        )
        .await;
    }
    // Take both without acking, then close the channel: the broker redelivers them.
    let taker = c.connection.create_channel().await.expect("channel");
    for i in 0..2 {
        let got = taker
            .basic_get(short(&n.jobs_queue), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get");
        assert!(got.is_some(), "message {i} is in the queue");
    }
    taker
        .close(200, short("give them back"))
        .await
        .expect("close");

    let (mut t, handle) = spawn(config).await;
    wait(&handle, "both redeliveries handled", |s| {
        s.created + s.duplicates == 2
    })
    .await;
    let s = handle.status();
    assert_eq!((s.created, s.duplicates), (1, 1), "{s:?}");
    assert_eq!(s.redelivered, 2, "both were redeliveries: {s:?}");

    // A third copy after the job exists: still the same job.
    c.publish(
        &n.jobs_exchange,
        "k",
        &json,
        job_properties(Some(&message_id)),
    )
    .await;
    wait(&handle, "the third copy", |s| s.duplicates == 2).await;

    // The same message_id with another request: refused, dead-lettered.
    c.publish(
        &n.jobs_exchange,
        "k",
        &body(&veo(&unique("another request"))),
        job_properties(Some(&message_id)),
    )
    .await;
    wait(&handle, "the reused id", |s| s.dead_lettered == 1).await;
    let mut dead = c.consume(&n.dead_queue).await;
    let d = next(&mut dead, "dead letter of the reused id").await;
    assert_eq!(
        header(&d, "x-vidgate-reason").as_deref(),
        Some("REQUEST_ID_REUSED")
    );

    let videos = all_videos(&mut t).await;
    assert_eq!(videos.len(), 1, "{videos:?}");
    assert_eq!(videos[0].request_id, message_id);
    let done = t.drive(ACME, &videos[0].id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed);
    assert_eq!(
        t.sim.stats().creates_by_prompt.get(&prompt).copied(),
        Some(1),
        "one upstream create"
    );
    stop(t).await;
    c.cleanup(&n).await;
}

/// One invalid message and the reason it must be refused with.
struct Case {
    corr: &'static str,
    id: Option<String>,
    payload: Vec<u8>,
    with_user: bool,
    reason: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_are_dead_lettered_with_reasons_and_rejected_on_reply_to() {
    let broker = broker().await;
    let n = names("invalid");
    let user = broker.user();
    let mut config = amqp_config(&broker.url, &n);
    config.tenant = None;
    config.users = BTreeMap::from([(user.clone(), "acme".to_owned())]);
    let (mut t, handle) = spawn(config).await;
    let c = client(&broker.url, &n.connection_name).await;
    let replies = c.temp_queue(None).await;
    let mut reply_rx = c.consume(&replies).await;
    let mut dead_rx = c.consume(&n.dead_queue).await;

    let mut bad_seconds = veo(&unique("bad seconds"));
    if let Some(pb::create_video_request::Params::Veo(v)) = &mut bad_seconds.params {
        v.seconds = 5;
    }
    let mut mismatch = veo(&unique("mismatch"));
    mismatch.request_id = "something-else".into();
    let mut unknown_model = veo(&unique("unknown model"));
    unknown_model.model = "no-such-model".into();
    let good = body(&veo(&unique("would be fine")));
    let case =
        |corr: &'static str, id: Option<&str>, payload: Vec<u8>, with_user: bool, reason| Case {
            corr,
            id: id.map(str::to_owned),
            payload,
            with_user,
            reason,
        };
    let cases = vec![
        case(
            "malformed",
            Some("m-malformed"),
            b"{\"model\": \"turing/veo".to_vec(),
            true,
            "INVALID_MESSAGE_BODY",
        ),
        case(
            "spec",
            Some("m-spec"),
            body(&bad_seconds),
            true,
            "INVALID_VIDEO_REQUEST",
        ),
        case("no-id", None, good.clone(), true, "MISSING_MESSAGE_ID"),
        case(
            "mismatch",
            Some("m-mismatch"),
            body(&mismatch),
            true,
            "INVALID_VIDEO_REQUEST",
        ),
        case(
            "model",
            Some("m-model"),
            body(&unknown_model),
            true,
            "UNKNOWN_MODEL",
        ),
        // No user_id, and the queue has no tenant of its own.
        case(
            "no-tenant",
            Some("m-no-tenant"),
            good.clone(),
            false,
            "UNKNOWN_TENANT",
        ),
    ];
    for k in &cases {
        let mut p = job_properties(k.id.as_deref())
            .with_reply_to(short(&replies))
            .with_correlation_id(short(k.corr));
        if k.with_user {
            p = p.with_user_id(short(&user));
        }
        c.publish(&n.jobs_exchange, "k", &k.payload, p).await;
    }
    let expected: BTreeMap<&str, (&str, &Vec<u8>, Option<&String>)> = cases
        .iter()
        .map(|k| (k.corr, (k.reason, &k.payload, k.id.as_ref())))
        .collect();

    // Dead-letter queue: the original body and message_id, with the reason headers.
    let mut seen = BTreeSet::new();
    for _ in 0..cases.len() {
        let d = next(&mut dead_rx, "dead letters").await;
        let corr = prop(d.properties.correlation_id());
        let (reason, payload, id) = expected
            .get(corr.as_str())
            .unwrap_or_else(|| panic!("unexpected dead letter {corr:?}"));
        assert_eq!(
            header(&d, "x-vidgate-reason").as_deref(),
            Some(*reason),
            "{corr}"
        );
        let message = header(&d, "x-vidgate-message").unwrap_or_default();
        assert!(!message.is_empty(), "{corr}: a message for people");
        assert_eq!(&d.data, *payload, "{corr}: the original body");
        assert_eq!(
            prop(d.properties.message_id()),
            id.cloned().unwrap_or_default(),
            "{corr}"
        );
        if corr == "no-id" {
            assert!(message.contains("message_id"), "{message}");
        }
        seen.insert(corr);
    }
    assert_eq!(seen.len(), cases.len());

    // reply_to: one rejection each, with the correlation id, reason and violations.
    let mut rejected = BTreeSet::new();
    for _ in 0..cases.len() {
        let d = next(&mut reply_rx, "rejections").await;
        let corr = prop(d.properties.correlation_id());
        assert_eq!(prop(d.properties.kind()), "video.rejected");
        let e = event_of(&d);
        let Some(pb::video_event::Kind::Rejection(r)) = e.kind else {
            panic!("{corr}: a rejection: {e:?}");
        };
        let (reason, _, id) = expected[corr.as_str()];
        assert_eq!(r.reason, reason, "{corr}");
        assert_eq!(r.message_id, id.cloned().unwrap_or_default(), "{corr}");
        match corr.as_str() {
            "spec" => assert!(
                r.violations.iter().any(|v| v.field.contains("seconds")),
                "{r:?}"
            ),
            "mismatch" => assert!(
                r.violations.iter().any(|v| v.field == "request_id"),
                "{r:?}"
            ),
            _ => {}
        }
        rejected.insert(corr);
    }
    assert_eq!(rejected.len(), cases.len());

    wait(&handle, "all dead-lettered", |s| {
        s.dead_lettered == cases.len() as u64
    })
    .await;
    assert_eq!(handle.status().created, 0);
    assert!(
        all_videos(&mut t).await.is_empty(),
        "no job for any of them"
    );
    // Each original was acked once its dead letter was confirmed.
    let mut remaining = u32::MAX;
    for _ in 0..600 {
        remaining = c.queue_len(&n.jobs_queue).await;
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(remaining, 0, "originals acked");
    stop(t).await;
    c.cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_comes_back_and_every_message_becomes_exactly_one_job() {
    /// Most messages published while waiting for the cut to take effect (bounds the loop).
    const MAX_MESSAGES: usize = 4000;
    /// Messages published after the consumer came back.
    const AFTER: usize = 50;
    let broker = broker().await;
    let n = names("cut");
    let mut config = amqp_config(&broker.url, &n);
    config.prefetch = 8;
    let (mut t, handle) = spawn(config).await;
    let c = client(&broker.url, &n.connection_name).await;
    let before = handle.status();

    let intake_connection = format!("{}-intake", n.connection_name);
    let cut = tokio::spawn(async move { close_connection_named(&intake_connection).await });
    let json = body(&veo(&unique("amqp cut")));
    let mut ids = Vec::new();
    let publish = |i: usize| format!("m-cut-{i:05}");
    // Keep messages flowing while the connection is cut and until the consumer is back.
    while ids.len() < MAX_MESSAGES {
        let id = publish(ids.len());
        c.publish(&n.jobs_exchange, "k", &json, job_properties(Some(&id)))
            .await;
        ids.push(id);
        let s = handle.status();
        let back = s.intake_sessions + s.intake_recoveries
            > before.intake_sessions + before.intake_recoveries;
        if cut.is_finished() && back && s.consuming {
            break;
        }
    }
    let published_at_cut = ids.len();
    let closed = cut.await.expect("cut task");
    assert_eq!(closed, 1, "exactly vidgate's intake connection was closed");
    wait(&handle, "the consumer comes back", |s| {
        s.consuming
            && s.intake_sessions + s.intake_recoveries
                > before.intake_sessions + before.intake_recoveries
    })
    .await;
    for _ in 0..AFTER {
        let id = publish(ids.len());
        c.publish(&n.jobs_exchange, "k", &json, job_properties(Some(&id)))
            .await;
        ids.push(id);
    }
    let total = ids.len() as u64;
    wait(&handle, "every message stored", |s| s.created == total).await;

    let videos = all_videos(&mut t).await;
    let request_ids: Vec<&str> = videos.iter().map(|v| v.request_id.as_str()).collect();
    let unique_ids: BTreeSet<&str> = request_ids.iter().copied().collect();
    assert_eq!(request_ids.len(), ids.len(), "one job per message");
    assert_eq!(
        unique_ids,
        ids.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "exactly the published messages"
    );
    // Nothing is left unacknowledged or dead.
    let mut remaining = u32::MAX;
    for _ in 0..600 {
        remaining = c.queue_len(&n.jobs_queue).await;
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(remaining, 0);
    assert_eq!(c.queue_len(&n.dead_queue).await, 0);
    assert_eq!(handle.status().dead_lettered, 0);
    eprintln!(
        "{} messages, cut after {published_at_cut}; status: {:?}",
        ids.len(),
        handle.status()
    );
    stop(t).await;
    // Had any stored delivery been left unacknowledged when the intake closed its channel,
    // the broker would have put it back in the queue.
    assert_eq!(
        c.queue_len(&n.jobs_queue).await,
        0,
        "every stored message was acknowledged before the intake stopped"
    );
    c.cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_jobs_queue_with_other_arguments_is_reported_not_replaced() {
    let broker = broker().await;
    let n = names("mismatch");
    let c = client(&broker.url, &n.connection_name).await;
    // A classic queue of the same name: vidgate must not consume it as if it were its quorum queue.
    c.channel
        .queue_declare(
            short(&n.jobs_queue),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("classic queue");
    let t = spawn_app_with(|cfg| cfg.amqp = amqp_config(&broker.url, &n)).await;
    let handle = t.app().amqp().expect("amqp").clone();
    // The intake keeps failing (and retrying) with an error that names the queue; the relay
    // is independent of it and runs.
    wait(&handle, "intake retried twice", |s| s.intake_failures >= 2).await;
    let s = handle.status();
    assert!(!s.consuming && s.intake_sessions == 0, "{s:?}");
    assert!(s.intake_error.contains(&n.jobs_queue), "{s:?}");
    assert!(
        handle.wait_for(WAIT, |s| s.relay_connected).await,
        "{:?}",
        handle.status()
    );
    stop(t).await;
    c.cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cancelled_by_the_broker_is_rebuilt_with_its_topology() {
    let broker = broker().await;
    let n = names("cancel");
    let (mut t, handle) = spawn(amqp_config(&broker.url, &n)).await;
    let c = client(&broker.url, &n.connection_name).await;
    // Deleting the queue cancels vidgate's consumer (basic.cancel from the broker).
    c.channel
        .queue_delete(short(&n.jobs_queue), Default::default())
        .await
        .expect("delete the jobs queue");
    wait(&handle, "the supervisor rebuilds the session", |s| {
        s.intake_sessions >= 2 && s.consuming
    })
    .await;
    assert!(
        handle.status().intake_error.contains("cancelled"),
        "{:?}",
        handle.status()
    );
    // The queue is declared again and consumed.
    let id = format!("m-{}", uuid::Uuid::now_v7().simple());
    c.publish(
        &n.jobs_exchange,
        "k",
        &body(&veo(&unique("after cancel"))),
        job_properties(Some(&id)),
    )
    .await;
    wait(&handle, "the message is stored", |s| s.created == 1).await;
    let videos = all_videos(&mut t).await;
    assert_eq!(videos.len(), 1);
    assert_eq!(videos[0].request_id, id);
    stop(t).await;
    c.cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_published_is_requeued_and_dead_lettered_after_a_rebuild() {
    let broker = broker().await;
    let n = names("deadx");
    let (t, handle) = spawn(amqp_config(&broker.url, &n)).await;
    let c = client(&broker.url, &n.connection_name).await;
    // Someone deletes the dead-letter exchange: publishing a dead letter closes vidgate's
    // publishing channel (404).
    c.channel
        .exchange_delete(short(&n.dead_exchange), Default::default())
        .await
        .expect("delete the dead-letter exchange");
    c.publish(
        &n.jobs_exchange,
        "k",
        b"not json",
        job_properties(Some("m-deadx")),
    )
    .await;
    // The message is requeued, the session rebuilt (topology declared again), and the
    // redelivered message dead-lettered with its reason: nothing lost.
    wait(&handle, "dead-lettered after the rebuild", |s| {
        s.dead_lettered == 1
    })
    .await;
    let s = handle.status();
    assert!(s.requeued >= 1 && s.intake_sessions >= 2, "{s:?}");
    let mut dead = c.consume(&n.dead_queue).await;
    let d = next(&mut dead, "the dead letter").await;
    assert_eq!(
        header(&d, "x-vidgate-reason").as_deref(),
        Some("INVALID_MESSAGE_BODY")
    );
    assert_eq!(prop(d.properties.message_id()), "m-deadx");
    stop(t).await;
    c.cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_naming_vidgates_own_queues_is_refused_and_nothing_is_published_there() {
    let broker = broker().await;
    let n = names("replyto");
    let (mut t, handle) = spawn(amqp_config(&broker.url, &n)).await;
    let c = client(&broker.url, &n.connection_name).await;
    let mut dead_rx = c.consume(&n.dead_queue).await;
    for (i, own) in [&n.jobs_queue, &n.dead_queue, &n.events_exchange]
        .into_iter()
        .enumerate()
    {
        c.publish(
            &n.jobs_exchange,
            "video.create",
            &body(&veo(&unique("reply into vidgate"))),
            job_properties(Some(&format!("m-{i}-{}", unique("own"))))
                .with_reply_to(short(own))
                .with_correlation_id(short(&format!("own-{i}"))),
        )
        .await;
        let d = next(&mut dead_rx, "the refused message").await;
        assert_eq!(
            header(&d, "x-vidgate-reason").as_deref(),
            Some("REPLY_TO_NOT_ALLOWED"),
            "reply_to {own}"
        );
        assert!(
            header(&d, "x-vidgate-message")
                .unwrap_or_default()
                .contains("own queues or exchanges"),
            "{d:?}"
        );
    }
    // Exactly the three refusals: no rejection reply went into the intake (it would come back
    // as a fourth, undecodable, dead letter), and no job was made.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let status = handle.status();
    assert_eq!(status.dead_lettered, 3, "{status:?}");
    assert_eq!(status.created, 0, "{status:?}");
    assert!(all_videos(&mut t).await.is_empty());
    stop(t).await;
    c.cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_reply_to_prefix_only_queues_under_it_receive_replies() {
    let broker = broker().await;
    let n = names("replyprefix");
    let mut config = amqp_config(&broker.url, &n);
    // Server-named queues (the test's temporary ones) are all `amq.gen-...`.
    config.reply_to_prefix = Some("amq.gen-".into());
    let (t, handle) = spawn(config).await;
    let c = client(&broker.url, &n.connection_name).await;
    let mut dead_rx = c.consume(&n.dead_queue).await;
    let replies = c.temp_queue(None).await;
    let mut reply_rx = c.consume(&replies).await;

    // Outside the prefix: dead-lettered with the reason, naming the prefix.
    c.publish(
        &n.jobs_exchange,
        "video.create",
        &body(&veo(&unique("reply outside the prefix"))),
        job_properties(Some(&unique("m-outside").replace(' ', "-")))
            .with_reply_to(short("someone-elses-queue"))
            .with_correlation_id(short("outside")),
    )
    .await;
    let d = next(&mut dead_rx, "the refused message").await;
    assert_eq!(
        header(&d, "x-vidgate-reason").as_deref(),
        Some("REPLY_TO_NOT_ALLOWED")
    );
    let message = header(&d, "x-vidgate-message").unwrap_or_default();
    assert!(
        message.contains("must start with \"amq.gen-\"") && message.contains("someone-elses-queue"),
        "{message}"
    );

    // Under the prefix: accepted, and its events come back there.
    c.publish(
        &n.jobs_exchange,
        "video.create",
        &body(&veo(&unique("reply under the prefix"))),
        job_properties(Some(&unique("m-inside").replace(' ', "-")))
            .with_reply_to(short(&replies))
            .with_correlation_id(short("inside")),
    )
    .await;
    let r = next(&mut reply_rx, "an event on the allowed reply_to").await;
    assert_eq!(prop(r.properties.correlation_id()), "inside");
    wait(&handle, "one job", |s| {
        s.created == 1 && s.dead_lettered == 1
    })
    .await;
    stop(t).await;
    c.cleanup(&n).await;
}

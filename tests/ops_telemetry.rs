//! Traces and logs, end to end, with the SDK's in-memory span exporter and a log buffer
//! installed as this test process's global subscriber (so this file holds one test):
//!
//! - a job published on RabbitMQ with a W3C `traceparent` is one connected trace, from the
//!   delivery through the durable insert, the upstream create, the polls, the download, the
//!   completion and each event published, also when vidgate restarts half-way;
//! - a gRPC `CreateVideo` carrying `traceparent` metadata starts its job's trace the same way;
//! - neither the upstream API key nor the client's token appears in any log line (at debug,
//!   vidgate at trace) or in any span name, attribute or event.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use support::amqp::*;
use support::*;
use tracing_subscriber::EnvFilter;
use vidgate::pb;
use vidgate::telemetry::LogFormat;
use vidgate::upstream::sim::Simulator;

/// The upstream key of this test: it must never be seen.
const API_KEY: &str = "sk-vidgate-test-SECRET-9f8e7d6c5b4a";
/// The AMQP producer's trace.
const AMQP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AMQP_PARENT: &str = "00f067aa0ba902b7";
/// The gRPC caller's trace.
const GRPC_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const GRPC_PARENT: &str = "b7ad6b7169203331";
/// A refused call's trace.
const BAD_TRACE: &str = "5a1d0c5e6f7a8b9c0d1e2f3a4b5c6d7e";

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn trace_id(hex: &str) -> TraceId {
    TraceId::from_hex(hex).expect("trace id")
}

fn span_id(hex: &str) -> SpanId {
    SpanId::from_hex(hex).expect("span id")
}

/// The spans of one trace, checked to be connected: every span's parent is the remote caller's
/// span or another span of the trace.
fn connected_trace<'a>(
    spans: &'a [SpanData],
    trace: &str,
    remote_parent: &str,
) -> Vec<&'a SpanData> {
    let trace = trace_id(trace);
    let mine: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    assert!(!mine.is_empty(), "no span of trace {trace}");
    let ids: HashSet<SpanId> = mine.iter().map(|s| s.span_context.span_id()).collect();
    let remote = span_id(remote_parent);
    for s in &mine {
        assert!(
            s.parent_span_id == remote || ids.contains(&s.parent_span_id),
            "span {:?} has parent {} which is neither the caller's span nor in the trace; trace: {:#?}",
            s.name,
            s.parent_span_id,
            span_names(&mine)
        );
    }
    // Exactly one span hangs off the caller: the intake's.
    let roots: Vec<_> = mine.iter().filter(|s| s.parent_span_id == remote).collect();
    assert_eq!(
        roots.len(),
        1,
        "one intake span under the caller's: {:#?}",
        span_names(&mine)
    );
    mine
}

fn span_names(spans: &[&SpanData]) -> BTreeSet<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn count(spans: &[&SpanData], name: &str) -> usize {
    spans.iter().filter(|s| s.name == name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_connected_trace_across_a_restart_and_no_secret_reaches_logs_or_spans() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let logs = LogBuffer::default();
    let sink = logs.clone();
    vidgate::telemetry::install(
        LogFormat::Json,
        EnvFilter::new("debug,vidgate=trace"),
        Some(provider.tracer("vidgate")),
        move || sink.clone(),
    )
    .expect("the test installs the only subscriber of this process");

    let broker = broker().await;
    let n = names("otel");
    let sim = Simulator::start(
        vidgate::upstream::sim::SimConfig {
            api_key: API_KEY.into(),
            ..sim_config()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts");
    let data_dir = temp_dir("otel");
    let mut config = test_config(&data_dir, &sim);
    let amqp = amqp_config(&broker.url, &n);
    config.amqp = amqp.clone();
    let mut t = start(config, data_dir, sim).await;
    let handle = t.app().amqp().expect("AMQP is configured").clone();
    assert!(
        handle
            .wait_for(WAIT, |s| s.consuming && s.relay_connected)
            .await,
        "{:?}",
        handle.status()
    );
    let c = client(&broker.url, &n.connection_name).await;
    let events_queue = c
        .temp_queue(Some((&n.events_exchange, "acme.video.completed")))
        .await;
    let mut events_rx = c.consume(&events_queue).await;

    // 1. A job over AMQP, with the producer's trace context.
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(format!(
            "00-{AMQP_TRACE}-{AMQP_PARENT}-01"
        ))),
    );
    let message_id = format!("m-{}", uuid::Uuid::now_v7().simple());
    c.publish(
        &n.jobs_exchange,
        "video.create",
        &serde_json::to_vec(&veo(&unique("traced over amqp"))).unwrap(),
        job_properties(Some(&message_id)).with_headers(headers),
    )
    .await;
    assert!(
        handle.wait_for(WAIT, |s| s.created == 1).await,
        "{:?}",
        handle.status()
    );
    let amqp_job = t
        .client
        .list_videos(req(ACME, pb::ListVideosRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .videos
        .into_iter()
        .find(|v| v.request_id == message_id)
        .expect("the AMQP job is listed");

    // One step (the create is sent), then a restart: the rest happens in a new process
    // life, which must continue the same trace from the stored context.
    t.app().dispatcher().step().await.expect("step");
    let mut t = t.restart(move |c| c.amqp = amqp).await;
    let done = t.drive(ACME, &amqp_job.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    let completed = next(&mut events_rx, "the completed event").await;
    let event_trace = header(&completed, "traceparent").expect("events carry traceparent");
    assert!(
        event_trace.contains(AMQP_TRACE),
        "the completed event continues the job's trace: {event_trace}"
    );

    // 2. A job over gRPC, with the caller's trace context (and its token).
    let mut request = req(ACME, veo(&unique("traced over grpc")));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{GRPC_TRACE}-{GRPC_PARENT}-01").parse().unwrap(),
    );
    let grpc_job = t
        .client
        .create_video(request)
        .await
        .expect("create")
        .into_inner();
    let done = t.drive(ACME, &grpc_job.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    // The relay publishes the completed event of the gRPC job too.
    next(&mut events_rx, "the gRPC job's completed event").await;

    // A refused call: its server span carries the gRPC code.
    let mut bad = veo("refused");
    bad.model = "no-such-model".into();
    let mut request = req(ACME, bad);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{BAD_TRACE}-{GRPC_PARENT}-01").parse().unwrap(),
    );
    t.client.create_video(request).await.expect_err("refused");

    if let Some(app) = t.app.take() {
        app.shutdown().await;
    }
    provider.force_flush().expect("spans flushed");
    let spans = exporter.get_finished_spans().expect("spans");

    // The AMQP job: one connected trace with every step.
    let trace = connected_trace(&spans, AMQP_TRACE, AMQP_PARENT);
    let got = span_names(&trace);
    let process = format!("{} process", n.jobs_queue);
    let publish = format!("{} publish", n.events_exchange);
    for want in [
        process.as_str(),
        "INSERT jobs",
        "vidgate.submit",
        "POST /videos",
        "vidgate.poll",
        "GET /videos/{id}",
        // The download runs in the poll step that sees the task completed.
        "GET /videos/{id}/content",
        "vidgate.complete",
        publish.as_str(),
    ] {
        assert!(got.contains(want), "span {want:?} missing from {got:#?}");
    }
    // Events published: queued (accepted), processing/queued after the create, completed.
    assert!(count(&trace, &publish) >= 2, "{got:#?}");
    let root = trace
        .iter()
        .find(|s| s.parent_span_id == span_id(AMQP_PARENT))
        .expect("root");
    assert_eq!(
        root.name,
        process.as_str(),
        "the delivery is the job's first span"
    );
    assert_eq!(root.span_kind, opentelemetry::trace::SpanKind::Consumer);
    assert_eq!(attr(root, "messaging.system").as_deref(), Some("rabbitmq"));
    assert_eq!(attr(root, "messaging.message.id"), Some(message_id.clone()));
    assert_eq!(
        attr(root, "vidgate.amqp.outcome").as_deref(),
        Some("stored")
    );
    let create = trace
        .iter()
        .find(|s| s.name == "POST /videos")
        .expect("create");
    assert_eq!(create.span_kind, opentelemetry::trace::SpanKind::Client);
    assert_eq!(
        attr(create, "http.response.status_code").as_deref(),
        Some("200")
    );
    let complete = trace
        .iter()
        .find(|s| s.name == "vidgate.complete")
        .expect("complete");
    assert_eq!(
        attr(complete, "vidgate.job.outcome").as_deref(),
        Some("completed")
    );
    let published = trace.iter().find(|s| s.name == publish).expect("publish");
    assert_eq!(
        published.span_kind,
        opentelemetry::trace::SpanKind::Producer
    );

    // The gRPC job: the server span under the caller's, then the same steps.
    let trace = connected_trace(&spans, GRPC_TRACE, GRPC_PARENT);
    let got = span_names(&trace);
    for want in [
        "vidgate.v1.VideoService/CreateVideo",
        "INSERT jobs",
        "vidgate.submit",
        "POST /videos",
        "GET /videos/{id}/content",
        "vidgate.complete",
    ] {
        assert!(got.contains(want), "span {want:?} missing from {got:#?}");
    }
    let server = trace
        .iter()
        .find(|s| s.name == "vidgate.v1.VideoService/CreateVideo")
        .expect("server span");
    assert_eq!(server.span_kind, opentelemetry::trace::SpanKind::Server);
    assert_eq!(server.parent_span_id, span_id(GRPC_PARENT));
    assert_eq!(attr(server, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attr(server, "rpc.method").as_deref(), Some("CreateVideo"));
    assert_eq!(attr(server, "rpc.grpc.status_code").as_deref(), Some("0"));

    let refused = connected_trace(&spans, BAD_TRACE, GRPC_PARENT);
    assert_eq!(refused.len(), 1, "{:#?}", span_names(&refused));
    assert_eq!(
        attr(refused[0], "rpc.grpc.status_code").as_deref(),
        Some("3"),
        "INVALID_ARGUMENT"
    );

    // No prompt text in spans by default, no secret anywhere.
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).expect("utf-8 logs");
    assert!(
        logs.lines().count() > 50,
        "the log buffer holds the run's lines ({} lines)",
        logs.lines().count()
    );
    assert!(logs.contains(&grpc_job.id), "the logs name the jobs");
    let mut span_text = Vec::new();
    for s in &spans {
        span_text.push(s.name.to_string());
        for kv in &s.attributes {
            span_text.push(format!("{}={}", kv.key, kv.value));
        }
        for e in s.events.iter() {
            span_text.push(e.name.to_string());
            for kv in &e.attributes {
                span_text.push(format!("{}={}", kv.key, kv.value));
            }
        }
    }
    let span_text = span_text.join("\n");
    let mut leaks = Vec::new();
    for secret in [API_KEY, ACME] {
        if logs.contains(secret) {
            leaks.push((secret, "a log line"));
        }
    }
    // Secrets, and by default no prompt text, in spans.
    for text in [API_KEY, ACME, "traced over"] {
        if span_text.contains(text) {
            leaks.push((text, "a span"));
        }
    }
    assert!(leaks.is_empty(), "leaked: {leaks:?}");
    c.cleanup(&n).await;
}

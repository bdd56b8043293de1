//! The real exporters: `vidgate serve` as a child process with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! pointing at an OTLP/gRPC receiver in this test. Its spans (the caller's trace continued) and
//! its metrics arrive over OTLP, with `service.name` from `OTEL_SERVICE_NAME`, and the last
//! spans are flushed when it stops on SIGTERM.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::{Request, Response, Status};
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;

const TRACE: &str = "6e0c63257de34c92bf9efcd03927272e";
const PARENT: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Default)]
struct Received {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn service_names(
    resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
) -> Vec<String> {
    resource
        .into_iter()
        .flat_map(|r| r.attributes.iter())
        .filter(|kv| kv.key == "service.name")
        .filter_map(
            |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_an_otlp_receiver_and_the_last_spans_are_flushed_at_exit() {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver binds");
    let otlp = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(received.clone()))
        .add_service(MetricsServiceServer::new(received.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let receiver = tokio::spawn(server);

    let grpc = free_port();
    let admin = free_port();
    let data_dir = std::env::temp_dir().join(format!(
        "vidgate-test-otlp-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vidgate"))
        .args(["serve", "--no-auth"])
        .env_remove("TURING_API_KEY")
        .env_remove("VIDGATE_AMQP_URL")
        .env_remove("VIDGATE_CONFIG")
        .env("VIDGATE_GRPC_LISTEN", grpc.to_string())
        .env("VIDGATE_ADMIN_LISTEN", admin.to_string())
        .env("VIDGATE_DATA_DIR", &data_dir)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_SERVICE_NAME", "vidgate-otlp-test")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("vidgate serve starts");

    let deadline = tokio::time::Instant::now() + WAIT;
    let mut client = loop {
        match VideoServiceClient::connect(format!("http://{grpc}")).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "vidgate did not listen: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut request = Request::new(pb::CreateVideoRequest {
        model: "turing/veo-3.1-generate".into(),
        prompt: "exported".into(),
        params: Some(pb::create_video_request::Params::Veo(pb::VeoParams {
            seconds: 4,
            size: "1280x720".into(),
            ..Default::default()
        })),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    client.create_video(request).await.expect("create");

    // Metrics are pushed periodically, while vidgate runs.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let accepted = received.metrics.lock().unwrap().iter().any(|r| {
            r.resource_metrics.iter().any(|rm| {
                service_names(rm.resource.as_ref()) == ["vidgate-otlp-test"]
                    && rm
                        .scope_metrics
                        .iter()
                        .flat_map(|sm| sm.metrics.iter())
                        .any(|m| m.name == "vidgate.jobs.accepted")
            })
        });
        if accepted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no vidgate.jobs.accepted over OTLP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: a graceful stop that flushes the last spans.
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("vidgate stops after SIGTERM")
        .expect("exit status");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "exit {status:?}: {stderr}");

    let traces = received.traces.lock().unwrap().clone();
    let trace_id = hex::decode(TRACE).unwrap();
    let spans: Vec<_> = traces
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .inspect(|rs| assert_eq!(service_names(rs.resource.as_ref()), ["vidgate-otlp-test"]))
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .filter(|s| s.trace_id == trace_id)
        .collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"vidgate.v1.VideoService/CreateVideo") && names.contains(&"INSERT jobs"),
        "spans of the caller's trace: {names:?}; stderr: {stderr}"
    );
    receiver.abort();
    let _ = std::fs::remove_dir_all(&data_dir);
}

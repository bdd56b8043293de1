//! The admin HTTP port: `/healthz`, `/readyz` (store, broker, dispatcher) and `/metrics` in
//! Prometheus text format with the right values after a known sequence of jobs; readiness
//! turns unready when the broker becomes unreachable (through a TCP proxy this test owns) and
//! ready again when it returns, and the gRPC health service says the same.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::amqp::*;
use crate::support::*;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vidgate::pb;
use vidgate::upstream::sim::{Fault, FaultEndpoint, FaultRule};

/// One sample of the exposition: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text format (enough of it for these tests: no escaped quotes in labels).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = value.parse().expect("numeric value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label pair");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Sum of the samples named `name` whose labels include every pair of `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

async fn metrics(addr: std::net::SocketAddr) -> Vec<Sample> {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_known_sequence_of_jobs() {
    let mut t = spawn_app().await;
    let admin = t.app().admin_addr().expect("admin port is on");
    let (status, body) = get(admin, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readyz is JSON");
    assert_eq!(ready["ready"], true, "{body}");
    assert_eq!(ready["store"]["state"], "ok", "{body}");
    assert_eq!(ready["broker"]["state"], "disabled", "{body}");
    assert_eq!(ready["dispatcher"]["state"], "disabled", "{body}");

    // Two 429s on the first create of one job.
    t.sim.set_faults(vec![
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::Http {
                status: 429,
                retry_after_s: None,
            },
        )
        .prompt_contains("m429")
        .times(2),
    ]);
    let mut ids = Vec::new();
    for prompt in [unique("metrics a"), unique("metrics b m429")] {
        let v = t
            .client
            .create_video(req(ACME, veo(&prompt)))
            .await
            .expect("create")
            .into_inner();
        ids.push(v.id);
    }
    let s = t
        .client
        .create_video(req(ACME, seedance(&unique("metrics c"))))
        .await
        .expect("create")
        .into_inner();
    ids.push(s.id);
    let cancelled = t
        .client
        .create_video(req(GLOBEX, veo(&unique("metrics cancelled"))))
        .await
        .expect("create")
        .into_inner();
    // Refused at the edge: not accepted, not counted.
    let mut bad = veo("bad");
    bad.model = "no-such-model".into();
    t.client
        .create_video(req(ACME, bad))
        .await
        .expect_err("an unknown model is refused");
    // An idempotent repeat is not a new job.
    let mut again = veo("repeat");
    again.request_id = "metrics-repeat".into();
    for _ in 0..2 {
        t.client
            .create_video(req(GLOBEX, again.clone()))
            .await
            .expect("create");
    }
    t.client
        .cancel_video(req(
            GLOBEX,
            pb::CancelVideoRequest {
                id: cancelled.id.clone(),
            },
        ))
        .await
        .expect("cancel");

    let m = metrics(admin).await;
    assert_eq!(
        sum(&m, "vidgate_jobs", &[("vidgate_job_status", "queued")]),
        4.0,
        "3 for acme, the repeat for globex"
    );
    assert_eq!(
        sum(&m, "vidgate_jobs", &[("vidgate_job_status", "cancelled")]),
        1.0
    );

    let done = t.drive_all(ACME, &ids).await;
    assert!(
        done.iter()
            .all(|v| v.status() == pb::VideoStatus::Completed),
        "{done:?}"
    );
    // The repeat job is driven too, then deleted (a delete of a finished job finishes nothing).
    let repeat = t
        .client
        .create_video(req(GLOBEX, again.clone()))
        .await
        .expect("create")
        .into_inner();
    t.drive(GLOBEX, &repeat.id).await;

    // One whole download.
    let size = done[0].content.as_ref().expect("content").size_bytes;
    let mut stream = t
        .client
        .download_video(req(
            ACME,
            pb::DownloadVideoRequest {
                id: done[0].id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("download")
        .into_inner();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        got += chunk.expect("chunk").data.len() as u64;
    }
    assert_eq!(got, size);
    // One live subscriber.
    let subscription = t
        .client
        .subscribe(req(ACME, pb::SubscribeRequest::default()))
        .await
        .expect("subscribe")
        .into_inner();

    let m = metrics(admin).await;
    let veo_model = [("vidgate_model", VEO)];
    assert_eq!(
        sum(
            &m,
            "vidgate_jobs_accepted_total",
            &[("vidgate_intake", "grpc"), veo_model[0]]
        ),
        4.0,
        "two veo for acme, one cancelled and one repeat for globex"
    );
    assert_eq!(
        sum(
            &m,
            "vidgate_jobs_accepted_total",
            &[("vidgate_model", SEEDANCE)]
        ),
        1.0
    );
    assert_eq!(sum(&m, "vidgate_jobs_accepted_total", &[]), 5.0);
    for (status, n) in [
        ("queued", 0.0),
        ("processing", 0.0),
        ("completed", 4.0),
        ("cancelled", 1.0),
        ("failed", 0.0),
    ] {
        assert_eq!(
            sum(&m, "vidgate_jobs", &[("vidgate_job_status", status)]),
            n,
            "jobs {status}"
        );
    }
    assert_eq!(
        sum(
            &m,
            "vidgate_jobs_finished_total",
            &[
                ("vidgate_job_outcome", "completed"),
                ("vidgate_job_reason", "none")
            ]
        ),
        4.0
    );
    assert_eq!(
        sum(
            &m,
            "vidgate_jobs_finished_total",
            &[("vidgate_job_outcome", "cancelled")]
        ),
        1.0
    );
    assert_eq!(sum(&m, "vidgate_job_duration_seconds_count", &[]), 5.0);
    // Upstream: 4 creates answered 200 and 2 answered 429 (then retried).
    let create = ("vidgate_upstream_endpoint", "create");
    assert_eq!(
        sum(
            &m,
            "vidgate_upstream_request_duration_seconds_count",
            &[create, ("http_response_status_code", "200")]
        ),
        4.0
    );
    assert_eq!(
        sum(
            &m,
            "vidgate_upstream_request_duration_seconds_count",
            &[create, ("http_response_status_code", "429")]
        ),
        2.0
    );
    assert_eq!(
        sum(&m, "vidgate_upstream_rate_limited_total", &[create]),
        2.0
    );
    assert_eq!(
        sum(
            &m,
            "vidgate_dispatcher_retries_total",
            &[("vidgate_step", "create")]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &m,
            "vidgate_upstream_request_duration_seconds_count",
            &[("vidgate_upstream_endpoint", "content")]
        ),
        4.0,
        "each video is downloaded from upstream once"
    );
    assert!(sum(&m, "vidgate_upstream_rate_limit_wait_seconds_count", &[]) >= 10.0);
    assert_eq!(
        sum(
            &m,
            "vidgate_stream_sent_bytes_total",
            &[("rpc_method", "DownloadVideo")]
        ),
        size as f64,
        "{:?}",
        m.iter()
            .map(|s| s.name.as_str())
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(
        sum(&m, "vidgate_subscribers", &[("rpc_method", "Subscribe")]),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "vidgate_subscribers",
            &[("rpc_method", "DownloadVideo")]
        ),
        0.0
    );
    drop(subscription);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(admin).await;
        if sum(&m, "vidgate_subscribers", &[("rpc_method", "Subscribe")]) == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscriber gauge did not go back to 0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The exposition is valid enough for a scraper: every family has HELP and TYPE.
    let (_, text) = get(admin, "/metrics").await;
    assert!(
        text.contains("# TYPE vidgate_jobs_accepted_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE vidgate_job_duration_seconds histogram"),
        "{text}"
    );
}

/// Polls the gRPC health service (whole server) until it reports `want`.
async fn wait_health(health: &mut HealthClient<tonic::transport::Channel>, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + vidgate::app::HEALTH_CHECK_INTERVAL * 3;
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        if status == want as i32 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gRPC health still {status}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_through_a_proxy_cut_and_back() {
    let broker = broker().await;
    let proxy = Proxy::start(broker.addr().await).await;
    let n = names("readyz");
    let config = amqp_config(&proxy.url(&broker.url), &n);
    let mut t = spawn_app_with(move |c| {
        c.amqp = config;
        c.dispatcher.enabled = true;
    })
    .await;
    let admin = t.app().admin_addr().expect("admin port is on");
    let handle = t.app().amqp().expect("AMQP is configured").clone();
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", t.app().grpc_addr()))
            .unwrap()
            .connect()
            .await
            .expect("health client"),
    );

    let wait_ready = |want: bool| async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = get(admin, "/readyz").await;
            if (status == 200) == want {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz stayed {status} ({body}), wanted ready = {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let body = wait_ready(true).await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["broker"]["state"], "ok", "{body}");
    assert_eq!(ready["dispatcher"]["state"], "ok", "{body}");

    // A delivery counts as stored.
    let c = client(&broker.url, &n.connection_name).await;
    c.publish(
        &n.jobs_exchange,
        "video.create",
        &serde_json::to_vec(&veo(&unique("readyz"))).unwrap(),
        job_properties(Some("readyz-1")),
    )
    .await;
    assert!(handle.wait_for(WAIT, |s| s.created == 1).await);
    let m = metrics(admin).await;
    assert_eq!(
        sum(
            &m,
            "vidgate_amqp_deliveries_total",
            &[("vidgate_amqp_outcome", "stored")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "vidgate_jobs_accepted_total",
            &[("vidgate_intake", "amqp")]
        ),
        1.0
    );

    proxy.cut().await;
    let body = wait_ready(false).await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false, "{body}");
    assert_eq!(report["broker"]["state"], "failing", "{body}");
    assert_eq!(report["store"]["state"], "ok", "{body}");
    // The gRPC health service follows within its check interval.
    wait_health(&mut health, ServingStatus::NotServing).await;
    // Events made meanwhile wait in the outbox: the lag shows them.
    t.client
        .create_video(req(ACME, veo(&unique("while cut"))))
        .await
        .expect("gRPC intake works without the broker");
    let lag = sum(&metrics(admin).await, "vidgate_amqp_outbox_lag", &[]);
    assert!(lag >= 1.0, "outbox lag {lag}");

    proxy.restore();
    wait_ready(true).await;
    wait_health(&mut health, ServingStatus::Serving).await;
    // ... and are published once the relay is back.
    let deadline = tokio::time::Instant::now() + WAIT;
    while sum(&metrics(admin).await, "vidgate_amqp_outbox_lag", &[]) > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(app) = t.app.take() {
        app.shutdown().await;
    }
    c.cleanup(&n).await;
}

/// Reads until the server closes the connection; how long that took (`None`: still open at
/// `give_up`).
async fn closed_after(
    mut stream: tokio::net::TcpStream,
    started: tokio::time::Instant,
    give_up: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0_u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(give_up, read_all).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_sent_and_trickling_admin_connections_are_closed_within_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    const IDLE: usize = 800;
    let timeout = Duration::from_millis(1_000);
    let bound = timeout + Duration::from_secs(2);
    let t = spawn_app_with(|c| c.admin.header_read_timeout_ms = 1_000).await;
    let admin = t.app().admin_addr().expect("admin port is on");

    // One connection that sends half a request head and one that trickles a byte every
    // 100 ms, first (so they are served, not refused at the connection cap); then 800 that
    // send nothing.
    let started = tokio::time::Instant::now();
    let mut half = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: vidgate\r\n")
        .await
        .expect("half a head");
    let trickle = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(admin)
            .await
            .expect("connect");
        let started = tokio::time::Instant::now();
        for byte in b"GET /metrics HTTP/1.1\r\nHost: vidgate\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if s.write_all(&[*byte]).await.is_err() || started.elapsed() > Duration::from_secs(30) {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        unreachable!("cycle never ends")
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(
            tokio::net::TcpStream::connect(admin)
                .await
                .expect("connect"),
        );
    }

    let waits: Vec<_> = idle
        .into_iter()
        .map(|s| tokio::spawn(closed_after(s, started, Duration::from_secs(30))))
        .collect();
    let half = closed_after(half, started, Duration::from_secs(30)).await;
    let mut slowest = Duration::ZERO;
    for wait in waits {
        let closed = wait
            .await
            .expect("join")
            .expect("an idle connection was closed");
        slowest = slowest.max(closed);
    }
    let trickled = trickle.await.expect("join");

    // Assert: every one closed within the bound (those over the connection cap at once).
    assert!(
        slowest <= bound,
        "the slowest idle connection closed after {slowest:?}"
    );
    // These two were served and closed by the header timeout, not by the cap.
    let half = half.expect("the half-sent head was closed");
    assert!(
        half >= timeout && half <= bound,
        "half a head held {half:?}"
    );
    assert!(
        trickled >= timeout && trickled <= bound + Duration::from_millis(200),
        "a trickling head held {trickled:?}"
    );
    eprintln!(
        "{IDLE} idle connections closed within {slowest:?}; half a head after {half:?}; trickle after {trickled:?}"
    );
    // And the port still serves.
    let (status, body) = get(admin, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_readyz_and_metrics_need_it_and_healthz_stays_open() {
    const TOKEN: &str = "admin-token-0123456789abcdef";
    let t = spawn_app_with(|c| c.admin.token = Some(TOKEN.into())).await;
    let admin = t.app().admin_addr().expect("admin port is on");
    let client = reqwest::Client::new();
    let ask = |path: &str, auth: Option<&str>| {
        let mut request = client.get(format!("http://{admin}{path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move {
            let response = request.send().await.expect("an answer");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    };
    let wrong = "Bearer not-the-admin-token-at-all";
    for path in ["/metrics", "/readyz"] {
        let (status, body) = ask(path, None).await;
        assert_eq!(status, 401, "{path} without a token: {body}");
        let (status, body) = ask(path, Some(wrong)).await;
        assert_eq!(status, 401, "{path} with a wrong token: {body}");
        assert!(
            !body.contains("not-the-admin-token"),
            "never echoed: {body}"
        );
        let (status, body) = ask(path, Some(&format!("bearer {TOKEN}"))).await;
        assert_eq!(status, 200, "{path} with the token: {body}");
    }
    let (status, body) = ask("/healthz", None).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok\n"),
        "liveness stays open"
    );
}

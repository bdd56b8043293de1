//! What a `kill -9` costs: only the creates really on the wire. A real `vidgate serve` child
//! process is killed with SIGKILL while a 429 pause holds every other job at the upstream gate;
//! after a restart on the same data directory, every job the simulator never received is
//! submitted normally and completes, and none is failed as an unknown outcome.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tonic::transport::Channel;
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;
use vidgate::upstream::sim::{
    Fault, FaultEndpoint, FaultRule, FaultWhen, SimConfig, SimHandle, Simulator,
};

use crate::support::*;

/// Jobs in the burst.
const JOBS: usize = 40;
/// The 429's `Retry-After`: long enough to kill the process inside the pause.
const RETRY_AFTER_S: u64 = 8;
/// `[upstream.limits] max_in_flight` of the child.
const MAX_IN_FLIGHT: u64 = 4;
/// How long anything in this test may take before it fails.
const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A `vidgate serve` child on `data_dir` against `sim`, its dispatcher running on its own.
fn spawn_serve(data_dir: &Path, sim: &SimHandle, grpc: SocketAddr) -> tokio::process::Child {
    let config = data_dir.with_extension("toml");
    std::fs::create_dir_all(data_dir).expect("data dir");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
grpc_listen = "{grpc}"

[admin]
enabled = false

[storage]
data_dir = "{data}"

[upstream]
mode = "real"
base_url = "{base}"
request_timeout_ms = 3000

[upstream.limits]
requests_per_second = 1000
max_in_flight = {MAX_IN_FLIGHT}

[dispatcher]
first_poll_after_ms = 0
poll_interval_ms = 20
poll_jitter = 0.0
backoff_min_ms = 10
backoff_max_ms = 50
idle_wake_ms = 50
submit_lease_ms = 5000
"#,
            data = data_dir.display(),
            base = sim.base_url(),
        ),
    )
    .expect("config written");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_vidgate"))
        .args(["serve", "--no-auth", "--config"])
        .arg(&config)
        .env_remove("VIDGATE_AMQP_URL")
        .env_remove("VIDGATE_CONFIG")
        .env_remove("VIDGATE_GRPC_LISTEN")
        .env_remove("VIDGATE_ADMIN_LISTEN")
        .env_remove("VIDGATE_DATA_DIR")
        .env_remove("TURING_BASE_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("TURING_API_KEY", sim.api_key())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("vidgate serve starts")
}

async fn connect(grpc: SocketAddr) -> VideoServiceClient<Channel> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match VideoServiceClient::connect(format!("http://{grpc}")).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "vidgate did not listen on {grpc}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_429_pause_fails_no_job_that_was_never_sent() {
    let sim = Simulator::start(
        SimConfig {
            faults: vec![FaultRule {
                endpoint: FaultEndpoint::Create,
                when: FaultWhen {
                    prompt_contains: None,
                    times: Some(1),
                },
                fault: Fault::Http {
                    status: 429,
                    retry_after_s: Some(RETRY_AFTER_S),
                },
            }],
            ..sim_config()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts");
    let data_dir = temp_dir("crash");
    let grpc = free_port();
    let mut first = spawn_serve(&data_dir, &sim, grpc);
    let mut client = connect(grpc).await;

    let prefix = unique("crash burst");
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let video = client
            .create_video(veo(&format!("{prefix} #{i}")))
            .await
            .expect("create")
            .into_inner();
        ids.push(video.id);
    }
    // The first create met the 429; every other job now waits at the gate for its pause.
    wait_until("the simulator refuses one create with 429", || {
        sim.stats().creates_rejected.get(&429) == Some(&1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Creates already on the wire when the 429 came may have gone through (at most the
    // in-flight cap); nothing else reaches upstream during the pause.
    let before_kill = sim.stats();
    assert!(
        before_kill.requests.create <= MAX_IN_FLIGHT,
        "{} creates reached upstream during the pause",
        before_kill.requests.create
    );
    let held = JOBS as u64 - before_kill.creates_accepted;
    assert!(held > 30, "only {held} jobs were held at the gate");

    first.start_kill().expect("SIGKILL sent");
    first.wait().await.expect("the killed child is reaped");

    let mut second = spawn_serve(&data_dir, &sim, grpc);
    let mut client = connect(grpc).await;
    let mut finished: BTreeMap<String, pb::Video> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while finished.len() < ids.len() {
        for id in &ids {
            if finished.contains_key(id) {
                continue;
            }
            let v = client
                .get_video(pb::GetVideoRequest { id: id.clone() })
                .await
                .expect("get")
                .into_inner();
            if matches!(
                v.status(),
                pb::VideoStatus::Completed | pb::VideoStatus::Failed | pb::VideoStatus::Cancelled
            ) {
                finished.insert(id.clone(), v);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} jobs finished after the restart",
            finished.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed: Vec<String> = finished
        .values()
        .filter(|v| v.status() != pb::VideoStatus::Completed)
        .map(|v| {
            format!(
                "{} {:?} {}",
                v.id,
                v.status(),
                v.error.as_ref().map_or("", |e| e.reason.as_str())
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "jobs that were never sent must not fail: {failed:?}"
    );
    let stats = sim.stats();
    assert_eq!(stats.creates_accepted, JOBS as u64, "one create per job");
    for i in 0..JOBS {
        assert_eq!(
            stats
                .creates_by_prompt
                .get(&format!("{prefix} #{i}"))
                .copied(),
            Some(1),
            "job #{i} was created upstream exactly once"
        );
    }
    assert_eq!(
        stats.requests.create,
        JOBS as u64 + 1,
        "the 40 creates and the one refused with 429"
    );
    second.start_kill().expect("stop the second child");
    let _ = second.wait().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

//! Several vidgate instances on one PostgreSQL database and one RabbitMQ broker: real
//! `Application`s in one process, sharing a schema of the test's own, one upstream simulator
//! (which counts what each job cost) and one blob directory. The database is
//! `VIDGATE_TEST_DATABASE_URL` (else testcontainers), the broker `VIDGATE_TEST_AMQP_URL` (else
//! testcontainers); without them the tests fail, saying what to set.

#[path = "../support/mod.rs"]
mod support;

mod objects;
mod webhooks;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tonic::transport::Channel;
use vidgate::app::Application;
use vidgate::config::Config;
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;
use vidgate::upstream::sim::{SimConfig, SimHandle, Simulator};

use support::amqp::{Names, amqp_config, broker, client, job_properties, names, prop};
use support::postgres::{TestSchema, database};
use support::*;

/// How long anything in these tests may take before they fail (generous: 2 shared cores).
const WAIT: Duration = Duration::from_secs(180);

/// An instance's configuration: the shared schema, data directory (blobs) and simulator.
fn instance_config(schema: &TestSchema, data_dir: &Path, sim: &SimHandle) -> Config {
    let mut c = test_config(data_dir, sim);
    c.storage.url = Some(schema.url.clone());
    c.storage.schema = Some(schema.name.clone());
    c.storage.pool_size = 5;
    c.dispatcher.enabled = true;
    c
}

async fn connect(app: &Application) -> VideoServiceClient<Channel> {
    VideoServiceClient::connect(format!("http://{}", app.grpc_addr()))
        .await
        .expect("client connects")
        .max_decoding_message_size(64 * 1024 * 1024)
}

async fn sim(config: SimConfig) -> SimHandle {
    Simulator::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("simulator starts")
}

fn terminal(v: &pb::Video) -> bool {
    matches!(
        v.status(),
        pb::VideoStatus::Completed | pb::VideoStatus::Failed | pb::VideoStatus::Cancelled
    )
}

/// Waits until `count` videos of `acme` exist and all are terminal; returns them.
async fn wait_all_terminal(
    client: &mut VideoServiceClient<Channel>,
    count: usize,
    what: &str,
) -> Vec<pb::Video> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let videos = all_videos_of(client, ACME).await;
        if videos.len() >= count && videos.iter().all(terminal) {
            return videos;
        }
        if tokio::time::Instant::now() > deadline {
            let open: BTreeMap<String, usize> =
                videos
                    .iter()
                    .filter(|v| !terminal(v))
                    .fold(BTreeMap::new(), |mut m, v| {
                        *m.entry(v.status().as_str_name().to_owned()).or_default() += 1;
                        m
                    });
            panic!(
                "{what}: after {WAIT:?}, {} of {count} videos exist and these are not finished: {open:?}",
                videos.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn stop_all(apps: Vec<Application>) {
    for app in apps {
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_finish_300_jobs_from_grpc_and_amqp_each_created_and_downloaded_once() {
    let db = database().await;
    let schema = db.schema("three_instances");
    let broker = broker().await;
    let n: Names = names("cluster3");
    let sim = sim(sim_config()).await;
    let data_dir = temp_dir("cluster3");
    let mut apps = Vec::new();
    for _ in 0..3 {
        let mut config = instance_config(&schema, &data_dir, &sim);
        config.amqp = amqp_config(&broker.url, &n);
        apps.push(Application::build(config).await.expect("instance starts"));
    }
    for app in &apps {
        let handle = app.amqp().expect("AMQP is configured").clone();
        assert!(
            handle
                .wait_for(WAIT, |s| s.consuming
                    && (s.relay_connected || s.relay_standby))
                .await,
            "an instance did not start consuming: {:?}",
            handle.status()
        );
    }
    let relays = apps
        .iter()
        .filter(|a| a.amqp().is_some_and(|h| h.status().relay_connected))
        .count();
    assert_eq!(
        relays, 1,
        "exactly one instance relays events to the broker"
    );

    let c = client(&broker.url, &n.connection_name).await;
    let events_queue = c
        .temp_queue(Some((&n.events_exchange, "acme.video.#")))
        .await;
    let mut events_rx = c.consume(&events_queue).await;

    let mut clients = Vec::new();
    for app in &apps {
        clients.push(connect(app).await);
    }
    let run = unique("cluster");
    let mut prompts = BTreeSet::new();
    // 200 over gRPC, spread over the three instances, 100 over AMQP (any instance consumes).
    let mut creates = Vec::new();
    for i in 0..200 {
        let prompt = format!("{run} grpc {i}");
        prompts.insert(prompt.clone());
        let mut client = clients[i % 3].clone();
        creates.push(tokio::spawn(async move {
            client
                .create_video(req(ACME, veo(&prompt)))
                .await
                .expect("create")
                .into_inner()
        }));
    }
    for i in 0..100 {
        let prompt = format!("{run} amqp {i}");
        prompts.insert(prompt.clone());
        let body = serde_json::to_vec(&veo(&prompt)).expect("json");
        c.publish(
            &n.jobs_exchange,
            "video.create",
            &body,
            job_properties(Some(&format!("m-{run}-{i}"))),
        )
        .await;
    }
    for create in creates {
        create.await.expect("create task");
    }

    let videos = wait_all_terminal(&mut clients[0], 300, "300 jobs on three instances").await;
    assert_eq!(videos.len(), 300);
    let failed: Vec<_> = videos
        .iter()
        .filter(|v| v.status() != pb::VideoStatus::Completed)
        .map(|v| (v.id.clone(), v.error.clone()))
        .collect();
    assert!(failed.is_empty(), "every job completes: {failed:?}");

    // The simulator: exactly one create per prompt, one content request per task.
    let stats = sim.stats();
    for prompt in &prompts {
        assert_eq!(
            stats.creates_by_prompt.get(prompt).copied(),
            Some(1),
            "{prompt:?} was created upstream exactly once"
        );
    }
    let ours: Vec<_> = stats
        .tasks
        .values()
        .filter(|t| prompts.contains(&t.prompt))
        .collect();
    assert_eq!(ours.len(), 300);
    for task in ours {
        assert_eq!(
            task.content_requests, 1,
            "{:?} was downloaded exactly once",
            task.prompt
        );
    }

    // Events reached the events exchange once each, from one relay: every sequence of the log.
    let store = apps[0].store();
    let latest = store.latest_sequence().await.expect("latest");
    let mut seen = BTreeMap::<i64, u32>::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while (seen.len() as i64) < latest {
        let delivery = tokio::time::timeout_at(deadline, events_rx.next())
            .await
            .unwrap_or_else(|_| panic!("the events exchange got {} of {latest} events", seen.len()))
            .expect("consumer open")
            .expect("delivery");
        let sequence: i64 = prop(delivery.properties.message_id())
            .parse()
            .expect("message_id is a sequence");
        *seen.entry(sequence).or_default() += 1;
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=latest).collect::<Vec<_>>()
    );
    // Anything still arriving would be a second copy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(200), events_rx.next()).await
    {
        let sequence: i64 = prop(delivery.properties.message_id())
            .parse()
            .expect("sequence");
        *seen.entry(sequence).or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "each event is published once by the cluster: {repeated:?}"
    );

    stop_all(apps).await;
    c.cleanup(&n).await;
    schema.drop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// An instance in a runtime of its own, so the test can kill it: dropping the runtime aborts
/// every task without a graceful shutdown, and its database connections simply close.
struct Killable {
    grpc: std::net::SocketAddr,
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn start_killable(config: Config) -> Killable {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (kill, kill_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let app = runtime.block_on(async { Application::build(config).await.expect("starts") });
        addr_tx.send(app.grpc_addr()).expect("address sent");
        let _ = kill_rx.recv();
        // No shutdown: every task is aborted where it stands.
        runtime.shutdown_background();
        drop(app);
    });
    let grpc = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the killable instance started");
    Killable { grpc, kill, thread }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_killed_instance_are_finished_by_the_others_and_none_is_sent_twice() {
    const JOBS: usize = 60;
    let db = database().await;
    let schema = db.schema("killed_instance");
    // Slow enough that the killed instance owns jobs in every stage when it dies.
    let sim = sim(SimConfig {
        queued_ms: 300,
        processing_ms: 1_500,
        jitter: 0.0,
        ..SimConfig::default()
    })
    .await;
    let data_dir = temp_dir("killed");
    let short_leases = |c: &mut Config| {
        c.dispatcher.lease_ms = 3_000;
        c.dispatcher.submit_lease_ms = 3_000;
        c.dispatcher.poll_interval_ms = 100;
    };
    let mut doomed_config = instance_config(&schema, &data_dir, &sim);
    short_leases(&mut doomed_config);
    let doomed = start_killable(doomed_config);
    let mut doomed_client = VideoServiceClient::connect(format!("http://{}", doomed.grpc))
        .await
        .expect("connect");

    let run = unique("killed");
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let video = doomed_client
            .create_video(req(ACME, veo(&format!("{run} {i}"))))
            .await
            .expect("create")
            .into_inner();
        ids.push(video.id);
    }
    // Let it submit and poll for a while, then kill it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    doomed.kill.send(()).expect("kill");
    doomed
        .thread
        .join()
        .expect("the killed instance's thread ends");

    // The survivors start only now, so every job the dead one held must come through its lease.
    let mut survivors = Vec::new();
    for _ in 0..2 {
        let mut config = instance_config(&schema, &data_dir, &sim);
        short_leases(&mut config);
        survivors.push(Application::build(config).await.expect("survivor starts"));
    }
    let mut client = connect(&survivors[0]).await;
    let videos = wait_all_terminal(&mut client, JOBS, "jobs of the killed instance").await;

    assert_eq!(
        videos.iter().map(|v| v.id.clone()).collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        "every accepted job is there"
    );
    let stats = sim.stats();
    let mut completed = 0;
    for video in &videos {
        match video.status() {
            pb::VideoStatus::Completed => completed += 1,
            pb::VideoStatus::Failed => {
                let reason = video
                    .error
                    .as_ref()
                    .map(|e| e.reason.clone())
                    .unwrap_or_default();
                assert_eq!(
                    reason, "UPSTREAM_OUTCOME_UNKNOWN",
                    "only jobs that were on the wire when the instance died may fail: {video:?}"
                );
            }
            other => panic!("unexpected {other:?}: {video:?}"),
        }
    }
    for i in 0..JOBS {
        let prompt = format!("{run} {i}");
        let creates = stats.creates_by_prompt.get(&prompt).copied().unwrap_or(0);
        assert!(
            creates <= 1,
            "{prompt:?} was sent upstream {creates} times: never twice"
        );
    }
    eprintln!(
        "killed instance: {completed} of {JOBS} completed by the survivors, {} unknown outcomes",
        JOBS - completed
    );
    assert!(
        completed >= JOBS / 2,
        "most jobs complete after the takeover ({completed} of {JOBS})"
    );

    stop_all(survivors).await;
    schema.drop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_instance_gets_every_event_of_jobs_created_on_another_and_run_by_a_third()
 {
    const JOBS: usize = 10;
    let db = database().await;
    let schema = db.schema("subscribe_across");
    let sim = sim(sim_config()).await;
    let data_dir = temp_dir("across");
    let mut a_config = instance_config(&schema, &data_dir, &sim);
    a_config.dispatcher.enabled = false;
    let mut b_config = instance_config(&schema, &data_dir, &sim);
    b_config.dispatcher.enabled = false;
    let c_config = instance_config(&schema, &data_dir, &sim);
    let a = Application::build(a_config).await.expect("A starts");
    let b = Application::build(b_config).await.expect("B starts");
    let mut a_client = connect(&a).await;
    let mut b_client = connect(&b).await;

    let mut stream = a_client
        .subscribe(req(ACME, pb::SubscribeRequest::default()))
        .await
        .expect("subscribe on A")
        .into_inner();
    let mut ids = BTreeSet::new();
    for i in 0..JOBS {
        let video = b_client
            .create_video(req(ACME, veo(&unique(&format!("across {i}")))))
            .await
            .expect("create on B")
            .into_inner();
        ids.insert(video.id);
    }
    // Only now does anything dispatch: C.
    let c = Application::build(c_config).await.expect("C starts");

    let mut events = Vec::new();
    let mut completed = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while completed.len() < JOBS {
        let event = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "A's stream got {} events, {} jobs completed",
                    events.len(),
                    completed.len()
                )
            })
            .expect("stream ok")
            .expect("stream open");
        if let Some(pb::video_event::Kind::Video(video)) = &event.kind {
            assert!(ids.contains(&video.id), "only this test's jobs: {video:?}");
            if video.status() == pb::VideoStatus::Completed {
                completed.insert(video.id.clone());
            }
        }
        events.push(event);
    }
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    for pair in sequences.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "A's stream is in sequence order without gaps: {sequences:?}"
        );
    }
    // Resuming on another instance from a cursor gives the same events from there on.
    let cursor = sequences[sequences.len() / 2];
    let mut resumed = b_client
        .subscribe(req(
            ACME,
            pb::SubscribeRequest {
                after_sequence: cursor,
                ..Default::default()
            },
        ))
        .await
        .expect("subscribe on B")
        .into_inner();
    let expected: Vec<i64> = sequences.iter().copied().filter(|s| *s > cursor).collect();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let event = tokio::time::timeout_at(deadline, resumed.message())
            .await
            .expect("resumed stream in time")
            .expect("ok")
            .expect("open");
        got.push(event.sequence);
    }
    assert_eq!(got, expected, "resuming on B from A's cursor");

    drop(stream);
    drop(resumed);
    stop_all(vec![a, b, c]).await;
    schema.drop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_on_two_instances_at_once_is_one_job() {
    let db = database().await;
    let schema = db.schema("request_id_race");
    let sim = sim(sim_config()).await;
    let data_dir = temp_dir("race");
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut config = instance_config(&schema, &data_dir, &sim);
        config.dispatcher.enabled = false;
        apps.push(Application::build(config).await.expect("starts"));
    }
    let mut one = connect(&apps[0]).await;
    let mut two = connect(&apps[1]).await;
    for round in 0..30 {
        let mut request = veo(&format!("race {round}"));
        request.request_id = unique("same-key");
        let (a, b) = tokio::join!(
            one.create_video(req(ACME, request.clone())),
            two.create_video(req(ACME, request.clone()))
        );
        let (a, b) = (
            a.expect("create on one").into_inner(),
            b.expect("create on two").into_inner(),
        );
        assert_eq!(a.id, b.id, "round {round}: both callers get the one job");
    }
    assert_eq!(all_videos_of(&mut one, ACME).await.len(), 30);
    stop_all(apps).await;
    schema.drop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// `/readyz` of `app`: its status code.
async fn readyz(app: &Application) -> u16 {
    let addr = app.admin_addr().expect("admin port on");
    match reqwest::Client::new()
        .get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_readyz(app: &Application, want: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = readyz(app).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: /readyz answered {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_database_goes_away_rpcs_say_unavailable_readiness_drops_and_both_come_back() {
    let db = database().await;
    let schema = db.schema("database_cut");
    // The instance reaches PostgreSQL through a proxy this test owns; cutting it cuts only
    // this instance's connections.
    let proxy = support::amqp::Proxy::start(db.addr().await).await;
    let sim = sim(sim_config()).await;
    let data_dir = temp_dir("dbcut");
    let broker = broker().await;
    let n: Names = names("dbcut");
    let mut config = instance_config(&schema, &data_dir, &sim);
    config.storage.url = Some(proxy.url(&schema.url));
    config.storage.statement_timeout_ms = 2_000;
    config.amqp = amqp_config(&broker.url, &n);
    // A step whose write failed during the cut is taken up again when its lease ends.
    config.dispatcher.lease_ms = 5_000;
    config.dispatcher.submit_lease_ms = 5_000;
    let app = Application::build(config).await.expect("starts");
    let mut client = connect(&app).await;
    let before = client
        .create_video(req(ACME, veo(&unique("before the cut"))))
        .await
        .expect("create before the cut")
        .into_inner();
    wait_readyz(&app, 200, "ready before the cut").await;

    let started = std::time::Instant::now();
    proxy.cut().await;
    let refused = client
        .create_video(req(ACME, veo(&unique("during the cut"))))
        .await
        .expect_err("no database, no accept");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(error_reason(&refused), "STORE_UNAVAILABLE", "{refused:?}");
    let details = tonic_types::StatusExt::get_error_details(&refused);
    assert!(
        details.retry_info().is_some(),
        "UNAVAILABLE carries RetryInfo: {refused:?}"
    );
    assert!(
        !refused.message().contains(&schema.url),
        "the database URL is not echoed: {refused:?}"
    );
    eprintln!("database cut: create refused after {:?}", started.elapsed());
    wait_readyz(&app, 503, "not ready while the database is away").await;
    eprintln!("database cut: not ready after {:?}", started.elapsed());
    // A job published meanwhile is held, not requeued twenty times into the dead letters.
    let c = support::amqp::client(&broker.url, &n.connection_name).await;
    let body = serde_json::to_vec(&veo(&unique("published during the cut"))).expect("json");
    c.publish(
        &n.jobs_exchange,
        "video.create",
        &body,
        job_properties(Some(&unique("m-dbcut"))),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    proxy.restore();
    wait_readyz(&app, 200, "ready again once the database is back").await;
    eprintln!("database back: ready after {:?}", started.elapsed());
    let after = client
        .create_video(req(ACME, veo(&unique("after the cut"))))
        .await
        .expect("create after the cut, without a restart")
        .into_inner();
    // Nothing accepted was lost, and the work goes on.
    let videos = wait_all_terminal(&mut client, 3, "every accepted job finishes").await;
    let ids: BTreeSet<_> = videos.iter().map(|v| v.id.clone()).collect();
    assert_eq!(videos.len(), 3, "{videos:?}");
    assert!(ids.contains(&before.id) && ids.contains(&after.id));
    let status = app.amqp().expect("AMQP").status();
    assert_eq!(status.dead_lettered, 0, "{status:?}");
    assert_eq!(c.queue_len(&n.dead_queue).await, 0, "nothing dead-lettered");
    // A job whose create was answered while the database was away could not record the
    // answer: when its submit lease ends it follows the unknown-outcome rule (never sent twice).
    // Anything else completes.
    for video in &videos {
        let unknown = video.status() == pb::VideoStatus::Failed
            && video
                .error
                .as_ref()
                .is_some_and(|e| e.reason == "UPSTREAM_OUTCOME_UNKNOWN");
        assert!(
            video.status() == pb::VideoStatus::Completed || unknown,
            "{video:?}"
        );
    }

    // Slow store operations are a metric (the count depends on the machine; its presence not).
    let admin = app.admin_addr().expect("admin port on");
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("vidgate_store_slow_operations_total"),
        "the slow-operation counter is exported"
    );

    app.shutdown().await;
    c.cleanup(&n).await;
    schema.drop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_relaying_instance_stops_another_takes_the_relay_over_from_the_shared_cursor() {
    let db = database().await;
    let schema = db.schema("relay_takeover");
    let broker = broker().await;
    let n: Names = names("relay2");
    let sim = sim(sim_config()).await;
    let data_dir = temp_dir("relay2");
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut config = instance_config(&schema, &data_dir, &sim);
        config.dispatcher.enabled = false;
        config.amqp = amqp_config(&broker.url, &n);
        config.amqp.intake = false;
        apps.push(Application::build(config).await.expect("instance starts"));
    }
    for app in &apps {
        let handle = app.amqp().expect("AMQP is configured").clone();
        assert!(
            handle
                .wait_for(WAIT, |s| s.relay_connected || s.relay_standby)
                .await,
            "{:?}",
            handle.status()
        );
    }
    let holder = apps
        .iter()
        .position(|a| a.amqp().is_some_and(|h| h.status().relay_connected))
        .expect("one instance relays");
    let other = 1 - holder;
    let c = client(&broker.url, &n.connection_name).await;
    let queue = c
        .temp_queue(Some((&n.events_exchange, "acme.video.#")))
        .await;
    let mut rx = c.consume(&queue).await;

    let mut creator = connect(&apps[other]).await;
    let first = creator
        .create_video(req(ACME, veo(&unique("before the handover"))))
        .await
        .expect("create")
        .into_inner();
    // The holder goes away (a clean stop gives the role up at once).
    let stopping = apps.remove(holder);
    stopping.shutdown().await;
    let survivor = &apps[0];
    let handle = survivor.amqp().expect("AMQP").clone();
    assert!(
        handle
            .wait_for(WAIT, |s| s.relay_connected && !s.relay_standby)
            .await,
        "the standby takes the relay over: {:?}",
        handle.status()
    );
    let second = creator
        .create_video(req(ACME, veo(&unique("after the handover"))))
        .await
        .expect("create")
        .into_inner();
    // Both events reach the exchange (the first possibly twice: at-least-once), in order.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains(&second.last_sequence) {
        let delivery = tokio::time::timeout_at(deadline, rx.next())
            .await
            .unwrap_or_else(|_| panic!("events so far: {seen:?}"))
            .expect("consumer open")
            .expect("delivery");
        seen.push(
            prop(delivery.properties.message_id())
                .parse::<i64>()
                .expect("sequence"),
        );
    }
    assert!(seen.contains(&first.last_sequence), "{seen:?}");

    stop_all(apps).await;
    c.cleanup(&n).await;
    schema.drop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

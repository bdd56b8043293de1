//! The broker side of the AMQP tests: where the broker is, unique names per test, the test's
//! own client connection, a TCP proxy the test owns (to cut vidgate's connections), and
//! closing one named connection with `rabbitmqctl`.
//!
//! The broker is `VIDGATE_TEST_AMQP_URL` when set (CI sets it to the machine's RabbitMQ),
//! otherwise a RabbitMQ started by testcontainers; when neither works the test fails with a
//! message saying what to set. Tests never stop the shared broker nor touch connections other
//! than their own.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use testcontainers_modules::rabbitmq::RabbitMq;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use vidgate::intake::amqp::AmqpConfig;
use vidgate::pb;

pub const TEST_URL_ENV: &str = "VIDGATE_TEST_AMQP_URL";
/// How long a test waits for something that should happen before it fails (generous: the
/// machine and the broker are shared). Never a measurement.
pub const WAIT: Duration = Duration::from_secs(60);
/// The RabbitMQ image testcontainers starts when no broker URL is given.
pub const RABBITMQ_TAG: &str = "3.10-management";

pub struct Broker {
    pub url: String,
    _container: Option<ContainerAsync<RabbitMq>>,
}

impl Broker {
    /// The broker user of the URL (the only `user_id` the broker lets this test publish).
    pub fn user(&self) -> String {
        url::Url::parse(&self.url)
            .ok()
            .map(|u| u.username().to_owned())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "guest".to_owned())
    }

    /// host:port of the broker.
    pub async fn addr(&self) -> SocketAddr {
        let u = url::Url::parse(&self.url).expect("broker URL parses");
        let host = u.host_str().expect("broker URL has a host").to_owned();
        let port = u.port().unwrap_or(5672);
        tokio::net::lookup_host((host.as_str(), port))
            .await
            .expect("broker host resolves")
            .next()
            .expect("broker host has an address")
    }
}

/// The broker of this test run.
pub async fn broker() -> Broker {
    if let Ok(url) = std::env::var(TEST_URL_ENV)
        && !url.is_empty()
    {
        return Broker {
            url,
            _container: None,
        };
    }
    let started = tokio::time::timeout(
        Duration::from_secs(180),
        RabbitMq::default().with_tag(RABBITMQ_TAG).start(),
    )
    .await;
    fn fail(why: String) -> ! {
        panic!(
            "no RabbitMQ for the AMQP tests: {TEST_URL_ENV} is not set and testcontainers could not start one ({why}). \
             Set {TEST_URL_ENV}=amqp://guest:guest@127.0.0.1:5672/%2f to use a running broker."
        )
    }
    let container = match started {
        Ok(Ok(container)) => container,
        Ok(Err(e)) => fail(e.to_string()),
        Err(_) => fail("it did not start within 180 s".into()),
    };
    let host = container
        .get_host()
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    let port = container
        .get_host_port_ipv4(5672)
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    Broker {
        url: format!("amqp://guest:guest@{host}:{port}/%2f"),
        _container: Some(container),
    }
}

/// Unique names of one test's topology.
#[derive(Debug, Clone)]
pub struct Names {
    pub connection_name: String,
    pub jobs_exchange: String,
    pub jobs_queue: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    pub events_exchange: String,
}

pub fn names(test: &str) -> Names {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let p = format!("vgtest.{test}.{}", &id[id.len() - 12..]);
    Names {
        connection_name: p.clone(),
        jobs_exchange: format!("{p}.jobs"),
        jobs_queue: format!("{p}.jobs"),
        dead_exchange: format!("{p}.dead"),
        dead_queue: format!("{p}.jobs.dead"),
        events_exchange: format!("{p}.events"),
    }
}

/// vidgate's `[amqp]` for a test: its names, tenant `acme` for the queue, quick reconnects.
pub fn amqp_config(url: &str, n: &Names) -> AmqpConfig {
    AmqpConfig {
        url: Some(url.to_owned()),
        connection_name: n.connection_name.clone(),
        jobs_exchange: n.jobs_exchange.clone(),
        jobs_queue: n.jobs_queue.clone(),
        dead_exchange: n.dead_exchange.clone(),
        dead_queue: n.dead_queue.clone(),
        events_exchange: n.events_exchange.clone(),
        tenant: Some("acme".into()),
        prefetch: 16,
        reconnect_min_ms: 50,
        reconnect_max_ms: 500,
        recovery_attempts: 3,
        connect_timeout_ms: 5_000,
        confirm_timeout_ms: 10_000,
        ..AmqpConfig::default()
    }
}

/// The test's own connection to the broker, with a channel in confirm mode.
pub struct Client {
    pub connection: Connection,
    pub channel: Channel,
}

pub async fn client(url: &str, name: &str) -> Client {
    let connection = Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(format!("{name}-test-client").into()),
    )
    .await
    .expect("the test connects to the broker");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    Client {
        connection,
        channel,
    }
}

pub fn short(s: &str) -> ShortString {
    ShortString::try_new(s).expect("short string")
}

/// Properties of a job message.
pub fn job_properties(message_id: Option<&str>) -> BasicProperties {
    let p = BasicProperties::default()
        .with_content_type(short("application/json"))
        .with_delivery_mode(2);
    match message_id {
        Some(id) => p.with_message_id(short(id)),
        None => p,
    }
}

impl Client {
    /// Publishes and waits for the broker's ack.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        p: BasicProperties,
    ) {
        let confirm = self
            .channel
            .basic_publish(
                short(exchange),
                short(routing_key),
                BasicPublishOptions::default(),
                body,
                p,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            confirm.is_ack(),
            "the broker refused a test message: {confirm:?}"
        );
    }

    /// A server-named, exclusive queue, bound to `exchange` with `key` when given.
    pub async fn temp_queue(&self, bind: Option<(&str, &str)>) -> String {
        let q = self
            .channel
            .queue_declare(
                short(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("temp queue");
        let name = q.name().as_str().to_owned();
        if let Some((exchange, key)) = bind {
            self.channel
                .queue_bind(
                    short(&name),
                    short(exchange),
                    short(key),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind");
        }
        name
    }

    /// An auto-ack consumer of `queue` on its own channel.
    pub async fn consume(&self, queue: &str) -> Consumer {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .basic_consume(
                short(queue),
                short(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume")
    }

    /// Messages ready in a queue that exists.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let q = channel
            .queue_declare(
                short(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare");
        let _ = channel.close(200, short("done")).await;
        q.message_count()
    }

    /// Deletes a test's queues and exchanges (call after vidgate has stopped).
    pub async fn cleanup(&self, n: &Names) {
        for q in [&n.jobs_queue, &n.dead_queue] {
            let _ = self
                .channel
                .queue_delete(short(q), QueueDeleteOptions::default())
                .await;
        }
        for e in [&n.jobs_exchange, &n.dead_exchange, &n.events_exchange] {
            let _ = self
                .channel
                .exchange_delete(short(e), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, short("test done")).await;
    }
}

/// The next delivery of `consumer`, or a failure naming `what` after [`WAIT`].
pub async fn next(consumer: &mut Consumer, what: &str) -> Delivery {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(other) => panic!("{what}: consumer ended: {other:?}"),
        Err(_) => panic!("{what}: nothing arrived within {WAIT:?}"),
    }
}

/// Reads a `VideoEvent` body (proto3 JSON).
pub fn event_of(delivery: &Delivery) -> pb::VideoEvent {
    serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
        panic!(
            "not a VideoEvent in JSON ({e}): {}",
            String::from_utf8_lossy(&delivery.data)
        )
    })
}

pub fn prop(value: &Option<ShortString>) -> String {
    value
        .as_ref()
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

pub fn header(delivery: &Delivery, key: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Closes the broker connections whose client-provided name (`connection_name` client
/// property) is exactly `name`, with `rabbitmqctl` as an operator would; returns how many.
/// Other connections are untouched.
pub async fn close_connection_named(name: &str) -> usize {
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "rabbitmqctl is needed to cut the test's own connection and did not run: {e}"
                )
            });
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "rabbitmqctl list_connections failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut closed = 0;
        for line in listing.lines() {
            let Some((pid, properties)) = line.split_once('\t') else {
                continue;
            };
            if !properties.contains(&needle) {
                continue;
            }
            let status = std::process::Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "close_connection",
                    pid,
                    "vidgate test: cutting its own connection",
                ])
                .status()
                .expect("rabbitmqctl close_connection runs");
            assert!(
                status.success(),
                "rabbitmqctl close_connection {pid} failed"
            );
            closed += 1;
        }
        closed
    })
    .await
    .expect("rabbitmqctl task")
}

/// A TCP proxy the test owns between vidgate and the broker: `cut` drops every connection
/// through it and refuses new ones until `restore`.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(JoinSet::new()));
        let (accept_up, accept_links) = (up.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                accept_links.lock().await.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            links,
            accept,
        }
    }

    /// `broker_url` with its host and port replaced by the proxy's.
    pub fn url(&self, broker_url: &str) -> String {
        let mut u = url::Url::parse(broker_url).expect("broker URL parses");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(self.addr.port())).expect("port");
        u.to_string()
    }

    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.links.lock().await.abort_all();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Collects events from `consumer` until every sequence in `want` has arrived; returns the
/// deliveries in arrival order (duplicates included).
pub async fn collect_sequences(consumer: &mut Consumer, want: &[i64], what: &str) -> Vec<Delivery> {
    let mut missing: HashSet<i64> = want.iter().copied().collect();
    let mut got = Vec::new();
    while !missing.is_empty() {
        let d = next(consumer, &format!("{what} (still missing {missing:?})")).await;
        let seq: i64 = prop(d.properties.message_id())
            .parse()
            .expect("message_id is a sequence");
        missing.remove(&seq);
        got.push(d);
    }
    got
}

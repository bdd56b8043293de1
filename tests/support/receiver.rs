//! A webhook receiver for tests: an HTTP server on 127.0.0.1 that records every request and
//! verifies its Standard Webhooks signature with the scheme's own library, against every
//! secret the test gave it. It can answer 503 or 410, be slow, or be down (its port closed,
//! then opened again on the same port).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 204 No Content.
    Accept,
    /// 503 Service Unavailable.
    Unavailable,
    /// 410 Gone.
    Gone,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Bytes,
    /// Which of the secrets (by their index in `Receiver::set_secrets`) verify it.
    pub verified_by: Vec<usize>,
    /// What the receiver answered.
    pub answered: u16,
}

#[derive(Default)]
struct Shared {
    secrets: Mutex<Vec<String>>,
    got: Mutex<Vec<Received>>,
    mode: AtomicU8,
    delay_ms: AtomicU64,
    started: AtomicU64,
}

pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

async fn hook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    shared.started.fetch_add(1, Ordering::Relaxed);
    let delay = shared.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let secrets = shared.secrets.lock().unwrap().clone();
    let verified_by = secrets
        .iter()
        .enumerate()
        .filter(|(_, secret)| {
            standardwebhooks::Webhook::new(secret)
                .map(|w| w.verify(&body, &headers).is_ok())
                .unwrap_or(false)
        })
        .map(|(i, _)| i)
        .collect();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let status = match shared.mode.load(Ordering::Relaxed) {
        1 => StatusCode::SERVICE_UNAVAILABLE,
        2 => StatusCode::GONE,
        _ => StatusCode::NO_CONTENT,
    };
    shared.got.lock().unwrap().push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
        verified_by,
        answered: status.as_u16(),
    });
    status
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver {
            addr,
            shared: Arc::new(Shared::default()),
            server: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(self.shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.server.lock().unwrap() = Some(task);
    }

    /// `http://127.0.0.1:<port>/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_secrets(&self, secrets: &[&str]) {
        *self.shared.secrets.lock().unwrap() = secrets.iter().map(|s| (*s).to_owned()).collect();
    }

    pub fn set_mode(&self, mode: Mode) {
        let value = match mode {
            Mode::Accept => 0,
            Mode::Unavailable => 1,
            Mode::Gone => 2,
        };
        self.shared.mode.store(value, Ordering::Relaxed);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Closes the port (connections are refused) until [`Receiver::up`].
    pub fn down(&self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&self) {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "the receiver's port {} cannot be bound again: {e}",
                    self.addr
                ),
            }
        };
        self.serve(listener);
    }

    /// Requests that arrived and were not answered yet (slow mode).
    pub fn in_flight(&self) -> u64 {
        let answered = self.shared.got.lock().unwrap().len() as u64;
        self.shared
            .started
            .load(Ordering::Relaxed)
            .saturating_sub(answered)
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.got.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received, or fails after `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver did not get {what} within {within:?}; it got {} requests: {:?}",
                got.len(),
                got.iter()
                    .map(|r| (r.id.as_str(), r.answered))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

//! A deliberately hostile upstream for the hardening tests (#14): it speaks just enough of the
//! `/videos` contract (create, status, content) for jobs to reach the download, then does what
//! the test asks: content without end, a trickle, redirects to internal addresses, a failed
//! task that echoes the `Authorization` header, a `last_frame_url` of its choosing. Behaviour is
//! chosen per job by a word in its prompt. Every request is recorded with its `Authorization`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde_json::{Value, json};
use vidgate::upstream::sim::mp4gen::{GeneratedMp4, Mp4Params};

/// What the upstream does for jobs whose prompt contains `word`.
#[derive(Clone, Debug)]
pub enum Act {
    /// A real, valid MP4 (the default for every other job).
    Honest,
    /// `ftyp` and then zeros without end, no `Content-Length`.
    Endless,
    /// Claims a `Content-Length` of this many bytes (and sends a real MP4 head).
    Announces(u64),
    /// The real MP4 at this many bytes per second.
    Trickle(u64),
    /// `302` to this URL.
    Redirect(String),
    /// The task fails with a message that echoes the request's `Authorization` header.
    FailEchoingAuth,
    /// Completes with this `last_frame_url` (the content itself is honest).
    LastFrame(String),
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

struct Inner {
    acts: Vec<(String, Act)>,
    tasks: HashMap<String, Act>,
    seen: Vec<Seen>,
    next: u64,
}

#[derive(Clone)]
pub struct Hostile {
    inner: Arc<Mutex<Inner>>,
    mp4: GeneratedMp4,
    pub addr: SocketAddr,
    pub key: String,
}

impl Hostile {
    /// Starts the server on a free loopback port; `acts` maps prompt words to behaviour.
    pub async fn start(acts: Vec<(&str, Act)>) -> Hostile {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the hostile upstream");
        let addr = listener.local_addr().expect("its address");
        let mp4 = GeneratedMp4::generate(&Mp4Params::new(1280, 720, 4_000)).expect("an MP4");
        let hostile = Hostile {
            inner: Arc::new(Mutex::new(Inner {
                acts: acts.into_iter().map(|(w, a)| (w.to_owned(), a)).collect(),
                tasks: HashMap::new(),
                seen: Vec::new(),
                next: 0,
            })),
            mp4,
            addr,
            key: "sk-hostile-test-key-0123456789".into(),
        };
        let app = Router::new()
            .route("/api/v1/videos", post(create))
            .route("/api/v1/videos/{id}", get(status))
            .route("/api/v1/videos/{id}/content", get(content))
            .route("/frame.png", get(frame))
            .with_state(hostile.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        hostile
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// From now on, jobs whose prompt contains `word` get `act` (for URLs known only once
    /// the app runs, such as its admin port).
    pub fn set(&self, word: &str, act: Act) {
        self.inner
            .lock()
            .expect("lock")
            .acts
            .insert(0, (word.to_owned(), act));
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().expect("lock").seen.clone()
    }

    fn record(&self, method: &str, path: String, headers: &HeaderMap) {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.inner.lock().expect("lock").seen.push(Seen {
            method: method.into(),
            path,
            authorization,
        });
    }

    fn act(&self, id: &str) -> Act {
        self.inner
            .lock()
            .expect("lock")
            .tasks
            .get(id)
            .cloned()
            .unwrap_or(Act::Honest)
    }
}

async fn create(State(h): State<Hostile>, headers: HeaderMap, body: Bytes) -> Response {
    h.record("POST", "/api/v1/videos".into(), &headers);
    let prompt = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("prompt").and_then(|p| p.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let mut inner = h.inner.lock().expect("lock");
    inner.next += 1;
    let id = format!("video-{}", inner.next);
    let act = inner
        .acts
        .iter()
        .find(|(word, _)| prompt.contains(word.as_str()))
        .map(|(_, a)| a.clone())
        .unwrap_or(Act::Honest);
    inner.tasks.insert(id.clone(), act);
    axum::Json(json!({"id": id, "object": "video", "status": "queued"})).into_response()
}

async fn status(State(h): State<Hostile>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    h.record("GET", format!("/api/v1/videos/{id}"), &headers);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match h.act(&id) {
        Act::FailEchoingAuth => json!({
            "id": id, "status": "failed",
            "error": {"code": "bad_request", "message": format!("request rejected; headers were: Authorization: {auth}; Host: upstream")}
        }),
        Act::LastFrame(url) => json!({
            "id": id, "status": "completed", "progress": 100,
            "content": {"last_frame_url": url.replace("{self}", &h.addr.to_string())}
        }),
        _ => json!({"id": id, "status": "completed", "progress": 100}),
    };
    axum::Json(body).into_response()
}

async fn content(State(h): State<Hostile>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    h.record("GET", format!("/api/v1/videos/{id}/content"), &headers);
    let whole = Bytes::from(h.mp4.to_vec());
    match h.act(&id) {
        Act::Endless => {
            let head = whole.slice(..32);
            let stream = async_stream::stream! {
                yield Ok::<_, std::io::Error>(head);
                let zeros = Bytes::from(vec![0u8; 64 * 1024]);
                loop {
                    yield Ok(zeros.clone());
                }
            };
            Response::builder()
                .header(header::CONTENT_TYPE, "video/mp4")
                .body(Body::from_stream(stream))
                .expect("response")
        }
        Act::Announces(n) => {
            // A stream (no size of its own), so the header is what the client sees.
            let head = whole.slice(..32);
            // ... and then nothing (a stream that ends short makes hyper drop the answer).
            let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
                .chain(futures::stream::pending());
            Response::builder()
                .header(header::CONTENT_TYPE, "video/mp4")
                .header(header::CONTENT_LENGTH, n.to_string())
                .body(Body::from_stream(stream))
                .expect("response")
        }
        Act::Trickle(per_second) => {
            let step = per_second.max(1) as usize;
            let stream = async_stream::stream! {
                let mut at = 0;
                while at < whole.len() {
                    let end = (at + step).min(whole.len());
                    yield Ok::<_, std::io::Error>(whole.slice(at..end));
                    at = end;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            };
            Response::builder()
                .header(header::CONTENT_TYPE, "video/mp4")
                .body(Body::from_stream(stream))
                .expect("response")
        }
        Act::Redirect(to) => (
            StatusCode::FOUND,
            [(header::LOCATION, to.replace("{self}", &h.addr.to_string()))],
        )
            .into_response(),
        _ => Response::builder()
            .header(header::CONTENT_TYPE, "video/mp4")
            .body(Body::from(whole))
            .expect("response"),
    }
}

/// A tiny valid PNG, for a last frame on the upstream's own origin.
async fn frame(State(h): State<Hostile>, headers: HeaderMap) -> Response {
    h.record("GET", "/frame.png".into(), &headers);
    let png = vidgate::upstream::sim::mp4gen::last_frame_png(64, 36, 1).expect("png");
    ([(header::CONTENT_TYPE, "image/png")], png).into_response()
}

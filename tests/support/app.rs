//! `spawn_app()`: the real startup (`Application::build`) on port 0, with a temp data dir, two
//! tenants, and the upstream simulator at millisecond timings. The dispatcher is stepped by the
//! tests ([`TestApp::drive`]), never left to timers.

use std::path::PathBuf;
use std::time::Duration;

use tonic::Request;
use tonic::transport::Channel;
use vidgate::api::auth::{AuthConfig, AuthMode, TokenEntry, token_hash};
use vidgate::app::Application;
use vidgate::config::{Config, UpstreamMode};
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;
use vidgate::upstream::sim::{SimConfig, SimHandle, Simulator};

use super::{SEEDANCE, VEO};

pub const ACME: &str = "tok-acme-0123456789";
pub const GLOBEX: &str = "tok-globex-0123456789";

/// How long a test may drive jobs before it fails (generous: the machine is shared).
pub const DRIVE_DEADLINE: Duration = Duration::from_secs(30);

pub struct TestApp {
    pub app: Option<Application>,
    pub client: VideoServiceClient<Channel>,
    pub data_dir: PathBuf,
    pub sim: SimHandle,
}

pub fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "vidgate-test-{name}-{}",
        uuid::Uuid::now_v7().simple()
    ))
}

pub fn sim_config() -> SimConfig {
    SimConfig {
        queued_ms: 10,
        processing_ms: 30,
        jitter: 0.0,
        ..SimConfig::default()
    }
}

/// A config for tests: simulator outside the app (so it survives an app restart), tokens for
/// two tenants, fast dispatcher timings, dispatcher stepped by the test.
pub fn test_config(data_dir: &std::path::Path, sim: &SimHandle) -> Config {
    let mut c = Config::default();
    c.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.storage.data_dir = data_dir.to_path_buf();
    c.upstream.mode = UpstreamMode::Real;
    c.upstream.base_url = sim.base_url();
    c.upstream.request_timeout_ms = 2_000;
    c.upstream.limits.requests_per_second = 1_000;
    c.upstream.limits.rate_limited_pause_ms = 20;
    c.api_key = Some(sim.api_key().to_owned());
    c.auth = AuthConfig {
        mode: AuthMode::Tokens,
        tokens: vec![
            TokenEntry {
                tenant: "acme".into(),
                sha256: token_hash(ACME),
            },
            TokenEntry {
                tenant: "globex".into(),
                sha256: token_hash(GLOBEX),
            },
        ],
        no_auth_tenant: "local".into(),
    };
    c.dispatcher.enabled = false;
    c.dispatcher.first_poll_after_ms = 0;
    c.dispatcher.poll_interval_ms = 5;
    c.dispatcher.poll_jitter = 0.0;
    c.dispatcher.backoff_min_ms = 5;
    c.dispatcher.backoff_max_ms = 20;
    // The machine's free space is not the test's business (the floor has its own tests).
    c.dispatcher.min_free_disk_bytes = 0;
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let sim = Simulator::start(sim_config(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let data_dir = temp_dir("app");
    let mut config = test_config(&data_dir, &sim);
    tweak(&mut config);
    start(config, data_dir, sim).await
}

pub async fn start(config: Config, data_dir: PathBuf, sim: SimHandle) -> TestApp {
    let app = Application::build(config).await.expect("vidgate starts");
    let client = VideoServiceClient::connect(format!("http://{}", app.grpc_addr()))
        .await
        .expect("client connects")
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    TestApp {
        app: Some(app),
        client,
        data_dir,
        sim,
    }
}

impl TestApp {
    pub fn app(&self) -> &Application {
        self.app.as_ref().expect("app running")
    }

    /// Stops the app and starts a new one on the same data directory and simulator.
    pub async fn restart(mut self, tweak: impl FnOnce(&mut Config)) -> TestApp {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        let mut config = test_config(&self.data_dir, &self.sim);
        tweak(&mut config);
        start(config, self.data_dir.clone(), self.sim.clone()).await
    }

    /// Steps the dispatcher until the video is terminal; returns it.
    pub async fn drive(&mut self, token: &str, id: &str) -> pb::Video {
        let deadline = tokio::time::Instant::now() + DRIVE_DEADLINE;
        loop {
            self.app().dispatcher().step().await.expect("step");
            let v = self
                .client
                .get_video(req(token, pb::GetVideoRequest { id: id.into() }))
                .await
                .expect("get")
                .into_inner();
            if matches!(
                v.status(),
                pb::VideoStatus::Completed | pb::VideoStatus::Failed | pb::VideoStatus::Cancelled
            ) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "video {id} did not finish: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Steps the dispatcher until every listed video is terminal.
    pub async fn drive_all(&mut self, token: &str, ids: &[String]) -> Vec<pb::Video> {
        let mut out = Vec::new();
        for id in ids {
            out.push(self.drive(token, id).await);
        }
        out
    }
}

pub fn req<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

pub fn veo(prompt: &str) -> pb::CreateVideoRequest {
    pb::CreateVideoRequest {
        model: VEO.into(),
        prompt: prompt.into(),
        params: Some(pb::create_video_request::Params::Veo(pb::VeoParams {
            seconds: 4,
            size: "1280x720".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn seedance(prompt: &str) -> pb::CreateVideoRequest {
    pb::CreateVideoRequest {
        model: SEEDANCE.into(),
        prompt: prompt.into(),
        params: Some(pb::create_video_request::Params::Seedance(
            pb::SeedanceParams {
                resolution: "480p".into(),
                ratio: "16:9".into(),
                duration: Some(4),
                return_last_frame: Some(true),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// A unique prompt, so simulator counters per prompt are per test.
/// Every video of `token`'s tenant as `client` sees it, all pages.
pub async fn all_videos_of(
    client: &mut VideoServiceClient<Channel>,
    token: &str,
) -> Vec<pb::Video> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_videos(req(
                token,
                pb::ListVideosRequest {
                    page_size: 500,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .expect("list")
            .into_inner();
        out.extend(page.videos);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix} {}", uuid::Uuid::now_v7().simple())
}

pub fn error_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

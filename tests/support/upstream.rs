//! Helpers shared by the tests that run vidgate's upstream client against the simulator.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;
use url::Url;
use vidgate::upstream::sim::{SimConfig, SimHandle, Simulator};
use vidgate::upstream::{
    ApiKey, ContentStream, LimitConfig, UpstreamClient, UpstreamConfig, UpstreamError,
    UpstreamVideo,
};

/// Far above any timing a test configures: a slow shared machine fails only on a real hang.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Between two status calls while waiting for a task.
pub const POLL_EVERY: Duration = Duration::from_millis(5);

/// Tasks that finish within tens of milliseconds, without jitter.
pub fn fast_sim_config() -> SimConfig {
    SimConfig {
        queued_ms: 20,
        processing_ms: 40,
        jitter: 0.0,
        ..SimConfig::default()
    }
}

pub async fn start_sim(config: SimConfig) -> SimHandle {
    Simulator::start(config, "127.0.0.1:0".parse().expect("loopback address"))
        .await
        .expect("the simulator starts")
}

/// The client configuration for `sim`, with limits that never slow a test down.
pub fn client_config(sim: &SimHandle) -> UpstreamConfig {
    client_config_for(
        &sim.base_url(),
        ApiKey::new(sim.api_key()).expect("the simulator's key is a valid key"),
    )
}

pub fn client_config_for(base_url: &str, key: ApiKey) -> UpstreamConfig {
    UpstreamConfig {
        limits: LimitConfig {
            requests_per_second: 10_000,
            max_in_flight: 64,
            max_downloads: 64,
            rate_limited_pause_ms: 50,
        },
        ..UpstreamConfig::new(Url::parse(base_url).expect("base URL"), key)
    }
}

pub fn client(sim: &SimHandle) -> UpstreamClient {
    UpstreamClient::new(client_config(sim)).expect("client builds")
}

pub fn client_from(config: UpstreamConfig) -> UpstreamClient {
    UpstreamClient::new(config).expect("client builds")
}

/// Polls `GET /videos/{id}` until a terminal state; returns every answer, the last one terminal.
pub async fn poll_until_terminal(client: &UpstreamClient, id: &str) -> Vec<UpstreamVideo> {
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut seen = Vec::new();
    loop {
        let video = client.get(id).await.expect("status call succeeds");
        let done = video.status.state.is_terminal();
        seen.push(video);
        if done {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not terminal after {WAIT_LIMIT:?}; statuses seen: {:?}",
            seen.iter().map(|v| &v.status.raw).collect::<Vec<_>>()
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Reads a content stream to its end: the bytes received, and the error that ended it early.
pub async fn drain(stream: ContentStream) -> (Vec<u8>, Option<UpstreamError>) {
    let mut body = stream.body;
    let mut bytes = Vec::new();
    while let Some(item) = body.next().await {
        match item {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(err) => return (bytes, Some(err)),
        }
    }
    (bytes, None)
}

/// A real PNG of `width` x `height` pixels.
pub fn png_image(width: u32, height: u32) -> Bytes {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("PNG header");
        let pixels = vec![0x80u8; (width * height * 3) as usize];
        writer.write_image_data(&pixels).expect("PNG data");
    }
    Bytes::from(out)
}

/// Width and height of a PNG, read by the decoder (so the bytes must be a whole, valid PNG).
pub fn png_dimensions(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a valid PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("bounded PNG")];
    let info = reader.next_frame(&mut pixels).expect("a whole PNG frame");
    (info.width, info.height)
}

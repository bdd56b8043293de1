//! Scenario 5: 100 concurrent `WatchVideo` with content on one completed 100 MB video, next to
//! 100 concurrent bare server streams of the same size and chunk (scenario 4's baseline, 100
//! times at once). Both sides spread their streams over the same number of connections.
//! Figures: aggregate MB/s, and RSS growth: the peak RSS during the round (VmHWM, reset just
//! before it) minus the RSS just before it.

use std::time::Instant;

use bytes::Bytes;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;

use crate::{
    NoopServer, Row, StoredVideo, authed, channels, chunk_bytes, download_one, median,
    reset_peak_rss, rss_mib,
};

const STREAMS: usize = 100;
/// Connections per side; the streams are spread over them evenly.
const CONNECTIONS: usize = 10;
const ROUNDS: usize = 3;
const VIDEO_BYTES: u64 = 100_000_000;
/// Target: RSS growth at most this many MB (10^6 bytes).
const RSS_GROWTH_TARGET_MB: f64 = 100.0;

struct Round {
    mb_per_s: f64,
    growth_mib: f64,
}

pub async fn scenario() -> anyhow::Result<Vec<Row>> {
    println!(
        "watch: {STREAMS} concurrent WatchVideo(include_content) of one {} MB video over {CONNECTIONS} connections, {} KiB chunks, {ROUNDS} rounds per side",
        VIDEO_BYTES / 1_000_000,
        chunk_bytes() / 1024
    );
    let stored = StoredVideo::prepare(VIDEO_BYTES).await?;
    let ours = channels(stored.app.grpc_addr(), CONNECTIONS).await?;
    let bare = NoopServer::start(Bytes::from(vec![0x5a_u8; chunk_bytes()])).await?;
    let theirs = channels(bare.addr, CONNECTIONS).await?;
    let (id, size) = (stored.id.clone(), stored.size);

    // Warm-up: one stream each.
    round(&ours[..1], 1, &id, size, true).await?;
    round(&theirs[..1], 1, "bare", size, false).await?;

    let (mut v, mut b) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let (ov, ob) = if r % 2 == 0 {
            let ov = round(&ours, STREAMS, &id, size, true).await?;
            let ob = round(&theirs, STREAMS, "bare", size, false).await?;
            (ov, ob)
        } else {
            let ob = round(&theirs, STREAMS, "bare", size, false).await?;
            let ov = round(&ours, STREAMS, &id, size, true).await?;
            (ov, ob)
        };
        println!(
            "  round {}/{ROUNDS}: vidgate {:.0} MB/s, RSS +{:.1} MiB | bare {:.0} MB/s, RSS +{:.1} MiB | {:.1}%",
            r + 1,
            ov.mb_per_s,
            ov.growth_mib,
            ob.mb_per_s,
            ob.growth_mib,
            ov.mb_per_s / ob.mb_per_s * 100.0
        );
        v.push(ov);
        b.push(ob);
    }
    bare.stop().await;
    stored.stop().await;

    let rate = (
        median(v.iter().map(|r| r.mb_per_s)),
        median(b.iter().map(|r| r.mb_per_s)),
    );
    // The worst round counts for memory.
    let growth = |rounds: &[Round]| {
        rounds
            .iter()
            .map(|r| r.growth_mib * 1.048_576)
            .fold(0.0_f64, f64::max)
    };
    let (ours_mb, theirs_mb) = (growth(&v), growth(&b));
    Ok(vec![
        Row::custom(
            "100 x WatchVideo with content, 100 MB: aggregate MB/s (vs 100 bare streams)",
            format!("{:.0} MB/s", rate.0),
            format!("{:.0} MB/s", rate.1),
            format!("{:.1}%", rate.0 / rate.1 * 100.0),
            "-".into(),
            true,
        )
        .no_verdict(),
        Row::custom(
            "100 x WatchVideo: RSS growth (worst round)",
            format!("{ours_mb:.1} MB"),
            format!("{theirs_mb:.1} MB"),
            format!("{:.1}x", ours_mb / theirs_mb),
            format!("<= {RSS_GROWTH_TARGET_MB:.0} MB"),
            ours_mb <= RSS_GROWTH_TARGET_MB,
        ),
    ])
}

/// `streams` concurrent whole-video streams, spread over `clients`; each must deliver exactly
/// `size` content bytes.
async fn round(
    clients: &[VideoServiceClient<Channel>],
    streams: usize,
    id: &str,
    size: u64,
    watch: bool,
) -> anyhow::Result<Round> {
    let before = rss_mib().unwrap_or(0.0);
    reset_peak_rss();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..streams {
        let mut client = clients[i % clients.len()].clone();
        let id = id.to_owned();
        tasks.spawn(async move {
            let received = if watch {
                watch_one(&mut client, &id).await?
            } else {
                download_one(&mut client, &id, size).await?
            };
            anyhow::ensure!(
                received == size,
                "a stream of {id} gave {received} bytes, expected {size}"
            );
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = crate::peak_rss_mib().unwrap_or(0.0);
    Ok(Round {
        mb_per_s: size as f64 * streams as f64 / 1e6 / seconds,
        growth_mib: (peak - before).max(0.0),
    })
}

/// One `WatchVideo(include_content)` of a completed video, to its end; the content bytes.
async fn watch_one(client: &mut VideoServiceClient<Channel>, id: &str) -> anyhow::Result<u64> {
    let mut stream = client
        .watch_video(authed(pb::WatchVideoRequest {
            id: id.into(),
            after_sequence: 0,
            include_content: true,
        }))
        .await?
        .into_inner();
    let mut received = 0_u64;
    let mut ended = false;
    while let Some(event) = stream.message().await? {
        match event.kind {
            Some(pb::video_event::Kind::Chunk(chunk)) => received += chunk.data.len() as u64,
            Some(pb::video_event::Kind::ContentEnd(end)) => {
                anyhow::ensure!(
                    end.size_bytes == received,
                    "content end says {} bytes, {received} came",
                    end.size_bytes
                );
                ended = true;
            }
            _ => {}
        }
    }
    anyhow::ensure!(ended, "the watch of {id} ended without content_end");
    Ok(received)
}

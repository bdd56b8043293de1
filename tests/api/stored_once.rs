//! Requests are stored once and answered small (#14 item 2): inline input never comes back in
//! `Video.request` (its size and SHA-256 do), the event log does not copy the request into
//! every row, and a `ListVideos` page is bounded in bytes.

use std::path::Path;

use base64::Engine as _;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use vidgate::jobs::MAX_PAGE_BYTES;
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;
use vidgate::upstream::sim::Simulator;

use crate::support::*;

/// Bytes of every file under `dir` (database, its WAL, blobs): what the data directory costs.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A Seedance request whose first frame is a `data:` URI of `uri_len` characters.
fn seedance_with_data_uri(
    prompt: &str,
    uri_len: usize,
    seed: u8,
) -> (pb::CreateVideoRequest, Vec<u8>) {
    const HEADER: &str = "data:image/png;base64,";
    let payload_chars = (uri_len - HEADER.len()) / 4 * 4;
    // A PNG signature, then bytes that do not compress (as a real image's would not).
    let mut image: Vec<u8> = (0..payload_chars / 4 * 3)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect();
    image[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    let uri = format!(
        "{HEADER}{}",
        base64::engine::general_purpose::STANDARD.encode(&image)
    );
    let mut request = seedance(prompt);
    if let Some(pb::create_video_request::Params::Seedance(s)) = request.params.as_mut() {
        s.content.push(pb::ContentItem {
            kind: Some(pb::content_item::Kind::Image(pb::MediaRef {
                source: Some(pb::media_ref::Source::Url(uri)),
                ..Default::default()
            })),
            role: "first_frame".into(),
        });
    }
    (request, image)
}

fn first_image(video: &pb::Video) -> pb::MediaRef {
    match video.request.as_ref().and_then(|r| r.params.as_ref()) {
        Some(pb::create_video_request::Params::Seedance(s)) => match &s.content[..] {
            [
                pb::ContentItem {
                    kind: Some(pb::content_item::Kind::Image(m)),
                    ..
                },
            ] => m.clone(),
            other => panic!("one image expected, got {other:?}"),
        },
        other => panic!("seedance params expected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_uri_is_stored_once_and_every_answer_shows_only_its_header_size_and_sha256() {
    /// Fewer than the 20 of the report, for a debug build's time: the bound is per job.
    const JOBS: usize = 6;
    /// The largest `data:` URI a CreateVideo can carry under the 12 MiB message limit.
    const URI_LEN: usize = 11 * 1024 * 1024;
    /// Every answer about one job stays this small, whatever its input.
    const SMALL: usize = 64 * 1024;
    // The simulator takes JSON creates as large as Ark's own limit (64 MiB).
    let sim = Simulator::start(sim_config(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let data_dir = temp_dir("stored-once");
    let mut config = test_config(&data_dir, &sim);
    // An 11 MiB create takes the (debug-built) simulator more than the tests' usual 2 s.
    config.upstream.request_timeout_ms = 60_000;
    // One create on the wire at a time: the simulator parses each 11 MiB body alone.
    config.upstream.limits.max_in_flight = 1;
    let mut t = start(config, data_dir, sim).await;
    let before = dir_bytes(&t.data_dir);

    let mut sent = 0u64;
    let mut jobs = Vec::new();
    for i in 0..JOBS {
        let (request, image) = seedance_with_data_uri(&unique("stored once"), URI_LEN, i as u8);
        sent += request.encoded_len() as u64;
        let video = t
            .client
            .create_video(req(ACME, request))
            .await
            .expect("create")
            .into_inner();
        assert!(
            video.encoded_len() < SMALL,
            "CreateVideo answered {} bytes",
            video.encoded_len()
        );
        jobs.push((video, image));
    }
    for (video, image) in &jobs {
        // Through the dispatcher, with this test's own deadline: an 11 MiB create takes a
        // debug build a while.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            t.app().dispatcher().step().await.expect("step");
            let v = t
                .client
                .get_video(req(
                    ACME,
                    pb::GetVideoRequest {
                        id: video.id.clone(),
                    },
                ))
                .await
                .expect("get")
                .into_inner();
            if !matches!(
                v.status(),
                pb::VideoStatus::Queued | pb::VideoStatus::Processing
            ) {
                assert_eq!(v.status(), pb::VideoStatus::Completed, "{:?}", v.error);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not finish",
                v.id
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }

        let got = t
            .client
            .get_video(req(
                ACME,
                pb::GetVideoRequest {
                    id: video.id.clone(),
                },
            ))
            .await
            .expect("get")
            .into_inner();
        assert!(
            got.encoded_len() < SMALL,
            "GetVideo answered {} bytes",
            got.encoded_len()
        );
        let media = first_image(&got);
        assert_eq!(
            media.source,
            Some(pb::media_ref::Source::Url("data:image/png;base64,".into()))
        );
        assert_eq!(media.size_bytes, image.len() as u64);
        assert_eq!(media.sha256, hex::encode(Sha256::digest(image)));

        // The logged events, each with the request as GetVideo shows it.
        let mut watch = t
            .client
            .watch_video(req(
                ACME,
                pb::WatchVideoRequest {
                    id: video.id.clone(),
                    after_sequence: video.last_sequence - 1,
                    include_content: false,
                },
            ))
            .await
            .expect("watch")
            .into_inner();
        let mut events = 0;
        while let Some(event) = watch.message().await.expect("event") {
            assert!(
                event.encoded_len() < SMALL,
                "an event of {} bytes",
                event.encoded_len()
            );
            if let Some(pb::video_event::Kind::Video(v)) = &event.kind {
                assert_eq!(v.request, got.request, "event {}", event.sequence);
                events += 1;
            }
        }
        assert!(events >= 1, "no logged event of {}", video.id);
    }

    let page = t
        .client
        .list_videos(req(
            ACME,
            pb::ListVideosRequest {
                page_size: JOBS as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.videos.len(), JOBS);
    assert!(
        page.encoded_len() < JOBS * SMALL,
        "ListVideos(page_size={JOBS}) answered {} bytes",
        page.encoded_len()
    );

    // The accepted input once, plus a fixed allowance (the videos downloaded, the WAL).
    let grown = dir_bytes(&t.data_dir).saturating_sub(before);
    eprintln!(
        "sent {sent} bytes in {JOBS} creates; the data directory grew by {grown} bytes ({:.2}x)",
        grown as f64 / sent as f64
    );
    assert!(
        grown < sent * 3 / 2 + 48 * 1024 * 1024,
        "the data directory grew by {grown} bytes for {sent} bytes sent"
    );
}

#[tokio::test]
async fn a_list_page_of_fat_videos_stays_under_the_byte_bound_and_its_token_goes_on() {
    const JOBS: usize = 80;
    let mut t = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let mut request = seedance(&format!("{i:05} {}", "p".repeat(15_994)));
        request.labels = (0..64)
            .map(|l| (format!("label-{l:02}"), "v".repeat(256)))
            .collect();
        let video = t
            .client
            .create_video(req(ACME, request))
            .await
            .expect("create")
            .into_inner();
        ids.push(video.id);
    }

    // A client with gRPC's default 4 MiB limit reads every page.
    let mut plain: VideoServiceClient<Channel> =
        VideoServiceClient::connect(format!("http://{}", t.app().grpc_addr()))
            .await
            .expect("client connects");
    let mut listed = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = plain
            .list_videos(req(
                ACME,
                pb::ListVideosRequest {
                    page_size: 500,
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .expect("list with the default message limit")
            .into_inner();
        pages += 1;
        assert!(!page.videos.is_empty());
        assert!(
            page.encoded_len() <= MAX_PAGE_BYTES + 1024,
            "page {pages} is {} bytes",
            page.encoded_len()
        );
        listed.extend(page.videos.into_iter().map(|v| v.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert!(pages >= 2, "{JOBS} fat videos do not fit one page");
    ids.reverse();
    assert_eq!(
        listed, ids,
        "every video once, newest first, across the pages"
    );
}

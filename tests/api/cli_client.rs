//! The client commands against an in-process fake `VideoService` on 127.0.0.1:0: the real
//! clap parsing, connection, interceptor, streaming, resume and verification code paths.
//! The fake records what it was asked, so tests assert on the wire, not on printouts alone.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::{CommandFactory as _, Parser};
use futures::Stream;
use sha2::{Digest as _, Sha256};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

use vidgate::cli::{ClientCommand, ClientOpts, RpcError, run_with_output};
use vidgate::pb::content_item::Kind;
use vidgate::pb::create_video_request::Params;
use vidgate::pb::media_ref::Source;
use vidgate::pb::video_event;
use vidgate::pb::video_service_server::{VideoService, VideoServiceServer};
use vidgate::pb::{
    CancelVideoRequest, ContentChunk, ContentEnd, ContentItem, CreateVideoRequest,
    DeleteVideoRequest, DeleteVideoResponse, DownloadVideoRequest, GetVideoRequest, InputImage,
    ListVideosRequest, ListVideosResponse, MediaRef, RetryVideoRequest, SeedanceParams,
    SubscribeRequest, VeoParams, Video, VideoAttempt, VideoContent, VideoError, VideoEvent,
    VideoStatus, WatchVideoRequest,
};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const VIDEO_ID: &str = "vid_1";
const TOKEN: &str = "s3cret-token";
const CHUNK: usize = 32 * 1024;

/// What the fake was asked.
#[derive(Default)]
struct Seen {
    calls: usize,
    authorization: Vec<Option<String>>,
    creates: Vec<CreateVideoRequest>,
    lists: Vec<ListVideosRequest>,
    downloads: Vec<DownloadVideoRequest>,
    watches: Vec<WatchVideoRequest>,
    retries: Vec<RetryVideoRequest>,
}

/// Canned behaviour of the fake.
#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    content: Bytes,
    /// The SHA-256 that GetVideo and content_end publish (wrong on purpose in mismatch tests).
    published_sha256: String,
    /// The first DownloadVideo stream fails with UNAVAILABLE after this many chunks.
    fail_first_download_after_chunks: Option<usize>,
    /// The first WatchVideo stream ends with ABORTED (SUBSCRIBER_LAGGED) after its first event.
    lag_first_watch: bool,
    /// The first WatchVideo stream with content fails with UNAVAILABLE after this many chunks.
    break_first_watch_content_after_chunks: Option<usize>,
    /// How the watched job ends.
    final_status: VideoStatus,
    /// CreateVideo fails with this.
    create_error: Option<fn() -> Status>,
    /// Videos `list` pages through.
    list_total: usize,
}

impl Fake {
    fn new() -> Self {
        let content = test_content(300_000);
        let published_sha256 = sha256_hex(&content);
        Self {
            seen: Arc::default(),
            content,
            published_sha256,
            fail_first_download_after_chunks: None,
            lag_first_watch: false,
            break_first_watch_content_after_chunks: None,
            final_status: VideoStatus::Completed,
            create_error: None,
            list_total: 0,
        }
    }

    fn record<T>(&self, request: &Request<T>) -> std::sync::MutexGuard<'_, Seen> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.calls += 1;
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        seen.authorization.push(auth);
        seen
    }

    fn video(&self, id: &str, status: VideoStatus, sequence: i64) -> Video {
        let completed = status == VideoStatus::Completed;
        Video {
            id: id.to_owned(),
            request_id: "req-1".to_owned(),
            model: "turing/veo-3.1-generate".to_owned(),
            status: status as i32,
            upstream_status: if completed {
                "completed"
            } else {
                "in_progress"
            }
            .to_owned(),
            progress: Some(if completed { 100 } else { 40 }),
            last_sequence: sequence,
            error: (status == VideoStatus::Failed).then(|| VideoError {
                reason: "UPSTREAM_FAILED".to_owned(),
                message: "the upstream said the generation failed".to_owned(),
                ..VideoError::default()
            }),
            content: completed.then(|| VideoContent {
                size_bytes: self.content.len() as u64,
                sha256: self.published_sha256.clone(),
                mime_type: "video/mp4".to_owned(),
                duration_seconds: 6.0,
                width: 1280,
                height: 720,
                has_audio: true,
                matches_request: true,
                ..VideoContent::default()
            }),
            ..Video::default()
        }
    }

    fn chunks_from(&self, offset: usize) -> Vec<ContentChunk> {
        let mut chunks = Vec::new();
        let mut at = offset;
        while at < self.content.len() {
            let end = (at + CHUNK).min(self.content.len());
            chunks.push(ContentChunk {
                offset: at as i64,
                data: self.content.slice(at..end),
            });
            at = end;
        }
        chunks
    }
}

#[tonic::async_trait]
impl VideoService for Fake {
    async fn create_video(
        &self,
        request: Request<CreateVideoRequest>,
    ) -> Result<Response<Video>, Status> {
        self.record(&request)
            .creates
            .push(request.get_ref().clone());
        if let Some(error) = self.create_error {
            return Err(error());
        }
        let req = request.into_inner();
        let mut video = self.video(VIDEO_ID, VideoStatus::Queued, 1);
        video.request_id.clone_from(&req.request_id);
        video.model.clone_from(&req.model);
        video.labels.clone_from(&req.labels);
        video.request = Some(req);
        Ok(Response::new(video))
    }

    async fn get_video(
        &self,
        request: Request<GetVideoRequest>,
    ) -> Result<Response<Video>, Status> {
        drop(self.record(&request));
        let id = &request.get_ref().id;
        if id != VIDEO_ID {
            return Err(Status::not_found(format!("video {id} not found")));
        }
        Ok(Response::new(self.video(id, VideoStatus::Completed, 6)))
    }

    async fn list_videos(
        &self,
        request: Request<ListVideosRequest>,
    ) -> Result<Response<ListVideosResponse>, Status> {
        self.record(&request).lists.push(request.get_ref().clone());
        let req = request.into_inner();
        let start: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("bad page token"))?
        };
        let size = if req.page_size == 0 {
            50
        } else {
            req.page_size as usize
        };
        let end = (start + size).min(self.list_total);
        let videos = (start..end)
            .map(|i| self.video(&format!("vid_{i}"), VideoStatus::Completed, i as i64))
            .collect();
        let next_page_token = if end < self.list_total {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListVideosResponse {
            videos,
            next_page_token,
        }))
    }

    async fn cancel_video(
        &self,
        request: Request<CancelVideoRequest>,
    ) -> Result<Response<Video>, Status> {
        drop(self.record(&request));
        Ok(Response::new(self.video(
            &request.get_ref().id,
            VideoStatus::Cancelled,
            7,
        )))
    }

    async fn retry_video(
        &self,
        request: Request<RetryVideoRequest>,
    ) -> Result<Response<Video>, Status> {
        self.record(&request)
            .retries
            .push(request.get_ref().clone());
        let mut video = self.video(&request.get_ref().id, VideoStatus::Queued, 8);
        video.previous_attempts = vec![VideoAttempt {
            upstream_id: "task_earlier".to_owned(),
            error: Some(VideoError {
                reason: "UPSTREAM_OUTCOME_UNKNOWN".to_owned(),
                retryable: true,
                ..VideoError::default()
            }),
            ..VideoAttempt::default()
        }];
        Ok(Response::new(video))
    }

    async fn delete_video(
        &self,
        request: Request<DeleteVideoRequest>,
    ) -> Result<Response<DeleteVideoResponse>, Status> {
        drop(self.record(&request));
        Ok(Response::new(DeleteVideoResponse {}))
    }

    type DownloadVideoStream = BoxStream<ContentChunk>;

    async fn download_video(
        &self,
        request: Request<DownloadVideoRequest>,
    ) -> Result<Response<Self::DownloadVideoStream>, Status> {
        let call = {
            let mut seen = self.record(&request);
            seen.downloads.push(request.get_ref().clone());
            seen.downloads.len()
        };
        let offset = usize::try_from(request.get_ref().read_offset)
            .map_err(|_| Status::invalid_argument("negative offset"))?;
        if offset > self.content.len() {
            return Err(Status::out_of_range("offset past the end"));
        }
        let mut items: Vec<Result<ContentChunk, Status>> =
            self.chunks_from(offset).into_iter().map(Ok).collect();
        if let (1, Some(n)) = (call, self.fail_first_download_after_chunks) {
            items.truncate(n);
            items.push(Err(Status::with_error_details(
                Code::Unavailable,
                "server restarting",
                ErrorDetails::with_retry_info(Some(Duration::from_millis(10))),
            )));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    type WatchVideoStream = BoxStream<VideoEvent>;

    async fn watch_video(
        &self,
        request: Request<WatchVideoRequest>,
    ) -> Result<Response<Self::WatchVideoStream>, Status> {
        let call = {
            let mut seen = self.record(&request);
            seen.watches.push(request.get_ref().clone());
            seen.watches.len()
        };
        let req = request.into_inner();
        let event = |sequence: i64, kind| VideoEvent {
            sequence,
            video_id: req.id.clone(),
            time: None,
            kind: Some(kind),
        };
        let log = [
            (5, self.video(&req.id, VideoStatus::Processing, 5)),
            (6, self.video(&req.id, self.final_status, 6)),
        ];
        let mut items = Vec::new();
        for (sequence, video) in log {
            if sequence <= req.after_sequence {
                continue;
            }
            let completed = video.status == VideoStatus::Completed as i32;
            items.push(Ok(event(sequence, video_event::Kind::Video(video))));
            if call == 1 && self.lag_first_watch {
                let metadata = HashMap::from([("last_sequence".to_owned(), sequence.to_string())]);
                items.push(Err(Status::with_error_details(
                    Code::Aborted,
                    "the stream fell behind",
                    ErrorDetails::with_error_info("SUBSCRIBER_LAGGED", "vidgate", metadata),
                )));
                break;
            }
            if completed && req.include_content {
                let mut chunks = self.chunks_from(0);
                if let (1, Some(n)) = (call, self.break_first_watch_content_after_chunks) {
                    chunks.truncate(n);
                    items.extend(
                        chunks
                            .into_iter()
                            .map(|chunk| Ok(event(0, video_event::Kind::Chunk(chunk)))),
                    );
                    items.push(Err(Status::unavailable("connection reset")));
                    break;
                }
                for chunk in chunks {
                    items.push(Ok(event(0, video_event::Kind::Chunk(chunk))));
                }
                let end = ContentEnd {
                    size_bytes: self.content.len() as u64,
                    sha256: self.published_sha256.clone(),
                };
                items.push(Ok(event(0, video_event::Kind::ContentEnd(end))));
            }
        }
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    type SubscribeStream = BoxStream<VideoEvent>;

    async fn subscribe(
        &self,
        _request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("the CLI does not subscribe"))
    }
}

/// Deterministic, non-repeating bytes, so an offset mistake changes the hash.
fn test_content(len: usize) -> Bytes {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Serves `fake` on 127.0.0.1:0 and returns its address.
async fn serve(fake: Fake) -> anyhow::Result<String> {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse()?)?;
    let addr = incoming.local_addr()?;
    tokio::spawn(
        Server::builder()
            .add_service(VideoServiceServer::new(fake))
            .serve_with_incoming(incoming),
    );
    Ok(format!("http://{addr}"))
}

/// The client commands as the binary exposes them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(subcommand)]
    cmd: ClientCommand,
}

fn parse(addr: &str, args: &[&str]) -> Result<Cli, clap::Error> {
    let argv = ["vidgate", "--addr", addr, "--token", TOKEN];
    Cli::try_parse_from(argv.iter().chain(args))
}

/// Runs `vidgate <args>` against `addr`; returns the command's result and its stdout.
async fn vidgate(addr: &str, args: &[&str]) -> anyhow::Result<(anyhow::Result<()>, String)> {
    let cli = parse(addr, args)?;
    let mut out = Vec::new();
    let result = run_with_output(cli.opts, cli.cmd, &mut out).await;
    Ok((result, String::from_utf8(out)?))
}

fn seen(fake: &Fake) -> std::sync::MutexGuard<'_, Seen> {
    fake.seen.lock().unwrap_or_else(|e| e.into_inner())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow::anyhow!("temp path is not UTF-8"))
}

#[test]
fn clap_definitions_are_consistent() {
    Cli::command().debug_assert();
}

#[tokio::test]
async fn create_with_veo_flags_fills_veo_params() -> anyhow::Result<()> {
    // Arrange
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("cat.png");
    std::fs::write(&image, b"\x89PNG fake image bytes")?;

    // Act
    let (result, out) = vidgate(
        &addr,
        &[
            "create",
            "--model",
            "turing/veo-3.1-generate",
            "--prompt",
            "a cat playing piano",
            "--request-id",
            "req-veo",
            "--label",
            "team=video",
            "--seconds",
            "6",
            "--size",
            "1280x720",
            "--image",
            path_str(&image)?,
            "--person-generation",
            "allow_all",
        ],
    )
    .await?;

    // Assert
    result?;
    let seen = seen(&fake);
    let [request] = seen.creates.as_slice() else {
        panic!("expected one CreateVideo, got {}", seen.creates.len());
    };
    assert_eq!(request.request_id, "req-veo");
    assert_eq!(request.model, "turing/veo-3.1-generate");
    assert_eq!(request.prompt, "a cat playing piano");
    assert_eq!(
        request.labels,
        BTreeMap::from([("team".to_owned(), "video".to_owned())])
    );
    let expected = Params::Veo(VeoParams {
        seconds: 6,
        size: "1280x720".to_owned(),
        input_reference: Some(InputImage {
            data: Bytes::from_static(b"\x89PNG fake image bytes"),
            filename: "cat.png".to_owned(),
            mime_type: "image/png".to_owned(),
            ..InputImage::default()
        }),
        person_generation: "allow_all".to_owned(),
    });
    assert_eq!(request.params.as_ref(), Some(&expected));
    assert!(out.contains("id:          vid_1"), "stdout: {out}");
    Ok(())
}

#[tokio::test]
async fn create_with_seedance_flags_fills_seedance_params() -> anyhow::Result<()> {
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;

    let (result, _) = vidgate(
        &addr,
        &[
            "create",
            "--model",
            "doubao-seedance-2-0-260128",
            "--prompt",
            "waves at dusk",
            "--resolution",
            "720p",
            "--ratio",
            "16:9",
            "--duration",
            "5",
            "--seed",
            "-3",
            "--watermark=false",
            "--no-audio",
            "--return-last-frame",
            "--text",
            "slow motion",
            "--image-url",
            "first_frame=https://img.example/a.png",
            // A query with '=' is not a role.
            "--video-url",
            "https://vid.example/v.mp4?sig=a=b",
            "--audio-url",
            "reference_audio=https://aud.example/a.mp3",
        ],
    )
    .await?;

    result?;
    let seen = seen(&fake);
    let url = |kind: fn(MediaRef) -> Kind, role: &str, url: &str| ContentItem {
        kind: Some(kind(MediaRef {
            source: Some(Source::Url(url.to_owned())),
            ..MediaRef::default()
        })),
        role: role.to_owned(),
    };
    let expected = Params::Seedance(SeedanceParams {
        content: vec![
            ContentItem {
                kind: Some(Kind::Text("slow motion".to_owned())),
                role: String::new(),
            },
            url(Kind::Image, "first_frame", "https://img.example/a.png"),
            url(Kind::Video, "", "https://vid.example/v.mp4?sig=a=b"),
            url(Kind::Audio, "reference_audio", "https://aud.example/a.mp3"),
        ],
        resolution: "720p".to_owned(),
        ratio: "16:9".to_owned(),
        duration: Some(5),
        seed: Some(-3),
        watermark: Some(false),
        generate_audio: Some(false),
        return_last_frame: Some(true),
        size: String::new(),
    });
    assert_eq!(seen.creates[0].params.as_ref(), Some(&expected));
    Ok(())
}

#[tokio::test]
async fn create_without_param_flags_sends_no_params_and_a_fresh_request_id() -> anyhow::Result<()> {
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;

    let args = [
        "create",
        "--model",
        "turing/veo-3.1-generate",
        "--prompt",
        "p",
    ];
    let (first, _) = vidgate(&addr, &args).await?;
    let (second, _) = vidgate(&addr, &args).await?;

    first?;
    second?;
    let seen = seen(&fake);
    assert_eq!(seen.creates[0].params, None);
    let id = uuid::Uuid::parse_str(&seen.creates[0].request_id)?;
    assert_ne!(
        id.to_string(),
        seen.creates[1].request_id,
        "each run gets its own id"
    );
    Ok(())
}

#[tokio::test]
async fn create_mixing_veo_and_seedance_flags_fails_before_any_call() -> anyhow::Result<()> {
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;

    let (result, _) = vidgate(
        &addr,
        &[
            "create",
            "--model",
            "m",
            "--prompt",
            "p",
            "--seconds",
            "6",
            "--resolution",
            "720p",
            "--no-audio",
        ],
    )
    .await?;

    let message = format!(
        "{:#}",
        result
            .err()
            .ok_or_else(|| anyhow::anyhow!("mixing was accepted"))?
    );
    assert!(message.contains("--seconds"), "{message}");
    assert!(message.contains("--resolution, --no-audio"), "{message}");
    assert_eq!(seen(&fake).calls, 0, "nothing may be sent");
    Ok(())
}

#[tokio::test]
async fn create_request_file_is_proto3_json_and_flags_override_id_and_labels() -> anyhow::Result<()>
{
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("request.json");
    std::fs::write(
        &file,
        r#"{"requestId":"from-file","model":"doubao-seedance-2-0-260128","prompt":"p",
            "labels":{"a":"1"},
            "seedance":{"resolution":"480p","duration":5,"seed":"7","generateAudio":false,
                        "content":[{"image":{"url":"https://x/a.png"},"role":"first_frame"}]}}"#,
    )?;

    let (result, _) = vidgate(
        &addr,
        &[
            "create",
            "--request-file",
            path_str(&file)?,
            "--request-id",
            "from-flag",
            "--label",
            "b=2",
        ],
    )
    .await?;

    result?;
    let seen = seen(&fake);
    let request = &seen.creates[0];
    assert_eq!(request.request_id, "from-flag");
    assert_eq!(request.model, "doubao-seedance-2-0-260128");
    assert_eq!(
        request.labels,
        BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
    );
    let Some(Params::Seedance(params)) = &request.params else {
        panic!("expected seedance params, got {:?}", request.params);
    };
    assert_eq!(params.resolution, "480p");
    assert_eq!(params.duration, Some(5));
    assert_eq!(params.seed, Some(7));
    assert_eq!(params.generate_audio, Some(false));
    assert_eq!(params.content[0].role, "first_frame");
    Ok(())
}

#[test]
fn create_request_file_conflicts_with_param_flags() {
    let parsed = parse(
        "http://127.0.0.1:1",
        &["create", "--request-file", "r.json", "--seconds", "6"],
    );
    let Err(e) = parsed else {
        panic!("--request-file with --seconds was accepted");
    };
    assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
}

#[tokio::test]
async fn create_request_file_that_is_not_json_names_the_file() -> anyhow::Result<()> {
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.json");
    std::fs::write(&file, "{\"model\": 5}")?;

    let (result, _) = vidgate(&addr, &["create", "--request-file", path_str(&file)?]).await?;

    let message = format!(
        "{:#}",
        result.err().ok_or_else(|| anyhow::anyhow!("accepted"))?
    );
    assert!(
        message.contains("bad.json is not a CreateVideoRequest"),
        "{message}"
    );
    assert_eq!(seen(&fake).calls, 0);
    Ok(())
}

#[tokio::test]
async fn list_all_follows_next_page_token_to_the_end() -> anyhow::Result<()> {
    let fake = Fake {
        list_total: 5,
        ..Fake::new()
    };
    let addr = serve(fake.clone()).await?;

    let (result, out) = vidgate(
        &addr,
        &[
            "list",
            "--all",
            "--page-size",
            "2",
            "--status",
            "completed",
            "--status",
            "FAILED",
            "--model",
            "m",
            "--label",
            "k=v",
        ],
    )
    .await?;

    result?;
    let seen = seen(&fake);
    let tokens: Vec<&str> = seen.lists.iter().map(|r| r.page_token.as_str()).collect();
    assert_eq!(tokens, ["", "2", "4"]);
    let first = &seen.lists[0];
    assert_eq!(first.page_size, 2);
    assert_eq!(
        first.statuses,
        [VideoStatus::Completed as i32, VideoStatus::Failed as i32]
    );
    assert_eq!(first.model, "m");
    assert_eq!(first.labels.get("k").map(String::as_str), Some("v"));
    for i in 0..5 {
        assert!(
            out.contains(&format!("vid_{i} ")),
            "vid_{i} missing from: {out}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn list_all_json_is_one_response_with_every_page() -> anyhow::Result<()> {
    let fake = Fake {
        list_total: 3,
        ..Fake::new()
    };
    let addr = serve(fake.clone()).await?;

    let (result, out) = vidgate(&addr, &["--json", "list", "--all", "--page-size", "2"]).await?;

    result?;
    let response: ListVideosResponse = serde_json::from_str(&out)?;
    let ids: Vec<&str> = response.videos.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["vid_0", "vid_1", "vid_2"]);
    assert!(response.next_page_token.is_empty());
    Ok(())
}

#[tokio::test]
async fn download_resumes_from_part_file_and_reconnects_from_current_offset() -> anyhow::Result<()>
{
    // Arrange: a third of the video already on disk, and a server that drops the first stream.
    let fake = Fake {
        fail_first_download_after_chunks: Some(2),
        ..Fake::new()
    };
    let addr = serve(fake.clone()).await?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("out.mp4");
    let part = dir.path().join("out.mp4.part");
    std::fs::write(&part, &fake.content[..100_000])?;

    // Act
    let (result, out) = vidgate(
        &addr,
        &["download", VIDEO_ID, "--output", path_str(&output)?],
    )
    .await?;

    // Assert
    result?;
    let offsets: Vec<i64> = seen(&fake)
        .downloads
        .iter()
        .map(|r| r.read_offset)
        .collect();
    assert_eq!(offsets, [100_000, 100_000 + 2 * CHUNK as i64]);
    assert_eq!(std::fs::read(&output)?, fake.content);
    assert!(!part.exists(), "the part file is renamed once verified");
    assert!(
        out.contains(&format!("sha256 ok {}", sha256_hex(&fake.content))),
        "stdout: {out}"
    );
    Ok(())
}

#[tokio::test]
async fn download_with_wrong_published_sha256_fails_and_removes_the_part_file() -> anyhow::Result<()>
{
    let fake = Fake {
        published_sha256: sha256_hex(b"some other video"),
        ..Fake::new()
    };
    let addr = serve(fake.clone()).await?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("out.mp4");

    let (result, _) = vidgate(
        &addr,
        &["download", VIDEO_ID, "--output", path_str(&output)?],
    )
    .await?;

    let message = format!(
        "{:#}",
        result
            .err()
            .ok_or_else(|| anyhow::anyhow!("mismatch accepted"))?
    );
    assert!(message.contains("sha256 mismatch"), "{message}");
    assert!(
        !output.exists(),
        "an unverified file must not be put in place"
    );
    assert!(!dir.path().join("out.mp4.part").exists());
    Ok(())
}

#[tokio::test]
async fn watch_writes_streamed_content_and_checks_content_end() -> anyhow::Result<()> {
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("watched.mp4");

    let (result, out) =
        vidgate(&addr, &["watch", VIDEO_ID, "--output", path_str(&output)?]).await?;

    result?;
    let seen = seen(&fake);
    assert!(seen.watches[0].include_content);
    assert_eq!(std::fs::read(&output)?, fake.content);
    assert!(out.contains("status:      COMPLETED"), "stdout: {out}");
    assert!(out.contains("sha256 ok"), "stdout: {out}");
    Ok(())
}

#[tokio::test]
async fn watch_broken_during_content_replays_from_before_completed_and_skips_written_bytes()
-> anyhow::Result<()> {
    let fake = Fake {
        break_first_watch_content_after_chunks: Some(3),
        ..Fake::new()
    };
    let addr = serve(fake.clone()).await?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("watched.mp4");

    let (result, _) = vidgate(&addr, &["watch", VIDEO_ID, "--output", path_str(&output)?]).await?;

    result?;
    // COMPLETED was sequence 6: resuming after 5 brings it and its chunks again.
    let cursors: Vec<i64> = seen(&fake)
        .watches
        .iter()
        .map(|w| w.after_sequence)
        .collect();
    assert_eq!(cursors, [0, 5]);
    assert_eq!(std::fs::read(&output)?, fake.content);
    Ok(())
}

#[tokio::test]
async fn watch_of_a_job_that_fails_exits_with_its_reason_and_writes_no_file() -> anyhow::Result<()>
{
    let fake = Fake {
        final_status: VideoStatus::Failed,
        ..Fake::new()
    };
    let addr = serve(fake.clone()).await?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("never.mp4");

    let (result, out) =
        vidgate(&addr, &["watch", VIDEO_ID, "--output", path_str(&output)?]).await?;

    let message = format!(
        "{:#}",
        result
            .err()
            .ok_or_else(|| anyhow::anyhow!("failure accepted"))?
    );
    assert!(
        message.contains("vid_1 ended FAILED: UPSTREAM_FAILED"),
        "{message}"
    );
    assert!(
        out.contains("error:       UPSTREAM_FAILED"),
        "the final state is still shown: {out}"
    );
    assert!(!output.exists());
    assert!(!dir.path().join("never.mp4.part").exists());
    Ok(())
}

#[tokio::test]
async fn watch_with_wrong_content_end_sha256_fails() -> anyhow::Result<()> {
    let fake = Fake {
        published_sha256: sha256_hex(b"not it"),
        ..Fake::new()
    };
    let addr = serve(fake.clone()).await?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("watched.mp4");

    let (result, _) = vidgate(&addr, &["watch", VIDEO_ID, "--output", path_str(&output)?]).await?;

    let message = format!(
        "{:#}",
        result
            .err()
            .ok_or_else(|| anyhow::anyhow!("mismatch accepted"))?
    );
    assert!(message.contains("sha256 mismatch"), "{message}");
    assert!(!output.exists());
    Ok(())
}

#[tokio::test]
async fn watch_resumes_after_subscriber_lagged_from_the_last_sequence() -> anyhow::Result<()> {
    let fake = Fake {
        lag_first_watch: true,
        ..Fake::new()
    };
    let addr = serve(fake.clone()).await?;

    let (result, out) = vidgate(&addr, &["--json", "watch", VIDEO_ID]).await?;

    result?;
    let cursors: Vec<i64> = seen(&fake)
        .watches
        .iter()
        .map(|w| w.after_sequence)
        .collect();
    assert_eq!(cursors, [0, 5]);
    let video: Video = serde_json::from_str(&out)?;
    assert_eq!(video.status, VideoStatus::Completed as i32);
    Ok(())
}

#[tokio::test]
async fn create_wait_output_watches_then_downloads_verified() -> anyhow::Result<()> {
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("made.mp4");

    let (result, out) = vidgate(
        &addr,
        &[
            "create",
            "--model",
            "m",
            "--prompt",
            "p",
            "--output",
            path_str(&output)?,
        ],
    )
    .await?;

    result?;
    let seen = seen(&fake);
    assert_eq!(seen.creates.len(), 1);
    assert_eq!(seen.watches.len(), 1);
    assert!(
        !seen.watches[0].include_content,
        "content comes by DownloadVideo"
    );
    assert_eq!(seen.downloads.len(), 1);
    assert_eq!(std::fs::read(&output)?, fake.content);
    assert!(out.contains("sha256 ok"), "stdout: {out}");
    Ok(())
}

#[tokio::test]
async fn invalid_argument_is_rendered_with_field_rule_and_reason() -> anyhow::Result<()> {
    fn rejected() -> Status {
        let mut violation = FieldViolation::new("veo.seconds", "must be 4, 6 or 8");
        violation.reason = "V1".to_owned();
        let mut details = ErrorDetails::with_bad_request(vec![violation]);
        details.set_error_info("INVALID_VIDEO_REQUEST", "vidgate", HashMap::new());
        Status::with_error_details(Code::InvalidArgument, "the request is invalid", details)
    }
    let fake = Fake {
        create_error: Some(rejected),
        ..Fake::new()
    };
    let addr = serve(fake.clone()).await?;

    let (result, _) = vidgate(
        &addr,
        &["create", "--model", "m", "--prompt", "p", "--seconds", "5"],
    )
    .await?;

    let error = result
        .err()
        .ok_or_else(|| anyhow::anyhow!("rejection accepted"))?;
    let message = format!("{error:#}");
    assert!(
        message.contains("CreateVideo failed: InvalidArgument"),
        "{message}"
    );
    assert!(
        message.contains("veo.seconds: must be 4, 6 or 8 (rule V1)"),
        "{message}"
    );
    assert!(
        message.contains("reason: INVALID_VIDEO_REQUEST"),
        "{message}"
    );
    let rpc = error
        .downcast_ref::<RpcError>()
        .ok_or_else(|| anyhow::anyhow!("not an RpcError: {error:?}"))?;
    assert_eq!(rpc.status().code(), Code::InvalidArgument);
    assert_eq!(rpc.reason().as_deref(), Some("INVALID_VIDEO_REQUEST"));
    Ok(())
}

#[tokio::test]
async fn token_is_sent_as_bearer_authorization_on_every_call() -> anyhow::Result<()> {
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;

    let (get, out) = vidgate(&addr, &["--json", "get", VIDEO_ID]).await?;
    let (cancel, _) = vidgate(&addr, &["cancel", VIDEO_ID]).await?;
    let (delete, deleted) = vidgate(&addr, &["delete", VIDEO_ID]).await?;

    get?;
    cancel?;
    delete?;
    let expected = Some(format!("Bearer {TOKEN}"));
    let seen = seen(&fake);
    assert_eq!(
        seen.authorization,
        [expected.clone(), expected.clone(), expected]
    );
    let video: Video = serde_json::from_str(&out)?;
    assert_eq!(video.id, VIDEO_ID);
    assert_eq!(deleted.trim(), "deleted vid_1");
    Ok(())
}

#[tokio::test]
async fn retry_asks_for_the_duplicate_charge_flag_then_prints_the_requeued_video()
-> anyhow::Result<()> {
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;

    let (refused, refused_out) = vidgate(&addr, &["retry", VIDEO_ID]).await?;
    let (text, text_out) = vidgate(
        &addr,
        &["retry", VIDEO_ID, "--accept-possible-duplicate-charge"],
    )
    .await?;
    let (json, json_out) = vidgate(
        &addr,
        &[
            "--json",
            "retry",
            VIDEO_ID,
            "--accept-possible-duplicate-charge",
        ],
    )
    .await?;

    let message = format!(
        "{:#}",
        refused
            .err()
            .ok_or_else(|| anyhow::anyhow!("retried without the flag"))?
    );
    for needle in [
        "--accept-possible-duplicate-charge",
        "may bill a second generation",
        "UPSTREAM_OUTCOME_UNKNOWN",
    ] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    assert!(refused_out.is_empty());
    text?;
    assert!(text_out.contains("status:      QUEUED"), "{text_out}");
    assert!(
        text_out.contains("attempt 1:   task_earlier, UPSTREAM_OUTCOME_UNKNOWN"),
        "{text_out}"
    );
    json?;
    let video: Video = serde_json::from_str(&json_out)?;
    assert_eq!(video.previous_attempts.len(), 1);
    let consented = RetryVideoRequest {
        id: VIDEO_ID.to_owned(),
        accept_possible_duplicate_charge: true,
    };
    let seen = seen(&fake);
    assert_eq!(
        seen.retries,
        [consented.clone(), consented],
        "nothing was sent without the flag"
    );
    Ok(())
}

#[tokio::test]
async fn not_found_names_the_call_and_exits_with_an_error() -> anyhow::Result<()> {
    let fake = Fake::new();
    let addr = serve(fake.clone()).await?;

    let (result, out) = vidgate(&addr, &["get", "vid_missing"]).await?;

    let message = format!(
        "{:#}",
        result.err().ok_or_else(|| anyhow::anyhow!("found"))?
    );
    assert!(
        message.contains("GetVideo failed: NotFound: video vid_missing not found"),
        "{message}"
    );
    assert!(out.is_empty());
    Ok(())
}

#[tokio::test]
async fn unreachable_server_says_where_it_looked() -> anyhow::Result<()> {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = format!("http://{}", listener.local_addr()?);
    drop(listener);

    let (result, _) = vidgate(&addr, &["get", VIDEO_ID]).await?;

    let message = format!(
        "{:#}",
        result.err().ok_or_else(|| anyhow::anyhow!("connected"))?
    );
    assert!(
        message.contains(&format!("cannot connect to {addr}")),
        "{message}"
    );
    Ok(())
}

//! The API edge under hostile input (#14 item 9): echoed values are cut short, so every error
//! fits in the trailers a default client accepts.

use std::collections::BTreeMap;

use crate::support::*;
use tonic::Code;
use tonic_types::StatusExt;
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;

/// What a whole status may weigh (message plus `grpc-status-details-bin`), far below the
/// 16 KiB header list a default client accepts.
const STATUS_BOUND: usize = 8 * 1024;

/// A client with tonic's defaults (4 MB decode limit, default HTTP/2 settings), as a user's.
async fn default_client(t: &TestApp) -> VideoServiceClient<tonic::transport::Channel> {
    VideoServiceClient::connect(format!("http://{}", t.app().grpc_addr()))
        .await
        .expect("client connects")
}

fn assert_bounded(status: &tonic::Status, code: Code, what: &str) {
    assert_eq!(status.code(), code, "{what}: {status:?}");
    let size = status.message().len() + status.details().len();
    eprintln!(
        "{what}: {:?}, message {} bytes + details {} bytes",
        status.code(),
        status.message().len(),
        status.details().len()
    );
    assert!(
        size < STATUS_BOUND,
        "{what}: the whole status is {size} bytes"
    );
    assert!(
        !status.message().contains("metadata size"),
        "{what}: the client saw the error itself: {}",
        status.message()
    );
}

#[tokio::test]
async fn an_11_mib_model_name_is_refused_with_a_short_error_naming_its_length() {
    let t = spawn_app().await;
    let mut client = default_client(&t).await;
    let mut create = veo(&unique("huge model"));
    create.model = "m".repeat(11 * 1024 * 1024);

    let refused = client
        .create_video(req(ACME, create))
        .await
        .expect_err("an 11 MiB model name is refused");

    assert_bounded(&refused, Code::InvalidArgument, "model");
    assert!(
        refused.message().contains("(11534336 characters)"),
        "the message names the original length: {}",
        refused.message()
    );
    let violations = refused.get_details_bad_request().expect("BadRequest");
    assert!(
        violations
            .field_violations
            .iter()
            .any(|v| v.field == "model"),
        "{violations:?}"
    );
}

#[tokio::test]
async fn a_5_mib_label_key_is_refused_with_a_short_field_path() {
    let t = spawn_app().await;
    let mut client = default_client(&t).await;
    let mut create = veo(&unique("huge label key"));
    create
        .labels
        .insert("k".repeat(5 * 1024 * 1024), "v".into());

    let refused = client
        .create_video(req(ACME, create))
        .await
        .expect_err("a 5 MiB label key is refused");

    assert_bounded(&refused, Code::InvalidArgument, "label key");
    let field = refused
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default();
    assert!(
        field.starts_with("labels[") && field.contains("(5242880 characters)"),
        "{field}"
    );
}

#[tokio::test]
async fn a_1_mib_id_is_not_found_with_a_short_message_on_every_rpc_that_takes_one() {
    let t = spawn_app().await;
    let mut client = default_client(&t).await;
    let id = "v".repeat(1024 * 1024);

    let get = client
        .get_video(req(ACME, pb::GetVideoRequest { id: id.clone() }))
        .await
        .expect_err("no such video");
    assert_bounded(&get, Code::NotFound, "GetVideo");
    assert!(get.message().contains("(1048576 characters)"), "{get:?}");

    let cancel = client
        .cancel_video(req(ACME, pb::CancelVideoRequest { id: id.clone() }))
        .await
        .expect_err("no such video");
    assert_bounded(&cancel, Code::NotFound, "CancelVideo");

    let watch = client
        .watch_video(req(
            ACME,
            pb::WatchVideoRequest {
                id: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("no such video");
    assert_bounded(&watch, Code::NotFound, "WatchVideo");

    let download = client
        .download_video(req(
            ACME,
            pb::DownloadVideoRequest {
                id,
                ..Default::default()
            },
        ))
        .await
        .expect_err("no such video");
    assert_bounded(&download, Code::NotFound, "DownloadVideo");
}

#[tokio::test]
async fn a_1_mib_page_token_is_refused_briefly() {
    let t = spawn_app().await;
    let mut client = default_client(&t).await;
    let refused = client
        .list_videos(req(
            ACME,
            pb::ListVideosRequest {
                page_token: "t".repeat(1024 * 1024),
                ..Default::default()
            },
        ))
        .await
        .expect_err("not a token this server issued");
    assert_bounded(&refused, Code::InvalidArgument, "page_token");
}

#[tokio::test]
async fn many_long_violations_are_bounded_and_say_how_many_were_left_out() {
    let t = spawn_app().await;
    let mut client = default_client(&t).await;
    let mut create = veo(&unique("many bad labels"));
    create.labels = (0..64)
        .map(|i| (format!("{i:02}{}", "!".repeat(10_000)), "x".repeat(10_000)))
        .collect::<BTreeMap<_, _>>();

    let refused = client
        .create_video(req(ACME, create))
        .await
        .expect_err("every label is wrong");

    assert_bounded(&refused, Code::InvalidArgument, "128 violations");
    let violations = refused
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations;
    let last = violations.last().expect("some violations");
    assert_eq!(last.field, "*", "{last:?}");
    assert!(
        last.description.contains("more violations not shown"),
        "{last:?}"
    );
}

/// Sends `body` as the request bytes of `method` and returns the status it ends with: tonic's
/// generic client with a codec that passes bytes through, so the server's decoder sees exactly
/// what a broken client would send.
async fn raw_unary(t: &TestApp, method: &'static str, body: &'static [u8]) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", t.app().grpc_addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary(
        req(ACME, bytes::Bytes::from_static(body)),
        http::uri::PathAndQuery::from_static(method),
        raw::RawCodec,
    )
    .await
    .map(|_| ())
    .expect_err("the server refuses the bytes")
}

mod raw {
    use bytes::{Buf, BufMut, Bytes};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    pub struct RawCodec;
    pub struct RawEncoder;
    pub struct RawDecoder;

    impl Codec for RawCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Bytes;
        type Error = Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for RawDecoder {
        type Item = Bytes;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }
}

#[tokio::test]
async fn malformed_protobuf_and_invalid_utf8_are_invalid_argument_naming_the_cause() {
    let t = spawn_app().await;
    let cases: [(&str, &'static str, &'static [u8], &str); 4] = [
        (
            "a string field that is not UTF-8",
            "/vidgate.v1.VideoService/GetVideo",
            // field 1 (id), length 2, bytes FF FE
            &[0x0a, 0x02, 0xff, 0xfe],
            "UTF-8",
        ),
        (
            "a length running past the end",
            "/vidgate.v1.VideoService/GetVideo",
            &[0x0a, 0x05, b'a'],
            "buffer underflow",
        ),
        (
            "an invalid wire type",
            "/vidgate.v1.VideoService/ListVideos",
            &[0x0f, 0x00],
            "wire type",
        ),
        (
            "a prompt that is not UTF-8 in a create",
            "/vidgate.v1.VideoService/CreateVideo",
            // field 3 (prompt), length 1, a lone UTF-8 lead byte
            &[0x1a, 0x01, 0xc3],
            "UTF-8",
        ),
    ];
    for (what, method, body, cause) in cases {
        let status = raw_unary(&t, method, body).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(error_reason(&status), "MALFORMED_MESSAGE", "{what}");
        assert!(
            status.message().contains(cause),
            "{what}: the message names the cause: {}",
            status.message()
        );
    }
}

/// Every directory and file under `dir` with its permission bits, `dir` first.
#[cfg(unix)]
fn modes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = vec![(
        dir.to_path_buf(),
        std::fs::metadata(dir).expect("stat").permissions().mode() & 0o777,
    )];
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(modes(&path));
        } else {
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            out.push((path, mode));
        }
    }
    out
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_0700_its_files_0600_and_wider_ones_are_tightened() {
    use std::os::unix::fs::PermissionsExt;
    // Arrange: a data directory and a database left world-readable (as before this rule).
    let sim =
        vidgate::upstream::sim::Simulator::start(sim_config(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("simulator starts");
    let data_dir = temp_dir("modes");
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let db = data_dir.join("vidgate.db");
    std::fs::write(&db, b"").expect("an empty database");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    // Act: start on it and store a video.
    let mut t = start(test_config(&data_dir, &sim), data_dir.clone(), sim).await;
    let v = t
        .client
        .create_video(req(ACME, veo(&unique("private files"))))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(
        t.drive(ACME, &v.id).await.status(),
        pb::VideoStatus::Completed
    );

    // Assert
    let all = modes(&data_dir);
    assert!(
        all.iter()
            .any(|(p, _)| p.extension().is_some_and(|e| e == "mp4")),
        "the video is stored: {all:?}"
    );
    for (path, mode) in &all {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }
    if let Some(app) = t.app.take() {
        app.shutdown().await;
    }
    std::fs::remove_dir_all(&data_dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_holds_at_most_its_stream_cap_and_a_closed_stream_frees_its_slot() {
    const CAP: usize = 3;
    let mut t = spawn_app_with(|c| c.server.max_streams_per_tenant = CAP).await;
    let done = t
        .client
        .create_video(req(ACME, veo(&unique("stream cap"))))
        .await
        .expect("create")
        .into_inner();
    t.drive(ACME, &done.id).await;

    let pending = t
        .client
        .create_video(req(ACME, veo(&unique("stream cap, pending"))))
        .await
        .expect("create")
        .into_inner();

    // Streams that stay open (never read): two subscriptions and a watch of an unfinished job.
    let subscribe = t
        .client
        .subscribe(req(ACME, pb::SubscribeRequest::default()))
        .await
        .expect("subscribe 1")
        .into_inner();
    let subscribe_2 = t
        .client
        .subscribe(req(ACME, pb::SubscribeRequest::default()))
        .await
        .expect("subscribe 2")
        .into_inner();
    let watch = t
        .client
        .watch_video(req(
            ACME,
            pb::WatchVideoRequest {
                id: pending.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("watch")
        .into_inner();

    // The next one, of any kind, is refused naming the limit.
    let refused = t
        .client
        .download_video(req(
            ACME,
            pb::DownloadVideoRequest {
                id: done.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("over the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(error_reason(&refused), "TOO_MANY_STREAMS");
    assert!(refused.message().contains(&CAP.to_string()), "{refused:?}");
    assert_eq!(
        refused
            .get_details_error_info()
            .and_then(|i| i.metadata.get("max_streams").cloned())
            .as_deref(),
        Some("3")
    );
    // Another tenant is not affected.
    let _globex = t
        .client
        .subscribe(req(GLOBEX, pb::SubscribeRequest::default()))
        .await
        .expect("another tenant's stream");

    // The client goes away from one stream: its slot comes back.
    drop(subscribe);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let again = loop {
        match t
            .client
            .subscribe(req(ACME, pb::SubscribeRequest::default()))
            .await
        {
            Ok(stream) => break stream,
            Err(e) if error_reason(&e) == "TOO_MANY_STREAMS" => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the dropped stream's slot never came back"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    drop((subscribe_2, watch, again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_port_advertises_its_stream_limit_and_drops_a_client_that_stops_answering_pings() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = spawn_app_with(|c| {
        c.server.max_concurrent_streams = 7;
        c.server.keepalive_secs = 1;
        c.server.keepalive_timeout_secs = 1;
    })
    .await;
    let addr = t.app().grpc_addr();

    // A live HTTP/2 client learns the per-connection stream limit from the server's SETTINGS.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let client = client.ready().await.expect("ready");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while client.current_max_send_streams() != 7 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(client.current_max_send_streams(), 7);

    // A client that sends its preface and then never answers anything (a dead peer behind a
    // live socket) is closed once a keepalive PING goes unanswered: interval + timeout.
    let started = tokio::time::Instant::now();
    let mut dead = tokio::net::TcpStream::connect(addr).await.expect("connect");
    dead.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface and SETTINGS");
    let mut buf = [0_u8; 4096];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            match dead.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the silent client was closed");
    eprintln!("a client that never answers PINGs was closed after {closed:?}");
    assert!(
        closed >= std::time::Duration::from_secs(1) && closed <= std::time::Duration::from_secs(5),
        "closed after {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_the_grpc_port_that_never_sends_its_preface_is_closed() {
    use tokio::io::AsyncReadExt;
    let t = spawn_app_with(|c| c.server.handshake_timeout_secs = 1).await;
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(t.app().grpc_addr())
        .await
        .expect("connect");
    let mut buf = [0_u8; 1024];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the silent connection was closed");
    eprintln!("a connection that never sent its preface was closed after {closed:?}");
    assert!(
        closed >= std::time::Duration::from_secs(1) && closed <= std::time::Duration::from_secs(4),
        "closed after {closed:?}"
    );
    // A real client on the same port is unaffected.
    let mut client = t.client.clone();
    client
        .list_videos(req(ACME, pb::ListVideosRequest::default()))
        .await
        .expect("a client that speaks at once is served");
}

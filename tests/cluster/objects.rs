//! Videos in an S3-compatible object store (issue #15): any instance serves the bytes another
//! downloaded, an outage of the store makes downloads wait (not fail) and reads say
//! `UNAVAILABLE` with a retry delay. The server is `VIDGATE_TEST_S3_ENDPOINT`, else a moto
//! server started by the test support (see `tests/support/s3.rs`).

use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};
use tonic_types::StatusExt;

use super::*;
use support::s3::s3;
use vidgate::telemetry::Metrics;

/// `DownloadVideo` of the whole video `id`, as ACME.
fn whole(id: &str) -> tonic::Request<pb::DownloadVideoRequest> {
    req(
        ACME,
        pb::DownloadVideoRequest {
            id: id.to_owned(),
            ..Default::default()
        },
    )
}

/// A `DownloadVideo` of `id` that must be refused at once (`why` says why): its status.
async fn refused_download(
    client: &mut VideoServiceClient<Channel>,
    id: &str,
    why: &str,
) -> tonic::Status {
    client
        .download_video(whole(id))
        .await
        .map(|_| ())
        .expect_err(why)
}

/// Two instances on one schema and one object store (`blob`): A drives jobs, B never does, so
/// whatever B serves, A downloaded. One 12 MiB job (more than a part: uploaded while it
/// downloads) is created on A and seen completed from B.
struct TwoInstances {
    a: Application,
    b: Application,
    client_a: VideoServiceClient<Channel>,
    client_b: VideoServiceClient<Channel>,
    video: pb::Video,
    dir_a: std::path::PathBuf,
    dir_b: std::path::PathBuf,
    _sim: SimHandle,
}

async fn two_instances_with_a_video(
    schema: &TestSchema,
    blob: vidgate::blob::BlobConfig,
    name: &str,
) -> TwoInstances {
    let sim = sim(SimConfig {
        content_min_size: 12 * 1024 * 1024,
        ..sim_config()
    })
    .await;
    let (dir_a, dir_b) = (
        temp_dir(&format!("{name}-a")),
        temp_dir(&format!("{name}-b")),
    );
    let mut config_a = instance_config(schema, &dir_a, &sim);
    config_a.blob = blob.clone();
    let mut config_b = instance_config(schema, &dir_b, &sim);
    config_b.blob = blob;
    config_b.dispatcher.enabled = false;
    let a = Application::build(config_a).await.expect("A starts");
    let b = Application::build(config_b).await.expect("B starts");
    let (mut client_a, mut client_b) = (connect(&a).await, connect(&b).await);
    let created = client_a
        .create_video(req(ACME, veo(&format!("objects: {name}"))))
        .await
        .expect("create on A")
        .into_inner();
    let videos = wait_all_terminal(&mut client_b, 1, "the job on A").await;
    let video = videos
        .into_iter()
        .find(|v| v.id == created.id)
        .expect("the job");
    assert_eq!(video.status(), pb::VideoStatus::Completed, "{video:?}");
    TwoInstances {
        a,
        b,
        client_a,
        client_b,
        video,
        dir_a,
        dir_b,
        _sim: sim,
    }
}

/// Deletes video `id` through `client`, then waits (at most [`WAIT`]) until `gone` says the
/// store holds nothing of it: deleting a video deletes its objects.
async fn delete_and_wait_until_gone(
    client: &mut VideoServiceClient<Channel>,
    id: &str,
    gone: impl AsyncFn() -> bool,
) {
    client
        .delete_video(req(ACME, pb::DeleteVideoRequest { id: id.to_owned() }))
        .await
        .expect("delete");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gone().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stored video outlived its job"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `vidgate.blob.uploaded{vidgate.mode=mode}` on `app`'s admin port (0 when absent).
async fn uploads(app: &Application, mode: &str) -> f64 {
    let admin = app.admin_addr().expect("admin port on");
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    let label = format!("vidgate_mode=\"{mode}\"");
    text.lines()
        .filter(|l| l.starts_with("vidgate_blob_uploaded_total") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Streams a whole video from `client` and returns its SHA-256 and size.
async fn download_sha256(client: &mut VideoServiceClient<Channel>, id: &str) -> (String, u64) {
    let mut stream = client
        .download_video(whole(id))
        .await
        .expect("DownloadVideo starts")
        .into_inner();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a chunk");
        assert_eq!(chunk.offset as u64, size, "chunks arrive in order");
        size += chunk.data.len() as u64;
        hasher.update(&chunk.data);
    }
    (hex::encode(hasher.finalize()), size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_downloaded_by_one_instance_is_streamed_by_another_byte_identical() {
    let db = database().await;
    let schema = db.schema("objects_two");
    let s3 = s3();
    let prefix = s3.prefix("two-instances");
    let TwoInstances {
        a,
        b,
        mut client_a,
        mut client_b,
        video,
        dir_a,
        dir_b,
        _sim,
    } = two_instances_with_a_video(&schema, s3.blob_config(&prefix), "objects").await;
    let content = video.content.clone().expect("content facts");
    assert!(content.size_bytes >= 12 * 1024 * 1024, "{content:?}");

    // One object in the bucket under the test's prefix, of the video's size; no staged file
    // left on A, and nothing of it on B's disk.
    let objects = s3.list(&prefix).await;
    assert_eq!(
        objects,
        vec![(
            format!("{prefix}/videos/{}.mp4", video.id),
            content.size_bytes
        )],
        "the bucket holds exactly the video"
    );
    let staged: Vec<_> = std::fs::read_dir(dir_a.join("blobs").join("partial"))
        .expect("A's staging directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(staged.is_empty(), "staged files left on A: {staged:?}");
    assert!(
        !dir_b.join("blobs").join("videos").exists(),
        "B has no local copy"
    );

    // A uploaded it while downloading (12 MiB is more than a part), not afterwards.
    assert_eq!(
        uploads(&a, "streamed").await,
        1.0,
        "the video was uploaded alongside its download"
    );
    assert_eq!(uploads(&a, "staged").await, 0.0);

    // B streams it, byte-identical to what A hashed while downloading; so does A.
    let (sha_b, size_b) = download_sha256(&mut client_b, &video.id).await;
    assert_eq!(size_b, content.size_bytes);
    assert_eq!(sha_b, content.sha256, "B's bytes are A's bytes");
    let (sha_a, _) = download_sha256(&mut client_a, &video.id).await;
    assert_eq!(sha_a, content.sha256);

    // A ranged read from B: the last 1,000 bytes.
    let mut tail = client_b
        .download_video(req(
            ACME,
            pb::DownloadVideoRequest {
                id: video.id.clone(),
                read_offset: content.size_bytes as i64 - 1_000,
                ..Default::default()
            },
        ))
        .await
        .expect("a ranged download")
        .into_inner();
    let mut got = 0;
    while let Some(chunk) = tail.next().await {
        got += chunk.expect("a chunk").data.len();
    }
    assert_eq!(got, 1_000);

    // Deleting the video deletes its object.
    delete_and_wait_until_gone(&mut client_b, &video.id, async || {
        s3.list(&prefix).await.is_empty()
    })
    .await;
    stop_all(vec![a, b]).await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn videos_in_azure_blob_storage_go_through_the_same_code_byte_identical_across_instances() {
    let db = database().await;
    let schema = db.schema("objects_azure");
    let azure = support::azure::azure().await;
    let prefix = azure.prefix("azure");
    // The video goes up as blocks while it downloads.
    let TwoInstances {
        a,
        b,
        mut client_b,
        video,
        ..
    } = two_instances_with_a_video(&schema, azure.blob_config(&prefix), "azure").await;
    let content = video.content.clone().expect("content facts");
    assert_eq!(
        azure.list(&prefix).await,
        vec![(
            format!("{prefix}/videos/{}.mp4", video.id),
            content.size_bytes
        )],
        "the container holds exactly the video"
    );
    assert_eq!(uploads(&a, "streamed").await, 1.0);
    let (sha_b, size_b) = download_sha256(&mut client_b, &video.id).await;
    assert_eq!(
        (sha_b, size_b),
        (content.sha256.clone(), content.size_bytes)
    );

    delete_and_wait_until_gone(&mut client_b, &video.id, async || {
        azure.list(&prefix).await.is_empty()
    })
    .await;
    stop_all(vec![a, b]).await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_upload_leaves_no_object_another_completes_the_job_and_the_sweeper_aborts_the_upload()
 {
    const VIDEO: u64 = 60 * 1024 * 1024;
    let db = database().await;
    let schema = db.schema("objects_killed");
    let s3 = s3();
    let prefix = s3.prefix("killed-upload");
    let sim = sim(SimConfig {
        content_min_size: VIDEO,
        ..sim_config()
    })
    .await;
    let short_leases = |c: &mut Config| {
        c.dispatcher.lease_ms = 3_000;
        c.dispatcher.submit_lease_ms = 3_000;
        c.dispatcher.poll_interval_ms = 100;
    };
    // Parts of 5 MiB, one in flight: the download runs at the store's pace, so the instance
    // can be killed while its upload is under way.
    let blob = || {
        let mut b = s3.blob_config(&prefix);
        b.part_bytes = 5 * 1024 * 1024;
        b.upload_concurrency = 1;
        b
    };
    let doomed_dir = temp_dir("objects-doomed");
    let mut doomed_config = instance_config(&schema, &doomed_dir, &sim);
    doomed_config.blob = blob();
    short_leases(&mut doomed_config);
    let doomed = start_killable(doomed_config);
    let mut doomed_client = VideoServiceClient::connect(format!("http://{}", doomed.grpc))
        .await
        .expect("connect");
    let created = doomed_client
        .create_video(req(ACME, veo("objects: killed mid upload")))
        .await
        .expect("create")
        .into_inner();

    // Killed once 20 MiB are down: at least two parts are in the store, 40 MiB are not.
    let partial = doomed_dir
        .join("blobs")
        .join("partial")
        .join(format!("{}.mp4.part", created.id));
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 20 * 1024 * 1024 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the download never got to 20 MiB"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    doomed.kill.send(()).expect("kill");
    doomed
        .thread
        .join()
        .expect("the killed instance's thread ends");

    // Nothing of the video is visible: an upload is an object only once complete. What the
    // crash left is an unfinished upload, which S3 keeps (and bills) until it is aborted.
    assert_eq!(s3.list(&prefix).await, Vec::new(), "no half object");
    let left = s3.incomplete_uploads(&prefix).await;
    assert_eq!(
        left,
        vec![format!("{prefix}/videos/{}.mp4", created.id)],
        "the killed upload, unfinished"
    );

    // Another instance, on another disk, takes the job over when the lease ends: it downloads
    // again (the partial file was the dead instance's) and uploads alongside, once.
    let survivor_dir = temp_dir("objects-survivor");
    let mut config = instance_config(&schema, &survivor_dir, &sim);
    config.blob = blob();
    short_leases(&mut config);
    let survivor = Application::build(config).await.expect("survivor starts");
    let mut client = connect(&survivor).await;
    let videos = wait_all_terminal(&mut client, 1, "the job of the killed instance").await;
    let video = &videos[0];
    assert_eq!(video.status(), pb::VideoStatus::Completed, "{video:?}");
    let content = video.content.clone().expect("content facts");
    assert_eq!(
        s3.list(&prefix).await,
        vec![(
            format!("{prefix}/videos/{}.mp4", video.id),
            content.size_bytes
        )],
        "one whole object"
    );
    let (sha, _) = download_sha256(&mut client, &video.id).await;
    assert_eq!(sha, content.sha256);
    assert_eq!(uploads(&survivor, "streamed").await, 1.0);
    assert_eq!(
        s3.incomplete_uploads(&prefix).await,
        left,
        "the survivor's upload was completed; only the killed one is left"
    );

    // The sweeper aborts it: its job is finished. Then nothing is left but the video.
    let blobs = vidgate::blob::BlobStore::open(&blob(), &survivor_dir).expect("blob store");
    let report = vidgate::sweeper::sweep(
        &blobs,
        survivor.store().as_ref(),
        Duration::ZERO,
        &Metrics::disabled(),
        true,
    )
    .await
    .expect("a sweep");
    assert_eq!(report.aborted_uploads, 1, "{report:?}");
    assert_eq!(report.removed_objects, 0, "{report:?}");
    assert_eq!(s3.incomplete_uploads(&prefix).await, Vec::<String>::new());
    assert_eq!(s3.list(&prefix).await.len(), 1, "the video stays");
    stop_all(vec![survivor]).await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_broken_mid_upload_aborts_that_upload_and_completes_with_one_object() {
    use vidgate::upstream::sim::{Fault, FaultEndpoint, FaultRule, FaultWhen};
    let db = database().await;
    let schema = db.schema("objects_broken");
    let s3 = s3();
    let prefix = s3.prefix("broken-upload");
    // 12 MiB, broken once after 9 MiB: by then the first 8 MiB part has gone to the store
    // alongside the download.
    let sim = sim(SimConfig {
        content_min_size: 12 * 1024 * 1024,
        faults: vec![FaultRule {
            endpoint: FaultEndpoint::Content,
            when: FaultWhen {
                times: Some(1),
                ..FaultWhen::default()
            },
            fault: Fault::TruncateContent {
                after_bytes: 9 * 1024 * 1024,
            },
        }],
        ..sim_config()
    })
    .await;
    let dir = temp_dir("objects-broken");
    let mut config = instance_config(&schema, &dir, &sim);
    config.blob = s3.blob_config(&prefix);
    let app = Application::build(config).await.expect("vidgate starts");
    let mut client = connect(&app).await;

    // The check below sees an upload left open: one is, for a moment.
    let probe_key = format!("{prefix}/probe");
    let mut probe = s3
        .client()
        .put_multipart(&object_store::path::Path::from(probe_key.as_str()))
        .await
        .expect("a multipart upload starts");
    assert_eq!(s3.incomplete_uploads(&prefix).await, vec![probe_key]);
    probe.abort().await.expect("the probe upload is aborted");
    assert_eq!(s3.incomplete_uploads(&prefix).await, Vec::<String>::new());

    client
        .create_video(req(ACME, veo("objects: broken mid upload")))
        .await
        .expect("create");
    let videos = wait_all_terminal(&mut client, 1, "the job broken mid upload").await;
    let video = &videos[0];
    assert_eq!(video.status(), pb::VideoStatus::Completed, "{video:?}");
    let content = video.content.clone().expect("content facts");
    assert_eq!(
        sim.stats()
            .tasks
            .get(&video.upstream_id)
            .map(|t| t.content_requests),
        Some(2),
        "one broken download, then one resumed from where it broke"
    );

    // One whole object, the bytes the job hashed; the resumed download was uploaded from its
    // staged file, and the upload the break interrupted was aborted, not left billed.
    assert_eq!(
        s3.list(&prefix).await,
        vec![(
            format!("{prefix}/videos/{}.mp4", video.id),
            content.size_bytes
        )]
    );
    let (sha, _) = download_sha256(&mut client, &video.id).await;
    assert_eq!(sha, content.sha256);
    assert_eq!(uploads(&app, "staged").await, 1.0);
    assert_eq!(uploads(&app, "streamed").await, 0.0);
    // The abort runs in the background: give it a moment.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = s3.incomplete_uploads(&prefix).await;
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "multipart uploads left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_all(vec![app]).await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_object_store_makes_downloads_wait_and_reads_unavailable_with_a_retry_delay()
{
    let db = database().await;
    let schema = db.schema("objects_outage");
    let s3 = s3();
    let prefix = s3.prefix("outage");
    let sim = sim(sim_config()).await;
    let dir = temp_dir("objects-outage");
    // The store is reached through a proxy the test owns, and cut there.
    let endpoint: std::net::SocketAddr = s3
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("the S3 endpoint is host:port");
    let proxy = support::amqp::Proxy::start(endpoint).await;
    let mut config = instance_config(&schema, &dir, &sim);
    config.blob = s3.blob_config(&prefix);
    config.blob.endpoint = Some(format!("http://{}", proxy.addr));
    let app = Application::build(config).await.expect("vidgate starts");
    let mut client = connect(&app).await;

    // The store down while the job downloads: the job waits and completes once it is back.
    proxy.cut().await;
    let created = client
        .create_video(req(ACME, veo("objects: outage")))
        .await
        .expect("create")
        .into_inner();
    // Fetched whole from upstream, staged on the local disk, waiting for the store.
    let staged = dir
        .join("blobs")
        .join("partial")
        .join(format!("{}.mp4.ready", created.id));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !staged.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never got to storing its video"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several failed uploads later (the test's backoff is at most 20 ms), it still waits.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let waiting = client
        .get_video(req(
            ACME,
            pb::GetVideoRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        waiting.status(),
        pb::VideoStatus::Processing,
        "the job waits while the store is down: {waiting:?}"
    );
    // Readiness shows the store's state (without making the instance unready).
    let report = app.readiness().refresh().await;
    assert!(
        matches!(
            report.objects,
            vidgate::telemetry::readiness::Check::Failing(_)
        ),
        "{report:?}"
    );
    assert!(
        report.ready,
        "an object store outage does not take the instance out: {report:?}"
    );

    proxy.restore();
    let videos = wait_all_terminal(&mut client, 1, "the job after the outage").await;
    assert_eq!(
        videos[0].status(),
        pb::VideoStatus::Completed,
        "{:?}",
        videos[0]
    );
    let upstream_id = videos[0].upstream_id.clone();
    assert_eq!(
        sim.stats()
            .tasks
            .get(&upstream_id)
            .map(|t| t.content_requests),
        Some(1),
        "the video was fetched from upstream once; the outage only delayed its upload"
    );

    // The store down while reading: UNAVAILABLE with a retry delay, naming the cause.
    proxy.cut().await;
    let status =
        refused_download(&mut client, &created.id, "no read while the store is down").await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(error_reason(&status), "CONTENT_UNAVAILABLE");
    assert!(
        status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .is_some(),
        "{status:?}"
    );
    proxy.restore();
    let (sha, _) = download_sha256(&mut client, &created.id).await;
    assert_eq!(
        Some(sha),
        videos[0].content.as_ref().map(|c| c.sha256.clone())
    );
    stop_all(vec![app]).await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_removes_objects_and_staged_files_no_job_needs_and_keeps_the_rest() {
    let db = database().await;
    let schema = db.schema("objects_sweep");
    let s3 = s3();
    let prefix = s3.prefix("sweep");
    let sim = sim(sim_config()).await;
    let dir = temp_dir("objects-sweep");
    let mut config = instance_config(&schema, &dir, &sim);
    config.blob = s3.blob_config(&prefix);
    config.blob.sweep_interval_ms = 0;
    let blob_config = config.blob.clone();
    let app = Application::build(config).await.expect("vidgate starts");
    let mut client = connect(&app).await;
    let created = client
        .create_video(req(ACME, veo("objects: sweep")))
        .await
        .expect("create")
        .into_inner();
    let videos = wait_all_terminal(&mut client, 1, "the job").await;
    assert_eq!(videos[0].status(), pb::VideoStatus::Completed);

    // Orphans: a video of a job that does not exist, a last frame the completed job does not
    // reference, and a staged download of a job that does not exist. Kept: the job's video and
    // a key vidgate never writes.
    let bucket = s3.client();
    let put = |key: String| {
        let bucket = bucket.clone();
        async move {
            bucket
                .put(
                    &object_store::path::Path::from(key),
                    bytes::Bytes::from_static(b"orphan").into(),
                )
                .await
                .expect("put");
        }
    };
    let ghost = uuid::Uuid::now_v7().simple().to_string();
    put(format!("{prefix}/videos/{ghost}.mp4")).await;
    put(format!("{prefix}/frames/{}.png", created.id)).await;
    put(format!("{prefix}/notes/keep.txt")).await;
    let staged = dir
        .join("blobs")
        .join("partial")
        .join(format!("{ghost}.mp4.part"));
    std::fs::write(&staged, b"half a video").expect("staged file");

    let blobs = vidgate::blob::BlobStore::open(&blob_config, &dir).expect("blob store");
    let report = vidgate::sweeper::sweep(
        &blobs,
        app.store().as_ref(),
        Duration::ZERO,
        &Metrics::disabled(),
        true,
    )
    .await
    .expect("a sweep");
    assert_eq!(report.removed_objects, 2, "{report:?}");
    assert_eq!(report.removed_staged, 1, "{report:?}");
    let left: Vec<String> = s3.list(&prefix).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        left,
        vec![
            format!("{prefix}/notes/keep.txt"),
            format!("{prefix}/videos/{}.mp4", created.id)
        ]
    );
    assert!(!staged.exists());
    // A second sweep finds nothing more.
    let again = vidgate::sweeper::sweep(
        &blobs,
        app.store().as_ref(),
        Duration::ZERO,
        &Metrics::disabled(),
        true,
    )
    .await
    .expect("a sweep");

    // A shared bucket is swept by one instance per interval: whoever takes the role first
    // holds it for the interval; the others skip the bucket (their staged files they sweep).
    let store = app.store();
    let round = Duration::from_millis(300);
    let takes = |holder: &'static str| {
        let (blobs, store) = (blobs.clone(), store.clone());
        async move { vidgate::sweeper::takes_objects(&blobs, store.as_ref(), holder, round).await }
    };
    assert!(takes("instance-a").await, "the first to ask sweeps");
    assert!(
        !takes("instance-b").await,
        "another instance skips the bucket this round"
    );
    assert!(takes("instance-a").await, "the holder keeps its round");
    tokio::time::sleep(round * 2).await;
    assert!(
        takes("instance-b").await,
        "after the round, the next to ask sweeps"
    );
    // An instance without the role leaves the bucket alone.
    let late = uuid::Uuid::now_v7().simple().to_string();
    put(format!("{prefix}/videos/{late}.mp4")).await;
    let skipped = vidgate::sweeper::sweep(
        &blobs,
        store.as_ref(),
        Duration::ZERO,
        &Metrics::disabled(),
        false,
    )
    .await
    .expect("a sweep without the objects");
    assert_eq!(
        (skipped.examined, skipped.removed_objects),
        (0, 0),
        "{skipped:?}"
    );
    assert!(
        s3.list(&prefix)
            .await
            .iter()
            .any(|(k, _)| k.ends_with(&format!("{late}.mp4")))
    );
    let local = vidgate::blob::BlobStore::local(dir.join("own")).expect("a local store");
    assert!(
        vidgate::sweeper::takes_objects(&local, store.as_ref(), "instance-a", round).await,
        "a local directory is the instance's own: always swept"
    );
    assert_eq!((again.removed_objects, again.removed_staged), (0, 0));
    stop_all(vec![app]).await;
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_store_credentials_never_reach_a_log_line_even_at_trace() {
    const ACCESS_KEY: &str = "AKIAVIDGATETESTKEY42";
    const SECRET: &str = "vidgate-test-secret-6f1c0a9e2b7d";
    const SESSION_TOKEN: &str = "vidgate-test-session-token-93d2";
    let s3 = s3();
    let prefix = s3.prefix("credentials");
    // An upload a crashed instance left: the child's sweeper lists and aborts it, with the
    // credentials (a signed listing URL, then a signed DELETE).
    let ghost = uuid::Uuid::now_v7().simple().to_string();
    let _left = s3
        .client()
        .put_multipart(&object_store::path::Path::from(format!(
            "{prefix}/videos/{ghost}.mp4"
        )))
        .await
        .expect("an upload starts");
    let sim = sim(sim_config()).await;
    let dir = temp_dir("objects-credentials");
    let toml = format!(
        r#"
[storage]
data_dir = "{data}"

[upstream]
mode = "real"
base_url = "{base}"

[upstream.limits]
requests_per_second = 1000

[dispatcher]
first_poll_after_ms = 0
poll_interval_ms = 20
poll_jitter = 0.0
backoff_min_ms = 10
backoff_max_ms = 50
idle_wake_ms = 50
min_free_disk_bytes = 0

[blob]
sweep_interval_ms = 200
orphan_grace_ms = 0
"#,
        data = dir.display(),
        base = sim.base_url(),
    );
    let blob_url = format!("s3://{}/{prefix}", s3.bucket);
    let child = crate::support::child::serve(
        &dir,
        &toml,
        &[
            ("TURING_API_KEY", sim.api_key()),
            ("VIDGATE_BLOB_URL", &blob_url),
            ("VIDGATE_BLOB_ENDPOINT", &s3.endpoint),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN),
            ("AWS_REGION", "us-east-1"),
            ("RUST_LOG", "trace"),
        ],
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut client = VideoServiceClient::connect(format!("http://{}", child.grpc))
        .await
        .expect("client connects");
    let created = client
        .create_video(veo("objects: credentials"))
        .await
        .expect("create")
        .into_inner();
    // Completed means the video went to the bucket (with the credentials); then read it back.
    loop {
        let v = client
            .get_video(pb::GetVideoRequest {
                id: created.id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        if v.status() == pb::VideoStatus::Completed {
            break;
        }
        assert!(!terminal(&v), "{v:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "not completed: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = client
        .download_video(pb::DownloadVideoRequest {
            id: created.id.clone(),
            ..Default::default()
        })
        .await
        .expect("download")
        .into_inner();
    while let Some(chunk) = stream.next().await {
        chunk.expect("a chunk");
    }
    assert_eq!(
        s3.list(&prefix).await.len(),
        1,
        "the video is in the bucket"
    );
    while !s3.incomplete_uploads(&prefix).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweeper never aborted the left upload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = child.kill().await;
    assert!(
        logs.lines().count() > 100,
        "trace logging was on: {} lines",
        logs.lines().count()
    );
    assert!(
        logs.contains("unfinished multipart upload aborted"),
        "the sweeper's listing and abort ran at trace level"
    );
    assert!(!logs.contains(SECRET), "the secret key reached the logs");
    assert!(
        !logs.contains(SESSION_TOKEN),
        "the session token reached the logs"
    );
    assert!(
        !logs.contains(ACCESS_KEY),
        "the access key id reached the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_retention_a_video_is_gone_from_the_bucket_its_job_stays_and_download_says_expired()
 {
    let db = database().await;
    let schema = db.schema("objects_retention");
    let s3 = s3();
    let prefix = s3.prefix("retention");
    let sim = sim(sim_config()).await;
    let dir = temp_dir("objects-retention");
    let mut config = instance_config(&schema, &dir, &sim);
    config.blob = s3.blob_config(&prefix);
    config.blob.retention = Some("4s".into());
    config.blob.sweep_interval_ms = 0;
    let blob_config = config.blob.clone();
    let app = Application::build(config).await.expect("vidgate starts");
    let mut client = connect(&app).await;
    let created = client
        .create_video(req(ACME, veo("objects: retention")))
        .await
        .expect("create")
        .into_inner();
    let videos = wait_all_terminal(&mut client, 1, "the job").await;
    let video = &videos[0];
    assert_eq!(video.status(), pb::VideoStatus::Completed);
    let content = video.content.clone().expect("content facts");
    assert_eq!(s3.list(&prefix).await.len(), 1);

    // Past complete_time + 4 s: expired for every reader, before any sweep ran.
    let complete = video.complete_time.expect("complete time");
    let expires = std::time::UNIX_EPOCH
        + Duration::from_secs(complete.seconds as u64)
        + Duration::from_nanos(complete.nanos as u64)
        + Duration::from_secs(4);
    if let Ok(wait) = expires.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(200)).await;
    }
    let status = refused_download(&mut client, &created.id, "expired content is not served").await;
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(error_reason(&status), "CONTENT_EXPIRED");
    assert!(status.message().contains("retention"), "{status:?}");

    // The sweep removes it from the bucket; the job stays, with its content facts.
    let blobs = vidgate::blob::BlobStore::open(&blob_config, &dir).expect("blob store");
    let report = vidgate::sweeper::sweep(
        &blobs,
        app.store().as_ref(),
        Duration::from_secs(3_600),
        &Metrics::disabled(),
        true,
    )
    .await
    .expect("a sweep");
    assert_eq!(report.expired_objects, 1, "{report:?}");
    assert!(
        s3.list(&prefix).await.is_empty(),
        "the video is gone from the bucket"
    );
    let after = client
        .get_video(req(
            ACME,
            pb::GetVideoRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .expect("the job stays")
        .into_inner();
    assert_eq!(after.status(), pb::VideoStatus::Completed);
    assert_eq!(after.content.map(|c| c.sha256), Some(content.sha256));
    stop_all(vec![app]).await;
    schema.drop().await;
}

//! An S3-compatible server for the object store tests.
//!
//! `VIDGATE_TEST_S3_ENDPOINT` when set (for example a MinIO): its bucket
//! `VIDGATE_TEST_S3_BUCKET` (default `vidgate-test`) must exist, and the credentials are
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`. Otherwise this test binary starts a `moto`
//! server (PyPI's `moto[server]`, which `.ci/run` installs) on a free port and creates the
//! bucket; when neither works the test fails saying how to provide one, never skips. Each test
//! works under a key prefix of its own ([`S3::prefix`]), so tests run in parallel on one bucket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use vidgate::blob::{BlobConfig, StaticCredentials};

/// The environment variable naming a running S3-compatible server.
pub const TEST_ENDPOINT_ENV: &str = "VIDGATE_TEST_S3_ENDPOINT";
/// Its bucket (default [`DEFAULT_BUCKET`]).
pub const TEST_BUCKET_ENV: &str = "VIDGATE_TEST_S3_BUCKET";
pub const DEFAULT_BUCKET: &str = "vidgate-test";
/// How long the moto server may take to answer after it is started.
const START_WAIT: Duration = Duration::from_secs(60);

pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub credentials: StaticCredentials,
    /// The moto server's wrapper (it stops moto when this process's end closes its stdin).
    _moto: Option<Mutex<Child>>,
}

static SERVER: OnceLock<Arc<S3>> = OnceLock::new();

/// The S3-compatible server of this test binary.
pub fn s3() -> Arc<S3> {
    SERVER.get_or_init(|| Arc::new(start())).clone()
}

fn fail(why: String) -> ! {
    panic!(
        "no S3-compatible server for the object store tests: {TEST_ENDPOINT_ENV} is not set and a moto server could not be started ({why}). \
         Install it with `pip install 'moto[server]'` (then `moto_server` must be on PATH), or set {TEST_ENDPOINT_ENV}=http://127.0.0.1:9000 \
         with {TEST_BUCKET_ENV} (an existing bucket, default {DEFAULT_BUCKET}) and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for a running MinIO or S3."
    )
}

fn start() -> S3 {
    if let Ok(endpoint) = std::env::var(TEST_ENDPOINT_ENV)
        && !endpoint.is_empty()
    {
        let env = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        return S3 {
            endpoint,
            bucket: env(TEST_BUCKET_ENV, DEFAULT_BUCKET),
            credentials: StaticCredentials {
                access_key_id: env("AWS_ACCESS_KEY_ID", "test"),
                secret_access_key: env("AWS_SECRET_ACCESS_KEY", "test"),
            },
            _moto: None,
        };
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| fail(format!("no free port: {e}")))
        .port();
    // The wrapper shell stops moto when its stdin closes, that is when this test process
    // ends, however it ends: no moto outlives the tests.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "moto_server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & moto=$!; read _ignored; kill $moto"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| fail(format!("sh: {e}")));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    loop {
        if http(addr, "GET", "/").is_ok() {
            break;
        }
        if started.elapsed() > START_WAIT {
            fail(format!(
                "moto_server did not answer on {addr} within {} s (is it installed?)",
                START_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let bucket = DEFAULT_BUCKET.to_owned();
    // moto does not check signatures: an unsigned PUT creates the bucket.
    match http(addr, "PUT", &format!("/{bucket}")) {
        Ok(status) if (200..300).contains(&status) => {}
        Ok(status) => fail(format!("creating bucket {bucket} answered HTTP {status}")),
        Err(e) => fail(format!("creating bucket {bucket}: {e}")),
    }
    S3 {
        endpoint: format!("http://{addr}"),
        bucket,
        credentials: StaticCredentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
        },
        _moto: Some(Mutex::new(child)),
    }
}

/// One HTTP/1.1 request without a body; the status code.
fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))
}

impl S3 {
    /// A key prefix of this test's own.
    pub fn prefix(&self, test: &str) -> String {
        format!("{test}-{}", uuid::Uuid::now_v7().simple())
    }

    /// `[blob]` for vidgate: this server, `prefix` in the bucket, the test's credentials.
    pub fn blob_config(&self, prefix: &str) -> BlobConfig {
        BlobConfig {
            url: Some(format!("s3://{}/{prefix}", self.bucket)),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            credentials: Some(self.credentials.clone()),
            ..BlobConfig::default()
        }
    }

    /// A client of the bucket, for the test's own looks.
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.credentials.access_key_id)
            .with_secret_access_key(&self.credentials.secret_access_key)
            .build()
            .expect("an S3 client for the test");
        Arc::new(store)
    }

    /// Every key under `prefix`, with its size.
    pub async fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        use futures::TryStreamExt;
        let client = self.client();
        let mut out: Vec<(String, u64)> = client
            .list(Some(&object_store::path::Path::from(prefix)))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
            .expect("listing the bucket");
        out.sort();
        out
    }

    /// The keys of multipart uploads under `prefix` that were started and neither completed
    /// nor aborted (S3's `ListMultipartUploads`, which `object_store` does not offer; signed
    /// with SigV4 like any client's request).
    pub async fn incomplete_uploads(&self, prefix: &str) -> Vec<String> {
        use object_store::aws::{AwsAuthorizer, AwsCredential};
        let url = format!(
            "{}/{}?prefix={}%2F&uploads=",
            self.endpoint.trim_end_matches('/'),
            self.bucket,
            prefix
        );
        let credential = AwsCredential {
            key_id: self.credentials.access_key_id.clone(),
            secret_key: self.credentials.secret_access_key.clone(),
            token: None,
        };
        let mut signed = http::Request::get(&url)
            .body(object_store::client::HttpRequestBody::empty())
            .expect("a request to list uploads");
        AwsAuthorizer::new(&credential, "s3", "us-east-1")
            .try_authorize(&mut signed, None)
            .expect("signing the request");
        let mut request = reqwest::Client::new().get(&url);
        for (name, value) in signed.headers() {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("ListMultipartUploads answers");
        let status = response.status();
        let body = response.text().await.expect("its body");
        assert!(
            status.is_success(),
            "ListMultipartUploads: HTTP {status}: {body}"
        );
        body.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }
}

//! An Azure Blob Storage server for the object store tests that use `az://`.
//!
//! `VIDGATE_TEST_AZURE_ENDPOINT` when set (e.g. `http://127.0.0.1:10000/devstoreaccount1`, an
//! Azurite): its container `VIDGATE_TEST_AZURE_CONTAINER` (default `vidgate-test`) is created
//! if missing, with the account `AZURE_STORAGE_ACCOUNT_NAME` and key
//! `AZURE_STORAGE_ACCOUNT_KEY` (default: Azurite's well-known account). Otherwise this test
//! binary starts Azurite's blob server (npm's `azurite`, which `.ci/run` installs) on a free
//! port with its data in a temporary directory; when neither works the test fails saying how
//! to provide one, never skips. Each test works under a key prefix of its own.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use vidgate::blob::{BlobConfig, StaticCredentials};

/// The environment variable naming a running Azure Blob Storage endpoint (with the account).
pub const TEST_ENDPOINT_ENV: &str = "VIDGATE_TEST_AZURE_ENDPOINT";
/// Its container (default [`DEFAULT_CONTAINER`]).
pub const TEST_CONTAINER_ENV: &str = "VIDGATE_TEST_AZURE_CONTAINER";
pub const DEFAULT_CONTAINER: &str = "vidgate-test";
/// Azurite's well-known account and key (public, documented by Microsoft).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// How long Azurite may take to answer after it is started.
const START_WAIT: Duration = Duration::from_secs(60);

pub struct Azure {
    /// The account's endpoint, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: String,
    pub container: String,
    /// Account name and key.
    pub credentials: StaticCredentials,
    /// Azurite's wrapper (it stops Azurite when this process's end closes its stdin).
    _azurite: Option<Mutex<Child>>,
    _workspace: Option<tempfile::TempDir>,
}

static SERVER: OnceLock<Arc<Azure>> = OnceLock::new();

/// The Azure Blob Storage server of this test binary.
pub async fn azure() -> Arc<Azure> {
    if let Some(server) = SERVER.get() {
        return server.clone();
    }
    let server = tokio::task::spawn_blocking(start)
        .await
        .unwrap_or_else(|e| fail(format!("starting Azurite panicked: {e}")));
    create_container(&server).await;
    SERVER.get_or_init(|| Arc::new(server)).clone()
}

fn fail(why: String) -> ! {
    panic!(
        "no Azure Blob Storage server for the az:// tests: {TEST_ENDPOINT_ENV} is not set and Azurite could not be started ({why}). \
         Install it with `npm install -g azurite` (then `azurite-blob` must be on PATH), or set {TEST_ENDPOINT_ENV}=http://127.0.0.1:10000/devstoreaccount1 \
         (the account's endpoint) with AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY for a running Azurite or storage account."
    )
}

fn start() -> Azure {
    let env = |name: &str, default: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    let credentials = StaticCredentials {
        access_key_id: env("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT),
        secret_access_key: env("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY),
    };
    if let Ok(endpoint) = std::env::var(TEST_ENDPOINT_ENV)
        && !endpoint.is_empty()
    {
        return Azure {
            endpoint,
            container: env(TEST_CONTAINER_ENV, DEFAULT_CONTAINER),
            credentials,
            _azurite: None,
            _workspace: None,
        };
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| fail(format!("no free port: {e}")))
        .port();
    let workspace = tempfile::Builder::new()
        .prefix("vidgate-azurite-")
        .tempdir()
        .unwrap_or_else(|e| fail(format!("no workspace directory: {e}")));
    // The wrapper shell stops Azurite when its stdin closes, that is when this test process
    // ends, however it ends.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "azurite-blob --blobHost 127.0.0.1 --blobPort {port} --location '{}' --silent --skipApiVersionCheck --disableTelemetry >/dev/null 2>&1 & azurite=$!; read _ignored; kill $azurite",
            workspace.path().display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| fail(format!("sh: {e}")));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if started.elapsed() > START_WAIT {
            fail(format!(
                "azurite-blob did not listen on {addr} within {} s (is it installed?)",
                START_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Azure {
        endpoint: format!("http://{addr}/{}", credentials.access_key_id),
        container: DEFAULT_CONTAINER.to_owned(),
        credentials,
        _azurite: Some(Mutex::new(child)),
        _workspace: Some(workspace),
    }
}

/// Creates the container (Shared Key signed, as any client would); one that exists is fine.
async fn create_container(server: &Azure) {
    use object_store::azure::{AzureAccessKey, AzureAuthorizer, AzureCredential};
    let url = format!("{}/{}?restype=container", server.endpoint, server.container);
    let key = AzureAccessKey::try_new(&server.credentials.secret_access_key)
        .unwrap_or_else(|e| fail(format!("the account key is not base64: {e}")));
    let credential = AzureCredential::AccessKey(key);
    let mut signed = http::Request::put(&url)
        .body(object_store::client::HttpRequestBody::empty())
        .unwrap_or_else(|e| fail(format!("a request to create the container: {e}")));
    AzureAuthorizer::new(&credential, &server.credentials.access_key_id)
        .try_authorize(&mut signed)
        .unwrap_or_else(|e| fail(format!("signing the request: {e}")));
    let mut request = reqwest::Client::new().put(&url);
    for (name, value) in signed.headers() {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| fail(format!("creating container {}: {e}", server.container)));
    let status = response.status();
    // 409: it exists already.
    if !status.is_success() && status.as_u16() != 409 {
        let body = response.text().await.unwrap_or_default();
        fail(format!(
            "creating container {} answered HTTP {status}: {body}",
            server.container
        ));
    }
}

impl Azure {
    /// A key prefix of this test's own.
    pub fn prefix(&self, test: &str) -> String {
        format!("{test}-{}", uuid::Uuid::now_v7().simple())
    }

    /// `[blob]` for vidgate: this server, `prefix` in the container, the account and key.
    pub fn blob_config(&self, prefix: &str) -> BlobConfig {
        BlobConfig {
            url: Some(format!("az://{}/{prefix}", self.container)),
            endpoint: Some(self.endpoint.clone()),
            credentials: Some(self.credentials.clone()),
            ..BlobConfig::default()
        }
    }

    /// A client of the container, for the test's own looks.
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        let store = object_store::azure::MicrosoftAzureBuilder::new()
            .with_endpoint(self.endpoint.clone())
            .with_allow_http(true)
            .with_account(&self.credentials.access_key_id)
            .with_access_key(&self.credentials.secret_access_key)
            .with_container_name(&self.container)
            .build()
            .expect("an Azure client for the test");
        Arc::new(store)
    }

    /// Every key under `prefix`, with its size.
    pub async fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        use futures::TryStreamExt;
        let mut out: Vec<(String, u64)> = self
            .client()
            .list(Some(&object_store::path::Path::from(prefix)))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
            .expect("listing the container");
        out.sort();
        out
    }
}

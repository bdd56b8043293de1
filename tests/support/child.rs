//! `vidgate serve` as a child process the test can `SIGKILL`: a config file with the test's
//! settings (the gRPC port chosen here, the admin port off), the environment cleared of
//! anything that would point it elsewhere, its logs read as they come (a full pipe would stall
//! it) and handed back when it is killed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A running `vidgate serve`.
pub struct ServeChild {
    pub grpc: SocketAddr,
    child: tokio::process::Child,
    logs: tokio::task::JoinHandle<Vec<u8>>,
}

/// Starts `vidgate serve --no-auth` with `[server] grpc_listen` on a free port, the admin port
/// off, and `toml` (the other sections); waits until it accepts connections.
pub async fn serve(dir: &Path, toml: &str, env: &[(&str, &str)]) -> ServeChild {
    std::fs::create_dir_all(dir).expect("the child's directory");
    let grpc = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let config = dir.join(format!("vidgate-{}.toml", grpc.port()));
    std::fs::write(
        &config,
        format!("[server]\ngrpc_listen = \"{grpc}\"\n\n[admin]\nenabled = false\n\n{toml}"),
    )
    .expect("config written");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_vidgate"));
    command
        .args(["serve", "--no-auth", "--config"])
        .arg(&config)
        .env_remove("VIDGATE_AMQP_URL")
        .env_remove("VIDGATE_DATABASE_URL")
        .env_remove("VIDGATE_CONFIG")
        .env_remove("VIDGATE_BLOB_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("vidgate serve starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let logs = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        out.extend_from_slice(&err);
        out
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(grpc).await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let logs = String::from_utf8_lossy(&logs.await.unwrap_or_default()).into_owned();
            panic!("vidgate serve exited ({status}) before listening:\n{logs}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "vidgate serve did not listen on {grpc}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ServeChild { grpc, child, logs }
}

impl ServeChild {
    /// `SIGKILL`: no shutdown, nothing flushed. Returns what it logged.
    pub async fn kill(mut self) -> String {
        self.child.kill().await.expect("SIGKILL");
        String::from_utf8_lossy(&self.logs.await.unwrap_or_default()).into_owned()
    }
}

//! NHS England's own MESH sandbox (PyPI `mesh-sandbox`), run for a test from the
//! virtual environment `.ci/run` makes at `target/mesh-sandbox` (or the `uvicorn`
//! named by `THRIVE_MESH_SANDBOX`), and a proxy that breaks one connection.

use thrive_gateway::config::mesh::MeshSettings;
use thrive_gateway::mesh::{MeshClient, Received};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The sandbox's own mailboxes (every password "password") and shared key.
pub const GATEWAY: &str = "X26ABC1";
pub const PROVIDER: &str = "X26ABC2";
pub const OTHER: &str = "X26ABC3";
/// A mailbox of the sandbox's file store that no provider has.
pub const STRANGER: &str = "X26ABC9";
pub const SHARED_KEY: &str = "TestKey";

/// A running sandbox on a free port, stopped when dropped.
pub struct MeshSandbox {
    pub url: String,
    port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    /// One sandbox at a time: each is a Python server, slow to start on two cores.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Drop for MeshSandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

impl MeshSandbox {
    pub async fn start() -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut sandbox = Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            _turn: turn,
        };
        std::fs::create_dir_all(
            sandbox
                .dir
                .path()
                .join("mailboxes")
                .join(STRANGER)
                .join("in"),
        )
        .unwrap();
        sandbox.restart().await;
        sandbox
    }

    /// Stops the sandbox: MESH is away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port, with the mailboxes it had.
    pub async fn restart(&mut self) {
        self.stop();
        let uvicorn = std::env::var("THRIVE_MESH_SANDBOX").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/mesh-sandbox/bin/uvicorn"
            )
            .to_owned()
        });
        assert!(
            std::path::Path::new(&uvicorn).exists(),
            "no MESH sandbox at {uvicorn}: run `python3 -m venv target/mesh-sandbox && \
             target/mesh-sandbox/bin/pip install mesh-sandbox` (as .ci/run does)"
        );
        // Dropped (and so stopped) however the test ends.
        self.child = Some(
            std::process::Command::new(&uvicorn)
                .args(["mesh_sandbox.api:app", "--host", "127.0.0.1", "--port"])
                .arg(self.port.to_string())
                .env("AUTH_MODE", "full")
                .env("STORE_MODE", "file")
                .env("MAILBOXES_DATA_DIR", self.dir.path().join("mailboxes"))
                .env("SHARED_KEY", SHARED_KEY)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        // A ping that is never answered is tried again.
        let client = crate::helpers::bounded_client(2);
        for _ in 0..400 {
            let ping = format!("{}/messageexchange/_ping", self.url);
            if let Ok(r) = client.get(ping).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the MESH sandbox did not start");
    }

    fn secret(&self, name: &str, value: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        path
    }

    /// `[mesh]` for `mailbox` at `url` with this password, as TOML. The inbox is read
    /// only when a test says so (`poll_interval_ms = 0`); status events come in
    /// workflow `THRIVE_STATUS`.
    pub fn config_at(&self, url: &str, mailbox: &str, password: &str, chunk: usize) -> String {
        format!(
            "[mesh]\nurl = \"{url}\"\nmailbox = \"{mailbox}\"\npassword = {{ file = \"{p}\" }}\n\
             shared_key = {{ file = \"{k}\" }}\nmax_chunk_bytes = {chunk}\ntimeout_ms = 5000\n\
             poll_interval_ms = 0\nstatus_workflow_id = \"THRIVE_STATUS\"\n",
            p = self
                .secret(&format!("{mailbox}-password-{password}"), password)
                .display(),
            k = self.secret("shared-key", SHARED_KEY).display(),
        )
    }

    pub fn config(&self, mailbox: &str, password: &str, chunk: usize) -> String {
        self.config_at(&self.url, mailbox, password, chunk)
    }

    /// `toml` with a shared key that is not the environment's.
    pub fn wrong_shared_key(&self, toml: &str) -> String {
        let right = self.dir.path().join("shared-key");
        let wrong = self.secret("wrong-shared-key", "NotTheKey");
        toml.replace(&right.display().to_string(), &wrong.display().to_string())
    }

    /// A client of `mailbox`, as the provider's own system would use it.
    pub fn client(&self, mailbox: &str) -> MeshClient {
        let toml = self.config(mailbox, "password", 20_000_000);
        let table: toml::Table = toml.parse().unwrap();
        let settings: MeshSettings = table["mesh"].clone().try_into().unwrap();
        MeshClient::new(&settings).unwrap()
    }

    /// Everything waiting in `mailbox`'s inbox, downloaded.
    pub async fn inbox_of(&self, mailbox: &str) -> Vec<Received> {
        let client = self.client(mailbox);
        let mut all = Vec::new();
        for id in client.inbox().await.unwrap() {
            all.push(client.download(&id).await.unwrap());
        }
        all
    }

    /// Puts MESH's non-delivery report for the message sent with `local_id` (MESH id
    /// `linked`) into `mailbox`'s inbox, as MESH does when the recipient never took it.
    pub async fn non_delivery_report(&self, mailbox: &str, local_id: &str, linked: &str) {
        let res = reqwest::Client::new()
            .post(format!("{}/messageexchange/admin/report", self.url))
            .json(&serde_json::json!({
                "mailbox_id": mailbox,
                "code": "14",
                "description": "Message not collected by recipient after 5 days",
                "workflow_id": "TEST_WORKFLOW",
                "local_id": local_id,
                "linked_message_id": linked,
                "status": "undeliverable",
            }))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }
}

/// What a [`ResetProxy`] does to the first request it breaks.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The request reaches MESH; the connection is closed before the answer gets back.
    Reset,
    /// MESH never sees the request; the sender is answered 503 (MESH busy).
    Busy,
}

/// A proxy in front of MESH that passes every request through on a connection of its
/// own, except the first that starts with `break_on`, which meets a [`Fault`].
pub struct ResetProxy {
    pub url: String,
    pub broken: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResetProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResetProxy {
    pub async fn start(upstream: &str, break_on: &str) -> Self {
        Self::start_with(upstream, break_on, Fault::Reset).await
    }

    pub async fn start_with(upstream: &str, break_on: &str, fault: Fault) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let break_on = break_on.to_owned();
        let broken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = broken.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (upstream, break_on, count) =
                    (upstream.clone(), break_on.clone(), count.clone());
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut client).await else {
                        return;
                    };
                    let breaks = request.starts_with(break_on.as_bytes())
                        && count
                            .compare_exchange(
                                0,
                                1,
                                std::sync::atomic::Ordering::SeqCst,
                                std::sync::atomic::Ordering::SeqCst,
                            )
                            .is_ok();
                    if breaks && matches!(fault, Fault::Busy) {
                        let busy = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                        let _ = client.write_all(busy.as_bytes()).await;
                        let _ = client.shutdown().await;
                        return;
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    server.write_all(&request).await.unwrap();
                    let mut answer = Vec::new();
                    let _ = server.read_to_end(&mut answer).await;
                    if breaks {
                        // MESH has the message; the sender hears nothing back.
                        drop(client);
                        return;
                    }
                    let _ = client.write_all(&answer).await;
                    let _ = client.shutdown().await;
                });
            }
        });
        Self { url, broken, task }
    }
}

/// One HTTP/1.1 request, re-written to close its connection after the answer.
async fn read_request(client: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut out = String::new();
    for line in head.trim_end().lines() {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut request = out.into_bytes();
    request.extend_from_slice(&buf[head_end..head_end + length]);
    Some(request)
}

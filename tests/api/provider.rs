//! A stand-in provider case system: answers from a script, records every request.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One scripted answer.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub delay_ms: u64,
}

impl Step {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            delay_ms: 0,
        }
    }
}

/// A request the provider received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub request_id: String,
    pub correlation_id: String,
    pub authorization: String,
    pub body: serde_json::Value,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct State {
    /// Answer 500 from `/token` instead of a token.
    token_fails: bool,
    script: VecDeque<Step>,
    seen: Vec<Seen>,
    /// Form bodies posted to `/token`.
    token_requests: Vec<String>,
    /// Deliveries being answered now, and the most there ever were at once.
    in_flight: usize,
    most_in_flight: usize,
}

pub struct FakeProvider {
    pub url: String,
    state: Arc<Mutex<State>>,
}

async fn answer(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if req.path() == "/token" {
        let mut s = state.lock().unwrap();
        s.token_requests
            .push(String::from_utf8_lossy(&body).into_owned());
        if s.token_fails {
            return HttpResponse::InternalServerError().finish();
        }
        let n = s.token_requests.len();
        return HttpResponse::Ok().json(serde_json::json!({
            "access_token": format!("tok-{n}"), "expires_in": 599, "token_type": "Bearer"
        }));
    }
    let step = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            request_id: header("x-request-id"),
            correlation_id: header("x-correlation-id"),
            authorization: header("authorization"),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            at: std::time::Instant::now(),
        });
        s.in_flight += 1;
        s.most_in_flight = s.most_in_flight.max(s.in_flight);
        s.script.pop_front().unwrap_or(Step::status(201))
    };
    if step.delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(step.delay_ms)).await;
    }
    state.lock().unwrap().in_flight -= 1;
    let mut res = HttpResponse::build(actix_web::http::StatusCode::from_u16(step.status).unwrap());
    if let Some(s) = step.retry_after {
        res.insert_header(("Retry-After", s.to_string()));
    }
    res.body(format!("{{\"answer\": {}}}", step.status))
}

impl FakeProvider {
    /// Starts on a free port; answers 201 once the script runs out.
    pub async fn start(script: Vec<Step>) -> Self {
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            ..State::default()
        }));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let url = format!("http://{}/referrals", server.addrs()[0]);
        tokio::spawn(server.run());
        Self { url, state }
    }

    /// Like [`FakeProvider::start`], over HTTPS with `tests/fixtures/tls/<cert>.pem`,
    /// requiring a client certificate from `client_ca` when given.
    pub async fn start_tls(script: Vec<Step>, cert: &str, client_ca: Option<&str>) -> Self {
        let dir = std::path::Path::new(TLS);
        let config = thrive_gateway::tls::server_config(
            &dir.join(format!("{cert}.pem")),
            &dir.join(format!("{cert}.key")),
            client_ca.map(|ca| dir.join(format!("{ca}.pem"))).as_deref(),
        )
        .unwrap();
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            ..State::default()
        }));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .bind_rustls_0_23("127.0.0.1:0", config)
        .unwrap();
        let url = format!("https://{}/referrals", server.addrs()[0]);
        tokio::spawn(server.run());
        Self { url, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The most deliveries it was ever answering at once.
    pub fn most_in_flight(&self) -> usize {
        self.state.lock().unwrap().most_in_flight
    }

    /// Makes the token endpoint fail (true) or work (false).
    pub fn fail_tokens(&self, fail: bool) {
        self.state.lock().unwrap().token_fails = fail;
    }

    pub fn token_requests(&self) -> Vec<String> {
        self.state.lock().unwrap().token_requests.clone()
    }

    /// The token endpoint this fake also serves.
    pub fn token_url(&self) -> String {
        self.url.replace("/referrals", "/token")
    }

    /// TOML configuring both seed providers to send here.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[providers.bchft]\nendpoint = \"{url}\"\ntimeout_ms = 1000\n\n[providers.prospects]\nendpoint = \"{url}\"\ntimeout_ms = 1000\n{extra}",
            url = self.url
        )
    }
}

/// Test-only TLS material (see its README).
pub const TLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

/// Delivery settings that make retries due almost at once.
pub const FAST_RETRIES: &str =
    "\n[delivery]\nenabled = false\ninitial_backoff_ms = 1\nmax_backoff_ms = 2\nmax_attempts = 3\n";

/// A provider that reads the request, starts a 200 answer and closes the connection
/// half-way through its body. Returns its URL and how many requests it took.
pub async fn start_hanging_up() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/referrals", listener.local_addr().unwrap());
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                break;
            };
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = vec![0u8; 64 * 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/json\r\n\r\n{\"partial\":")
                .await;
            drop(socket);
        }
    });
    (url, count)
}

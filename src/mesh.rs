//! A MESH client: the NHS's store-and-forward mailboxes, as the gateway's mailbox
//! uses them: handshake, send with chunks, tracking by local id, and reading,
//! downloading and acknowledging what arrives in its inbox. The client remembers how
//! its last call to MESH went, which `/health/ready` reports without calling MESH. Requests carry the `NHSMESH` authorisation token: an HMAC-SHA256 of
//! mailbox, nonce, nonce count, password and time under the environment's shared key.

use crate::config::mesh::MeshSettings;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use std::io::Write as _;

/// MESH API version 2 answers.
const ACCEPT: &str = "application/vnd.mesh.v2+json";

/// A problem setting up the client, found at start. Names the setting, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum MeshSetupError {
    #[error("mesh.{0}: {1}")]
    Setting(&'static str, String),
}

/// What a MESH call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshError {
    /// MESH answered with this status (403: the password or shared key is wrong;
    /// 417: the recipient mailbox is unknown).
    Status { status: u16, excerpt: String },
    /// No answer: timeout, connection refused or reset, TLS.
    Failed(String),
}

impl std::fmt::Display for MeshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeshError::Status { status, excerpt } => write!(f, "MESH answered {status}: {excerpt}"),
            MeshError::Failed(why) => write!(f, "MESH: {why}"),
        }
    }
}

/// How the last call to MESH went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub at: fhir_sdk::time::OffsetDateTime,
    /// MESH answered and took the credentials.
    pub ok: bool,
    /// What went wrong, in fixed words and status codes.
    pub problem: Option<String>,
}

/// One message as it arrived in the gateway's inbox, with the `mex-*` headers the
/// gateway acts on.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub message_id: String,
    /// `DATA` or `REPORT`.
    pub message_type: String,
    /// The sending mailbox (empty for MESH's own reports).
    pub from: String,
    pub workflow_id: String,
    pub local_id: Option<String>,
    /// Reports: the message reported on, and how it went.
    pub linked_message_id: Option<String>,
    pub status_success: Option<String>,
    pub status_code: Option<String>,
    pub status_description: Option<String>,
    /// The body, every chunk, decompressed.
    pub body: Vec<u8>,
    pub chunks: usize,
}

/// The gateway's mailbox at one MESH server.
pub struct MeshClient {
    last: std::sync::Mutex<Option<Contact>>,
    http: reqwest::Client,
    base: String,
    mailbox: String,
    password: SecretString,
    shared_key: SecretString,
    max_chunk_bytes: usize,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient")
            .field("base", &self.base)
            .field("mailbox", &self.mailbox)
            .finish_non_exhaustive()
    }
}

/// One message to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub to: &'a str,
    pub workflow_id: &'a str,
    /// The sender's id for the message, unique: the delivery's id.
    pub local_id: &'a str,
    /// Subject and file name: no patient data.
    pub subject: &'a str,
    pub body: &'a [u8],
}

impl MeshClient {
    pub fn new(settings: &MeshSettings) -> Result<Self, MeshSetupError> {
        let secret = |name: &'static str, source: &crate::pseudonym::KeySource| {
            source
                .read()
                .map(|s| SecretString::from(s.expose_secret().trim().to_owned()))
                .map_err(|_| MeshSetupError::Setting(name, "cannot be read".into()))
        };
        let password = secret("password", &settings.password)?;
        let shared_key = secret("shared_key", &settings.shared_key)?;
        let http = crate::tls::outbound_client(settings.timeout_ms, settings.tls.as_ref())
            .map_err(|e| MeshSetupError::Setting("tls", e))?;
        if settings.max_chunk_bytes == 0 {
            return Err(MeshSetupError::Setting(
                "max_chunk_bytes",
                "must be above 0".into(),
            ));
        }
        Ok(Self {
            last: std::sync::Mutex::new(None),
            http,
            base: settings.url.trim_end_matches('/').to_owned(),
            mailbox: settings.mailbox.clone(),
            password,
            shared_key,
            max_chunk_bytes: settings.max_chunk_bytes,
        })
    }

    /// The gateway's mailbox id.
    pub fn mailbox(&self) -> &str {
        &self.mailbox
    }

    /// How the last call to MESH went; `None` before the first.
    pub fn last_contact(&self) -> Option<Contact> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn remember(&self, problem: Option<String>) {
        let contact = Contact {
            at: fhir_sdk::time::OffsetDateTime::now_utc(),
            ok: problem.is_none(),
            problem,
        };
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(contact);
    }

    /// Sends `req`, remembering whether MESH answered and took the credentials.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, MeshError> {
        let sent = send(req).await;
        self.remember(match &sent {
            Ok(res) if matches!(res.status().as_u16(), 401 | 403) => Some(format!(
                "MESH answered {}: the password or shared key is wrong",
                res.status().as_u16()
            )),
            Ok(res) if res.status().is_server_error() => {
                Some(format!("MESH answered {}", res.status().as_u16()))
            }
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        });
        sent
    }

    /// `NHSMESH <mailbox>:<nonce>:<count>:<time>:<hmac>`, fresh for each request.
    fn authorization(&self) -> String {
        let nonce = uuid::Uuid::new_v4().to_string();
        let count = "0";
        let time = fhir_sdk::time::OffsetDateTime::now_utc()
            .format(fhir_sdk::time::macros::format_description!(
                "[year][month][day][hour][minute]"
            ))
            .unwrap_or_default();
        let data = format!(
            "{}:{nonce}:{count}:{}:{time}",
            self.mailbox,
            self.password.expose_secret()
        );
        let hash = match <Hmac<Sha256> as KeyInit>::new_from_slice(
            self.shared_key.expose_secret().as_bytes(),
        ) {
            Ok(mut mac) => {
                mac.update(data.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            // HMAC takes a key of any length: this does not happen.
            Err(_) => String::new(),
        };
        format!("NHSMESH {}:{nonce}:{count}:{time}:{hash}", self.mailbox)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(
                method,
                format!("{}/messageexchange/{}{path}", self.base, self.mailbox),
            )
            .header("Authorization", self.authorization())
            .header("Accept", ACCEPT)
            .header(
                "mex-ClientVersion",
                concat!("thrive-gateway/", env!("CARGO_PKG_VERSION")),
            )
            .header("mex-OSName", std::env::consts::OS)
            .header("mex-OSVersion", "unknown")
    }

    /// The mailbox handshake: proves the credentials and that MESH answers.
    pub async fn handshake(&self) -> Result<(), MeshError> {
        let res = self.send(self.request(reqwest::Method::POST, "")).await?;
        expect_success(res).await.map(|_| ())
    }

    /// Messages waiting in the gateway's inbox.
    pub async fn inbox_count(&self) -> Result<u64, MeshError> {
        let res = self
            .send(self.request(reqwest::Method::GET, "/count"))
            .await?;
        let body = expect_success(res).await?;
        let count: serde_json::Value = serde_json::from_str(&body)
            .map_err(|_| MeshError::Failed("the inbox count is not JSON".into()))?;
        Ok(count["count"].as_u64().unwrap_or(0))
    }

    /// The message id MESH gave the message sent with `local_id`, if it has one.
    pub async fn track(&self, local_id: &str) -> Result<Option<String>, MeshError> {
        let res = self
            .send(self.request(
                reqwest::Method::GET,
                &format!("/outbox/tracking/{}", urlencoding(local_id)),
            ))
            .await?;
        if res.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = expect_success(res).await?;
        let tracked: serde_json::Value = serde_json::from_str(&body)
            .map_err(|_| MeshError::Failed("the tracking answer is not JSON".into()))?;
        Ok(["message_id", "messageId", "messageID"]
            .iter()
            .find_map(|k| tracked[*k].as_str())
            .map(str::to_owned))
    }

    /// The ids of the messages waiting in the gateway's inbox.
    pub async fn inbox(&self) -> Result<Vec<String>, MeshError> {
        let res = self
            .send(self.request(reqwest::Method::GET, "/inbox"))
            .await?;
        let body = expect_success(res).await?;
        let listed: serde_json::Value = serde_json::from_str(&body)
            .map_err(|_| MeshError::Failed("the inbox answer is not JSON".into()))?;
        Ok(listed["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect())
    }

    /// One message from the inbox, every chunk, decompressed, with its headers.
    pub async fn download(&self, message_id: &str) -> Result<Received, MeshError> {
        let path = format!("/inbox/{}", urlencoding(message_id));
        let res = self.send(self.request(reqwest::Method::GET, &path)).await?;
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let chunks = header("mex-chunk-range")
            .and_then(|r| r.split_once(':')?.1.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let compressed = header("mex-content-compressed").as_deref() == Some("Y")
            || header("content-encoding").as_deref() == Some("gzip");
        let mut received = Received {
            message_id: message_id.to_owned(),
            message_type: header("mex-messagetype").unwrap_or_else(|| "DATA".into()),
            from: header("mex-from").unwrap_or_default(),
            workflow_id: header("mex-workflowid").unwrap_or_default(),
            local_id: header("mex-localid"),
            linked_message_id: header("mex-linkedmsgid"),
            status_success: header("mex-statussuccess"),
            status_code: header("mex-statuscode"),
            status_description: header("mex-statusdescription"),
            body: Vec::new(),
            chunks,
        };
        let mut bytes = expect_bytes(res).await?;
        // A report has no chunks to fetch, whatever its range says.
        let more = if received.message_type == "REPORT" {
            1
        } else {
            chunks
        };
        for n in 2..=more {
            let res = self
                .send(self.request(reqwest::Method::GET, &format!("{path}/{n}")))
                .await?;
            bytes.extend(expect_bytes(res).await?);
        }
        // Some servers hand back what they were sent, others decompress on the way:
        // the gzip magic number says which.
        if compressed && bytes.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain)
                .map_err(|_| MeshError::Failed("the message is not gzip".into()))?;
            bytes = plain;
        }
        received.body = bytes;
        Ok(received)
    }

    /// Tells MESH the message is handled: it leaves the inbox.
    pub async fn acknowledge(&self, message_id: &str) -> Result<(), MeshError> {
        let path = format!("/inbox/{}/status/acknowledged", urlencoding(message_id));
        let res = self.send(self.request(reqwest::Method::PUT, &path)).await?;
        expect_success(res).await.map(|_| ())
    }

    /// Sends one message, gzip-compressed, in chunks of at most `max_chunk_bytes`.
    /// Returns MESH's message id.
    pub async fn send_message(&self, m: Outgoing<'_>) -> Result<String, MeshError> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let compressed = gz
            .write_all(m.body)
            .and_then(|()| gz.finish())
            .map_err(|e| MeshError::Failed(format!("could not compress: {e}")))?;
        let chunks: Vec<&[u8]> = compressed.chunks(self.max_chunk_bytes).collect();
        let total = chunks.len().max(1);
        let headers = |req: reqwest::RequestBuilder, n: usize| {
            req.header("mex-To", m.to)
                .header("mex-WorkflowID", m.workflow_id)
                .header("mex-LocalID", m.local_id)
                .header("mex-Subject", m.subject)
                .header("mex-FileName", format!("{}.json", m.local_id))
                .header("mex-Content-Compressed", "Y")
                .header("mex-Chunk-Range", format!("{n}:{total}"))
                .header("Content-Type", "application/octet-stream")
        };
        // A whole gzip stream may say so in Content-Encoding; one chunk of it is no gzip
        // stream on its own, so chunked messages carry only mex-Content-Compressed.
        let encoded = |req: reqwest::RequestBuilder| {
            if total == 1 {
                req.header("Content-Encoding", "gzip")
            } else {
                req
            }
        };
        let first = chunks.first().copied().unwrap_or_default().to_vec();
        let res = self
            .send(encoded(headers(self.request(reqwest::Method::POST, "/outbox"), 1)).body(first))
            .await?;
        let body = expect_success(res).await?;
        let sent: serde_json::Value = serde_json::from_str(&body)
            .map_err(|_| MeshError::Failed("the send answer is not JSON".into()))?;
        let message_id = sent["message_id"]
            .as_str()
            .or_else(|| sent["messageID"].as_str())
            .ok_or_else(|| MeshError::Failed("the send answer names no message id".into()))?
            .to_owned();
        for (i, chunk) in chunks.iter().enumerate().skip(1) {
            let n = i + 1;
            let path = format!("/outbox/{message_id}/{n}");
            // A busy MESH asks for the chunk again: up to three tries, a second apart.
            let mut tries = 0;
            loop {
                tries += 1;
                let req =
                    headers(self.request(reqwest::Method::POST, &path), n).body(chunk.to_vec());
                let res = self.send(req).await?;
                let status = res.status().as_u16();
                if matches!(status, 425 | 429 | 502 | 503 | 504) && tries < 3 {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
                expect_success(res).await?;
                break;
            }
        }
        Ok(message_id)
    }
}

/// A local id as a path segment (delivery ids are UUIDs; anything else is escaped).
fn urlencoding(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c.to_string()
            } else {
                format!("%{:02X}", u32::from(c) & 0xFF)
            }
        })
        .collect()
}

async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, MeshError> {
    req.send().await.map_err(|e| {
        MeshError::Failed(if e.is_timeout() {
            "timed out".into()
        } else if e.is_connect() {
            "could not connect".into()
        } else {
            "the request failed".into()
        })
    })
}

/// The bytes of a 2xx answer.
async fn expect_bytes(res: reqwest::Response) -> Result<Vec<u8>, MeshError> {
    if !res.status().is_success() {
        return Err(MeshError::Status {
            status: res.status().as_u16(),
            excerpt: String::new(),
        });
    }
    res.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|_| MeshError::Failed("the connection failed while reading the answer".into()))
}

/// The body of a 2xx answer, or the status and the start of the answer.
async fn expect_success(res: reqwest::Response) -> Result<String, MeshError> {
    let status = res.status().as_u16();
    let text = res
        .text()
        .await
        .map_err(|_| MeshError::Failed("the connection failed while reading the answer".into()))?;
    if (200..300).contains(&status) {
        return Ok(text);
    }
    Err(MeshError::Status {
        status,
        excerpt: text.chars().filter(|c| !c.is_control()).take(200).collect(),
    })
}

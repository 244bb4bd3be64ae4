//! A stand-in OpenID Connect issuer for the console's sign-in: discovery, an
//! authorisation endpoint that signs its one user in at once, a token endpoint that
//! checks the PKCE verifier against the challenge, and the test JWKS.

use actix_web::{App, HttpResponse, HttpServer, web};
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::helpers::KEYS;

pub struct Behaviour {
    /// The roles claim's values.
    pub roles: Vec<String>,
    /// Put another nonce in the ID token than the one asked for.
    pub wrong_nonce: bool,
}

#[derive(Default)]
struct Issued {
    challenge: String,
    nonce: String,
    redirect_uri: String,
    client_id: String,
}

struct State {
    base: String,
    behaviour: Behaviour,
    codes: HashMap<String, Issued>,
    /// Token requests whose PKCE verifier matched the challenge, and those that did not.
    verified: usize,
    refused: usize,
}

pub struct Issuer {
    pub base: String,
    state: Arc<Mutex<State>>,
}

type Shared = web::Data<Arc<Mutex<State>>>;

async fn discovery(state: Shared) -> HttpResponse {
    let base = state.lock().unwrap().base.clone();
    HttpResponse::Ok().json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks"),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn authorize(state: Shared, q: web::Query<HashMap<String, String>>) -> HttpResponse {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("response_type") != "code"
        || get("code_challenge_method") != "S256"
        || get("code_challenge").is_empty()
    {
        return HttpResponse::BadRequest().body("authorization code with PKCE S256 only");
    }
    let code = uuid::Uuid::new_v4().simple().to_string();
    let redirect_uri = get("redirect_uri");
    state.lock().unwrap().codes.insert(
        code.clone(),
        Issued {
            challenge: get("code_challenge"),
            nonce: get("nonce"),
            redirect_uri: redirect_uri.clone(),
            client_id: get("client_id"),
        },
    );
    let to = format!("{redirect_uri}?code={code}&state={}", get("state"));
    HttpResponse::SeeOther()
        .insert_header(("Location", to))
        .finish()
}

async fn token(state: Shared, form: web::Form<HashMap<String, String>>) -> HttpResponse {
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let mut s = state.lock().unwrap();
    let Some(issued) = s.codes.remove(&get("code")) else {
        s.refused += 1;
        return HttpResponse::BadRequest().json(json!({"error": "invalid_grant"}));
    };
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(get("code_verifier").as_bytes()));
    if challenge != issued.challenge
        || get("redirect_uri") != issued.redirect_uri
        || get("client_id") != issued.client_id
        || get("grant_type") != "authorization_code"
    {
        s.refused += 1;
        return HttpResponse::BadRequest().json(json!({"error": "invalid_grant"}));
    }
    s.verified += 1;
    let now = fhir_sdk::time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "iss": s.base,
        "aud": issued.client_id,
        "sub": "555042709107",
        "name": "Dr Alex Example",
        "roles": s.behaviour.roles,
        "nonce": if s.behaviour.wrong_nonce { "another".to_owned() } else { issued.nonce },
        "iat": now,
        "exp": now + 300,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-1".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(format!("{KEYS}/test-issuer.pem")).unwrap(),
    )
    .unwrap();
    let id_token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    HttpResponse::Ok()
        .json(json!({"id_token": id_token, "access_token": "unused", "token_type": "Bearer"}))
}

async fn jwks() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(std::fs::read_to_string(format!("{KEYS}/test-jwks.json")).unwrap())
}

impl Issuer {
    pub async fn start(behaviour: Behaviour) -> Self {
        let state = Arc::new(Mutex::new(State {
            base: String::new(),
            behaviour,
            codes: HashMap::new(),
            verified: 0,
            refused: 0,
        }));
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(discovery),
                )
                .route("/authorize", web::get().to(authorize))
                .route("/token", web::post().to(token))
                .route("/jwks", web::get().to(jwks))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let base = format!("http://{}", server.addrs()[0]);
        state.lock().unwrap().base = base.clone();
        tokio::spawn(server.run());
        Self { base, state }
    }

    pub fn set(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().behaviour = behaviour;
    }

    /// (code exchanges whose PKCE verifier matched, exchanges refused).
    pub fn exchanges(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.verified, s.refused)
    }

    /// The console's configuration for this issuer.
    pub fn console_toml(&self) -> String {
        format!(
            "\n[console]\nenabled = true\nplain_http_localhost = true\n[console.oidc]\nissuer = \"{}\"\nclient_id = \"thrive-console\"\nroles_claim = \"roles\"\n[console.oidc.roles]\nthrive-operator = \"operator\"\nthrive-auditor = \"auditor\"\n",
            self.base
        )
    }
}

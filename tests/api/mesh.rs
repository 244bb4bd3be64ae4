//! MESH as a delivery transport and as the way providers' status events and MESH's
//! reports come in, against NHS England's own MESH sandbox (see `mesh_sandbox.rs`).

use crate::events::task;
use crate::helpers::*;
use crate::mesh_sandbox::*;
use crate::on_both_databases;
use crate::provider::FAST_RETRIES;
use serde_json::{Value, json};
use thrive_gateway::mesh::{Outgoing, Received};
use thrive_gateway::mesh_inbox::Taken;
use thrive_gateway::store::DeliveryFilter;

/// The providers over MESH from the gateway's mailbox at `url`: bchft's mailbox is
/// `to`, prospects' is [`OTHER`] (or `to` as well, when `to` is not [`PROVIDER`]).
fn mesh_providers_at(
    sandbox: &MeshSandbox,
    url: &str,
    to: &str,
    password: &str,
    chunk: usize,
) -> String {
    let other = if to == PROVIDER { OTHER } else { to };
    let provider = |id: &str, to: &str| {
        format!(
            "[providers.{id}]\ntransport = \"mesh\"\ntimeout_ms = 5000\n[providers.{id}.mesh]\nto = \"{to}\"\nworkflow_id = \"TEST_WORKFLOW\"\n"
        )
    };
    format!(
        "{}{}{}{FAST_RETRIES}",
        sandbox.config_at(url, GATEWAY, password, chunk),
        provider("bchft", to),
        provider("prospects", other)
    )
}

fn mesh_providers(sandbox: &MeshSandbox, to: &str, password: &str, chunk: usize) -> String {
    mesh_providers_at(sandbox, &sandbox.url, to, password, chunk)
}

/// A gateway sending both providers' referrals over MESH, and its sandbox.
async fn over_mesh(db: Db) -> (MeshSandbox, TestApp) {
    let sandbox = MeshSandbox::start().await;
    let config = mesh_providers(&sandbox, PROVIDER, "password", 20_000_000);
    let app = TestApp::spawn_with(db, &config).await;
    (sandbox, app)
}

/// A referral accepted: its id, and the mailbox its provider has.
async fn accept(app: &TestApp) -> (String, &'static str) {
    let reply = app.send("gp-a", &referral()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let id = reply.json()["entry"][1]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let provider = app.store.referral(&id).await.unwrap().unwrap().provider;
    (id, if provider == "bchft" { PROVIDER } else { OTHER })
}

/// What reached both providers' inboxes.
async fn received(sandbox: &MeshSandbox) -> Vec<Received> {
    let mut all = sandbox.inbox_of(PROVIDER).await;
    all.extend(sandbox.inbox_of(OTHER).await);
    all
}

fn json_of(m: &Received) -> Value {
    serde_json::from_slice(&m.body).unwrap()
}

async fn delivery_of(app: &TestApp, referral: &str) -> thrive_gateway::store::DeliveryView {
    let row = app.store.deliveries_for(referral).await.unwrap().remove(0);
    app.store.delivery(&row.id).await.unwrap().unwrap()
}

async fn a_referral_reaches_the_provider_s_mailbox_minimised_and_chunked_when_large(db: Db) {
    let (sandbox, app) = over_mesh(db).await;
    let (id, _) = accept(&app).await;
    let stored = app.store.referral(&id).await.unwrap().unwrap();
    assert_eq!(app.deliver().await, 1);
    let d = delivery_of(&app, &id).await;
    assert_eq!(d.state.as_str(), "delivered");

    let got = received(&sandbox).await;
    assert_eq!(got.len(), 1);
    let body = json_of(&got[0]);
    assert_eq!(got[0].chunks, 1);
    assert_eq!(got[0].from, GATEWAY);
    assert_eq!(got[0].workflow_id, "TEST_WORKFLOW");
    assert_eq!(got[0].local_id.as_deref(), Some(d.request_id.as_str()));
    assert_eq!(body["notice"], "referral");
    assert_eq!(body["referral"]["reference"], stored.reference.as_str());
    let record = app
        .audit()
        .await
        .into_iter()
        .rfind(|a| a.action == "delivery.referral")
        .unwrap();
    let detail: Value = serde_json::from_str(&record.detail).unwrap();
    // Exactly the fields the provider's dataset names, the NHS number never.
    let mut sent: Vec<&str> = body["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut allowed: Vec<&str> = detail["receipt"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    sent.sort_unstable();
    allowed.sort_unstable();
    assert_eq!(sent, allowed);
    assert!(!body.to_string().contains(FIXTURE_PATIENT_DATA[0]));
    assert_eq!(
        detail["mesh_message_id"].as_str(),
        Some(got[0].message_id.as_str())
    );
    assert!(detail["target"].as_str().unwrap().starts_with("mesh:"));

    // A large payload is sent in chunks and arrives whole.
    let small = TestApp::spawn_with(db, &mesh_providers(&sandbox, PROVIDER, "password", 64)).await;
    accept(&small).await;
    assert_eq!(small.deliver().await, 1);
    let got = received(&sandbox).await;
    let chunked: Vec<_> = got.iter().filter(|m| m.chunks > 1).collect();
    assert_eq!(chunked.len(), 1, "{got:?}");
    let whole = json_of(chunked[0]);
    assert_eq!(whole["notice"], "referral");
    assert_eq!(
        whole["data"].as_object().map(|d| d.keys().count()),
        body["data"].as_object().map(|d| d.keys().count())
    );
}

on_both_databases!(a_referral_reaches_the_provider_s_mailbox_minimised_and_chunked_when_large);

async fn a_wrong_password_shared_key_or_mailbox_is_a_dead_letter_saying_so(db: Db) {
    let sandbox = MeshSandbox::start().await;
    let wrong_key =
        sandbox.wrong_shared_key(&mesh_providers(&sandbox, PROVIDER, "password", 20_000_000));
    for (config, status) in [
        (
            mesh_providers(&sandbox, PROVIDER, "not-the-password", 20_000_000),
            403,
        ),
        (wrong_key, 403),
        (
            mesh_providers(&sandbox, "X26NOPE", "password", 20_000_000),
            417,
        ),
    ] {
        let app = TestApp::spawn_with(db, &config).await;
        let (_, mailbox) = accept(&app).await;
        app.deliver().await;
        let dead = app
            .store
            .list_deliveries(&DeliveryFilter::dead(), 10)
            .await
            .unwrap();
        assert!(!dead.is_empty(), "{config}");
        let to = if status == 417 { "X26NOPE" } else { mailbox };
        let error = dead
            .iter()
            .filter_map(|d| d.last_error.as_deref())
            .find(|e| e.starts_with(&format!("mesh:{to} answered {status}")));
        assert!(error.is_some(), "{dead:?}");
        if status == 403 {
            // Readiness says why, without calling MESH.
            let ready = app.get("operator", "/health/ready").await;
            assert_eq!(ready.status, 200);
            assert_eq!(ready.json()["mesh"]["state"], "failing", "{}", ready.text);
            assert!(
                ready.json()["mesh"]["problem"]
                    .as_str()
                    .unwrap()
                    .contains("403")
            );
        }
    }
    assert!(received(&sandbox).await.is_empty());
}

on_both_databases!(a_wrong_password_shared_key_or_mailbox_is_a_dead_letter_saying_so);

/// The process was killed after MESH took the message and before the outcome was
/// stored: nothing here says it was sent, yet it is not sent again.
async fn a_message_mesh_already_holds_is_not_sent_again(db: Db) {
    let (sandbox, app) = over_mesh(db).await;
    let (id, mailbox) = accept(&app).await;
    let delivery = delivery_of(&app, &id).await;
    sandbox
        .client(GATEWAY)
        .send_message(Outgoing {
            to: mailbox,
            workflow_id: "TEST_WORKFLOW",
            local_id: &delivery.request_id,
            subject: "thrive-gateway delivery",
            body: b"{\"notice\": \"referral\"}",
        })
        .await
        .unwrap();
    assert_eq!(app.deliver().await, 1);
    assert_eq!(delivery_of(&app, &id).await.state.as_str(), "delivered");
    assert_eq!(received(&sandbox).await.len(), 1, "sent once");
}

on_both_databases!(a_message_mesh_already_holds_is_not_sent_again);

/// The connection is reset after the first POST reached MESH: the attempt fails,
/// and the next one finds the message by its local id instead of sending it again.
async fn a_reset_after_the_first_post_sends_nothing_twice(db: Db) {
    let sandbox = MeshSandbox::start().await;
    let proxy = ResetProxy::start(
        &sandbox.url,
        &format!("POST /messageexchange/{GATEWAY}/outbox "),
    )
    .await;
    let app = TestApp::spawn_with(
        db,
        &mesh_providers_at(&sandbox, &proxy.url, PROVIDER, "password", 20_000_000),
    )
    .await;
    let (id, _) = accept(&app).await;
    app.deliver().await;
    assert_eq!(proxy.broken.load(std::sync::atomic::Ordering::SeqCst), 1);
    let first = delivery_of(&app, &id).await;
    assert_eq!(first.state.as_str(), "queued", "{first:?}");
    assert_eq!(received(&sandbox).await.len(), 1, "MESH took it");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.deliver().await;
    let d = delivery_of(&app, &id).await;
    assert_eq!(d.state.as_str(), "delivered");
    assert_eq!(d.attempts, 2);
    assert_eq!(received(&sandbox).await.len(), 1, "sent once");
}

on_both_databases!(a_reset_after_the_first_post_sends_nothing_twice);

/// MESH is busy (503) for a chunk after the first: the chunk is sent again within the
/// same attempt, and the message arrives whole.
async fn a_busy_answer_to_a_chunk_sends_that_chunk_again(db: Db) {
    let sandbox = MeshSandbox::start().await;
    let proxy = ResetProxy::start_with(
        &sandbox.url,
        &format!("POST /messageexchange/{GATEWAY}/outbox/"),
        Fault::Busy,
    )
    .await;
    let app = TestApp::spawn_with(
        db,
        &mesh_providers_at(&sandbox, &proxy.url, PROVIDER, "password", 64),
    )
    .await;
    let (id, _) = accept(&app).await;
    app.deliver().await;
    assert_eq!(proxy.broken.load(std::sync::atomic::Ordering::SeqCst), 1);
    let d = delivery_of(&app, &id).await;
    assert_eq!(d.state.as_str(), "delivered", "{d:?}");
    assert_eq!(d.attempts, 1);
    let got = received(&sandbox).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].chunks > 1);
    assert_eq!(json_of(&got[0])["referral"]["id"], id.as_str());
}

on_both_databases!(a_busy_answer_to_a_chunk_sends_that_chunk_again);

/// The whole loop over MESH: the referral to the provider's mailbox, its status event
/// back from there, and the milestone to the GP system's own mailbox.
async fn a_milestone_reaches_the_gp_system_s_mailbox(db: Db) {
    let sandbox = MeshSandbox::start().await;
    let config = format!(
        "{}\n[gp_callbacks.emis-test]\nsource_endpoint = \"https://fhir.nhs.uk/Id/ods-organization-code|Y90001\"\n\
         transport = \"mesh\"\n[gp_callbacks.emis-test.mesh]\nto = \"{STRANGER}\"\nworkflow_id = \"GP_MILESTONE\"\n",
        mesh_providers(&sandbox, PROVIDER, "password", 20_000_000)
    );
    let app = TestApp::spawn_with(db, &config).await;
    let (id, mailbox) = accept(&app).await;
    app.deliver().await;
    let body =
        json!({"referral_id": id, "event": "accepted", "occurred_at": just_now()}).to_string();
    sandbox
        .client(mailbox)
        .send_message(status_message(GATEWAY, "ev-1", body.as_bytes()))
        .await
        .unwrap();
    app.mesh_inbox.clone().unwrap().poll_once().await.unwrap();
    app.deliver().await;
    let got = sandbox.inbox_of(STRANGER).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].workflow_id, "GP_MILESTONE");
    assert_eq!(got[0].from, GATEWAY);
    let bundle = json_of(&got[0]);
    assert_eq!(bundle["resourceType"], "Bundle");
    assert!(bundle.to_string().contains("accepted"), "{bundle}");
    for identifier in FIXTURE_PATIENT_DATA {
        assert!(!bundle.to_string().contains(identifier));
    }
}

on_both_databases!(a_milestone_reaches_the_gp_system_s_mailbox);

/// MESH is down: the attempt waits and is retried; readiness shows MESH failing, and
/// the gateway still takes referrals. Back up: delivered once.
async fn mesh_down_then_back_delivers_once(db: Db) {
    let (mut sandbox, app) = over_mesh(db).await;
    sandbox.stop();
    let (id, _) = accept(&app).await;
    app.deliver().await;
    let d = delivery_of(&app, &id).await;
    assert_eq!(d.state.as_str(), "queued");
    assert!(
        d.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("could not connect"),
        "{d:?}"
    );
    let ready = app.get("operator", "/health/ready").await;
    assert_eq!(ready.status, 200, "MESH away does not stop intake");
    assert_eq!(ready.json()["mesh"]["state"], "failing");
    assert_eq!(ready.json()["mesh"]["mailbox"], GATEWAY);

    sandbox.restart().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.deliver().await;
    assert_eq!(delivery_of(&app, &id).await.state.as_str(), "delivered");
    assert_eq!(received(&sandbox).await.len(), 1);
    let ready = app.get("operator", "/health/ready").await;
    assert_eq!(ready.json()["mesh"]["state"], "ok");
}

on_both_databases!(mesh_down_then_back_delivers_once);

/// The command line on `app`'s database, with `[mesh]` as the gateway's, as an operator
/// on the host runs it.
fn command(app: &TestApp, sandbox: &MeshSandbox, password: &str, args: &[&str]) -> (i32, String) {
    let secret = |name: &str, value: &str| {
        let path =
            std::env::temp_dir().join(format!("thrive-mesh-{}-{name}", uuid::Uuid::new_v4()));
        std::fs::write(&path, value).unwrap();
        path
    };
    let (p, k) = (secret("password", password), secret("key", SHARED_KEY));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thrive-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("THRIVE_ENV", "development")
        .env("THRIVE__DATABASE__URL", &app.database_url)
        .env("THRIVE__MESH__URL", &sandbox.url)
        .env("THRIVE__MESH__MAILBOX", GATEWAY)
        .env("THRIVE__MESH__PASSWORD__FILE", &p)
        .env("THRIVE__MESH__SHARED_KEY__FILE", &k)
        .args(args)
        .output()
        .unwrap();
    let _ = (std::fs::remove_file(p), std::fs::remove_file(k));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn status_message<'a>(to: &'a str, local_id: &'a str, body: &'a [u8]) -> Outgoing<'a> {
    Outgoing {
        to,
        workflow_id: "THRIVE_STATUS",
        local_id,
        subject: "status",
        body,
    }
}

/// A status event the provider sends from its mailbox moves the referral, is
/// acknowledged, and is recorded once however often it is read before that.
async fn a_status_event_over_mesh_moves_the_referral_once(db: Db) {
    let (sandbox, app) = over_mesh(db).await;
    let inbox = app.mesh_inbox.clone().unwrap();
    let (id, mailbox) = accept(&app).await;
    app.deliver().await;
    let provider = sandbox.client(mailbox);
    let event = json!({"referral_id": id, "event": "accepted", "occurred_at": just_now()});
    let body = event.to_string();
    provider
        .send_message(status_message(GATEWAY, "ev-1", body.as_bytes()))
        .await
        .unwrap();
    let (code, out) = command(&app, &sandbox, "password", &["mesh", "check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("handshake ok, 1 messages waiting"), "{out}");
    let (code, out) = command(&app, &sandbox, "not-the-password", &["mesh", "check"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("403"), "{out}");
    assert_eq!(inbox.poll_once().await.unwrap(), 1);
    let referral = app.store.referral(&id).await.unwrap().unwrap();
    assert_eq!(referral.milestone.as_str(), "accepted");
    assert_eq!(sandbox.client(GATEWAY).inbox_count().await.unwrap(), 0);
    let record = app
        .audit()
        .await
        .into_iter()
        .rfind(|a| a.action == "referral.event")
        .unwrap();
    assert_eq!(record.outcome, "accepted");
    assert_eq!(
        record.client_id.as_deref(),
        Some(format!("mesh:{mailbox}").as_str())
    );

    // The next one as a FHIR Task, read twice before it is acknowledged (a restart
    // in between), and once more after losing its inbox row: one event.
    let body = task(&id, "contacted").to_string();
    let message = provider
        .send_message(status_message(GATEWAY, "ev-2", body.as_bytes()))
        .await
        .unwrap();
    assert_eq!(
        inbox.take(&message).await.unwrap(),
        Taken::Recorded("recorded".into())
    );
    assert_eq!(inbox.take(&message).await.unwrap(), Taken::Seen);
    execute_sql(
        db,
        &app.database_url,
        &format!("DELETE FROM mesh_inbound WHERE message_id = '{message}'"),
    )
    .await;
    assert_eq!(
        inbox.take(&message).await.unwrap(),
        Taken::Recorded("duplicate".into())
    );
    assert_eq!(inbox.poll_once().await.unwrap(), 1);
    let events = app.store.events_for(&id).await.unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["accepted", "contacted"]);
    assert_eq!(
        app.store
            .referral(&id)
            .await
            .unwrap()
            .unwrap()
            .milestone
            .as_str(),
        "contacted"
    );
    assert_eq!(sandbox.client(GATEWAY).inbox_count().await.unwrap(), 0);
}

on_both_databases!(a_status_event_over_mesh_moves_the_referral_once);

/// What the gateway cannot act on is refused with its reason, audited and
/// acknowledged, and changes nothing; operators list it.
async fn what_is_not_a_status_event_is_refused_and_acknowledged(db: Db) {
    let (sandbox, app) = over_mesh(db).await;
    let inbox = app.mesh_inbox.clone().unwrap();
    let (id, mailbox) = accept(&app).await;
    app.deliver().await;
    let good =
        json!({"referral_id": id, "event": "accepted", "occurred_at": just_now()}).to_string();
    let never = json!({"referral_id": uuid::Uuid::new_v4(), "event": "accepted", "occurred_at": just_now()})
        .to_string();
    let mut expected = Vec::new();
    for (from, workflow, body, reason) in [
        (
            mailbox,
            "THRIVE_STATUS",
            "not json at all".to_owned(),
            "not a status event",
        ),
        (mailbox, "THRIVE_STATUS", never, "no referral has this id"),
        (
            mailbox,
            "TEST_WORKFLOW2",
            good.clone(),
            "not a workflow the gateway takes",
        ),
        (STRANGER, "THRIVE_STATUS", good.clone(), "not a provider's"),
    ] {
        let sender = if from == STRANGER {
            sandbox.client(STRANGER)
        } else {
            sandbox.client(mailbox)
        };
        let message = sender
            .send_message(Outgoing {
                to: GATEWAY,
                workflow_id: workflow,
                local_id: "x",
                subject: "status",
                body: body.as_bytes(),
            })
            .await
            .unwrap();
        expected.push((message, reason));
    }
    assert_eq!(inbox.poll_once().await.unwrap(), 4);
    assert_eq!(sandbox.client(GATEWAY).inbox_count().await.unwrap(), 0);
    let referral = app.store.referral(&id).await.unwrap().unwrap();
    assert_eq!(referral.milestone.as_str(), "none", "nothing changed");
    assert!(app.store.events_for(&id).await.unwrap().is_empty());

    let listed = app.get("operator", "/operator/v1/mesh/messages").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let messages = listed.json()["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 4);
    for (message, reason) in &expected {
        let m = messages
            .iter()
            .find(|m| m["message_id"] == message.as_str())
            .unwrap();
        assert_eq!(m["outcome"], "refused");
        assert!(m["reason"].as_str().unwrap().contains(reason), "{m}");
    }
    let refused = app
        .audit()
        .await
        .into_iter()
        .filter(|a| a.action == "referral.event" && a.outcome == "rejected")
        .count();
    assert_eq!(refused, 4);
    let (code, out) = command(&app, &sandbox, "password", &["mesh", "inbox"]);
    assert_eq!(code, 0, "{out}");
    for (message, _) in &expected {
        let line = out
            .lines()
            .find(|l| l.starts_with(message.as_str()))
            .unwrap();
        assert!(line.contains("refused"), "{line}");
    }
}

on_both_databases!(what_is_not_a_status_event_is_refused_and_acknowledged);

/// MESH could not hand a message over (a non-delivery report): its delivery becomes
/// a dead letter saying so, which an operator can replay.
async fn a_non_delivery_report_makes_a_dead_letter(db: Db) {
    let (sandbox, app) = over_mesh(db).await;
    let inbox = app.mesh_inbox.clone().unwrap();
    let (id, _) = accept(&app).await;
    app.deliver().await;
    let d = delivery_of(&app, &id).await;
    let sent = received(&sandbox).await.remove(0);
    sandbox
        .non_delivery_report(GATEWAY, &d.request_id, &sent.message_id)
        .await;
    assert_eq!(inbox.poll_once().await.unwrap(), 1);
    let dead = delivery_of(&app, &id).await;
    assert_eq!(dead.state.as_str(), "dead");
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or_default()
            .starts_with("MESH non-delivery report"),
        "{dead:?}"
    );
    let record = app
        .audit()
        .await
        .into_iter()
        .rfind(|a| a.action == "delivery.report")
        .unwrap();
    assert_eq!(record.outcome, "undelivered");
    assert_eq!(record.referral_id.as_deref(), Some(id.as_str()));
    let listed = app.store.mesh_messages(10).await.unwrap();
    assert_eq!(listed[0].outcome, "undelivered");
    assert_eq!(sandbox.client(GATEWAY).inbox_count().await.unwrap(), 0);
}

on_both_databases!(a_non_delivery_report_makes_a_dead_letter);

/// Two gateways on one database, both delivering: each referral reaches MESH once.
async fn two_gateways_send_each_referral_once(db: Db) {
    let sandbox = MeshSandbox::start().await;
    let config = mesh_providers(&sandbox, PROVIDER, "password", 20_000_000);
    let first = TestApp::spawn_with(db, &config).await;
    let second = first.second(&config).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let app = if i % 2 == 0 { &first } else { &second };
        ids.push(accept(app).await.0);
    }
    let drain = |app: &TestApp| {
        let d = app.deliverer.clone().unwrap();
        async move {
            for _ in 0..20 {
                if d.run_once().await.unwrap() == 0 {
                    break;
                }
            }
        }
    };
    tokio::join!(drain(&first), drain(&second));
    let got = received(&sandbox).await;
    let mut local: Vec<String> = got.iter().filter_map(|m| m.local_id.clone()).collect();
    local.sort();
    let mut expected = Vec::new();
    for id in &ids {
        let d = delivery_of(&first, id).await;
        assert_eq!(d.state.as_str(), "delivered");
        expected.push(d.request_id);
    }
    expected.sort();
    assert_eq!(local, expected, "each referral sent once");
}

on_both_databases!(two_gateways_send_each_referral_once);

/// The development layer `config/mesh-sandbox.toml` routes both providers over MESH
/// and its mailbox, password and shared key are the sandbox's: the handshake works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_mesh_layer_speaks_to_the_sandbox() {
    let sandbox = MeshSandbox::start().await;
    let sources = thrive_gateway::config::Sources {
        config_dir: std::path::PathBuf::from("config"),
        environment: Some("development".into()),
        files: vec!["config/mesh-sandbox.toml".into()],
        use_environment: false,
    };
    // Tests run in the package's root, as `serve` does in development.
    let root = env!("CARGO_MANIFEST_DIR");
    let settings = thrive_gateway::config::Settings::load(&sources).unwrap();
    for id in ["bchft", "prospects"] {
        assert_eq!(
            settings.providers[id].transport,
            thrive_gateway::config::mesh::Transport::Mesh
        );
    }
    let mut mesh = settings.mesh.clone().unwrap();
    mesh.url = sandbox.url.clone();
    for source in [&mut mesh.password, &mut mesh.shared_key] {
        if let thrive_gateway::pseudonym::KeySource::File(path) = source {
            *path = std::path::Path::new(root).join(&*path);
        }
    }
    let client = thrive_gateway::mesh::MeshClient::new(&mesh).unwrap();
    client.handshake().await.unwrap();
    assert_eq!(client.mailbox(), GATEWAY);
}

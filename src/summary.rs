//! The start-up summary: one block, logged at INFO when `serve` starts, saying where
//! the gateway listens, what it stores in, and where each delivery will go. It names
//! hosts and files, never a secret: no password, key or token.

use crate::config::{ProviderAuth, ProviderFormat, ProviderSettings, Settings};
use std::fmt::Write;
use std::net::SocketAddr;

/// `settings` as resolved (sandbox endpoints included); `layers` as
/// [`crate::config::Sources::layers`] lists them; `paused` the recipients operators
/// have paused.
pub fn render(
    settings: &Settings,
    environment: Option<&str>,
    layers: &[String],
    address: SocketAddr,
    paused: &[String],
) -> String {
    let mut out = String::from("thrive-gateway starting\n");
    let on = |b: bool| if b { "on" } else { "off" };
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "  {label:<14}{value}");
    };
    line(
        "environment",
        format!(
            "{} (configuration: {})",
            environment.unwrap_or("(THRIVE_ENV not set)"),
            layers.join(", ")
        ),
    );
    line("database", crate::store::describe(&settings.database));
    line(
        "listening",
        format!(
            "{address}, TLS {}",
            match &settings.server.tls {
                Some(t) if t.client_ca_file.is_some() => "on, client certificates required",
                Some(_) => "on",
                None => "off",
            }
        ),
    );
    let recipients: Vec<(String, String)> = settings
        .providers
        .iter()
        .map(|(id, p)| (format!("provider {id}"), client(p, paused.contains(id))))
        .chain(settings.gp_callbacks.iter().map(|(id, c)| {
            (
                format!("gp callback {id}"),
                client(&c.client(), paused.contains(id)),
            )
        }))
        .collect();
    if recipients.is_empty() {
        line(
            "deliveries",
            "no provider or GP callback is configured".into(),
        );
    }
    for (who, how) in recipients {
        line("deliveries", format!("{who} -> {how}"));
    }
    if let Some(mesh) = &settings.mesh {
        let inbox = match (mesh.poll_interval_ms, &mesh.status_workflow_id) {
            (0, _) => "inbox not read".to_owned(),
            (every, Some(workflow)) => {
                format!("inbox read every {every} ms, status events in workflow {workflow}")
            }
            (every, None) => format!("inbox read every {every} ms for reports, no status workflow"),
        };
        line(
            "mesh",
            format!("mailbox {} at {}; {inbox}", mesh.mailbox, mesh.url),
        );
    }
    line(
        "sandbox",
        if settings.sandbox.enabled {
            format!("on: receivers at http(s)://{address}/sandbox/<provider>/")
        } else {
            "off".into()
        },
    );
    let console = &settings.console;
    line(
        "console",
        if console.enabled {
            let sign_in = match (&console.oidc, console.dev_sign_in) {
                (Some(oidc), true) => {
                    format!("OpenID Connect ({}) and development sign-in", oidc.issuer)
                }
                (Some(oidc), false) => format!("OpenID Connect ({})", oidc.issuer),
                (None, _) => "development sign-in".into(),
            };
            format!(
                "on at http(s)://{address}/console/, {sign_in}; sessions {}",
                if console.session_key_file.is_some() {
                    "sealed with console.session_key_file"
                } else {
                    "sealed with a key of this process"
                }
            )
        } else {
            "off".into()
        },
    );
    line(
        "background",
        format!(
            "delivery worker {}, retention {}{}, audit sealer every {} ms, checkpoints {}",
            on(settings.delivery.enabled),
            on(settings.retention.enabled),
            if settings.retention.enabled {
                format!(" (after {} days)", settings.retention.after_days)
            } else {
                String::new()
            },
            settings.audit.seal_interval_ms,
            match &settings.audit.checkpoint {
                Some(c) if c.private_key_file.is_some() => {
                    format!("signed every {} s", c.interval_seconds)
                }
                Some(_) => "verified, not signed here".into(),
                None => "off".into(),
            }
        ),
    );
    out.truncate(out.trim_end().len());
    out
}

/// `host:port (format, auth, transport, limits)` of one recipient.
fn client(p: &ProviderSettings, paused: bool) -> String {
    let host = reqwest::Url::parse(&p.endpoint)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port_or_known_default() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "(no host)".into());
    let format = match p.format {
        ProviderFormat::Json => "json",
        ProviderFormat::Fhir => "fhir",
    };
    let auth = match p.auth {
        ProviderAuth::None => "no auth",
        ProviderAuth::SignedJwt => "signed-jwt",
    };
    let transport = match (&p.mesh, p.endpoint.starts_with("https://"), &p.tls) {
        (Some(_), _, _) if p.transport == crate::config::mesh::Transport::Mesh => "mesh",
        (_, false, _) => "http",
        (_, true, Some(t)) if t.client_cert_file.is_some() => "https with mutual TLS",
        (_, true, _) => "https",
    };
    let host = match (&p.mesh, transport) {
        (Some(route), "mesh") => format!("MESH mailbox {} ({})", route.to, route.workflow_id),
        _ => host,
    };
    let mut parts = vec![format.to_owned(), auth.to_owned(), transport.to_owned()];
    if let Some(r) = p.max_per_second {
        parts.push(format!("at most {r}/s"));
    }
    if let Some(n) = p.max_in_flight {
        parts.push(format!("at most {n} at once"));
    }
    if !p.quiet_hours.is_empty() {
        parts.push(format!("{} quiet window(s)", p.quiet_hours.len()));
    }
    if paused {
        parts.push("PAUSED".into());
    }
    format!("{host} ({})", parts.join(", "))
}

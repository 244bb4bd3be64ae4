//! A development bearer token: `thrive-gateway dev-token`.

use super::*;

pub(super) fn dev_token(settings: &Settings, sources: &Sources, client: &str) -> ExitCode {
    if sources.is_production() {
        eprintln!("dev-token is refused when THRIVE_ENV=production");
        return ExitCode::FAILURE;
    }
    let (Some(key_file), Some(kid), Some(issuer)) = (
        &settings.dev.signing_key_file,
        &settings.dev.key_id,
        &settings.dev.issuer,
    ) else {
        eprintln!(
            "dev-token needs dev.signing_key_file, dev.key_id and dev.issuer (THRIVE_ENV=development sets them)"
        );
        return ExitCode::FAILURE;
    };
    if !settings.auth.clients.contains_key(client) {
        eprintln!("no client `{client}` in auth.clients");
        return ExitCode::FAILURE;
    }
    let pem = match std::fs::read(key_file) {
        Ok(p) => secrecy::SecretBox::new(Box::new(p)),
        Err(e) => {
            eprintln!("cannot read {}: {e}", key_file.display());
            return ExitCode::FAILURE;
        }
    };
    match crate::auth::mint_token(
        pem.expose_secret(),
        kid,
        issuer,
        &settings.auth.audience,
        client,
        settings.dev.token_ttl_seconds,
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot sign a token: {e}");
            ExitCode::FAILURE
        }
    }
}

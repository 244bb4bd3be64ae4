//! A development bearer token: `thrive-gateway dev-token`.

use super::*;

pub(super) fn dev_token(settings: &Settings, sources: &Sources, client: &str) -> Done {
    if sources.is_production() {
        return Err(Failure::failed(
            "dev-token is refused when THRIVE_ENV=production",
        ));
    }
    let (Some(key_file), Some(kid), Some(issuer)) = (
        &settings.dev.signing_key_file,
        &settings.dev.key_id,
        &settings.dev.issuer,
    ) else {
        return Err(Failure::failed(
            "dev-token needs dev.signing_key_file, dev.key_id and dev.issuer (THRIVE_ENV=development sets them)",
        ));
    };
    if !settings.auth.clients.contains_key(client) {
        return Err(Failure::failed(format!(
            "no client `{client}` in auth.clients"
        )));
    }
    let pem = std::fs::read(key_file)
        .map(|p| secrecy::SecretBox::new(Box::new(p)))
        .map_err(|e| Failure::failed(format!("cannot read {}: {e}", key_file.display())))?;
    let token = crate::auth::mint_token(
        pem.expose_secret(),
        kid,
        issuer,
        &settings.auth.audience,
        client,
        settings.dev.token_ttl_seconds,
    )
    .map_err(|e| Failure::failed(format!("cannot sign a token: {e}")))?;
    println!("{token}");
    Ok(())
}

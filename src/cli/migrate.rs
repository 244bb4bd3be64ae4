//! Applies migrations (and seals data held in the clear): `thrive-gateway migrate`.

use super::*;

/// Applies migrations; with `keys.storage` configured, also seals personal data that a
/// gateway from before encryption at rest stored in the clear.
pub(super) async fn migrate(settings: &Settings) -> ExitCode {
    let fail = |e: String| {
        eprintln!("thrive-gateway migrate: {e}");
        ExitCode::FAILURE
    };
    eprintln!(
        "thrive-gateway migrate: {}",
        crate::store::describe(&settings.database)
    );
    let Some(key_settings) = &settings.keys.storage else {
        return match crate::store::connect(&settings.database).await {
            Ok(_) => {
                println!("migrations applied (keys.storage is not configured: nothing sealed)");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.to_string()),
        };
    };
    let keys = match crate::store::crypto::StorageKeys::load(Some(key_settings)) {
        Ok(k) => std::sync::Arc::new(k),
        Err(e) => return fail(e.to_string()),
    };
    let store = match crate::store::connect_with_keys(&settings.database, keys).await {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    match store.seal_plaintext().await {
        Ok(n) => {
            println!("migrations applied; {n} referrals held in the clear were encrypted");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

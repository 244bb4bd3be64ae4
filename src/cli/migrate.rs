//! Applies migrations (and seals data held in the clear): `thrive-gateway migrate`.

use super::*;

/// Applies migrations; with `keys.storage` configured, also seals personal data that a
/// gateway from before encryption at rest stored in the clear.
pub(super) async fn migrate(settings: &Settings) -> Done {
    eprintln!(
        "thrive-gateway migrate: {}",
        crate::store::describe(&settings.database)
    );
    let Some(key_settings) = &settings.keys.storage else {
        crate::store::connect(&settings.database).await?;
        println!("migrations applied (keys.storage is not configured: nothing sealed)");
        return Ok(());
    };
    let keys =
        crate::store::crypto::StorageKeys::load(Some(key_settings)).map_err(Failure::failed)?;
    let store =
        crate::store::connect_with_keys(&settings.database, std::sync::Arc::new(keys)).await?;
    let n = store.seal_plaintext().await?;
    println!("migrations applied; {n} referrals held in the clear were encrypted");
    Ok(())
}

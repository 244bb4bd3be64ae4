//! Purges settled personal data now: `thrive-gateway retention run`.

use super::*;

pub(super) async fn retention(settings: &Settings) -> Done {
    // Purging needs no keys: it only ever clears.
    let store = open_for("retention run", settings, None).await?;
    let purged =
        crate::retention::run_once(store.as_ref(), &settings.retention, "command-line").await;
    audit::seal_what_was_written(store.as_ref()).await;
    let p = purged?;
    println!(
        "retention: purged the personal data of {} referrals settled more than {} days ago",
        p.referrals, p.after_days
    );
    Ok(())
}

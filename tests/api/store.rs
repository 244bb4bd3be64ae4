//! The store conformance suite: the same expectations of both implementations.

use crate::helpers::*;
use crate::on_both_databases;
use fhir_sdk::time::OffsetDateTime;
use std::sync::Arc;
use thrive_gateway::config::{DatabaseSettings, Settings};
use thrive_gateway::store::crypto::StorageKeys;
use thrive_gateway::store::{
    Inserted, NewReferralRecord, ReferralStatus, Store, UpdateRecord, Updated,
};

async fn open(db: Db) -> (Arc<dyn Store>, String, Option<tempfile::TempDir>) {
    let (url, dir) = fresh_database(db).await;
    let settings: Settings = test_settings(&url, "");
    let database: DatabaseSettings = settings.database;
    let keys = StorageKeys::load(settings.keys.storage.as_ref()).unwrap();
    (
        thrive_gateway::store::connect_with_keys(&database, Arc::new(keys))
            .await
            .unwrap(),
        url,
        dir,
    )
}

fn record(n: u32) -> NewReferralRecord {
    NewReferralRecord {
        id: uuid::Uuid::new_v4().to_string(),
        reference: format!("TIW-AAAA-{n:04}"),
        practice_ods: "Y90001".into(),
        bundle_id: uuid::Uuid::new_v4().to_string(),
        programme: "thrive-into-work".into(),
        locality: "sandwell".into(),
        provider: "prospects".into(),
        routing_version: "1".into(),
        referral_code: "1082611000000105".into(),
        nhs_number: "9990000018".into(),
        consent: "{}".into(),
        message: "{}".into(),
        source_endpoint: "x".into(),
        client_id: "gp-a".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        correlation_id: uuid::Uuid::new_v4().to_string(),
        message_header_id: uuid::Uuid::new_v4().to_string(),
        sender_identifiers: vec![("sys".into(), format!("ref-{n}"))],
        subject: format!("v1:{n:064}"),
        delivery_id: uuid::Uuid::new_v4().to_string(),
        delivery_request_id: uuid::Uuid::new_v4().to_string(),
        now: OffsetDateTime::now_utc(),
        audit: audit_record("referral.new"),
    }
}

async fn inserts_are_all_or_nothing_and_duplicates_are_refused(db: Db) {
    let (store, _url, _dir) = open(db).await;
    let first = record(1);
    assert_eq!(
        store.insert_referral(&first).await.unwrap(),
        Inserted::Accepted
    );

    let same_request = NewReferralRecord {
        request_id: first.request_id.clone(),
        ..record(2)
    };
    let same_header = NewReferralRecord {
        message_header_id: first.message_header_id.clone(),
        ..record(3)
    };
    let same_sender_id = NewReferralRecord {
        sender_identifiers: first.sender_identifiers.clone(),
        ..record(4)
    };
    for dup in [&same_request, &same_header, &same_sender_id] {
        assert_eq!(
            store.insert_referral(dup).await.unwrap(),
            Inserted::Duplicate
        );
        assert!(store.referral(&dup.id).await.unwrap().is_none());
        assert!(store.deliveries_for(&dup.id).await.unwrap().is_empty());
    }
    let same_reference = NewReferralRecord {
        reference: first.reference.clone(),
        ..record(5)
    };
    assert_eq!(
        store.insert_referral(&same_reference).await.unwrap(),
        Inserted::ReferenceTaken
    );

    assert_eq!(store.count_referrals().await.unwrap(), 1);
    assert_eq!(
        store.audit_after(0, 100).await.unwrap().len(),
        1,
        "only the accepted insert left a record"
    );
    let row = store.referral(&first.id).await.unwrap().unwrap();
    assert_eq!(row.status().unwrap(), ReferralStatus::Active);
    let found = store
        .referral_by_sender_identifier("Y90001", "sys", "ref-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, first.id);
    assert!(
        store
            .referral_by_sender_identifier("Y90010", "sys", "ref-1")
            .await
            .unwrap()
            .is_none()
    );
}

async fn updates_apply_once_and_queue_notices_for_delivered_referrals(db: Db) {
    let (store, url, _dir) = open(db).await;
    let queued = record(1);
    let delivered = record(2);
    store.insert_referral(&queued).await.unwrap();
    store.insert_referral(&delivered).await.unwrap();
    execute_sql(
        db,
        &url,
        &format!(
            "UPDATE deliveries SET state = 'delivered' WHERE referral_id = '{}'",
            delivered.id
        ),
    )
    .await;

    let update = |id: &str, status| UpdateRecord {
        referral_id: id.to_owned(),
        new_status: status,
        request_id: uuid::Uuid::new_v4().to_string(),
        message_header_id: uuid::Uuid::new_v4().to_string(),
        kind: "cancel".into(),
        now: OffsetDateTime::now_utc(),
        audit: audit_record("referral.cancel"),
    };
    let cancel = update(&queued.id, ReferralStatus::Cancelled);
    assert_eq!(
        store.apply_update(&cancel).await.unwrap(),
        Updated::Applied {
            stopped: 1,
            notices: 0
        }
    );
    assert_eq!(
        store.apply_update(&cancel).await.unwrap(),
        Updated::Duplicate
    );
    assert_eq!(
        store
            .apply_update(&update(&queued.id, ReferralStatus::ConsentWithdrawn))
            .await
            .unwrap(),
        Updated::NotActive
    );

    let withdraw = update(&delivered.id, ReferralStatus::ConsentWithdrawn);
    assert_eq!(
        store.apply_update(&withdraw).await.unwrap(),
        Updated::Applied {
            stopped: 0,
            notices: 1
        }
    );
    let deliveries = store.deliveries_for(&delivered.id).await.unwrap();
    let kinds: Vec<(&str, &str)> = deliveries
        .iter()
        .map(|d| (d.kind.as_str(), d.state.as_str()))
        .collect();
    assert!(kinds.contains(&("referral", "delivered")));
    assert!(kinds.contains(&("withdrawal", "queued")), "{kinds:?}");
    assert_eq!(
        store
            .referral(&delivered.id)
            .await
            .unwrap()
            .unwrap()
            .status()
            .unwrap(),
        ReferralStatus::ConsentWithdrawn
    );
    assert_eq!(
        store.delivery_counts().await.unwrap(),
        [("cancelled", 1), ("delivered", 1), ("queued", 1)].map(|(s, n)| (s.to_owned(), n)),
        "deliveries counted by state for /metrics"
    );
}

async fn migrations_are_idempotent_and_the_store_answers_pings(db: Db) {
    let (store, _url, _dir) = open(db).await;
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert!(store.delivery_counts().await.unwrap().is_empty());
}

on_both_databases!(
    inserts_are_all_or_nothing_and_duplicates_are_refused,
    updates_apply_once_and_queue_notices_for_delivered_referrals,
    migrations_are_idempotent_and_the_store_answers_pings,
);

//! The store conformance suite: the same expectations of both implementations.

use crate::helpers::*;
use crate::on_both_databases;
use fhir_sdk::time::OffsetDateTime;
use std::sync::Arc;
use thrive_gateway::config::{DatabaseSettings, Settings};
use thrive_gateway::store::crypto::StorageKeys;
use thrive_gateway::store::{
    AuditRecord, Claim, DeliveryOutcome, Finish, Inserted, NewReferralRecord, RecipientClaim,
    ReferralId, ReferralStatus, Store, UpdateRecord, Updated,
};

async fn open(db: Db) -> (Arc<dyn Store>, String, TestDatabase) {
    let (url, dir) = fresh_database(db).await;
    (open_again(&url).await, url, dir)
}

/// A store on the database at `url`, as a gateway process opens it.
async fn connect(url: &str) -> Result<Arc<dyn Store>, thrive_gateway::store::StoreError> {
    let settings: Settings = test_settings(url, "");
    let database: DatabaseSettings = settings.database;
    let keys = StorageKeys::load(settings.keys.storage.as_ref()).unwrap();
    thrive_gateway::store::connect_with_keys(&database, Arc::new(keys)).await
}

fn record(n: u32) -> NewReferralRecord {
    NewReferralRecord {
        id: ReferralId::generate(),
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
        message_header_id: Some(uuid::Uuid::new_v4().to_string()),
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
    assert_eq!(row.status, ReferralStatus::Active);
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
        referral_id: id.parse().unwrap(),
        new_status: status,
        request_id: uuid::Uuid::new_v4().to_string(),
        message_header_id: Some(uuid::Uuid::new_v4().to_string()),
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
        store.referral(&delivered.id).await.unwrap().unwrap().status,
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

/// A second store on the same database, as a second gateway process has.
async fn open_again(url: &str) -> Arc<dyn Store> {
    connect(url).await.unwrap()
}

/// Two stores (two gateway processes) append, accept and seal in turn: each sealer
/// links to the head the other left, so the records form one chain in the order
/// written, and every accept's delivery is queued once.
async fn two_stores_taking_turns_on_one_database_keep_one_chain(db: Db) {
    let (first, url, _dir) = open(db).await;
    let second = open_again(&url).await;
    for n in 0..10 {
        for (store, who) in [(&first, "first"), (&second, "second")] {
            let mut a = audit_record("audit.query");
            // Escaped and non-ASCII content, hashed as stored and verified alike.
            a.detail = serde_json::json!({
                "writer": who,
                "turn": n,
                "text": "Café ☕ \u{2028} \u{1} back\\slash \"quoted\" 😀",
            });
            a.actor_identity = Some("Organization|Y90001|Dr Ñúñez".into());
            store.append_audit(&a).await.unwrap();
        }
        // The stores seal in turn: each sealer takes the head the other left.
        [&second, &first][n as usize % 2]
            .seal_audit()
            .await
            .unwrap();
        let r = record(n);
        let accepting = [&first, &second][n as usize % 2];
        assert_eq!(
            accepting.insert_referral(&r).await.unwrap(),
            Inserted::Accepted
        );
        // The accept's delivery is queued once, its record with it.
        let queued: Vec<_> = accepting
            .deliveries_for(&r.id)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.kind.to_string(), d.state.to_string(), d.request_id))
            .collect();
        assert_eq!(
            queued,
            [(
                "referral".to_owned(),
                "queued".to_owned(),
                r.delivery_request_id.clone()
            )]
        );
        // A duplicate rolls back with its record.
        assert_eq!(
            [&second, &first][n as usize % 2]
                .insert_referral(&NewReferralRecord {
                    id: ReferralId::generate(),
                    reference: format!("TIW-BBBB-{n:04}"),
                    ..r
                })
                .await
                .unwrap(),
            Inserted::Duplicate
        );
    }
    let v = thrive_gateway::audit::verify(first.as_ref(), None)
        .await
        .unwrap();
    assert_eq!(v.problem, None);
    assert_eq!(v.records, 30, "20 appends and 10 accepts, no duplicate");
    let chain = first.audit_chain(0, 100).await.unwrap();
    let places: Vec<i64> = chain.iter().filter_map(|r| r.seq).collect();
    assert_eq!(places, (1..=30).collect::<Vec<_>>());
    let writers: Vec<&str> = chain
        .iter()
        .filter(|r| r.action == "audit.query")
        .take(4)
        .map(|r| {
            if r.detail.contains("first") {
                "first"
            } else {
                "second"
            }
        })
        .collect();
    assert_eq!(writers, ["first", "second", "first", "second"]);
    assert_eq!(
        second.audit_head().await.unwrap(),
        (30, chain[29].hash.clone().unwrap())
    );
}

/// Records about a stored referral (reads, deliveries) name its subject; many written
/// at once, from several connections, each land in the chain.
async fn concurrent_appends_about_a_referral_all_land(db: Db) {
    let (store, _url, _dir) = open(db).await;
    let r = record(1);
    assert_eq!(store.insert_referral(&r).await.unwrap(), Inserted::Accepted);
    let writers = (0..6).map(|_| {
        let store = store.clone();
        let id = r.id.to_string();
        tokio::spawn(async move {
            for _ in 0..8 {
                let mut a = audit_record("referral.read");
                a.referral_id = Some(id.clone());
                store.append_audit(&a).await.unwrap();
            }
        })
    });
    for w in futures_util::future::join_all(writers).await {
        w.unwrap();
    }
    let v = thrive_gateway::audit::verify(store.as_ref(), None)
        .await
        .unwrap();
    assert_eq!(v.problem, None);
    assert_eq!(v.records, 49);
    let reads: Vec<_> = store
        .audit_chain(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.action == "referral.read")
        .collect();
    assert_eq!(reads.len(), 48);
    assert!(
        reads
            .iter()
            .all(|row| row.subject.as_deref() == Some(r.subject.as_str())),
        "every record names the referral's subject"
    );
}

/// The migrations a gateway from before one-statement appends ran.
fn up_to_0006(mut all: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    all.migrations = all
        .migrations
        .iter()
        .filter(|m| m.version <= 6)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    all
}

/// A chain written by a gateway from before one-statement appends (migrations up to
/// 0006) keeps verifying after the upgrade, and grows from its head.
async fn a_chain_from_before_the_upgrade_verifies_and_grows(db: Db) {
    let (url, _dir) = fresh_database(db).await;
    let mut prev = thrive_gateway::audit::GENESIS.to_owned();
    let mut rows = Vec::new();
    for seq in 1..=3 {
        let at = "2026-11-30T09:00:00Z";
        let detail = format!("{{\"turn\":{seq}}}");
        let hash = thrive_gateway::audit::ChainEntry {
            recorded_at: OffsetDateTime::parse(
                at,
                &fhir_sdk::time::format_description::well_known::Rfc3339,
            )
            .unwrap(),
            action: "audit.query",
            outcome: "allowed",
            http_status: None,
            client_id: Some("auditor"),
            role: None,
            actor_identity: None,
            referral_id: None,
            subject: None,
            recipient: None,
            request_id: None,
            correlation_id: None,
            mapping_version: None,
            key_version: None,
            detail: &detail,
        }
        .hash(&prev);
        let time = match db {
            Db::Sqlite => format!("'{at}'"),
            Db::Postgres => format!("TIMESTAMPTZ '{at}'"),
        };
        rows.push(format!(
            "INSERT INTO audit_events (seq, recorded_at, action, outcome, client_id, detail, prev_hash, hash) \
             VALUES ({seq}, {time}, 'audit.query', 'allowed', 'auditor', '{detail}', '{prev}', '{hash}')"
        ));
        rows.push(format!(
            "UPDATE audit_head SET seq = {seq}, hash = '{hash}'"
        ));
        prev = hash;
    }
    match db {
        Db::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
                .await
                .unwrap();
            up_to_0006(sqlx::migrate!("src/store/migrations/sqlite"))
                .run(&pool)
                .await
                .unwrap();
        }
        Db::Postgres => {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            up_to_0006(sqlx::migrate!("src/store/migrations/postgres"))
                .run(&pool)
                .await
                .unwrap();
        }
    }
    for row in &rows {
        execute_sql(db, &url, row).await;
    }
    let store = open_again(&url).await;
    store
        .append_audit(&audit_record("audit.query"))
        .await
        .unwrap();
    store
        .append_audit(&audit_record("audit.query"))
        .await
        .unwrap();
    let v = thrive_gateway::audit::verify(store.as_ref(), None)
        .await
        .unwrap();
    assert_eq!(v.problem, None);
    assert_eq!(v.records, 5);
    let chain = store.audit_chain(0, 10).await.unwrap();
    assert_eq!(
        chain.iter().take(3).map(|r| r.id).collect::<Vec<_>>(),
        [1, 2, 3],
        "records keep their ids"
    );
    assert!(
        chain[3].id > 3 && chain[4].id > chain[3].id,
        "ids only grow"
    );
    assert_eq!(chain[3].prev_hash.as_deref(), Some(prev.as_str()));
}

/// Without a chain head nothing is lost and nothing is sealed wrongly: records are
/// written with their changes and wait, sealing (and so every read of the trail)
/// fails saying why, and once the head is restored they are sealed in order.
async fn without_a_chain_head_records_wait_and_sealing_says_why(db: Db) {
    let (store, url, _dir) = open(db).await;
    execute_sql(db, &url, "DELETE FROM audit_head").await;
    store
        .append_audit(&audit_record("audit.query"))
        .await
        .unwrap();
    assert_eq!(
        store.insert_referral(&record(1)).await.unwrap(),
        Inserted::Accepted
    );
    assert_eq!(store.count_referrals().await.unwrap(), 1);
    assert_eq!(store.audit_pending().await.unwrap(), 2);
    let refused = store.seal_audit().await.unwrap_err().to_string();
    assert!(refused.contains("audit_head has no row"), "{refused}");
    assert!(
        thrive_gateway::audit::verify(store.as_ref(), None)
            .await
            .is_err(),
        "verify cannot pass a chain without its head"
    );
    // Readers still get what is chained (nothing here) rather than an error.
    assert!(store.audit_after(0, 10).await.unwrap().is_empty());
    assert!(store.audit_chain(0, 10).await.unwrap().is_empty());
    assert_eq!(store.audit_pending().await.unwrap(), 2, "nothing lost");

    execute_sql(
        db,
        &url,
        &format!(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{}')",
            thrive_gateway::audit::GENESIS
        ),
    )
    .await;
    assert_eq!(store.seal_audit().await.unwrap(), 2);
    let v = thrive_gateway::audit::verify(store.as_ref(), None)
        .await
        .unwrap();
    assert_eq!((v.problem, v.records), (None, 2));
    let actions: Vec<String> = store
        .audit_chain(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(actions, ["audit.query", "referral.new"]);
}

/// A record is written with its change and waits outside the chain, where tampering
/// could not be told from writing, only until it is sealed: sealing links every
/// pending record, in the order written, and leaves none behind.
async fn records_wait_until_sealed_then_join_the_chain_in_the_order_written(db: Db) {
    let (store, _url, _dir) = open(db).await;
    for n in 0..3 {
        let mut a = audit_record("audit.query");
        a.detail = serde_json::json!({ "n": n });
        store.append_audit(&a).await.unwrap();
    }
    assert_eq!(store.audit_pending().await.unwrap(), 3);
    assert!(
        store.audit_chain(0, 10).await.unwrap().is_empty(),
        "not in the chain before sealing"
    );
    assert_eq!(store.seal_audit().await.unwrap(), 3);
    assert_eq!(store.seal_audit().await.unwrap(), 0, "sealed once");
    assert_eq!(store.audit_pending().await.unwrap(), 0);
    let chain = store.audit_chain(0, 10).await.unwrap();
    let order: Vec<(Option<i64>, String)> =
        chain.iter().map(|r| (r.seq, r.detail.clone())).collect();
    assert_eq!(
        order,
        [
            (Some(1), r#"{"n":0}"#.to_owned()),
            (Some(2), r#"{"n":1}"#.to_owned()),
            (Some(3), r#"{"n":2}"#.to_owned()),
        ]
    );
    assert_eq!(
        chain[0].prev_hash.as_deref(),
        Some(thrive_gateway::audit::GENESIS)
    );
    assert_eq!(chain[1].prev_hash, chain[0].hash);
    assert_eq!(chain[2].prev_hash, chain[1].hash);
    assert_eq!(
        store.audit_head().await.unwrap(),
        (3, chain[2].hash.clone().unwrap())
    );
}

/// A backlog longer than one sealing transaction (a gateway that could not seal for
/// a while) is sealed whole, in several batches, as one unbroken chain.
async fn a_long_backlog_is_sealed_whole_in_batches(db: Db) {
    let (store, url, _dir) = open(db).await;
    execute_sql(
        db,
        &url,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1234) \
         INSERT INTO audit_pending (recorded_at, action, outcome, detail) \
         SELECT '2026-12-02T10:00:00Z', 'audit.query', 'allowed', '{\"n\":' || i || '}' FROM n",
    )
    .await;
    assert_eq!(store.audit_pending().await.unwrap(), 1234);
    assert_eq!(store.seal_audit().await.unwrap(), 1234);
    assert_eq!(store.audit_pending().await.unwrap(), 0);
    let v = thrive_gateway::audit::verify(store.as_ref(), None)
        .await
        .unwrap();
    assert_eq!((v.problem, v.records), (None, 1234));
    let last = store.audit_chain(1233, 1).await.unwrap();
    assert_eq!(
        last[0].detail, r#"{"n":1234}"#,
        "sealed in the order written"
    );
}

/// Gateways on one database write and seal at once: every record lands in one
/// unbroken chain exactly once, whichever sealer took it.
async fn sealers_in_two_processes_at_once_keep_one_chain(db: Db) {
    let (first, url, _dir) = open(db).await;
    let second = open_again(&url).await;
    let writers = [first.clone(), second.clone()]
        .into_iter()
        .enumerate()
        .flat_map(|(w, store)| {
            (0..3).map(move |t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0..15 {
                        let mut a = audit_record("audit.query");
                        a.detail = serde_json::json!({ "writer": w, "task": t, "n": n });
                        store.append_audit(&a).await.unwrap();
                        if n % 4 == 0 {
                            store.seal_audit().await.unwrap();
                        }
                    }
                })
            })
        })
        .collect::<Vec<_>>();
    for w in futures_util::future::join_all(writers).await {
        w.unwrap();
    }
    let v = thrive_gateway::audit::verify(second.as_ref(), None)
        .await
        .unwrap();
    assert_eq!((v.problem, v.records), (None, 90));
    let mut written: Vec<String> = first
        .audit_chain(0, 200)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.detail)
        .collect();
    assert_eq!(written.len(), 90, "every record in the chain once");
    written.sort();
    written.dedup();
    assert_eq!(written.len(), 90, "every record written is there");
}

/// Stores three more referrals to prospects (numbered from `first`), a second apart
/// in age, and claims what is due to prospects for `owner`: the claims, and the
/// referrals stored, oldest first.
async fn claim_three(
    store: &Arc<dyn Store>,
    owner: &str,
    first: u32,
) -> (Vec<Claim>, Vec<NewReferralRecord>, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let mut records = Vec::new();
    for n in 0..3u8 {
        let mut r = record(first + u32::from(n));
        r.now = now - fhir_sdk::time::Duration::seconds(i64::from(3 - n));
        assert_eq!(store.insert_referral(&r).await.unwrap(), Inserted::Accepted);
        records.push(r);
    }
    let claim = RecipientClaim {
        recipient: "prospects",
        max_in_flight: None,
        interval: None,
        limit: 10,
    };
    let lease_until = now + fhir_sdk::time::Duration::minutes(5);
    let claimed = store
        .claim_for_recipient(owner, now, lease_until, claim)
        .await
        .unwrap();
    (claimed, records, now)
}

/// A worker's claim comes back in the order it was made, each delivery with its
/// referral; a row that cannot be read is handed back broken on its own and does
/// not keep the others from being read.
async fn claimed_deliveries_are_read_with_their_referrals_and_a_bad_row_alone_is_broken(db: Db) {
    let (store, url, _dir) = open(db).await;
    let (claimed, records, _) = claim_three(&store, "worker-a", 100).await;
    let read: Vec<(String, String)> = claimed
        .iter()
        .map(|c| match c {
            Claim::Ready(d) => (d.id.clone(), d.reference.clone()),
            Claim::Broken { id, error } => panic!("{id} broken: {error}"),
        })
        .collect();
    let expected: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.delivery_id.clone(), r.reference.clone()))
        .collect();
    assert_eq!(read, expected);
    store.release_leases("worker-a").await.unwrap();

    // The middle referral's status is made one the gateway does not know.
    let bad = format!(
        "UPDATE referrals SET status = 'unknown' WHERE id = '{}'",
        records[1].id
    );
    match db {
        Db::Sqlite => {
            execute_sql(
                db,
                &url,
                &format!("PRAGMA ignore_check_constraints = ON; {bad}"),
            )
            .await;
        }
        Db::Postgres => {
            execute_sql(
                db,
                &url,
                "ALTER TABLE referrals DROP CONSTRAINT referrals_status_check",
            )
            .await;
            execute_sql(db, &url, &bad).await;
        }
    }
    let (claimed, more, _) = claim_three(&store, "worker-b", 200).await;
    let mut ready: Vec<&str> = claimed
        .iter()
        .filter_map(|c| match c {
            Claim::Ready(d) => Some(d.id.as_str()),
            Claim::Broken { .. } => None,
        })
        .collect();
    let mut expected: Vec<&str> = [&records[0], &records[2]]
        .into_iter()
        .chain(&more)
        .map(|r| r.delivery_id.as_str())
        .collect();
    ready.sort_unstable();
    expected.sort_unstable();
    assert_eq!(ready, expected, "every other one is read");
    let broken: Vec<(&str, &str)> = claimed
        .iter()
        .filter_map(|c| match c {
            Claim::Broken { id, error } => Some((id.as_str(), error.as_str())),
            Claim::Ready(_) => None,
        })
        .collect();
    assert_eq!(
        broken,
        [(
            records[1].delivery_id.as_str(),
            "the delivery could not be read from the database"
        )]
    );
}

/// Outcomes recorded together are each kept only while the worker still holds that
/// delivery's lease, each kept one with its audit record; one no longer held is
/// left as it is, and a batch with none held writes nothing.
async fn outcomes_recorded_together_keep_only_the_leases_still_held(db: Db) {
    let (store, _url, _dir) = open(db).await;
    let (claimed, records, now) = claim_three(&store, "worker-a", 100).await;
    assert_eq!(claimed.len(), 3);
    let ids: Vec<&str> = records.iter().map(|r| r.delivery_id.as_str()).collect();
    let delivered = DeliveryOutcome::Delivered {
        status: 202,
        receipt: None,
    };
    let retry = DeliveryOutcome::Retry {
        next_attempt_at: now + fhir_sdk::time::Duration::minutes(1),
        status: Some(503),
        error: "the provider answered 503".into(),
    };
    let audits: Vec<AuditRecord> = records
        .iter()
        .map(|r| AuditRecord {
            referral_id: Some(r.id.to_string()),
            ..audit_record("delivery.referral")
        })
        .collect();
    let finish = |i: usize, outcome| Finish {
        id: ids[i],
        outcome,
        audit: &audits[i],
    };
    let pending = store.audit_pending().await.unwrap();

    // The third is recorded first on its own: its lease is then no longer held.
    let alone = store
        .finish_deliveries("worker-a", now, &[finish(2, &delivered)])
        .await
        .unwrap();
    assert_eq!(alone, [true]);
    let held = store
        .finish_deliveries(
            "worker-a",
            now,
            &[
                finish(0, &delivered),
                finish(1, &retry),
                finish(2, &delivered),
            ],
        )
        .await
        .unwrap();
    assert_eq!(held, [true, true, false]);
    assert_eq!(store.audit_pending().await.unwrap(), pending + 3);
    let view = |i: usize| {
        let store = store.clone();
        let id = ids[i].to_owned();
        async move { store.delivery(&id).await.unwrap().unwrap() }
    };
    let (first, second, third) = (view(0).await, view(1).await, view(2).await);
    assert_eq!((first.state.as_str(), first.attempts), ("delivered", 1));
    assert_eq!(
        (second.state.as_str(), second.attempts, second.last_status),
        ("queued", 1, Some(503))
    );
    assert_eq!(
        (third.state.as_str(), third.attempts),
        ("delivered", 1),
        "counted once"
    );

    // Another worker holds none of them: nothing is written.
    let none = store
        .finish_deliveries("worker-b", now, &[finish(1, &delivered)])
        .await
        .unwrap();
    assert_eq!(none, [false]);
    assert_eq!(store.audit_pending().await.unwrap(), pending + 3);
    assert_eq!(view(1).await.state.as_str(), "queued");
}

on_both_databases!(
    claimed_deliveries_are_read_with_their_referrals_and_a_bad_row_alone_is_broken,
    outcomes_recorded_together_keep_only_the_leases_still_held,
    without_a_chain_head_records_wait_and_sealing_says_why,
    records_wait_until_sealed_then_join_the_chain_in_the_order_written,
    a_long_backlog_is_sealed_whole_in_batches,
    sealers_in_two_processes_at_once_keep_one_chain,
    a_chain_from_before_the_upgrade_verifies_and_grows,
    concurrent_appends_about_a_referral_all_land,
    inserts_are_all_or_nothing_and_duplicates_are_refused,
    updates_apply_once_and_queue_notices_for_delivered_referrals,
    migrations_are_idempotent_and_the_store_answers_pings,
    two_stores_taking_turns_on_one_database_keep_one_chain,
);

/// SQLite holds every writer to the head it has: a chained record that does not
/// extend it is refused, whoever writes it, and one that does moves the head.
#[tokio::test]
async fn sqlite_refuses_a_chained_record_that_does_not_extend_the_head() {
    let (store, url, _dir) = open(Db::Sqlite).await;
    store
        .append_audit(&audit_record("audit.query"))
        .await
        .unwrap();
    assert_eq!(store.seal_audit().await.unwrap(), 1);
    let (seq, hash) = store.audit_head().await.unwrap();
    let insert = |seq: i64, prev: &str, hash: &str| {
        format!(
            "INSERT INTO audit_events (seq, recorded_at, action, outcome, detail, prev_hash, hash) \
             VALUES ({seq}, '2026-12-01T10:00:00Z', 'audit.query', 'allowed', '{{}}', '{prev}', '{hash}')"
        )
    };
    for (place, prev) in [
        (seq, hash.as_str()),
        (seq + 2, hash.as_str()),
        (seq + 1, "00ff"),
    ] {
        let refused = try_execute_sql(Db::Sqlite, &url, &insert(place, prev, "ab")).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("audit chain head moved")),
            "seq {place} after {prev}: {refused:?}"
        );
    }
    assert_eq!(store.audit_head().await.unwrap(), (seq, hash.clone()));
    try_execute_sql(Db::Sqlite, &url, &insert(seq + 1, &hash, "ab"))
        .await
        .unwrap();
    assert_eq!(
        store.audit_head().await.unwrap(),
        (seq + 1, "ab".to_owned())
    );
}

/// An SQLite database whose chain triggers were dropped is not served: its head would
/// no longer move.
#[tokio::test]
async fn sqlite_refuses_to_open_without_its_chain_triggers() {
    let (_store, url, _dir) = open(Db::Sqlite).await;
    execute_sql(Db::Sqlite, &url, "DROP TRIGGER audit_chain_moves_head").await;
    let refused = connect(&url).await.unwrap_err().to_string();
    assert!(
        refused.contains("audit_chain_moves_head is missing"),
        "{refused}"
    );
}

//! The information-governance audit trail: one record for every decision and
//! disclosure, chained by hash so that any change, removal, insertion or reordering
//! is found by `thrive-gateway audit verify`, with signed checkpoints of the chain
//! head so an exported range can be checked without the database.
//!
//! Records are written by the store (`write_audit`, the one place every writer goes
//! through) with the change they record, pending, and sealed into the chain by
//! [`seal_periodically`] or the next read of the trail. This module holds what the
//! chain means: how the chain is verified (the record's format and hash are
//! [`crate::audit_record`]'s), the NHS identity headers kept as the actor, checkpoints
//! and exports.

pub mod checkpoint;
pub mod export;
pub mod identity;

pub use crate::audit_record::{ChainEntry, GENESIS, chain_hash, truncate};
use crate::store::{AuditRow, AuditStore, StoreError};

/// The first thing wrong with the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tamper {
    /// The record's content no longer matches its hash.
    Changed { seq: i64 },
    /// Records are missing before `seq` (or, with `seq` one past the last record, at
    /// the end of the chain).
    Removed { seq: i64 },
    /// The record at `seq` was put into the chain after the fact.
    Inserted { seq: i64 },
    /// The record at `seq` is not where it was written.
    Reordered { seq: i64 },
    /// A record without a place in the chain, written after the chain began.
    Unchained { id: i64 },
    /// A checkpoint's signature does not verify, or the chain no longer has the hash
    /// the checkpoint signed.
    Checkpoint { seq: i64, why: String },
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tamper::Changed { seq } => write!(
                f,
                "record {seq} was changed after it was written (its content no longer matches its hash)"
            ),
            Tamper::Removed { seq } => write!(f, "records are missing before record {seq}"),
            Tamper::Inserted { seq } => write!(
                f,
                "record {seq} was inserted after the fact (the next record links past it)"
            ),
            Tamper::Reordered { seq } => write!(
                f,
                "record {seq} is out of order (it links to a record that is not the one before it)"
            ),
            Tamper::Unchained { id } => write!(
                f,
                "record with id {id} has no place in the chain but was written after the chain began"
            ),
            Tamper::Checkpoint { seq, why } => write!(f, "checkpoint at record {seq}: {why}"),
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Chained records checked.
    pub records: u64,
    /// Records written before the chain existed (older databases), not covered.
    pub legacy: u64,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints: u64,
    pub problem: Option<Tamper>,
    /// Why records written could not be sealed into the chain before the walk, if
    /// they could not (a record forged past the head blocks sealing; so does a
    /// missing head). Then the trail is not intact either, whatever `problem` says.
    pub sealing: Option<String>,
    /// Records written but not in the chain when the walk ended.
    pub pending: u64,
}

impl Verification {
    /// Every record written is in the chain and the chain is as written.
    pub fn intact(&self) -> bool {
        self.problem.is_none() && self.sealing.is_none()
    }
}

/// Walks the chain in order of `seq`, one page at a time. Stateful so that the same
/// logic checks a database and an exported file.
#[derive(Debug)]
pub struct Walker {
    expected_seq: i64,
    prev_hash: String,
    /// The hash of the record before the previous one: a link to it means the
    /// previous record was inserted.
    before_prev: Option<String>,
    pub records: u64,
}

/// Where a broken link points.
enum Link {
    /// `prev_hash` names no record at all.
    Unknown,
    /// `prev_hash` names the record two back.
    SkipsOne,
    /// `prev_hash` names some other record.
    Elsewhere,
}

impl Walker {
    /// Starts at the genesis, or (for an exported range) after a known record.
    pub fn new(first_seq: i64, prev_hash: &str) -> Self {
        Self {
            expected_seq: first_seq,
            prev_hash: prev_hash.to_owned(),
            before_prev: None,
            records: 0,
        }
    }

    /// The next record's place and its expected `prev_hash`.
    pub fn head(&self) -> (i64, &str) {
        (self.expected_seq - 1, &self.prev_hash)
    }

    /// Checks one record. `locate` says where a foreign `prev_hash` points.
    pub fn step(
        &mut self,
        row: &AuditRow,
        locate: impl FnOnce(&str) -> Option<i64>,
    ) -> Result<(), Tamper> {
        let (Some(seq), Some(prev), Some(hash)) = (row.seq, &row.prev_hash, &row.hash) else {
            return Err(Tamper::Unchained { id: row.id });
        };
        if row.entry().hash(prev) != *hash {
            return Err(Tamper::Changed { seq });
        }
        if *prev != self.prev_hash {
            let link = if self.before_prev.as_deref() == Some(prev.as_str()) {
                Link::SkipsOne
            } else {
                match locate(prev) {
                    None => Link::Unknown,
                    Some(_) => Link::Elsewhere,
                }
            };
            return Err(match link {
                Link::SkipsOne => Tamper::Inserted { seq: seq - 1 },
                Link::Unknown => Tamper::Removed { seq },
                Link::Elsewhere => Tamper::Reordered { seq },
            });
        }
        if seq != self.expected_seq {
            return Err(Tamper::Removed { seq });
        }
        self.before_prev = Some(std::mem::replace(&mut self.prev_hash, hash.clone()));
        self.expected_seq = seq + 1;
        self.records += 1;
        Ok(())
    }
}

/// Runs `round` every `interval` until `stop` turns true (the first round after one
/// interval); the background tasks of the audit trail (sealing, checkpoints).
pub(crate) async fn every<F, R>(
    interval: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut round: F,
) where
    F: FnMut() -> R,
    R: std::future::Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        round().await;
    }
}

/// Seals pending records into the chain every `interval` until `stop` turns true
/// (`serve` seals once more after its other tasks end). A failed round is logged and
/// the records stay pending, durable, for the next round (the
/// `thrive_audit_pending_records` gauge shows them waiting).
pub async fn seal_periodically(
    store: std::sync::Arc<dyn AuditStore>,
    interval: std::time::Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    every(interval, stop, || async {
        match store.seal_audit().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(records = n, "audit records sealed into the chain"),
            Err(e) => {
                tracing::error!(error = %e, "sealing audit records failed; they stay pending")
            }
        }
    })
    .await
}

/// Page size of a verification pass.
const PAGE: i64 = 1_000;

/// Verifies the whole chain in the database: every record's content, every link,
/// the head the writers keep, records outside the chain, and every checkpoint
/// (against `keys` when given).
pub async fn verify(
    store: &dyn AuditStore,
    keys: Option<&checkpoint::VerifyingKeys>,
) -> Result<Verification, StoreError> {
    // What is pending sealed first, so the walk covers every record written. A seal
    // that fails is reported beside what the walk finds (which may be its cause).
    let sealing = store.seal_audit().await.err().map(|e| e.to_string());
    let mut walker = Walker::new(1, GENESIS);
    let (legacy, unchained) = store.audit_unchained().await?;
    let report =
        |walker: &Walker, problem: Option<Tamper>, checkpoints: u64, pending: u64| Verification {
            records: walker.records,
            legacy,
            checkpoints,
            problem,
            sealing: sealing.clone(),
            pending,
        };
    if let Some(id) = unchained {
        let waiting = pending(store).await?;
        return Ok(report(&walker, Some(Tamper::Unchained { id }), 0, waiting));
    }
    // The head first: records sealed while the walk goes on are after it and are
    // not judged, so a busy gateway never looks tampered with.
    let (head_seq, head_hash) = store.audit_head().await?;
    let mut after = 0;
    let mut problem = None;
    'walk: while after < head_seq {
        let rows = store.audit_chain(after, PAGE.min(head_seq - after)).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq.unwrap_or(after);
        for row in rows.iter().filter(|r| r.seq <= Some(head_seq)) {
            let foreign = match &row.prev_hash {
                Some(p) if *p != walker.prev_hash => store.audit_seq_of_hash(p).await?,
                _ => None,
            };
            if let Err(found) = walker.step(row, |_| foreign) {
                problem = Some(found);
                break 'walk;
            }
        }
    }
    if problem.is_none() {
        problem = beyond_the_walk(store, &walker, head_seq, &head_hash).await?;
    }
    let mut checked = 0;
    if problem.is_none() {
        for c in store.audit_checkpoints().await? {
            if let Some(keys) = keys
                && let Err(why) = keys.verify(&c)
            {
                problem = Some(Tamper::Checkpoint { seq: c.seq, why });
                break;
            }
            let at = store.audit_chain(c.seq - 1, 1).await?;
            match at.first() {
                Some(row) if row.seq == Some(c.seq) && row.hash.as_deref() == Some(&c.hash) => {}
                _ => {
                    problem = Some(Tamper::Checkpoint {
                        seq: c.seq,
                        why: "the chain no longer has the hash this checkpoint signed".into(),
                    });
                    break;
                }
            }
            checked += 1;
        }
    }
    let waiting = pending(store).await?;
    Ok(report(&walker, problem, checked, waiting))
}

/// How many records wait to be sealed.
async fn pending(store: &dyn AuditStore) -> Result<u64, StoreError> {
    Ok(u64::try_from(store.audit_pending().await?).unwrap_or(0))
}

/// What the walk up to the head `(head_seq, head_hash)` leaves to check: records
/// missing from the end against the head, and records written past the head without
/// moving it (not by a gateway). Records sealed since the head was read have moved
/// it, so they are not mistaken for that: the head is read again before anything
/// is reported, and the look goes on past what was sealed meanwhile (a few times;
/// a gateway still sealing after that leaves the rest to the next run).
async fn beyond_the_walk(
    store: &dyn AuditStore,
    walker: &Walker,
    head_seq: i64,
    head_hash: &str,
) -> Result<Option<Tamper>, StoreError> {
    let (last_seq, last_hash) = walker.head();
    if head_seq > last_seq {
        return Ok(Some(Tamper::Removed { seq: last_seq + 1 }));
    }
    if head_hash != last_hash {
        return Ok(Some(Tamper::Changed { seq: last_seq }));
    }
    let (mut now_head, _) = store.audit_head().await?;
    for _ in 0..10 {
        let Some(extra) = store.audit_chain(now_head, 1).await?.into_iter().next() else {
            return Ok(None);
        };
        let seq = extra.seq.unwrap_or(now_head + 1);
        let (latest, _) = store.audit_head().await?;
        if seq > latest {
            return Ok(Some(Tamper::Inserted { seq }));
        }
        now_head = latest;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir_sdk::time::format_description::well_known::Rfc3339;
    use fhir_sdk::time::macros::datetime;
    use sha2::{Digest, Sha256};

    fn entry<'a>(detail: &'a str, subject: Option<&'a str>) -> ChainEntry<'a> {
        ChainEntry {
            recorded_at: datetime!(2026-11-30 09:15:02.123456 UTC),
            action: "referral.new",
            outcome: "accepted",
            http_status: Some(200),
            client_id: Some("gp-a"),
            role: Some("gp-system"),
            actor_identity: None,
            referral_id: Some("0b7c6f2e-8d43-4d1e-9c55-2f0f3a9b1c7d"),
            subject,
            recipient: Some("prospects"),
            request_id: Some("req-1"),
            correlation_id: None,
            mapping_version: Some("routing@3"),
            key_version: None,
            detail,
        }
    }

    /// The hash as the chain has always defined it: the whole content, `prev_hash`
    /// first, as one JSON array.
    fn whole_array_hash(e: &ChainEntry<'_>, prev: &str) -> String {
        let content = serde_json::json!([
            prev,
            e.recorded_at.format(&Rfc3339).unwrap(),
            e.action,
            e.outcome,
            e.http_status,
            e.client_id,
            e.role,
            e.actor_identity,
            e.referral_id,
            e.subject,
            e.recipient,
            e.request_id,
            e.correlation_id,
            e.mapping_version,
            e.key_version,
            e.detail,
        ]);
        hex::encode(Sha256::digest(content.to_string().as_bytes()))
    }

    #[test]
    fn prev_hash_and_tail_hash_the_whole_content_as_one_array() {
        let detail = r#"{"consent":{"recorded":"2026-11-29"},"note":"quote \" and \\ and é"}"#;
        for e in [entry(detail, Some("v1:ab12")), entry("{}", None)] {
            for prev in [
                GENESIS,
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            ] {
                assert_eq!(e.hash(prev), whole_array_hash(&e, prev));
            }
        }
    }

    #[test]
    fn the_tail_is_the_content_after_the_previous_hash() {
        let e = entry("{}", None);
        let tail = e.tail();
        assert!(tail.starts_with("\"2026-11-30T09:15:02.123456Z\",\"referral.new\""));
        assert!(tail.ends_with(",null,\"{}\"]"), "{tail}");
        assert_ne!(e.hash(GENESIS), entry("{ }", None).hash(GENESIS));
    }
}

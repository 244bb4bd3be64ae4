//! The outbox's SQL: claiming and finishing deliveries, and the operators' queue. Each statement is written once for both engines.

use super::*;

/// Columns of [`ClaimedDelivery`], read with the referral they belong to, for the
/// delivery ids the caller names after it.
macro_rules! claimed_columns {
    () => {
        "SELECT d.id, d.referral_id, d.provider, d.kind, d.request_id, d.attempts, d.created_at, \
         r.reference, r.programme, r.status AS referral_status, r.consent, r.message, \
         r.correlation_id, d.event_id, e.event, d.worker_failures FROM deliveries d \
         JOIN referrals r ON r.id = d.referral_id LEFT JOIN referral_events e ON e.id = d.event_id \
         WHERE d.id"
    };
}

/// The statement that claims up to `$limit` due deliveries, returning each with what
/// orders them (`RETURNING` keeps no order). `$lock` is where the engines differ:
/// PostgreSQL skips rows another transaction has locked; SQLite has one writer at a
/// time, so the statement alone is atomic. The lease condition is repeated outside the
/// subquery so that a row claimed concurrently is re-checked, not claimed twice.
/// `$whose` narrows it to one recipient, or to recipients no gateway controls.
/// Milestones reach a GP system in the order they happened: one waits while an older
/// milestone of the same referral to the same recipient is still queued (a dead
/// letter no longer holds the rest back).
macro_rules! claim_some {
    ($lock:literal, $whose:literal, $limit:literal) => {
        concat!(
            "UPDATE deliveries SET lease_owner = $1, lease_expires_at = $2 WHERE id IN (",
            "SELECT d.id FROM deliveries d WHERE d.state = 'queued' AND d.next_attempt_at <= $3 ",
            $whose,
            "AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= $3) ",
            "AND NOT (d.kind = 'milestone' AND EXISTS (SELECT 1 FROM deliveries o ",
            "WHERE o.referral_id = d.referral_id AND o.provider = d.provider ",
            "AND o.kind = 'milestone' AND o.state = 'queued' AND o.created_at < d.created_at)) ",
            "ORDER BY d.next_attempt_at, d.created_at LIMIT ",
            $limit,
            " ",
            $lock,
            ") AND (lease_expires_at IS NULL OR lease_expires_at <= $3) ",
            "RETURNING id, next_attempt_at, created_at"
        )
    };
}

macro_rules! outbox_store {
    ($store:ty, $db:ty, $migrator:path, $lock:literal, $t0:literal, $t1:literal) => {
        #[async_trait]
        impl OutboxStore for $store {
            async fn claim_deliveries(
                &self,
                owner: &str,
                now: OffsetDateTime,
                lease_until: OffsetDateTime,
                limit: i64,
            ) -> Result<Vec<Claim>, StoreError> {
                let rows: Vec<ClaimedRow> = sqlx::query_as(claim_some!(
                    $lock,
                    "AND NOT EXISTS (SELECT 1 FROM recipient_controls c WHERE c.recipient = d.provider) ",
                    "$4"
                ))
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .bind(limit.max(0))
                .fetch_all(&self.pool)
                .await?;
                let ids = in_claim_order(rows).into_iter().map(|id| (id, None)).collect();
                self.read_claimed(ids).await
            }
            async fn claim_for_recipient(
                &self,
                owner: &str,
                now: OffsetDateTime,
                lease_until: OffsetDateTime,
                claim: RecipientClaim<'_>,
            ) -> Result<Vec<Claim>, StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query("INSERT INTO recipient_controls (recipient) VALUES ($1) ON CONFLICT (recipient) DO NOTHING")
                    .bind(claim.recipient)
                    .execute(&mut *tx)
                    .await?;
                // Skipped, not waited for, while another gateway claims for it.
                let control: Option<(Option<OffsetDateTime>, Option<OffsetDateTime>)> = sqlx::query_as(concat!(
                    "SELECT paused_at, next_send_at FROM recipient_controls WHERE recipient = $1 ",
                    $lock
                ))
                .bind(claim.recipient)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((None, next_send_at)) = control else {
                    tx.rollback().await?;
                    return Ok(Vec::new());
                };
                let mut room = claim.limit.max(0);
                if let Some(max) = claim.max_in_flight {
                    let (leased,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM deliveries WHERE provider = $1 AND state = 'queued' \
                         AND lease_expires_at > $2",
                    )
                    .bind(claim.recipient)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    room = room.min(i64::from(max).saturating_sub(leased).max(0));
                }
                let mut slot = next_send_at.map_or(now, |n| n.max(now));
                let horizon = now.saturating_add(Duration::SECOND);
                // Under a rate limit, no more than the slots that start within a second.
                if let Some(interval) = claim.interval {
                    let slots = if slot > horizon {
                        0
                    } else {
                        let ahead = (horizon - slot).whole_nanoseconds();
                        let each = interval.whole_nanoseconds().max(1);
                        i64::try_from(ahead / each).unwrap_or(i64::MAX).saturating_add(1)
                    };
                    room = room.min(slots);
                }
                let rows: Vec<ClaimedRow> = if room > 0 {
                    sqlx::query_as(claim_some!($lock, "AND d.provider = $4 ", "$5"))
                        .bind(owner)
                        .bind(lease_until)
                        .bind(now)
                        .bind(claim.recipient)
                        .bind(room)
                        .fetch_all(&mut *tx)
                        .await?
                } else {
                    Vec::new()
                };
                let mut ids = Vec::with_capacity(rows.len());
                for id in in_claim_order(rows) {
                    match claim.interval {
                        Some(interval) => {
                            ids.push((id, Some(slot)));
                            slot = slot.saturating_add(interval);
                        }
                        None => ids.push((id, None)),
                    }
                }
                if claim.interval.is_some() && !ids.is_empty() {
                    sqlx::query("UPDATE recipient_controls SET next_send_at = $1 WHERE recipient = $2")
                        .bind(slot)
                        .bind(claim.recipient)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                self.read_claimed(ids).await
            }
            async fn set_paused(
                &self,
                recipient: &str,
                paused: bool,
                now: OffsetDateTime,
                by: &str,
                audit: &AuditRecord,
            ) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query("INSERT INTO recipient_controls (recipient) VALUES ($1) ON CONFLICT (recipient) DO NOTHING")
                    .bind(recipient)
                    .execute(&mut *tx)
                    .await?;
                let changed = if paused {
                    sqlx::query(
                        "UPDATE recipient_controls SET paused_at = $1, paused_by = $2 \
                         WHERE recipient = $3 AND paused_at IS NULL",
                    )
                    .bind(now)
                    .bind(by)
                    .bind(recipient)
                    .execute(&mut *tx)
                    .await?
                } else {
                    sqlx::query(
                        "UPDATE recipient_controls SET paused_at = NULL, paused_by = NULL \
                         WHERE recipient = $1 AND paused_at IS NOT NULL",
                    )
                    .bind(recipient)
                    .execute(&mut *tx)
                    .await?
                }
                .rows_affected()
                    > 0;
                let record = if changed {
                    audit.clone()
                } else {
                    AuditRecord { outcome: "unchanged".into(), ..audit.clone() }
                };
                self.write_audit(&mut *tx, &record).await?;
                tx.commit().await?;
                Ok(changed)
            }
            async fn recipient_controls(&self) -> Result<Vec<RecipientControl>, StoreError> {
                Ok(sqlx::query_as::<_, RecipientControl>(
                    "SELECT recipient, paused_at, paused_by FROM recipient_controls ORDER BY recipient",
                )
                .fetch_all(&self.pool)
                .await?)
            }
            async fn queue_by_recipient(&self) -> Result<Vec<RecipientQueue>, StoreError> {
                Ok(sqlx::query_as::<_, RecipientQueue>(
                    "SELECT provider AS recipient, COUNT(*) AS queued, MIN(created_at) AS oldest \
                     FROM deliveries WHERE state = 'queued' GROUP BY provider ORDER BY provider",
                )
                .fetch_all(&self.pool)
                .await?)
            }
            async fn finish_deliveries(
                &self,
                owner: &str,
                now: OffsetDateTime,
                finishes: &[Finish<'_>],
            ) -> Result<Vec<bool>, StoreError> {
                self.finish_here(owner, now, finishes).await
            }
            async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
                let n = sqlx::query(
                    "UPDATE deliveries SET lease_owner = NULL, lease_expires_at = NULL \
                     WHERE lease_owner = $1",
                )
                .bind(owner)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n)
            }
            async fn list_deliveries(&self, filter: &DeliveryFilter, limit: i64) -> Result<Vec<DeliveryView>, StoreError> {
                let rows = sqlx::query_as::<_, DeliveryView>(
                    concat!(
                        delivery_view_columns!(),
                        " WHERE ($1 = 0 OR d.state = 'dead') AND ($2 IS NULL OR d.provider = $2) ",
                        "AND ($3 IS NULL OR (CASE WHEN d.state = 'dead' AND d.resolved_at IS NOT NULL ",
                        "THEN 'resolved' ELSE d.state END) = $3) ",
                        "AND ($4 IS NULL OR ", $t0, "d.created_at", $t1, " >= ", $t0, "$4", $t1, ") ",
                        "ORDER BY d.created_at DESC, d.id LIMIT $5"
                    ),
                )
                .bind(i32::from(filter.dead_only))
                .bind(filter.recipient.as_deref())
                .bind(filter.state.map(ShownState::as_str))
                .bind(filter.since)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }
            async fn replay_delivery(
                &self,
                id: &str,
                now: OffsetDateTime,
                audit: &AuditRecord,
            ) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                let changed = sqlx::query(
                    "UPDATE deliveries SET state = 'queued', attempts = 0, worker_failures = 0, \
                     next_attempt_at = $1, updated_at = $1, lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = $2 AND state = 'dead' AND resolved_at IS NULL",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                self.commit_with_audit(tx, changed, audit).await
            }
            async fn delivery(&self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
                let row = sqlx::query_as::<_, DeliveryView>(concat!(
                    delivery_view_columns!(),
                    " WHERE d.id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row)
            }
            async fn resolve_delivery(
                &self,
                id: &str,
                now: OffsetDateTime,
                audit: &AuditRecord,
            ) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                let changed = sqlx::query(
                    "UPDATE deliveries SET resolved_at = $1 \
                     WHERE id = $2 AND state = 'dead' AND resolved_at IS NULL",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                self.commit_with_audit(tx, changed, audit).await
            }
            async fn delivery_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT CASE WHEN state = 'dead' AND resolved_at IS NOT NULL THEN 'resolved' \
                     ELSE state END AS s, COUNT(*) FROM deliveries GROUP BY s ORDER BY s",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows)
            }
        }

        impl $store {
            /// Reads what was claimed, each with its referral, in one query. A row that
            /// cannot be read must not stop the worker: should the query fail for any
            /// reason but an unreachable database, each row is read on its own, and one
            /// that still cannot be read is handed back broken (the worker parks it if
            /// it stays so).
            async fn read_claimed(
                &self,
                ids: Vec<(String, Option<OffsetDateTime>)>,
            ) -> Result<Vec<Claim>, StoreError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let places: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
                let sql = format!(concat!(claimed_columns!(), " IN ({})"), places.join(", "));
                // Safe: the statement's only varying part is its numbered placeholders.
                let mut query = sqlx::query_as::<_, ClaimedDelivery>(sqlx::AssertSqlSafe(sql));
                for (id, _) in &ids {
                    query = query.bind(id);
                }
                let rows = match query.fetch_all(&self.pool).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        let e = StoreError::from(e);
                        if e.is_unreachable() {
                            return Err(e);
                        }
                        tracing::warn!(error = %e, "claimed deliveries could not be read together; reading each on its own");
                        return self.read_claimed_each(ids).await;
                    }
                };
                let mut rows: std::collections::HashMap<String, ClaimedDelivery> =
                    rows.into_iter().map(|r| (r.id.clone(), r)).collect();
                Ok(ids
                    .into_iter()
                    .map(|(id, not_before)| match rows.remove(&id) {
                        Some(row) => self.ready(row, not_before),
                        None => no_referral(id),
                    })
                    .collect())
            }

            /// [`Self::read_claimed`], a query a row.
            async fn read_claimed_each(
                &self,
                ids: Vec<(String, Option<OffsetDateTime>)>,
            ) -> Result<Vec<Claim>, StoreError> {
                let mut claimed = Vec::with_capacity(ids.len());
                for (id, not_before) in ids {
                    let row = sqlx::query_as::<_, ClaimedDelivery>(concat!(claimed_columns!(), " = $1"))
                        .bind(&id)
                        .fetch_optional(&self.pool)
                        .await;
                    claimed.push(match row {
                        Ok(Some(row)) => self.ready(row, not_before),
                        Ok(None) => no_referral(id),
                        Err(e) => {
                            let e = StoreError::from(e);
                            if e.is_unreachable() {
                                return Err(e);
                            }
                            tracing::error!(delivery_id = %id, error = %e, "claimed delivery could not be read");
                            Claim::Broken {
                                id,
                                error: "the delivery could not be read from the database".into(),
                            }
                        }
                    });
                }
                Ok(claimed)
            }

            /// A claimed row ready to attempt, its message opened. An unreadable
            /// message must not stop the worker: the delivery carries the reason and
            /// is dead-lettered.
            fn ready(&self, mut row: ClaimedDelivery, not_before: Option<OffsetDateTime>) -> Claim {
                row.not_before = not_before;
                match open_column(&self.keys, Column::ReferralMessage, &row.referral_id, &row.message) {
                    Ok(message) => row.message = message,
                    Err(e) => {
                        row.message = String::new();
                        row.unreadable = Some(e.to_string());
                    }
                }
                Claim::Ready(Box::new(row))
            }
        }
    };
}

for_both_engines!(outbox_store);

/// Records an attempt's outcome ([`Finished`] as `$1` to `$7` and `$11`) at `$8` on
/// delivery `$9`, only while `$10` holds its lease.
pub(super) const FINISH: &str = "UPDATE deliveries SET state = $1, next_attempt_at = $2, \
     last_status = $3, last_error = $4, receipt = COALESCE($5, receipt), delivered_at = $6, \
     attempts = attempts + $7, lease_owner = NULL, lease_expires_at = NULL, updated_at = $8, \
     worker_failures = $11 WHERE id = $9 AND lease_owner = $10 AND lease_expires_at > $8";

/// The columns an attempt's outcome sets on its delivery.
pub(super) struct Finished {
    pub(super) state: DeliveryState,
    pub(super) next_attempt_at: OffsetDateTime,
    pub(super) status: Option<i32>,
    pub(super) error: Option<String>,
    pub(super) receipt: Option<String>,
    pub(super) delivered_at: Option<OffsetDateTime>,
    /// 1 when the attempt reached the recipient, else 0.
    pub(super) attempted: i32,
    pub(super) worker_failures: i32,
}

impl Finished {
    pub(super) fn new(outcome: &DeliveryOutcome, now: OffsetDateTime) -> Self {
        let (state, next_attempt_at, status, error) = match outcome {
            DeliveryOutcome::Delivered { status, .. } => (
                DeliveryState::Delivered,
                now,
                Some(i32::from(*status)),
                None,
            ),
            DeliveryOutcome::Retry {
                next_attempt_at,
                status,
                error,
            } => (
                DeliveryState::Queued,
                *next_attempt_at,
                status.map(i32::from),
                Some(error.clone()),
            ),
            DeliveryOutcome::Dead { status, error } => (
                DeliveryState::Dead,
                now,
                status.map(i32::from),
                Some(error.clone()),
            ),
            DeliveryOutcome::Stopped { reason } => {
                (DeliveryState::Cancelled, now, None, Some(reason.clone()))
            }
            DeliveryOutcome::WorkerFailed {
                parked: true,
                error,
                ..
            } => (DeliveryState::Dead, now, None, Some(error.clone())),
            DeliveryOutcome::WorkerFailed {
                next_attempt_at,
                error,
                ..
            } => (
                DeliveryState::Queued,
                *next_attempt_at,
                None,
                Some(error.clone()),
            ),
        };
        Self {
            state,
            next_attempt_at,
            status,
            error,
            receipt: match outcome {
                DeliveryOutcome::Delivered { receipt, .. } => receipt.clone(),
                _ => None,
            },
            delivered_at: matches!(outcome, DeliveryOutcome::Delivered { .. }).then_some(now),
            attempted: i32::from(!matches!(
                outcome,
                DeliveryOutcome::Stopped { .. } | DeliveryOutcome::WorkerFailed { .. }
            )),
            // Counted in a row: any other outcome starts the count again.
            worker_failures: match outcome {
                DeliveryOutcome::WorkerFailed { failures, .. } => *failures,
                _ => 0,
            },
        }
    }
}

/// A claimed delivery whose referral is gone.
fn no_referral(id: String) -> Claim {
    tracing::error!(delivery_id = %id, "claimed delivery has no referral");
    Claim::Broken {
        id,
        error: "the delivery's referral is missing".into(),
    }
}

/// A claimed delivery's id and what orders it.
type ClaimedRow = (String, OffsetDateTime, OffsetDateTime);

/// The claimed ids due first, oldest first, as the claim chose them.
fn in_claim_order(mut rows: Vec<ClaimedRow>) -> Vec<String> {
    rows.sort_by_key(|r| (r.1, r.2));
    rows.into_iter().map(|(id, ..)| id).collect()
}

//! What reports read. Each statement is written once for both engines.

use super::*;
use crate::domain::Milestone;

macro_rules! report_store {
    ($store:ty, $db:ty, $migrator:path, $lock:literal, $t0:literal, $t1:literal) => {
        #[async_trait]
        impl ReportStore for $store {
            async fn report_rows(
                &self,
                from: OffsetDateTime,
                to: OffsetDateTime,
                identified: bool,
            ) -> Result<Vec<ReportRow>, StoreError> {
                let referrals: Vec<(String, String, OffsetDateTime, String, String, String)> = sqlx::query_as(concat!(
                    "SELECT id, nhs_number, created_at, provider, locality, programme FROM referrals \
                     WHERE ", $t0, "created_at", $t1, " >= ", $t0, "$1", $t1,
                    " AND ", $t0, "created_at", $t1, " < ", $t0, "$2", $t1
                ))
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?;
                let events: Vec<(String, Milestone)> = sqlx::query_as(concat!(
                    "SELECT e.referral_id, e.event FROM referral_events e \
                     JOIN referrals r ON r.id = e.referral_id \
                     WHERE ", $t0, "r.created_at", $t1, " >= ", $t0, "$1", $t1,
                    " AND ", $t0, "r.created_at", $t1, " < ", $t0, "$2", $t1
                ))
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?;
                let mut by_referral: std::collections::HashMap<String, Vec<Milestone>> =
                    std::collections::HashMap::new();
                for (referral, event) in events {
                    by_referral.entry(referral).or_default().push(event);
                }
                referrals
                    .into_iter()
                    .map(|(id, nhs_number, created_at, provider, locality, programme)| {
                        let nhs_number = if identified {
                            Some(open_column(&self.keys, Column::ReferralNhsNumber, &id, &nhs_number)?)
                                .filter(|n| !n.is_empty())
                        } else {
                            None
                        };
                        Ok(ReportRow {
                            nhs_number,
                            created_at,
                            provider,
                            locality,
                            programme,
                            events: by_referral.remove(&id).unwrap_or_default(),
                        })
                    })
                    .collect()
            }
        }
    };
}

for_both_engines!(report_store);

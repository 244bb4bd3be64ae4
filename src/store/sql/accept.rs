//! The statements of an accept, shared by both engines and SQLite's own writer.

/// An accepted referral's row: `$1` to `$17`, `$16` both its creation and its change.
pub(super) const INSERT_REFERRAL: &str = "INSERT INTO referrals (id, reference, practice_ods, bundle_id, \
     status, programme, locality, provider, routing_version, referral_code, nhs_number, consent, \
     message, source_endpoint, client_id, correlation_id, created_at, updated_at, subject) \
     VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
     $16, $17)";

/// One of the sender's identifiers for the referral.
pub(super) const INSERT_IDENTIFIER: &str = "INSERT INTO referral_identifiers (practice_ods, system, value, \
     referral_id) VALUES ($1, $2, $3, $4)";

/// The message that created a referral, for duplicate detection.
pub(super) const INSERT_NEW_MESSAGE: &str = "INSERT INTO messages (request_id, message_header_id, \
     referral_id, kind, received_at) VALUES ($1, $2, $3, 'new', $4)";

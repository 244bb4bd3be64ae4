-- Audit records are written with the change they record, in its transaction, to
-- `audit_pending`: one row, no index and no chain head, so a request pays for its
-- record no more than for its own rows. The gateway's sealer (and every read of the
-- trail) moves them into `audit_events` in order, linking each into the hash chain,
-- in one transaction that takes the head (see `seal_batch` in src/store/sql.rs).
-- A record is pending for at most `audit.seal_interval_ms` while a gateway runs.
--
-- The id orders pending records as they were written (one writer at a time); without
-- AUTOINCREMENT, an id may be used again once the table is empty, which is harmless:
-- ids here only order what is waiting.
CREATE TABLE audit_pending (
    id               INTEGER PRIMARY KEY,
    recorded_at      TEXT NOT NULL,
    action           TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    http_status      INTEGER,
    client_id        TEXT,
    role             TEXT,
    actor_identity   TEXT,
    referral_id      TEXT,
    subject          TEXT,
    recipient        TEXT,
    request_id       TEXT,
    correlation_id   TEXT,
    mapping_version  TEXT,
    key_version      TEXT,
    detail           TEXT NOT NULL
);

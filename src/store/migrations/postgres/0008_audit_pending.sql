-- Audit records are written with the change they record, in its transaction, to
-- `audit_pending`: one row and its key, without the chain head, so writers in every
-- replica no longer queue for the head's row lock through their commits. The sealer
-- of any gateway (and reads of the trail) moves them into `audit_events`, linking
-- each into the hash chain, in one statement that moves the head only from where the
-- sealer read it (see `seal_batch` in src/store/sql.rs): sealers take turns, so the
-- chain never forks. A record is pending for at most `audit.seal_interval_ms` while a
-- gateway runs. Ids order what is waiting; the chain's order is the order sealed.
CREATE TABLE audit_pending (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at      TIMESTAMPTZ NOT NULL,
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

-- Every row is deleted moments after it is written: vacuumed after every thousand
-- dead rows, whatever the table's size, so the sealer's reads stay short.
ALTER TABLE audit_pending SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);

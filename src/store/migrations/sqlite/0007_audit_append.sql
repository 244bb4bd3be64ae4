-- One statement per audit record, and one page fewer. The store links each record to the chain head it
-- last appended; these triggers hold it to the head the database has. A chained
-- record that does not extend the head (another process appended meanwhile, or a
-- transaction that appended rolled back) is refused with `audit chain head moved`,
-- and the store reads the head and links again. Every chained record moves the
-- head. `prev_hash` records the head's hash before the last append, as PostgreSQL
-- keeps it.
--
-- The triggers keep honest writers in step; they are no defence against someone who
-- can write to the database file (they can drop them). That is what `audit verify`
-- and the signed checkpoints are for.

ALTER TABLE audit_head ADD COLUMN prev_hash TEXT;

-- The table rebuilt without AUTOINCREMENT, which wrote a page of `sqlite_sequence`
-- for every record. Ids still only grow: records are never deleted (retention keeps
-- the audit trail), and a record's place in the chain is `seq`, not its id.
CREATE TABLE audit_events_rebuilt (
    id               INTEGER PRIMARY KEY,
    recorded_at      TEXT NOT NULL,
    action           TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    http_status      INTEGER,
    client_id        TEXT,
    role             TEXT,
    referral_id      TEXT,
    request_id       TEXT,
    correlation_id   TEXT,
    detail           TEXT NOT NULL,
    actor_identity   TEXT,
    subject          TEXT,
    recipient        TEXT,
    mapping_version  TEXT,
    key_version      TEXT,
    seq              INTEGER,
    prev_hash        TEXT,
    hash             TEXT
);
INSERT INTO audit_events_rebuilt (id, recorded_at, action, outcome, http_status, client_id,
    role, referral_id, request_id, correlation_id, detail, actor_identity, subject,
    recipient, mapping_version, key_version, seq, prev_hash, hash)
SELECT id, recorded_at, action, outcome, http_status, client_id, role, referral_id,
    request_id, correlation_id, detail, actor_identity, subject, recipient,
    mapping_version, key_version, seq, prev_hash, hash
FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_rebuilt RENAME TO audit_events;
CREATE INDEX audit_events_referral ON audit_events (referral_id);
CREATE UNIQUE INDEX audit_events_seq ON audit_events (seq);
CREATE INDEX audit_events_subject ON audit_events (subject);
CREATE INDEX audit_events_recorded ON audit_events (recorded_at);

CREATE TRIGGER audit_chain_extends_head
BEFORE INSERT ON audit_events
WHEN NEW.seq IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'audit chain head moved')
    WHERE NOT EXISTS (
        SELECT 1 FROM audit_head
        WHERE id = 1 AND seq + 1 = NEW.seq AND hash = NEW.prev_hash
    );
END;

CREATE TRIGGER audit_chain_moves_head
AFTER INSERT ON audit_events
WHEN NEW.seq IS NOT NULL
BEGIN
    UPDATE audit_head SET seq = NEW.seq, prev_hash = hash, hash = NEW.hash WHERE id = 1;
END;

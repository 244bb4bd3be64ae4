-- Information-governance audit: who acted (with the NHS identity headers), about whom
-- (the subject's audit pseudonym, never the NHS number), disclosed to whom under which
-- mapping and key versions, and a hash chain over every record.
--
-- `seq` is the record's place in the chain; `prev_hash` is the hash of the record
-- before it and `hash` covers this record's content and `prev_hash`. `audit_head`
-- holds the chain's last position and hash: every writer updates it first, in the
-- same transaction as the record, so writers take their turn and the chain never
-- forks. Records written before this migration have no `seq`: they are reported as
-- unchained by `audit verify`, never silently trusted.

ALTER TABLE audit_events ADD COLUMN actor_identity TEXT;
ALTER TABLE audit_events ADD COLUMN subject TEXT;
ALTER TABLE audit_events ADD COLUMN recipient TEXT;
ALTER TABLE audit_events ADD COLUMN mapping_version TEXT;
ALTER TABLE audit_events ADD COLUMN key_version TEXT;
ALTER TABLE audit_events ADD COLUMN seq INTEGER;
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_events ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX audit_events_seq ON audit_events (seq);
CREATE INDEX audit_events_subject ON audit_events (subject);
CREATE INDEX audit_events_recorded ON audit_events (recorded_at);

CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_checkpoints (
    seq        INTEGER PRIMARY KEY NOT NULL,
    hash       TEXT NOT NULL,
    signed_at  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    signature  TEXT NOT NULL
);

-- The subject's audit pseudonym, written with the referral, so every later record
-- about the referral (deliveries, events, purges) names the same subject.
ALTER TABLE referrals ADD COLUMN subject TEXT;

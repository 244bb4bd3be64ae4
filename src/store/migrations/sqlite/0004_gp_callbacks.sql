-- Milestones back to the GP system: a delivery may carry one status event
-- (kind 'milestone', provider = the GP callback id) to the referring GP system.
--
-- SQLite cannot change a CHECK constraint, so the table is rebuilt: created anew with
-- every column so far (0001, 0002) plus event_id, filled from the old one, which is
-- then dropped; the new table takes its name and indexes. No table references
-- deliveries, so foreign keys stay satisfied throughout.

CREATE TABLE deliveries_new (
    id                TEXT PRIMARY KEY NOT NULL,
    referral_id       TEXT NOT NULL REFERENCES referrals (id),
    provider          TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('referral', 'cancellation', 'withdrawal', 'milestone')),
    state             TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'dead', 'cancelled')),
    request_id        TEXT NOT NULL UNIQUE,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    last_status       INTEGER,
    last_error        TEXT,
    delivered_at      TEXT,
    receipt           TEXT,
    event_id          TEXT REFERENCES referral_events (id)
);

INSERT INTO deliveries_new (id, referral_id, provider, kind, state, request_id, attempts,
    next_attempt_at, created_at, updated_at, lease_owner, lease_expires_at, last_status,
    last_error, delivered_at, receipt)
SELECT id, referral_id, provider, kind, state, request_id, attempts, next_attempt_at,
    created_at, updated_at, lease_owner, lease_expires_at, last_status, last_error,
    delivered_at, receipt
FROM deliveries;

DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_referral ON deliveries (referral_id);

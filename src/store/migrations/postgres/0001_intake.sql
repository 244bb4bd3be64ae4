-- Referral intake: referrals with their consent and routing decision, the messages
-- that created or changed them (for duplicate detection), queued deliveries, and the
-- decision record.

CREATE TABLE referrals (
    id               TEXT PRIMARY KEY,
    reference        TEXT NOT NULL UNIQUE,
    practice_ods     TEXT NOT NULL,
    bundle_id        TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('active', 'cancelled', 'consent-withdrawn')),
    programme        TEXT NOT NULL,
    locality         TEXT NOT NULL,
    provider         TEXT NOT NULL,
    routing_version  TEXT NOT NULL,
    referral_code    TEXT NOT NULL,
    nhs_number       TEXT NOT NULL,
    consent          TEXT NOT NULL,
    message          TEXT NOT NULL,
    source_endpoint  TEXT NOT NULL,
    client_id        TEXT NOT NULL,
    correlation_id   TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

CREATE TABLE referral_identifiers (
    practice_ods  TEXT NOT NULL,
    system        TEXT NOT NULL,
    value         TEXT NOT NULL,
    referral_id   TEXT NOT NULL REFERENCES referrals (id),
    PRIMARY KEY (practice_ods, system, value)
);

CREATE TABLE messages (
    request_id         TEXT PRIMARY KEY,
    message_header_id  TEXT NOT NULL UNIQUE,
    referral_id        TEXT NOT NULL REFERENCES referrals (id),
    kind               TEXT NOT NULL,
    received_at        TIMESTAMPTZ NOT NULL
);

CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    referral_id      TEXT NOT NULL REFERENCES referrals (id),
    provider         TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('referral', 'cancellation', 'withdrawal')),
    state            TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'dead', 'cancelled')),
    request_id       TEXT NOT NULL UNIQUE,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_referral ON deliveries (referral_id);

CREATE TABLE audit_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at     TIMESTAMPTZ NOT NULL,
    action          TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    http_status     INTEGER,
    client_id       TEXT,
    role            TEXT,
    referral_id     TEXT,
    request_id      TEXT,
    correlation_id  TEXT,
    detail          TEXT NOT NULL
);
CREATE INDEX audit_events_referral ON audit_events (referral_id);

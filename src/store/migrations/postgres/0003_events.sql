-- Status events from providers: the milestone history of each referral, and its
-- latest milestone on the referral row (compared-and-set, so concurrent events cannot
-- both move the state).

ALTER TABLE referrals ADD COLUMN milestone TEXT NOT NULL DEFAULT 'none';

CREATE TABLE referral_events (
    id           TEXT PRIMARY KEY,
    referral_id  TEXT NOT NULL REFERENCES referrals (id),
    provider     TEXT NOT NULL,
    event        TEXT NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    reason       TEXT,
    detail       TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (referral_id, request_id)
);
CREATE INDEX referral_events_referral ON referral_events (referral_id);

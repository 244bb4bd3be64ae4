-- Operators' control of each recipient (a provider or GP callback id), shared by every
-- gateway on the database: a pause that survives restarts, and the rate limit's next
-- free slot. A worker claims a recipient's deliveries only while holding its row
-- (locked on PostgreSQL; SQLite has one writer), so limits hold across gateways.
-- Deliveries to a recipient with no row here (one no gateway configures) are claimed
-- as before, to be dead-lettered as not configured.
CREATE TABLE recipient_controls (
    recipient     TEXT PRIMARY KEY,
    paused_at     TIMESTAMPTZ,
    paused_by     TEXT,
    next_send_at  TIMESTAMPTZ
);

-- Messages read from the gateway's MESH inbox, one row per MESH message id, written
-- before the message is acknowledged: a message read again after a restart between
-- the two is recognised and only acknowledged. Operators list them, refused ones
-- included; nothing here is patient data (the body is never kept).
CREATE TABLE mesh_inbound (
    message_id    TEXT PRIMARY KEY,
    sender        TEXT NOT NULL,
    workflow_id   TEXT NOT NULL,
    message_type  TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    reason        TEXT,
    referral_id   TEXT,
    received_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX mesh_inbound_received ON mesh_inbound (received_at);

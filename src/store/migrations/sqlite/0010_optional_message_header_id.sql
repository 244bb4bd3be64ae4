-- MessageHeader.id is optional in FHIR: a message without one is still kept for
-- duplicate detection by its X-Request-Id. UNIQUE still holds among the ids sent
-- (SQLite lets several rows hold NULL). SQLite cannot drop NOT NULL in place, so the
-- table is rebuilt; nothing references it.
CREATE TABLE messages_new (
    request_id         TEXT PRIMARY KEY NOT NULL,
    message_header_id  TEXT UNIQUE,
    referral_id        TEXT NOT NULL REFERENCES referrals (id),
    kind               TEXT NOT NULL,
    received_at        TEXT NOT NULL
);
INSERT INTO messages_new (request_id, message_header_id, referral_id, kind, received_at)
    SELECT request_id, message_header_id, referral_id, kind, received_at FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;

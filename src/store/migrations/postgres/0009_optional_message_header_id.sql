-- MessageHeader.id is optional in FHIR: a message without one is still kept for
-- duplicate detection by its X-Request-Id. UNIQUE still holds among the ids sent
-- (PostgreSQL treats NULLs as distinct).
ALTER TABLE messages ALTER COLUMN message_header_id DROP NOT NULL;

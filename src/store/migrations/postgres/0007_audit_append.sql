-- One statement per audit record: it takes the chain head, moves it and inserts the
-- record linked to it, finishing the record's hash in SQL (see `APPEND_POSTGRES` in
-- src/store/sql.rs). `prev_hash` is the head's hash before the last append, which
-- is how that statement hands it to the record it inserts.

ALTER TABLE audit_head ADD COLUMN prev_hash TEXT;

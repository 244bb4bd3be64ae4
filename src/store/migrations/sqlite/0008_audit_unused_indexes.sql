-- Two indexes no SQLite query of the audit trail uses, dropped: every audit record
-- wrote a page of each. The auditor's filters are written `($n IS NULL OR ...)`, one
-- prepared statement for every combination, and the time filters compare through
-- strftime(), so SQLite plans them as a walk of `audit_events_seq` in chain order
-- (stopping at a full page) and never reads `audit_events_referral` or
-- `audit_events_recorded`. The subject search keeps `audit_events_subject`, which it
-- does use. PostgreSQL plans these filters with their values and keeps its indexes.
DROP INDEX IF EXISTS audit_events_referral;
DROP INDEX IF EXISTS audit_events_recorded;

-- Delivery outbox: leases for claiming work, the outcome of the last attempt, and the
-- minimisation receipt of what was disclosed (field names and transforms, no values).

ALTER TABLE deliveries ADD COLUMN lease_owner TEXT;
ALTER TABLE deliveries ADD COLUMN lease_expires_at TIMESTAMPTZ;
ALTER TABLE deliveries ADD COLUMN last_status INTEGER;
ALTER TABLE deliveries ADD COLUMN last_error TEXT;
ALTER TABLE deliveries ADD COLUMN delivered_at TIMESTAMPTZ;
ALTER TABLE deliveries ADD COLUMN receipt TEXT;

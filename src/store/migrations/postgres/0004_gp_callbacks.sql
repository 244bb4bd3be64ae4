-- Milestones back to the GP system: a delivery may carry one status event
-- (kind 'milestone', provider = the GP callback id) to the referring GP system.

ALTER TABLE deliveries DROP CONSTRAINT deliveries_kind_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_kind_check
    CHECK (kind IN ('referral', 'cancellation', 'withdrawal', 'milestone'));
ALTER TABLE deliveries ADD COLUMN event_id TEXT REFERENCES referral_events (id);

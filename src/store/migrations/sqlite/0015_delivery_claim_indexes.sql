-- The delivery worker's claim takes one recipient's queued deliveries in the order
-- they fell due. This index holds them in exactly that order, so a claim reads only
-- the rows it takes and sorts nothing, however long the queue (PostgreSQL's 0014 is
-- the same, and says why it mattered most there).
CREATE INDEX deliveries_claimable ON deliveries (provider, next_attempt_at, created_at)
    WHERE state = 'queued';
-- A milestone waits while an older one of the same referral to the same recipient is
-- queued; this finds that one without walking the recipient's queue.
CREATE INDEX deliveries_queued_milestones ON deliveries (referral_id, provider, created_at)
    WHERE state = 'queued' AND kind = 'milestone';

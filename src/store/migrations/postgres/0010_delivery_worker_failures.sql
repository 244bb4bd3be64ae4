-- How many times in a row the delivery worker itself failed on a delivery (a panic or
-- an error of its own, not the recipient's answer); at delivery.max_worker_failures
-- the delivery is parked as a dead letter so it cannot hold up the queue.
ALTER TABLE deliveries ADD COLUMN worker_failures INTEGER NOT NULL DEFAULT 0;

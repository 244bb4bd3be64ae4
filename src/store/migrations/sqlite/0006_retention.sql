-- Retention: when a referral's personal data (message, NHS number) was purged, and
-- when an operator resolved a dead letter (never replayed, no longer holding back the
-- purge). From here on both columns hold sealed values (enc:<version>:...) or, once
-- purged, the empty marker.

ALTER TABLE referrals ADD COLUMN purged_at TEXT;
ALTER TABLE deliveries ADD COLUMN resolved_at TEXT;

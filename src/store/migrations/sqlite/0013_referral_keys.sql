-- Operators find a referral by any of its business keys (`referrals show KEY`): the
-- correlation id and a sender's identifier value, besides the id and reference, which
-- are keys already; auditors by the subject's audit pseudonym.
CREATE INDEX referrals_correlation ON referrals (correlation_id);
CREATE INDEX referrals_subject ON referrals (subject);
CREATE INDEX referral_identifiers_value ON referral_identifiers (value);

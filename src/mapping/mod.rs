//! Minimisation: turns an accepted referral into a provider's dataset, as declared in
//! `mappings/datasets/<provider>.toml`. (Being built.)

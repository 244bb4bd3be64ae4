//! Rate limits: each client (by token `sub`) gets a steady rate with a burst, and each
//! source address a budget of failed authentications, so one noisy or hostile caller
//! cannot take the gateway from the others. Limits are held in each process: with N
//! replicas behind a balancer a client may reach up to N times the rate.

// Input is handled here: no arithmetic or indexing that could panic on it.
#![cfg_attr(
    not(test),
    deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)
)]

use crate::config::RateLimitSettings;
use crate::outcome::{Issue, IssueType, RecCode, Rejection};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;

/// Keys kept before idle ones are forgotten, so many addresses cannot grow memory.
const MAX_KEYS: usize = 10_000;

/// The configured limits; `None` where a limit is off.
#[derive(Debug)]
pub struct RateLimits {
    clients: Option<DefaultKeyedRateLimiter<String>>,
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn throttled(what: &str) -> Rejection {
    Issue::new(RecCode::TooManyRequests, IssueType::Throttled, what).into()
}

impl RateLimits {
    pub fn from_settings(s: &RateLimitSettings) -> Self {
        if !s.enabled {
            return Self::off();
        }
        let clients = NonZeroU32::new(s.per_client_per_second).map(|rate| {
            let burst = NonZeroU32::new(s.per_client_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let failures = NonZeroU32::new(s.failed_auth_per_ip_per_minute)
            .map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        Self { clients, failures }
    }

    /// No limits.
    pub fn off() -> Self {
        Self {
            clients: None,
            failures: None,
        }
    }

    /// One request from an authenticated client: 429 past its rate.
    pub fn client(&self, client_id: &str) -> Result<(), Rejection> {
        let Some(limiter) = &self.clients else {
            return Ok(());
        };
        if limiter.len() > MAX_KEYS {
            limiter.retain_recent();
        }
        limiter.check_key(&client_id.to_owned()).map_err(|_| {
            throttled("this client is sending faster than the gateway accepts; retry after the Retry-After delay")
        })
    }

    /// One failed authentication from `address`: 429 past its budget, instead of 401.
    pub fn failure(&self, address: Option<IpAddr>) -> Result<(), Rejection> {
        let (Some(limiter), Some(address)) = (&self.failures, address) else {
            return Ok(());
        };
        if limiter.len() > MAX_KEYS {
            limiter.retain_recent();
        }
        limiter.check_key(&address).map_err(|_| {
            throttled("too many failed authentications from this address; retry after the Retry-After delay")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_429() {
        let limits = RateLimits::from_settings(&RateLimitSettings {
            enabled: true,
            per_client_per_second: 1,
            per_client_burst: 2,
            failed_auth_per_ip_per_minute: 1,
        });
        assert!(limits.client("gp-a").is_ok());
        assert!(limits.client("gp-a").is_ok());
        let refused = limits.client("gp-a").unwrap_err();
        assert_eq!(refused.rec(), RecCode::TooManyRequests);
        assert!(
            limits.client("gp-b").is_ok(),
            "each client has its own budget"
        );
        let here = Some(IpAddr::from([127, 0, 0, 1]));
        assert!(limits.failure(here).is_ok());
        assert!(limits.failure(here).is_err());
        assert!(RateLimits::off().client("gp-a").is_ok());
    }
}

//! Milestones back to the GP system: which configured GP callback, if any, takes a
//! referral's status events. A referral is matched by the `MessageHeader.source.endpoint`
//! its GP system sent it with; the push itself goes through the outbox like any
//! delivery (kind `milestone`).

use crate::config::{GpCallbackSettings, normalise_endpoint};
use std::collections::{BTreeMap, HashMap};

/// Source endpoint to GP callback id, built once at start.
#[derive(Debug, Clone, Default)]
pub struct GpCallbacks {
    by_source: HashMap<String, String>,
}

impl GpCallbacks {
    /// Settings have already refused two callbacks with the same source endpoint.
    pub fn new(settings: &BTreeMap<String, GpCallbackSettings>) -> Self {
        let by_source = settings
            .iter()
            .map(|(id, c)| {
                (
                    normalise_endpoint(&c.source_endpoint).to_owned(),
                    id.clone(),
                )
            })
            .collect();
        Self { by_source }
    }

    /// The callback that takes milestones of referrals sent from `source_endpoint`.
    pub fn recipient(&self, source_endpoint: &str) -> Option<&str> {
        self.by_source
            .get(normalise_endpoint(source_endpoint))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callback(source: &str) -> GpCallbackSettings {
        GpCallbackSettings {
            source_endpoint: source.into(),
            endpoint: "https://gp.example/milestones".into(),
            auth: Default::default(),
            oauth: None,
            tls: None,
            timeout_ms: 1000,
            transport: Default::default(),
            mesh: None,
            max_per_second: None,
            max_in_flight: None,
            quiet_hours: Vec::new(),
        }
    }

    #[test]
    fn matches_exactly_but_for_one_trailing_slash() {
        let settings = BTreeMap::from([
            (
                "emis-dudley".to_owned(),
                callback("https://emis.example/fhir/"),
            ),
            (
                "tpp".to_owned(),
                callback("https://fhir.nhs.uk/Id/ods-organization-code|Y90001"),
            ),
        ]);
        let gp = GpCallbacks::new(&settings);
        assert_eq!(
            gp.recipient("https://emis.example/fhir"),
            Some("emis-dudley")
        );
        assert_eq!(
            gp.recipient("https://emis.example/fhir/"),
            Some("emis-dudley")
        );
        assert_eq!(gp.recipient("https://emis.example/fhir//"), None);
        assert_eq!(gp.recipient("https://EMIS.example/fhir"), None);
        assert_eq!(
            gp.recipient("https://fhir.nhs.uk/Id/ods-organization-code|Y90001"),
            Some("tpp")
        );
        assert_eq!(
            gp.recipient("https://fhir.nhs.uk/Id/ods-organization-code|Y90002"),
            None
        );
    }
}

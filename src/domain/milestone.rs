//! The milestones of a referral's life at the provider, and which may follow which.

use std::str::FromStr;

/// The referral's latest milestone. `None`: delivered, nothing reported yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    None,
    Accepted,
    Declined,
    Contacted,
    Engaged,
    ActionPlanAgreed,
    JobStart,
    Sustained13Weeks,
    Sustained26Weeks,
    Closed,
}

/// Every event a provider may send, in lifecycle order.
pub const EVENTS: [Milestone; 9] = [
    Milestone::Accepted,
    Milestone::Declined,
    Milestone::Contacted,
    Milestone::Engaged,
    Milestone::ActionPlanAgreed,
    Milestone::JobStart,
    Milestone::Sustained13Weeks,
    Milestone::Sustained26Weeks,
    Milestone::Closed,
];

impl Milestone {
    pub fn as_str(self) -> &'static str {
        match self {
            Milestone::None => "none",
            Milestone::Accepted => "accepted",
            Milestone::Declined => "declined",
            Milestone::Contacted => "contacted",
            Milestone::Engaged => "engaged",
            Milestone::ActionPlanAgreed => "action-plan-agreed",
            Milestone::JobStart => "job-start",
            Milestone::Sustained13Weeks => "sustained-13-weeks",
            Milestone::Sustained26Weeks => "sustained-26-weeks",
            Milestone::Closed => "closed",
        }
    }

    /// The events that may follow this milestone. Declined and closed are final; a
    /// job start needs engagement first; sustained work needs a job start.
    pub fn next(self) -> &'static [Milestone] {
        use Milestone::*;
        match self {
            None => &[Accepted, Declined],
            Accepted => &[Contacted, Engaged, Closed],
            Contacted => &[Engaged, Closed],
            Engaged => &[ActionPlanAgreed, JobStart, Closed],
            ActionPlanAgreed => &[JobStart, Closed],
            JobStart => &[Sustained13Weeks, Closed],
            Sustained13Weeks => &[Sustained26Weeks, Closed],
            Sustained26Weeks => &[Closed],
            Declined | Closed => &[],
        }
    }

    /// Why `event` cannot follow `self`, in words a provider's developer can act on.
    pub fn refuse(self, event: Milestone) -> Option<String> {
        if self.next().contains(&event) {
            return Option::None;
        }
        let why = match (self, event) {
            (Milestone::Declined | Milestone::Closed, _) => {
                format!(
                    "the referral is already {}: nothing may follow",
                    self.as_str()
                )
            }
            (_, Milestone::Sustained13Weeks | Milestone::Sustained26Weeks) => format!(
                "{} cannot follow {}: sustained work is counted from a job start (and 26 weeks after 13)",
                event.as_str(),
                self.as_str()
            ),
            (_, Milestone::JobStart) => format!(
                "job-start cannot follow {}: the person must be engaged first",
                self.as_str()
            ),
            _ => format!(
                "{} cannot follow {}; allowed next: {}",
                event.as_str(),
                self.as_str(),
                self.next()
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Some(why)
    }
}

impl FromStr for Milestone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        std::iter::once(Milestone::None)
            .chain(EVENTS)
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown event; one of: {}",
                    EVENTS.map(|m| m.as_str()).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Milestone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Milestone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

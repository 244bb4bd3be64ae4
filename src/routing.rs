//! Routing: which programme and provider a referral goes to, decided from
//! `mappings/routing.toml` (practice ODS code -> locality -> programme -> provider).
//!
//! Nothing here is hard-coded: adding a practice, locality, programme or provider is a
//! mapping change, checked by `thrive-gateway mappings check`.

use crate::domain::{OdsCode, ProviderId};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

/// The routing mapping as written in `routing.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingFile {
    version: String,
    providers: BTreeMap<String, ProviderEntry>,
    programmes: Vec<ProgrammeEntry>,
    localities: BTreeMap<String, LocalityEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    name: String,
    #[serde(default)]
    identifiers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgrammeEntry {
    id: String,
    name: String,
    reference_prefix: String,
    referral_codes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalityEntry {
    /// Display name, for people reading the file.
    #[allow(dead_code)]
    name: String,
    practices: Vec<String>,
    providers: BTreeMap<String, String>,
}

/// A provider as routing knows it.
#[derive(Debug, Clone)]
pub struct Provider {
    pub id: ProviderId,
    pub name: String,
    /// `(system, value)` pairs by which a Consent may name this provider.
    pub identifiers: Vec<(String, String)>,
}

/// A programme and the referral codes that select it.
#[derive(Debug, Clone)]
pub struct Programme {
    pub id: String,
    pub name: String,
    pub reference_prefix: String,
    pub referral_codes: Vec<String>,
}

/// The outcome of routing one referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDecision {
    pub locality: String,
    pub programme: String,
    pub provider: ProviderId,
    /// The routing mapping's version, recorded with the decision.
    pub mapping_version: String,
}

/// Why no route was found. Holds codes only, never patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no programme accepts referral code {0}")]
    NoProgramme(String),
    #[error("practice {0} is not in any locality the gateway serves")]
    UnknownPractice(OdsCode),
    #[error("no provider runs programme {programme} in locality {locality}")]
    NoProvider { programme: String, locality: String },
}

/// A problem in the mapping file, naming the file and, where known, the line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct MappingError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Loaded, cross-checked routing tables, ready for lookups by practice.
#[derive(Debug, Clone)]
pub struct Routing {
    version: String,
    providers: BTreeMap<ProviderId, Provider>,
    programmes: Vec<Programme>,
    practice_locality: HashMap<OdsCode, String>,
    /// (locality, programme) -> provider.
    assignments: HashMap<(String, String), ProviderId>,
}

impl Routing {
    /// Reads `routing.toml` from the mappings folder.
    pub fn load(dir: &Path) -> Result<Self, Vec<MappingError>> {
        let path = dir.join("routing.toml");
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            vec![MappingError {
                file: file.clone(),
                line: None,
                message: format!("cannot read: {e}"),
            }]
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and cross-checks the routing mapping; every problem is reported, each with
    /// the line of the key it concerns.
    pub fn parse(file: &str, text: &str) -> Result<Self, Vec<MappingError>> {
        let raw: RoutingFile = toml::from_str(text).map_err(|e| {
            vec![MappingError {
                file: file.to_owned(),
                line: e.span().map(|s| line_of(text, s.start)),
                message: e.message().to_owned(),
            }]
        })?;
        let mut errors = Vec::new();
        let mut err = |needle: &str, message: String| {
            errors.push(MappingError {
                file: file.to_owned(),
                line: find_line(text, needle),
                message,
            })
        };

        let mut providers = BTreeMap::new();
        for (id, entry) in &raw.providers {
            let pid = match ProviderId::parse(id) {
                Ok(p) => p,
                Err(e) => {
                    err(&format!("[providers.{id}]"), e);
                    continue;
                }
            };
            let mut identifiers = Vec::new();
            for ident in &entry.identifiers {
                match ident.split_once('|') {
                    Some((s, v)) if !s.is_empty() && !v.is_empty() => {
                        identifiers.push((s.to_owned(), v.to_owned()))
                    }
                    _ => err(
                        ident,
                        format!("providers.{id}.identifiers: `{ident}` is not `system|value`"),
                    ),
                }
            }
            providers.insert(
                pid.clone(),
                Provider {
                    id: pid,
                    name: entry.name.clone(),
                    identifiers,
                },
            );
        }

        let mut programmes = Vec::new();
        for p in &raw.programmes {
            let prefix_ok = (2..=5).contains(&p.reference_prefix.len())
                && p.reference_prefix.bytes().all(|b| b.is_ascii_uppercase());
            if !prefix_ok {
                err(
                    &format!("\"{}\"", p.reference_prefix),
                    format!(
                        "programme {}: reference_prefix must be 2 to 5 upper-case letters",
                        p.id
                    ),
                );
            }
            if p.referral_codes.is_empty() {
                err(
                    &format!("\"{}\"", p.id),
                    format!("programme {} lists no referral_codes", p.id),
                );
            }
            programmes.push(Programme {
                id: p.id.clone(),
                name: p.name.clone(),
                reference_prefix: p.reference_prefix.clone(),
                referral_codes: p.referral_codes.clone(),
            });
        }

        let mut practice_locality = HashMap::new();
        let mut assignments = HashMap::new();
        for (lid, loc) in &raw.localities {
            for practice in &loc.practices {
                match OdsCode::parse(practice) {
                    Ok(code) => {
                        if let Some(other) = practice_locality.insert(code, lid.clone()) {
                            err(
                                &format!("\"{practice}\""),
                                format!("practice {practice} is in both {other} and {lid}"),
                            );
                        }
                    }
                    Err(e) => err(
                        &format!("\"{practice}\""),
                        format!("localities.{lid}: `{practice}`: {e}"),
                    ),
                }
            }
            for (programme, provider) in &loc.providers {
                if !programmes.iter().any(|p| &p.id == programme) {
                    err(
                        &format!("[localities.{lid}]"),
                        format!("localities.{lid}.providers names unknown programme {programme}"),
                    );
                }
                match ProviderId::parse(provider) {
                    Ok(pid) if providers.contains_key(&pid) => {
                        assignments.insert((lid.clone(), programme.clone()), pid);
                    }
                    _ => err(
                        &format!("[localities.{lid}]"),
                        format!("localities.{lid}.providers routes to unknown provider {provider}"),
                    ),
                }
            }
        }

        if errors.is_empty() {
            Ok(Self {
                version: raw.version,
                providers,
                programmes,
                practice_locality,
                assignments,
            })
        } else {
            Err(errors)
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn provider(&self, id: &ProviderId) -> Option<&Provider> {
        self.providers.get(id)
    }

    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values()
    }

    pub fn programmes(&self) -> impl Iterator<Item = &Programme> {
        self.programmes.iter()
    }

    pub fn programme(&self, id: &str) -> Option<&Programme> {
        self.programmes.iter().find(|p| p.id == id)
    }

    /// The first programme whose referral codes include `code`.
    pub fn programme_for_code(&self, code: &str) -> Option<&Programme> {
        self.programmes
            .iter()
            .find(|p| p.referral_codes.iter().any(|c| c == code))
    }

    /// Every referral code any programme accepts.
    pub fn is_referral_code(&self, code: &str) -> bool {
        self.programme_for_code(code).is_some()
    }

    /// Routes a referral for `practice` with SNOMED CT referral `code`.
    pub fn route(&self, practice: &OdsCode, code: &str) -> Result<RouteDecision, RouteError> {
        let programme = self
            .programme_for_code(code)
            .ok_or_else(|| RouteError::NoProgramme(code.to_owned()))?;
        let locality = self
            .practice_locality
            .get(practice)
            .ok_or_else(|| RouteError::UnknownPractice(practice.clone()))?;
        let provider = self
            .assignments
            .get(&(locality.clone(), programme.id.clone()))
            .ok_or_else(|| RouteError::NoProvider {
                programme: programme.id.clone(),
                locality: locality.clone(),
            })?;
        Ok(RouteDecision {
            locality: locality.clone(),
            programme: programme.id.clone(),
            provider: provider.clone(),
            mapping_version: self.version.clone(),
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn find_line(text: &str, needle: &str) -> Option<usize> {
    text.find(needle).map(|at| line_of(text, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Routing {
        Routing::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings")))
            .expect("shipped routing mapping is valid")
    }

    #[test]
    fn seed_localities_route_to_the_seed_providers() {
        let r = shipped();
        let cases = [
            ("Y90010", "dudley", "bchft"),
            ("Y90020", "walsall", "bchft"),
            ("Y90030", "wolverhampton", "prospects"),
            ("Y90001", "sandwell", "prospects"),
            ("Y90040", "west-birmingham", "prospects"),
        ];
        for (ods, locality, provider) in cases {
            let d = r
                .route(&OdsCode::parse(ods).unwrap(), "1082611000000105")
                .unwrap();
            assert_eq!(d.locality, locality);
            assert_eq!(d.provider.as_str(), provider);
            assert_eq!(d.programme, "thrive-into-work");
        }
    }

    #[test]
    fn unknown_practice_and_code_are_errors() {
        let r = shipped();
        assert_eq!(
            r.route(&OdsCode::parse("A99999").unwrap(), "1082611000000105"),
            Err(RouteError::UnknownPractice(
                OdsCode::parse("A99999").unwrap()
            ))
        );
        assert!(matches!(
            r.route(&OdsCode::parse("Y90001").unwrap(), "12345"),
            Err(RouteError::NoProgramme(_))
        ));
    }

    #[test]
    fn bad_mapping_names_file_and_line() {
        let text = r#"version = "1"
[providers.bchft]
name = "B"

[[programmes]]
id = "tiw"
name = "T"
reference_prefix = "TIW"
referral_codes = ["1"]

[localities.dudley]
name = "Dudley"
practices = ["Y90010"]
providers = { tiw = "nobody" }
"#;
        let errs = Routing::parse("routing.toml", text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(11));
        assert!(errs[0].to_string().contains("unknown provider nobody"));
        assert!(errs[0].to_string().starts_with("routing.toml:11:"));
    }

    #[test]
    fn unknown_key_is_reported_with_its_line() {
        let errs = Routing::parse("routing.toml", "version = \"1\"\nprovidres = {}\n").unwrap_err();
        assert_eq!(errs[0].line, Some(2), "{}", errs[0]);
    }
}

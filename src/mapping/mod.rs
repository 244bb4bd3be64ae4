//! Minimisation: turns an accepted referral into the dataset its provider receives, as
//! declared in `mappings/datasets/<provider>.toml`. Runs after routing and before
//! delivery; delivery only ever sends a [`Minimised`] dataset.
//!
//! Deny by default: a provider receives only the fields its dataset file names, each
//! taken from one place in the referral Bundle (a source path, see `path.rs`) and passed
//! through one transform (`copy`, `pseudonym`, `category`, `year`, `age_band`,
//! `postcode_district`, `constant`, `first_of`, `date`). Code tables
//! (`mappings/tables/<id>.toml`) turn clinical codes into coarse categories.
//!
//! Every file is parsed and checked once, at load, into types that cannot hold an
//! unknown transform, a malformed path or a missing table; every problem is reported
//! with its file and line (`thrive-gateway mappings check`). Load also refuses fields
//! that would disclose what no dataset may: free-text notes, resource narrative, the
//! NHS number other than as a pseudonym, the date of birth other than as an age band
//! or year, the address other than as a postcode district, a diagnosis code other than
//! as a category.
//!
//! Applying a dataset records a [`Receipt`] (field names, transforms, key version and
//! code tables used; never values) to keep with the disclosure.

mod load;
mod path;
mod transform;

use crate::domain::ProviderId;
use crate::pseudonym::PseudonymKeys;
use fhir_sdk::time::Date;
use path::{ResourceType, SourcePath};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::{collections::BTreeMap, collections::BTreeSet, path::Path, sync::Arc};
use transform::TransformKind;

/// Makes the pseudonyms a dataset discloses, with the recipient's key.
pub trait Pseudonymise {
    /// The pseudonym of `input`, key version included (`v1:...`).
    fn pseudonym(&self, input: &str) -> String;
    /// The key version new pseudonyms are made with, recorded in the receipt.
    fn key_version(&self) -> &str;
}

impl Pseudonymise for PseudonymKeys {
    fn pseudonym(&self, input: &str) -> String {
        PseudonymKeys::pseudonym(self, input).into_string()
    }

    fn key_version(&self) -> &str {
        PseudonymKeys::key_version(self)
    }
}

/// Every provider's dataset, loaded and cross-checked against routing.
#[derive(Debug, Clone)]
pub struct Datasets {
    by_provider: BTreeMap<ProviderId, Dataset>,
}

impl Datasets {
    /// Loads mappings/datasets/*.toml and mappings/tables/*.toml from `dir` (the
    /// mappings folder) and cross-checks them against routing: every routed provider
    /// has exactly one dataset and every dataset names a routed provider.
    pub fn load(
        dir: &Path,
        routing: &crate::routing::Routing,
    ) -> Result<Datasets, Vec<crate::routing::MappingError>> {
        load::load(dir, routing).map(|by_provider| Self { by_provider })
    }

    pub fn for_provider(&self, provider: &ProviderId) -> Option<&Dataset> {
        self.by_provider.get(provider)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Dataset> {
        self.by_provider.values()
    }
}

/// One provider's dataset: the allow-list of fields it receives.
#[derive(Debug, Clone)]
pub struct Dataset {
    id: String,
    version: String,
    provider: ProviderId,
    fields: Vec<Field>,
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    required: bool,
    rule: Rule,
}

/// A field's transform with exactly the inputs it needs.
#[derive(Debug, Clone)]
enum Rule {
    Copy(SourcePath),
    Pseudonym(SourcePath),
    Category(SourcePath, Arc<CodeTable>),
    Year(SourcePath),
    AgeBand(SourcePath),
    PostcodeDistrict(SourcePath),
    Date(SourcePath),
    Constant(Value),
    FirstOf(Vec<SourcePath>),
}

impl Rule {
    fn kind(&self) -> TransformKind {
        match self {
            Self::Copy(_) => TransformKind::Copy,
            Self::Pseudonym(_) => TransformKind::Pseudonym,
            Self::Category(..) => TransformKind::Category,
            Self::Year(_) => TransformKind::Year,
            Self::AgeBand(_) => TransformKind::AgeBand,
            Self::PostcodeDistrict(_) => TransformKind::PostcodeDistrict,
            Self::Date(_) => TransformKind::Date,
            Self::Constant(_) => TransformKind::Constant,
            Self::FirstOf(_) => TransformKind::FirstOf,
        }
    }

    /// The source path(s), for error messages.
    fn describe_source(&self) -> String {
        match self {
            Self::Copy(p)
            | Self::Pseudonym(p)
            | Self::Category(p, _)
            | Self::Year(p)
            | Self::AgeBand(p)
            | Self::PostcodeDistrict(p)
            | Self::Date(p) => p.to_string(),
            Self::Constant(_) => "(constant)".to_owned(),
            Self::FirstOf(paths) => paths
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" | "),
        }
    }
}

/// A code table: code -> category, with an optional default for unlisted codes.
#[derive(Debug, Clone)]
struct CodeTable {
    id: String,
    version: String,
    default: Option<String>,
    codes: BTreeMap<String, String>,
}

impl CodeTable {
    fn lookup(&self, code: &str) -> Option<&str> {
        self.codes
            .get(code)
            .or(self.default.as_ref())
            .map(String::as_str)
    }
}

/// The dataset for one provider, and what went into it. The only thing delivery sends.
#[derive(Debug, Clone, Serialize)]
pub struct Minimised {
    pub data: Map<String, Value>,
    pub receipt: Receipt,
}

/// What was disclosed, without the values: kept with the disclosure for audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub mapping_id: String,
    pub mapping_version: String,
    /// Output fields actually sent, in dataset order.
    pub fields: Vec<ReceiptField>,
    /// The pseudonym key version, when a pseudonym was sent.
    pub key_version: Option<String>,
    /// `id@version` of each code table used.
    pub tables: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptField {
    pub name: String,
    pub transform: String,
}

/// Why a referral could not be minimised. Names the dataset, field and source path,
/// never a value from the referral.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("dataset {dataset}: required field `{field}` has no value at {path}")]
    Missing {
        dataset: String,
        field: String,
        path: String,
    },
    #[error("dataset {dataset}: required field `{field}`: the value at {path} {reason}")]
    Unusable {
        dataset: String,
        field: String,
        path: String,
        reason: &'static str,
    },
    #[error(
        "dataset {dataset}: field `{field}` is a pseudonym, but no pseudonym key is configured for this recipient"
    )]
    NoPseudonymKey { dataset: String, field: String },
}

/// Why one field produced nothing usable.
enum Problem {
    /// The value is there but not in a form the transform takes (reason, no value).
    Unusable(&'static str),
    NoKey,
}

impl Dataset {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Recorded with every disclosure, so an auditor can see which rules applied.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn provider(&self) -> &ProviderId {
        &self.provider
    }

    /// True when the dataset discloses a pseudonym, so the recipient needs keys.
    pub fn uses_pseudonyms(&self) -> bool {
        self.fields
            .iter()
            .any(|f| matches!(f.rule, Rule::Pseudonym(_)))
    }

    /// The output field names, in dataset order.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name.as_str())
    }

    /// `bundle`: the accepted referral message (FHIR JSON Bundle). `today`: fallback
    /// referral date, used for age bands when the ServiceRequest has no `authoredOn`.
    ///
    /// An optional field whose source is absent is left out. One whose value is present
    /// but unusable (a malformed postcode, an unlisted code with no table default) is
    /// left out too, with a warning naming the field: a GP record's quirk should not
    /// block a referral over a field the provider can do without. A required field
    /// either way is an error.
    pub fn apply(
        &self,
        bundle: &Value,
        pseudonyms: &dyn Pseudonymise,
        today: Date,
    ) -> Result<Minimised, MapError> {
        let referral_date = path::first_of_type(bundle, ResourceType::ServiceRequest)
            .and_then(|r| r.get("authoredOn"))
            .and_then(Value::as_str)
            .and_then(transform::date)
            .unwrap_or(today);
        let mut data = Map::new();
        let mut fields = Vec::new();
        let mut key_version = None;
        let mut tables = BTreeSet::new();
        for field in &self.fields {
            let value = match field.evaluate(bundle, pseudonyms, referral_date) {
                Ok(Some(value)) => value,
                Ok(None) if field.required => {
                    return Err(MapError::Missing {
                        dataset: self.id.clone(),
                        field: field.name.clone(),
                        path: field.rule.describe_source(),
                    });
                }
                Ok(None) => continue,
                Err(Problem::NoKey) => {
                    return Err(MapError::NoPseudonymKey {
                        dataset: self.id.clone(),
                        field: field.name.clone(),
                    });
                }
                Err(Problem::Unusable(reason)) if field.required => {
                    return Err(MapError::Unusable {
                        dataset: self.id.clone(),
                        field: field.name.clone(),
                        path: field.rule.describe_source(),
                        reason,
                    });
                }
                Err(Problem::Unusable(reason)) => {
                    tracing::warn!(
                        dataset = %self.id,
                        field = %field.name,
                        reason,
                        "optional field left out of the dataset: its value is not usable"
                    );
                    continue;
                }
            };
            match &field.rule {
                Rule::Pseudonym(_) => key_version = Some(pseudonyms.key_version().to_owned()),
                Rule::Category(_, table) => {
                    tables.insert(format!("{}@{}", table.id, table.version));
                }
                _ => {}
            }
            fields.push(ReceiptField {
                name: field.name.clone(),
                transform: field.rule.kind().as_str().to_owned(),
            });
            data.insert(field.name.clone(), value);
        }
        Ok(Minimised {
            data,
            receipt: Receipt {
                mapping_id: self.id.clone(),
                mapping_version: self.version.clone(),
                fields,
                key_version,
                tables: tables.into_iter().collect(),
            },
        })
    }
}

impl Field {
    /// This field's value for `bundle`: `None` when the source is absent.
    fn evaluate(
        &self,
        bundle: &Value,
        pseudonyms: &dyn Pseudonymise,
        referral_date: Date,
    ) -> Result<Option<Value>, Problem> {
        let text_at = |p: &SourcePath| -> Result<Option<String>, Problem> {
            match scalar(p.resolve(bundle))? {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(Problem::Unusable("is not text")),
            }
        };
        let date_at = |p: &SourcePath| -> Result<Option<Date>, Problem> {
            text_at(p)?
                .map(|s| {
                    transform::date(&s).ok_or(Problem::Unusable("is not a full date (YYYY-MM-DD)"))
                })
                .transpose()
        };
        Ok(match &self.rule {
            Rule::Constant(value) => Some(value.clone()),
            Rule::Copy(p) => scalar(p.resolve(bundle))?.cloned(),
            Rule::FirstOf(paths) => {
                let mut found = None;
                for p in paths {
                    if let Some(v) = scalar(p.resolve(bundle))? {
                        found = Some(v.clone());
                        break;
                    }
                }
                found
            }
            Rule::Pseudonym(p) => match text_at(p)? {
                None => None,
                Some(input) => {
                    // `943 476 5919` and `9434765919` are one person: one pseudonym.
                    let input: String = input.chars().filter(|c| !c.is_whitespace()).collect();
                    let pseudonym = pseudonyms.pseudonym(&input);
                    if pseudonym.is_empty() || pseudonyms.key_version().is_empty() {
                        return Err(Problem::NoKey);
                    }
                    Some(Value::String(pseudonym))
                }
            },
            Rule::Category(p, table) => match text_at(p)? {
                None => None,
                Some(code) => Some(Value::String(
                    table
                        .lookup(&code)
                        .ok_or(Problem::Unusable(
                            "is a code the table does not list, and the table has no default",
                        ))?
                        .to_owned(),
                )),
            },
            Rule::Year(p) => match text_at(p)? {
                None => None,
                Some(s) => Some(Value::from(
                    transform::year(&s).ok_or(Problem::Unusable("is not a FHIR date"))?,
                )),
            },
            Rule::Date(p) => date_at(p)?.map(|d| Value::String(d.to_string())),
            Rule::AgeBand(p) => match date_at(p)? {
                None => None,
                Some(birth) => Some(Value::from(
                    transform::age_band(birth, referral_date)
                        .ok_or(Problem::Unusable("is after the referral date"))?,
                )),
            },
            Rule::PostcodeDistrict(p) => match text_at(p)? {
                None => None,
                Some(s) => Some(Value::String(
                    transform::postcode_district(&s)
                        .ok_or(Problem::Unusable("is not a UK postcode"))?,
                )),
            },
        })
    }
}

/// A primitive value, or nothing. Empty strings count as absent (FHIR forbids them).
fn scalar(value: Option<&Value>) -> Result<Option<&Value>, Problem> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => Ok(Some(v)),
        Some(Value::Array(_) | Value::Object(_)) => Err(Problem::Unusable(
            "is a structure, not a single value: the path must end at a primitive element",
        )),
    }
}

#[cfg(test)]
mod tests;

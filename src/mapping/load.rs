//! Reading and checking the dataset and code table files (`mappings check`): every
//! problem in every file is collected, each with its file and line, before anything is
//! used.

use super::{CodeTable, Dataset, Field, Rule, path::Root, path::SourcePath};
use crate::domain::{NHS_NUMBER_SYSTEM, ProviderId};
use crate::routing::{MappingError, Routing};
use serde::Deserialize;
use serde_json::Value;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
};
use toml::Spanned;

use super::transform::TransformKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetFile {
    id: Spanned<String>,
    version: Spanned<String>,
    provider: Spanned<String>,
    fields: Spanned<Vec<FieldEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldEntry {
    name: Spanned<String>,
    transform: Spanned<String>,
    /// No default: whoever adds a field decides whether a referral without it may go.
    required: bool,
    source: Option<Spanned<String>>,
    sources: Option<Spanned<Vec<Spanned<String>>>>,
    table: Option<Spanned<String>>,
    value: Option<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    id: Spanned<String>,
    version: Spanned<String>,
    default: Option<String>,
    codes: Spanned<BTreeMap<String, String>>,
}

/// Collects problems for one file, turning byte spans into line numbers.
struct FileErrors<'a> {
    file: String,
    text: &'a str,
    errors: &'a mut Vec<MappingError>,
}

impl FileErrors<'_> {
    fn at(&mut self, span: Range<usize>, message: String) {
        self.errors.push(MappingError {
            file: self.file.clone(),
            line: Some(line_of(self.text, span.start)),
            message,
        });
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn error(file: &Path, line: Option<usize>, message: String) -> MappingError {
    MappingError {
        file: file.display().to_string(),
        line,
        message,
    }
}

pub(super) fn load(
    dir: &Path,
    routing: &Routing,
) -> Result<BTreeMap<ProviderId, Dataset>, Vec<MappingError>> {
    let mut errors = Vec::new();

    let mut tables: HashMap<String, Arc<CodeTable>> = HashMap::new();
    let mut table_files: HashMap<String, String> = HashMap::new();
    for (path, text) in toml_files(&dir.join("tables"), false, &mut errors) {
        let mut errs = FileErrors {
            file: path.display().to_string(),
            text: &text,
            errors: &mut errors,
        };
        if let Some((table, id_span)) = parse_table(&mut errs) {
            match table_files.get(&table.id) {
                Some(first) => {
                    errs.at(
                        id_span,
                        format!("table id `{}` is also declared by {first}", table.id),
                    );
                }
                None => {
                    table_files.insert(table.id.clone(), errs.file.clone());
                    tables.insert(table.id.clone(), Arc::new(table));
                }
            }
        }
    }

    let mut datasets: BTreeMap<ProviderId, Dataset> = BTreeMap::new();
    // Providers that have a dataset file, even a broken one: no "missing" error for them.
    let mut covered: HashMap<ProviderId, String> = HashMap::new();
    for (path, text) in toml_files(&dir.join("datasets"), true, &mut errors) {
        let mut errs = FileErrors {
            file: path.display().to_string(),
            text: &text,
            errors: &mut errors,
        };
        let raw = match toml::from_str::<DatasetFile>(&text) {
            Ok(raw) => raw,
            Err(e) => {
                errs.at(e.span().unwrap_or(0..0), e.message().trim().to_owned());
                // The broken file is that provider's dataset: one error, not a second
                // "provider has no dataset" for the same mistake.
                if let Some(p) = intended_provider(&text, &path) {
                    covered.entry(p).or_insert_with(|| errs.file.clone());
                }
                continue;
            }
        };
        let before = errs.errors.len();
        let provider = match ProviderId::parse(raw.provider.get_ref()) {
            Ok(p) if routing.provider(&p).is_some() => Some(p),
            Ok(p) => {
                errs.at(
                    raw.provider.span(),
                    format!("provider `{p}` is not in routing.toml"),
                );
                None
            }
            Err(e) => {
                errs.at(raw.provider.span(), e);
                None
            }
        };
        if let Some(p) = &provider {
            if let Some(first) = covered.get(p) {
                errs.at(
                    raw.provider.span(),
                    format!(
                        "provider `{p}` already has a dataset in {first}; one dataset per provider"
                    ),
                );
            } else {
                covered.insert(p.clone(), errs.file.clone());
            }
        }
        let fields = parse_fields(&raw, &tables, &mut errs);
        for (value, what) in [(&raw.id, "id"), (&raw.version, "version")] {
            if value.get_ref().trim().is_empty() {
                errs.at(value.span(), format!("dataset {what} is empty"));
            }
        }
        if errs.errors.len() == before
            && let Some(provider) = provider
        {
            datasets.insert(
                provider.clone(),
                Dataset {
                    id: raw.id.into_inner(),
                    version: raw.version.into_inner(),
                    provider,
                    fields,
                },
            );
        }
    }

    let routing_file = dir.join("routing.toml");
    let routing_text = std::fs::read_to_string(&routing_file).unwrap_or_default();
    for provider in routing.providers() {
        if !covered.contains_key(&provider.id) {
            let line = routing_text
                .find(&format!("[providers.{}]", provider.id))
                .map(|at| line_of(&routing_text, at));
            errors.push(error(
                &routing_file,
                line,
                format!(
                    "provider `{}` has no dataset: add {}",
                    provider.id,
                    dir.join("datasets")
                        .join(format!("{}.toml", provider.id))
                        .display(),
                ),
            ));
        }
    }

    if errors.is_empty() {
        Ok(datasets)
    } else {
        Err(errors)
    }
}

/// The provider a dataset file that does not parse was meant for: its `provider` key
/// if the TOML is readable at all, else the file name (`datasets/<provider>.toml`).
fn intended_provider(text: &str, path: &Path) -> Option<ProviderId> {
    let named = toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("provider")?.as_str().map(str::to_owned));
    let stem = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
    ProviderId::parse(&named.or(stem)?).ok()
}

/// The `*.toml` files in `dir`, sorted by name so reports are stable.
fn toml_files(
    dir: &Path,
    must_exist: bool,
    errors: &mut Vec<MappingError>,
) -> Vec<(PathBuf, String)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Vec::new(),
        Err(e) => {
            errors.push(error(dir, None, format!("cannot read folder: {e}")));
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| match std::fs::read_to_string(&p) {
            Ok(text) => Some((p, text)),
            Err(e) => {
                errors.push(error(&p, None, format!("cannot read: {e}")));
                None
            }
        })
        .collect()
}

fn parse_table(errs: &mut FileErrors<'_>) -> Option<(CodeTable, Range<usize>)> {
    let raw: TableFile = match toml::from_str(errs.text) {
        Ok(raw) => raw,
        Err(e) => {
            errs.at(e.span().unwrap_or(0..0), e.message().trim().to_owned());
            return None;
        }
    };
    let before = errs.errors.len();
    for (value, what) in [(&raw.id, "id"), (&raw.version, "version")] {
        if value.get_ref().trim().is_empty() {
            errs.at(value.span(), format!("table {what} is empty"));
        }
    }
    if raw.codes.get_ref().is_empty() {
        errs.at(raw.codes.span(), "[codes] lists no codes".to_owned());
    }
    let id_span = raw.id.span();
    (errs.errors.len() == before).then(|| {
        let table = CodeTable {
            id: raw.id.into_inner(),
            version: raw.version.into_inner(),
            default: raw.default,
            codes: raw.codes.into_inner(),
        };
        (table, id_span)
    })
}

fn parse_fields(
    raw: &DatasetFile,
    tables: &HashMap<String, Arc<CodeTable>>,
    errs: &mut FileErrors<'_>,
) -> Vec<Field> {
    if raw.fields.get_ref().is_empty() {
        errs.at(raw.fields.span(), "the dataset names no fields".to_owned());
    }
    let mut names = HashSet::new();
    let mut fields = Vec::new();
    for entry in raw.fields.get_ref() {
        let name = entry.name.get_ref();
        if !is_snake_case(name) {
            errs.at(
                entry.name.span(),
                format!(
                    "field name `{name}` must be snake_case (a-z, 0-9, `_`, starting with a letter)"
                ),
            );
        }
        if !names.insert(name.clone()) {
            errs.at(entry.name.span(), format!("field `{name}` is named twice"));
        }
        if let Some(rule) = parse_rule(entry, tables, errs) {
            fields.push(Field {
                name: name.clone(),
                required: entry.required,
                rule,
            });
        }
    }
    fields
}

fn parse_rule(
    entry: &FieldEntry,
    tables: &HashMap<String, Arc<CodeTable>>,
    errs: &mut FileErrors<'_>,
) -> Option<Rule> {
    let name = entry.name.get_ref();
    let Some(kind) = TransformKind::parse(entry.transform.get_ref()) else {
        let known: Vec<&str> = TransformKind::ALL.iter().map(|t| t.as_str()).collect();
        errs.at(
            entry.transform.span(),
            format!(
                "field `{name}`: unknown transform `{}`; known: {}",
                entry.transform.get_ref(),
                known.join(", ")
            ),
        );
        return None;
    };
    let before = errs.errors.len();
    let refuse = |key: &str, span: Range<usize>, errs: &mut FileErrors<'_>| {
        errs.at(
            span,
            format!("field `{name}`: transform `{kind}` takes no `{key}`"),
        );
    };
    if kind != TransformKind::Category
        && let Some(t) = &entry.table
    {
        refuse("table", t.span(), errs);
    }
    if kind != TransformKind::Constant
        && let Some(v) = &entry.value
    {
        refuse("value", v.span(), errs);
    }
    if kind != TransformKind::FirstOf
        && let Some(s) = &entry.sources
    {
        refuse("sources", s.span(), errs);
    }
    if matches!(kind, TransformKind::FirstOf | TransformKind::Constant)
        && let Some(s) = &entry.source
    {
        refuse("source", s.span(), errs);
    }

    let parse_path = |source: &Spanned<String>, errs: &mut FileErrors<'_>| match SourcePath::parse(
        source.get_ref(),
    ) {
        Ok(path) => {
            if let Some(why) = never_disclosed(kind, &path) {
                errs.at(source.span(), format!("field `{name}`: {path}: {why}"));
            }
            Some(path)
        }
        Err(e) => {
            errs.at(source.span(), format!("field `{name}`: {e}"));
            None
        }
    };
    let rule = match kind {
        TransformKind::Constant => match &entry.value {
            Some(v)
                if matches!(
                    v.get_ref(),
                    Value::String(_) | Value::Number(_) | Value::Bool(_)
                ) =>
            {
                Some(Rule::Constant(v.get_ref().clone()))
            }
            Some(v) => {
                errs.at(
                    v.span(),
                    format!("field `{name}`: a constant `value` is a string, number or boolean"),
                );
                None
            }
            None => {
                errs.at(
                    entry.transform.span(),
                    format!("field `{name}`: transform `constant` needs `value = ...`"),
                );
                None
            }
        },
        TransformKind::FirstOf => match &entry.sources {
            Some(sources) if !sources.get_ref().is_empty() => {
                let paths: Vec<Option<SourcePath>> = sources
                    .get_ref()
                    .iter()
                    .map(|s| parse_path(s, errs))
                    .collect();
                paths
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(Rule::FirstOf)
            }
            Some(sources) => {
                errs.at(
                    sources.span(),
                    format!("field `{name}`: `sources` is empty"),
                );
                None
            }
            None => {
                errs.at(
                    entry.transform.span(),
                    format!(
                        "field `{name}`: transform `first_of` needs `sources = [\"...\", ...]`"
                    ),
                );
                None
            }
        },
        _ => {
            let Some(source) = &entry.source else {
                errs.at(
                    entry.transform.span(),
                    format!("field `{name}`: transform `{kind}` needs `source = \"...\"`"),
                );
                return None;
            };
            let path = parse_path(source, errs);
            let table = if kind == TransformKind::Category {
                match &entry.table {
                    None => {
                        errs.at(
                            entry.transform.span(),
                            format!("field `{name}`: transform `category` needs `table = \"<table id>\"`"),
                        );
                        None
                    }
                    Some(t) => {
                        let found = tables.get(t.get_ref()).cloned();
                        if found.is_none() {
                            errs.at(
                                t.span(),
                                format!(
                                    "field `{name}`: no code table `{}` in mappings/tables",
                                    t.get_ref()
                                ),
                            );
                        }
                        found
                    }
                }
            } else {
                None
            };
            path.and_then(|p| {
                Some(match kind {
                    TransformKind::Copy => Rule::Copy(p),
                    TransformKind::Pseudonym => Rule::Pseudonym(p),
                    TransformKind::Category => Rule::Category(p, table?),
                    TransformKind::Year => Rule::Year(p),
                    TransformKind::AgeBand => Rule::AgeBand(p),
                    TransformKind::PostcodeDistrict => Rule::PostcodeDistrict(p),
                    TransformKind::Date => Rule::Date(p),
                    TransformKind::Constant | TransformKind::FirstOf => return None,
                })
            })
        }
    };
    if errs.errors.len() == before {
        rule
    } else {
        None
    }
}

fn is_snake_case(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Data no dataset may disclose in the form `kind` would send it, whatever its file says.
/// A backstop for review, not a substitute: deny-by-default is the main control.
fn never_disclosed(kind: TransformKind, path: &SourcePath) -> Option<&'static str> {
    use super::path::ResourceType as R;
    let elements: Vec<&str> = path.elements().collect();
    let first = elements.first().copied().unwrap_or_default();
    if elements.contains(&"note") {
        return Some("free-text notes are never disclosed");
    }
    if first == "text" {
        return Some("resource narrative is never disclosed");
    }
    let nhs_number = path.filter_values().any(|v| v == NHS_NUMBER_SYSTEM)
        || (path.root() == Root::Resource(R::Patient) && first == "identifier");
    if nhs_number && kind != TransformKind::Pseudonym {
        return Some("patient identifiers are only disclosed as a `pseudonym`");
    }
    match path.root() {
        Root::Resource(R::Patient)
            if first == "birthDate"
                && !matches!(kind, TransformKind::AgeBand | TransformKind::Year) =>
        {
            Some("the date of birth is only disclosed as an `age_band` or `year`")
        }
        Root::Resource(R::Patient)
            if first == "address" && kind != TransformKind::PostcodeDistrict =>
        {
            Some("the address is only disclosed as a `postcode_district`")
        }
        Root::Resource(R::Condition) if first == "code" && kind != TransformKind::Category => {
            Some("diagnosis codes are only disclosed as a `category`")
        }
        _ => None,
    }
}

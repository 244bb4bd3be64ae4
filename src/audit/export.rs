//! Exports of the audit trail for auditors: a FHIR R4 `Bundle` of `AuditEvent`
//! resources shaped after IHE Basic Audit Log Patterns, or a CSV with one row per
//! record. Both carry every chained field, so an export can be verified without the
//! database: the FHIR form also carries the signed checkpoints that fall in its range
//! (`thrive-gateway audit verify-export`).

use super::checkpoint::{CheckpointRow, VerifyingKeys};
use super::{Tamper, Walker};
use crate::store::{AuditFilter, AuditRow, AuditStore, StoreError};
use base64::Engine;
use fhir_sdk::time::{OffsetDateTime, format_description::well_known::Rfc3339};
use serde_json::{Value, json};

/// Extension holding the chained record exactly as stored.
pub const RECORD_EXTENSION: &str = "https://thrive-gateway.nhs.uk/StructureDefinition/audit-record";
/// Extension on a checkpoint `Provenance` holding the place and hash it signs.
pub const CHECKPOINT_EXTENSION: &str =
    "https://thrive-gateway.nhs.uk/StructureDefinition/audit-checkpoint";
/// Identifier system of the subject's audit pseudonym.
pub const SUBJECT_SYSTEM: &str = "https://thrive-gateway.nhs.uk/Id/audit-pseudonym";
/// Identifier system of the gateway's clients and recipients.
pub const PARTY_SYSTEM: &str = "https://thrive-gateway.nhs.uk/Id/party";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Fhir,
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fhir" => Ok(Format::Fhir),
            "csv" => Ok(Format::Csv),
            _ => Err("format must be fhir or csv".into()),
        }
    }
}

fn instant(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The stored record as a JSON object (every column, by its name), as exports carry it.
pub fn record_json(r: &AuditRow) -> Value {
    serde_json::to_value(r).unwrap_or_default()
}

/// Reads back what [`record_json`] wrote.
pub fn record_from_json(v: &Value) -> Option<AuditRow> {
    serde::Deserialize::deserialize(v).ok()
}

/// BALP profiles the records claim.
const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit";
/// BALP's entity types (`XrequestId`: the request's X-Request-Id).
const BALP_ENTITY_TYPES: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";

/// BALP event type, subtypes, action and the profile claimed (if any) for an action.
fn event_type(action: &str) -> (Value, Vec<Value>, &'static str, Option<String>) {
    let rest =
        |code: &str| json!({"system": "http://hl7.org/fhir/restful-interaction", "code": code});
    let rest_type = json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"});
    if action.starts_with("delivery.") {
        // A disclosure to a recipient, recorded at its source.
        return (
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110106", "display": "Export"}),
            vec![
                json!({"system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle", "code": "disclose", "display": "Disclose Record Lifecycle Event"}),
            ],
            "R",
            Some(format!("{BALP}.PrivacyDisclosure.Source")),
        );
    }
    let (sub, act, profile) = match action {
        "referral.new" | "referral.message" => ("create", "C", Some("Create")),
        "referral.cancel" | "referral.withdraw-consent" | "referral.event" => {
            ("update", "U", Some("Update"))
        }
        a if a.ends_with(".read") => ("read", "R", Some("Read")),
        a if a.starts_with("audit.") || a.starts_with("report.") => ("search", "R", None),
        _ => ("operation", "E", None),
    };
    (
        rest_type,
        vec![rest(sub)],
        act,
        profile.map(|p| format!("{BALP}.{p}")),
    )
}

fn outcome_code(outcome: &str, status: Option<i32>) -> &'static str {
    match (outcome, status) {
        (_, Some(s)) if s >= 500 => "8",
        ("rejected" | "denied" | "dead-letter", _) => "4",
        (_, Some(s)) if s >= 400 => "4",
        _ => "0",
    }
}

/// One record as a BALP-style `AuditEvent`.
pub fn audit_event(r: &AuditRow) -> Value {
    let (kind, subtypes, action, profile) = event_type(&r.action);
    // The gateway answers a caller (destination) or, delivering on its own, sends
    // (source); a caller is always the source of its request.
    let (code, display) = match r.client_id {
        Some(_) => ("110152", "Destination Role ID"),
        None => ("110153", "Source Role ID"),
    };
    let mut agents = vec![json!({
        "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": code, "display": display}]},
        "who": {"identifier": {"system": PARTY_SYSTEM, "value": "thrive-gateway"}},
        "requestor": r.client_id.is_none(),
    })];
    if let Some(client) = &r.client_id {
        let mut agent = json!({
            "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
            "who": {"identifier": {"system": PARTY_SYSTEM, "value": client}},
            "requestor": true,
            "role": [{"text": r.role.clone().unwrap_or_default()}],
        });
        if let Some(identity) = &r.actor_identity {
            agent["extension"] = json!([{"url": "https://thrive-gateway.nhs.uk/StructureDefinition/nhs-identity-headers", "valueString": identity}]);
        }
        agents.push(agent);
    }
    if let Some(recipient) = &r.recipient {
        agents.push(json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "who": {"identifier": {"system": PARTY_SYSTEM, "value": recipient}},
            "requestor": false,
        }));
    }
    let mut entities = Vec::new();
    if let Some(subject) = &r.subject {
        entities.push(json!({
            "what": {"identifier": {"system": SUBJECT_SYSTEM, "value": subject}},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    if let Some(referral) = &r.referral_id {
        entities.push(json!({
            "what": {"reference": format!("ServiceRequest/{referral}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"},
        }));
    }
    if let Some(request) = &r.request_id {
        entities.push(json!({
            "what": {"identifier": {"value": request}},
            "type": {"system": BALP_ENTITY_TYPES, "code": "XrequestId", "display": "X-Request-Id"},
        }));
    }
    let detail: Value = serde_json::from_str(&r.detail).unwrap_or(Value::Null);
    if let Some(consent) = detail.get("consent").filter(|c| !c.is_null()) {
        // The consent that authorised the disclosure (its summary: ids and codes).
        entities.push(json!({
            "what": {"display": "Consent"},
            "type": {"system": "http://hl7.org/fhir/resource-types", "code": "Consent"},
            "detail": [{"type": "consent", "valueString": consent.to_string()}],
        }));
    }
    if let Some(receipt) = detail.get("receipt").filter(|c| !c.is_null()) {
        // What was disclosed: field names and transforms, never values.
        entities.push(json!({
            "what": {"display": "minimisation receipt"},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
            "detail": [{"type": "receipt", "valueString": receipt.to_string()}],
        }));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": r.seq.unwrap_or(r.id).to_string(),
        "extension": [{"url": RECORD_EXTENSION, "valueString": record_json(r).to_string()}],
        "type": kind,
        "action": action,
        "recorded": instant(r.recorded_at),
        "outcome": outcome_code(&r.outcome, r.http_status),
        "outcomeDesc": format!("{} {}", r.action, r.outcome),
        "agent": agents,
        "source": {
            "observer": {"display": "thrive-gateway"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
    });
    if !subtypes.is_empty() {
        event["subtype"] = json!(subtypes);
    }
    if let Some(profile) = profile {
        event["meta"] = json!({"profile": [profile]});
    }
    if !entities.is_empty() {
        event["entity"] = json!(entities);
    }
    event
}

/// A checkpoint as a `Provenance` whose signature is the checkpoint JWS.
fn checkpoint_provenance(c: &CheckpointRow) -> Value {
    json!({
        "resourceType": "Provenance",
        "id": format!("checkpoint-{}", c.seq),
        "extension": [{"url": CHECKPOINT_EXTENSION, "valueString": json!({"seq": c.seq, "hash": c.hash}).to_string()}],
        "target": [{"reference": format!("AuditEvent/{}", c.seq)}],
        "recorded": instant(c.signed_at),
        "agent": [{"who": {"identifier": {"system": PARTY_SYSTEM, "value": "thrive-gateway"}}}],
        "signature": [{
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.5", "display": "Verification Signature"}],
            "when": instant(c.signed_at),
            "who": {"identifier": {"system": PARTY_SYSTEM, "value": "thrive-gateway"}},
            "sigFormat": "application/jose",
            "data": base64::engine::general_purpose::STANDARD.encode(c.signature.as_bytes()),
            "extension": [{"url": "https://thrive-gateway.nhs.uk/StructureDefinition/key-id", "valueString": c.key_id}],
        }],
    })
}

/// CSV column names, in order.
pub const CSV_COLUMNS: [&str; 19] = [
    "seq",
    "id",
    "recorded_at",
    "action",
    "outcome",
    "http_status",
    "client_id",
    "role",
    "actor_identity",
    "referral_id",
    "subject",
    "recipient",
    "request_id",
    "correlation_id",
    "mapping_version",
    "key_version",
    "detail",
    "prev_hash",
    "hash",
];

/// A record's CSV fields, in [`CSV_COLUMNS`] order, taken by name from its JSON.
fn csv_row(r: &AuditRow) -> [String; 19] {
    let v = record_json(r);
    CSV_COLUMNS.map(|column| match &v[column] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// CSV lines for `rows`, with the header row first when `header` is set.
fn csv_lines(rows: &[AuditRow], header: bool) -> Result<Vec<u8>, StoreError> {
    let corrupt = |e: csv::Error| StoreError::Corrupt(format!("CSV export: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    if header {
        w.write_record(CSV_COLUMNS).map_err(corrupt)?;
    }
    for r in rows {
        w.write_record(csv_row(r)).map_err(corrupt)?;
    }
    w.into_inner()
        .map_err(|e| StoreError::Corrupt(format!("CSV export: {e}")))
}

/// How many chain records are read and written at a time: an export's memory is one
/// page, whatever its range.
const EXPORT_PAGE: i64 = 1_000;

/// What an export covers, settled before its first byte is written: the stretch of the
/// chain from the first record in the time range to the last, run on to the first
/// signed checkpoint at or after that (so the export verifies on its own, signature
/// included), and the checkpoints inside it.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    /// `first..=last` chain positions; `None` when no record falls in the range.
    span: Option<(i64, i64)>,
    checkpoints: Vec<CheckpointRow>,
    format: Format,
}

impl ExportPlan {
    /// Finds the stretch for `[from, to)`. With a `signer`, the chain head is signed
    /// first, so there always is a checkpoint to run on to. The range is read a page at
    /// a time, keeping only its ends.
    pub async fn new(
        store: &dyn AuditStore,
        signer: Option<&super::checkpoint::Signer>,
        from: OffsetDateTime,
        to: OffsetDateTime,
        format: Format,
    ) -> Result<Self, StoreError> {
        if let Some(signer) = signer {
            signer.checkpoint(store).await.map_err(|e| match e {
                super::checkpoint::CheckpointError::Store(e) => e,
                other => StoreError::Corrupt(other.to_string()),
            })?;
        }
        let filter = AuditFilter {
            from: Some(from),
            to: Some(to),
            ..AuditFilter::default()
        };
        let mut ends: Option<(i64, i64)> = None;
        let mut after = 0;
        loop {
            let page = store.audit_query(&filter, after, EXPORT_PAGE).await?;
            let (Some(first), Some(last)) = (
                page.first().and_then(|r| r.seq),
                page.last().and_then(|r| r.seq),
            ) else {
                break;
            };
            ends = Some((ends.map_or(first, |(f, _)| f), last));
            after = last;
        }
        let all = store.audit_checkpoints().await?;
        let span = ends.map(|(first, last)| {
            let last = all
                .iter()
                .map(|c| c.seq)
                .find(|seq| *seq >= last)
                .unwrap_or(last);
            (first, last)
        });
        let checkpoints = match span {
            Some((first, last)) => all
                .into_iter()
                .filter(|c| (first..=last).contains(&c.seq))
                .collect(),
            None => Vec::new(),
        };
        Ok(Self {
            span,
            checkpoints,
            format,
        })
    }

    /// How many records the export holds.
    pub fn records(&self) -> u64 {
        self.span.map_or(0, |(first, last)| {
            u64::try_from(last.saturating_sub(first).saturating_add(1)).unwrap_or(0)
        })
    }

    /// The export's MIME type.
    pub fn content_type(&self) -> &'static str {
        match self.format {
            Format::Fhir => "application/fhir+json",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    /// The export as a stream of chunks, one page of records each: a FHIR
    /// `collection` Bundle of AuditEvents in chain order followed by the checkpoints
    /// inside it, or a CSV with a header row and one row per record.
    pub fn stream(
        self,
        store: std::sync::Arc<dyn AuditStore>,
    ) -> impl futures_util::Stream<Item = Result<Vec<u8>, StoreError>> + 'static {
        enum Step {
            Head,
            Page(i64),
            Tail,
            Done,
        }
        let plan = std::sync::Arc::new(self);
        futures_util::stream::unfold(Step::Head, move |step| {
            let store = store.clone();
            let plan = plan.clone();
            async move {
                let (chunk, next) = match step {
                    Step::Done => return None,
                    Step::Head => {
                        let next = match plan.span {
                            Some((first, _)) => Step::Page(first.saturating_sub(1)),
                            None => Step::Tail,
                        };
                        (Ok(plan.head()), next)
                    }
                    Step::Tail => (Ok(plan.tail()), Step::Done),
                    Step::Page(after) => match plan.page(store.as_ref(), after).await {
                        Ok((chunk, Some(end))) => (Ok(chunk), Step::Page(end)),
                        Ok((chunk, None)) => (Ok(chunk), Step::Tail),
                        // Nothing more after a failure: the answer is cut short.
                        Err(e) => (Err(e), Step::Done),
                    },
                };
                Some((chunk, next))
            }
        })
    }

    fn head(&self) -> Vec<u8> {
        match self.format {
            Format::Fhir => {
                let head = json!({
                    "resourceType": "Bundle",
                    "id": uuid::Uuid::new_v4().to_string(),
                    "type": "collection",
                    "timestamp": instant(OffsetDateTime::now_utc()),
                })
                .to_string();
                // Reopen the object for the entries; FHIR allows no empty arrays
                // (ele-1), so an empty range has no `entry`.
                let mut out = head.trim_end_matches('}').to_owned();
                if self.span.is_some() {
                    out.push_str(",\"entry\":[");
                }
                out.into_bytes()
            }
            Format::Csv => csv_lines(&[], true).unwrap_or_default(),
        }
    }

    /// The page after `after`, and where the next one starts (`None` at the end).
    async fn page(
        &self,
        store: &dyn AuditStore,
        after: i64,
    ) -> Result<(Vec<u8>, Option<i64>), StoreError> {
        let Some((first, last)) = self.span else {
            return Ok((Vec::new(), None));
        };
        let want = last.saturating_sub(after).clamp(0, EXPORT_PAGE);
        let rows: Vec<AuditRow> = store
            .audit_chain(after, want)
            .await?
            .into_iter()
            .filter(|r| r.seq.is_some_and(|s| s <= last))
            .collect();
        let end = rows.last().and_then(|r| r.seq);
        let next = end.filter(|end| *end < last);
        let chunk = match self.format {
            Format::Csv => csv_lines(&rows, false)?,
            Format::Fhir => {
                let mut out = Vec::new();
                for r in &rows {
                    if r.seq != Some(first) {
                        out.push(b',');
                    }
                    let entry = json!({"fullUrl": crate::fhir::full_url("AuditEvent", &r.seq.unwrap_or(r.id).to_string()), "resource": audit_event(r)});
                    serde_json::to_writer(&mut out, &entry)
                        .map_err(|e| StoreError::Corrupt(format!("FHIR export: {e}")))?;
                }
                out
            }
        };
        Ok((chunk, next))
    }

    fn tail(&self) -> Vec<u8> {
        match self.format {
            Format::Csv => Vec::new(),
            Format::Fhir => {
                let mut out = String::new();
                for c in &self.checkpoints {
                    out.push(',');
                    out.push_str(&json!({"fullUrl": crate::fhir::full_url("Provenance", &format!("checkpoint-{}", c.seq)), "resource": checkpoint_provenance(c)}).to_string());
                }
                if self.span.is_some() {
                    out.push(']');
                }
                out.push('}');
                out.into_bytes()
            }
        }
    }
}

/// What checking an exported FHIR Bundle found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportVerification {
    pub records: u64,
    /// Records up to the last valid checkpoint: proven to be as the gateway wrote them.
    pub covered: u64,
    pub checkpoints: u64,
    pub problem: Option<Tamper>,
}

/// Checks an exported Bundle without the database: every record's hash, every link
/// inside the range, and every checkpoint's signature against `keys`.
pub fn verify_bundle(bundle: &Value, keys: &VerifyingKeys) -> Result<ExportVerification, String> {
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "collection" {
        return Err("the file is not an exported Bundle".into());
    }
    // An empty range is exported without `entry` (FHIR allows no empty arrays).
    let entries = match &bundle["entry"] {
        Value::Null => &Vec::new(),
        other => other
            .as_array()
            .ok_or("the file is not an exported Bundle")?,
    };
    let mut rows = Vec::new();
    let mut checkpoints = Vec::new();
    for (n, e) in entries.iter().enumerate() {
        let resource = &e["resource"];
        let ext = resource["extension"]
            .as_array()
            .and_then(|x| x.first())
            .and_then(|x| x["valueString"].as_str())
            .ok_or_else(|| format!("entry {n} carries no audit record or checkpoint"))?;
        let inner: Value =
            serde_json::from_str(ext).map_err(|_| format!("entry {n}: unreadable"))?;
        match resource["resourceType"].as_str() {
            Some("AuditEvent") => {
                let row = record_from_json(&inner)
                    .ok_or_else(|| format!("entry {n}: unreadable record"))?;
                // What the auditor reads must be what the record says.
                if audit_event(&row) != *resource {
                    return Ok(ExportVerification {
                        records: 0,
                        covered: 0,
                        checkpoints: 0,
                        problem: Some(Tamper::Changed {
                            seq: row.seq.unwrap_or(row.id),
                        }),
                    });
                }
                rows.push(row)
            }
            Some("Provenance") => {
                let jws = resource["signature"][0]["data"]
                    .as_str()
                    .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                    .and_then(|d| String::from_utf8(d).ok())
                    .ok_or_else(|| format!("entry {n}: unreadable signature"))?;
                checkpoints.push(CheckpointRow {
                    seq: inner["seq"]
                        .as_i64()
                        .ok_or_else(|| format!("entry {n}: no seq"))?,
                    hash: inner["hash"].as_str().unwrap_or_default().to_owned(),
                    signed_at: OffsetDateTime::now_utc(),
                    key_id: resource["signature"][0]["extension"][0]["valueString"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    signature: jws,
                });
            }
            _ => {
                return Err(format!(
                    "entry {n} is neither an AuditEvent nor a checkpoint"
                ));
            }
        }
    }
    let mut result = ExportVerification {
        records: 0,
        covered: 0,
        checkpoints: 0,
        problem: None,
    };
    let Some(first) = rows.first() else {
        return Ok(result);
    };
    let mut walker = Walker::new(
        first.seq.unwrap_or(0),
        first.prev_hash.as_deref().unwrap_or_default(),
    );
    let hashes: std::collections::HashMap<&str, i64> = rows
        .iter()
        .filter_map(|r| Some((r.hash.as_deref()?, r.seq?)))
        .collect();
    for row in &rows {
        if let Err(p) = walker.step(row, |h| hashes.get(h).copied()) {
            result.records = walker.records;
            result.problem = Some(p);
            return Ok(result);
        }
    }
    result.records = walker.records;
    for c in &checkpoints {
        if let Err(why) = keys.verify(c) {
            result.problem = Some(Tamper::Checkpoint { seq: c.seq, why });
            return Ok(result);
        }
        match rows.iter().find(|r| r.seq == Some(c.seq)) {
            Some(r) if r.hash.as_deref() == Some(&c.hash) => {
                result.checkpoints += 1;
                let covered = rows.iter().filter(|r| r.seq <= Some(c.seq)).count() as u64;
                result.covered = result.covered.max(covered);
            }
            _ => {
                result.problem = Some(Tamper::Checkpoint {
                    seq: c.seq,
                    why: "the export does not hold the record this checkpoint signed".into(),
                });
                return Ok(result);
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CSV header is every column of the record, each once.
    #[test]
    fn the_csv_header_is_the_records_columns() {
        let mut csv: Vec<String> = CSV_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
        let mut fields = crate::audit_record::row_columns();
        csv.sort_unstable();
        fields.sort_unstable();
        assert_eq!(csv, fields);
    }
}

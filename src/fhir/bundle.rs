//! References inside a Bundle, resolved as FHIR resolves them (R4 Bundle, "Resolving
//! references in Bundles"): a `#id` is a resource contained in the one that refers to
//! it; an absolute reference (`urn:uuid:`, `https://…`) matches an entry's `fullUrl`; a
//! relative `Type/id` is made absolute against the base of the referring entry's
//! `fullUrl` and matched the same way, or, where that finds nothing, matches the one
//! entry of that type and id. A version (`/_history/n`) is ignored.
//!
//! Validation and the dataset mappings both read references through here, so what a
//! mapping finds is what validation checked.

use serde_json::Value;
use std::collections::HashMap;

/// A resource in the Bundle: an entry's resource, or one contained in it. Entries come
/// first, so the `n`th entry's resource is `Node(n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node(pub usize);

struct Item<'a> {
    resource: &'a Value,
    resource_type: &'a str,
    /// The entry this resource is, or is contained in.
    entry: usize,
    /// The position in the entry's `contained`, for a contained resource.
    contained_at: Option<usize>,
}

/// An index of a Bundle's resources for resolving references.
pub struct BundleIndex<'a> {
    items: Vec<Item<'a>>,
    /// The RESTful base of each entry's `fullUrl` (`https://host/fhir` of
    /// `https://host/fhir/Patient/1`), where it has one.
    bases: Vec<Option<&'a str>>,
    full_urls: Vec<Option<&'a str>>,
    by_full_url: HashMap<&'a str, usize>,
    /// `None` when two entries share a type and id: such a reference is ambiguous.
    by_type_id: HashMap<(&'a str, &'a str), Option<usize>>,
    contained: HashMap<(usize, &'a str), usize>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `urn:…` or `scheme://…`.
fn is_absolute(reference: &str) -> bool {
    reference.starts_with("urn:") || reference.contains("://")
}

/// A reference without its `/_history/n` version.
pub fn unversioned(reference: &str) -> &str {
    match reference.find("/_history/") {
        Some(at) => &reference[..at],
        None => reference,
    }
}

/// The base of a RESTful URL `base/Type/id`.
fn restful_base(full_url: &str) -> Option<&str> {
    if !(full_url.starts_with("https://") || full_url.starts_with("http://")) {
        return None;
    }
    let mut parts = unversioned(full_url).rsplitn(3, '/');
    let _id = parts.next().filter(|id| !id.is_empty())?;
    let rt = parts.next()?;
    let base = parts.next()?;
    rt.starts_with(|c: char| c.is_ascii_uppercase())
        .then_some(base)
        .filter(|b| b.contains("://"))
}

impl<'a> BundleIndex<'a> {
    /// Indexes the entries of `bundle` (a JSON Bundle); entries without a resource
    /// object are kept as positions that resolve to nothing.
    pub fn new(bundle: &'a Value) -> Self {
        static EMPTY: Value = Value::Null;
        let entries: &[Value] = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut index = Self {
            items: Vec::with_capacity(entries.len()),
            bases: Vec::with_capacity(entries.len()),
            full_urls: Vec::with_capacity(entries.len()),
            by_full_url: HashMap::new(),
            by_type_id: HashMap::new(),
            contained: HashMap::new(),
        };
        for (i, entry) in entries.iter().enumerate() {
            let resource = entry.get("resource").filter(|r| r.is_object());
            let resource_type = resource
                .and_then(|r| str_at(r, "resourceType"))
                .unwrap_or_default();
            index.items.push(Item {
                resource: resource.unwrap_or(&EMPTY),
                resource_type,
                entry: i,
                contained_at: None,
            });
            let full_url = str_at(entry, "fullUrl").filter(|u| !u.is_empty());
            index.full_urls.push(full_url);
            index.bases.push(full_url.and_then(restful_base));
            if let Some(url) = full_url {
                index.by_full_url.entry(url).or_insert(i);
            }
            if let Some(id) = resource.and_then(|r| str_at(r, "id")) {
                index
                    .by_type_id
                    .entry((resource_type, id))
                    .and_modify(|found| *found = None)
                    .or_insert(Some(i));
            }
        }
        for i in 0..entries.len() {
            let contained = index
                .items
                .get(i)
                .and_then(|item| item.resource.get("contained"));
            for (k, c) in contained
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let node = index.items.len();
                index.items.push(Item {
                    resource: c,
                    resource_type: str_at(c, "resourceType").unwrap_or_default(),
                    entry: i,
                    contained_at: Some(k),
                });
                if let Some(id) = str_at(c, "id") {
                    index.contained.entry((i, id)).or_insert(node);
                }
            }
        }
        index
    }

    /// How many entries the Bundle has (contained resources not counted).
    pub fn entries(&self) -> usize {
        self.bases.len()
    }

    /// Every resource: entries in order, then contained ones.
    pub fn nodes(&self) -> impl Iterator<Item = Node> + '_ {
        (0..self.items.len()).map(Node)
    }

    /// The resource (`null` for a position that holds none).
    pub fn resource(&self, n: Node) -> &'a Value {
        static NONE: Value = Value::Null;
        self.items.get(n.0).map_or(&NONE, |i| i.resource)
    }

    /// The resource's type (empty for a position that holds none).
    pub fn resource_type(&self, n: Node) -> &'a str {
        self.items.get(n.0).map_or("", |i| i.resource_type)
    }

    /// The entry's `fullUrl`, for entries.
    pub fn full_url(&self, n: Node) -> Option<&'a str> {
        self.full_urls.get(n.0).copied().flatten()
    }

    /// The FHIRPath of a resource: `Bundle.entry[2].resource` or
    /// `Bundle.entry[2].resource.contained[0]`.
    pub fn path(&self, n: Node) -> String {
        match self.items.get(n.0) {
            Some(Item {
                entry,
                contained_at: Some(k),
                ..
            }) => format!("Bundle.entry[{entry}].resource.contained[{k}]"),
            Some(Item { entry, .. }) => format!("Bundle.entry[{entry}].resource"),
            None => format!("Bundle.entry[{}].resource", n.0),
        }
    }

    /// The resource a literal reference made in `from` points at.
    pub fn resolve(&self, from: Node, reference: &str) -> Option<Node> {
        let entry = self.items.get(from.0)?.entry;
        if let Some(local) = reference.strip_prefix('#') {
            return if local.is_empty() {
                Some(Node(entry))
            } else {
                self.contained.get(&(entry, local)).copied().map(Node)
            };
        }
        let reference = unversioned(reference);
        if is_absolute(reference) {
            return self.by_full_url.get(reference).copied().map(Node);
        }
        let (rt, id) = reference.split_once('/')?;
        if rt.is_empty() || id.is_empty() || id.contains('/') {
            return None;
        }
        if let Some(base) = self.bases.get(entry).copied().flatten()
            && let Some(i) = self.by_full_url.get(format!("{base}/{reference}").as_str())
        {
            return Some(Node(*i));
        }
        self.by_type_id.get(&(rt, id)).copied().flatten().map(Node)
    }

    /// Resolves the `reference` element of the Reference at `key` in `from`'s resource.
    pub fn follow(&self, from: Node, key: &str) -> Option<Node> {
        let reference = self.resource(from).get(key)?.get("reference")?.as_str()?;
        self.resolve(from, reference)
    }

    /// The resources that may name the requesting GP practice, most telling first:
    /// from the ServiceRequest's requester (a PractitionerRole's organization; for a
    /// Practitioner, the organization of a PractitionerRole in the Bundle for that
    /// Practitioner; an Organization itself), then the MessageHeader's sender. Only
    /// Organizations are returned.
    pub fn practice_candidates(&self, service_request: Node) -> Vec<Node> {
        let mut out = Vec::new();
        if let Some(requester) = self.follow(service_request, "requester") {
            match self.resource_type(requester) {
                "Organization" => out.push(requester),
                "PractitionerRole" => out.extend(self.follow(requester, "organization")),
                "Practitioner" => out.extend(
                    self.nodes()
                        .filter(|&r| self.resource_type(r) == "PractitionerRole")
                        .filter(|&r| self.follow(r, "practitioner") == Some(requester))
                        .filter_map(|r| self.follow(r, "organization")),
                ),
                _ => {}
            }
        }
        if self.resource_type(Node(0)) == "MessageHeader" {
            out.extend(self.follow(Node(0), "sender"));
        }
        out.retain(|&n| self.resource_type(n) == "Organization");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle() -> Value {
        json!({"resourceType": "Bundle", "type": "message", "entry": [
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
             "resource": {"resourceType": "MessageHeader", "id": "h",
                          "sender": {"reference": "Organization/org"}}},
            {"fullUrl": "https://gp.example/fhir/ServiceRequest/sr",
             "resource": {"resourceType": "ServiceRequest", "id": "sr",
                          "subject": {"reference": "Patient/p/_history/3"},
                          "requester": {"reference": "#pr"},
                          "contained": [{"resourceType": "Practitioner", "id": "pr"}]}},
            {"fullUrl": "https://gp.example/fhir/Patient/p",
             "resource": {"resourceType": "Patient", "id": "p"}},
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000004",
             "resource": {"resourceType": "Organization", "id": "org"}},
            {"fullUrl": "https://other.example/fhir/Patient/p",
             "resource": {"resourceType": "Patient", "id": "p"}},
        ]})
    }

    #[test]
    fn references_resolve_as_fhir_says() {
        let b = bundle();
        let ix = BundleIndex::new(&b);
        let sr = Node(1);
        // Relative and versioned, against the entry's own base (not the other Patient/p).
        assert_eq!(ix.resolve(sr, "Patient/p/_history/3"), Some(Node(2)));
        assert_eq!(
            ix.resolve(sr, "https://other.example/fhir/Patient/p"),
            Some(Node(4))
        );
        // Contained, and `#` for the container itself.
        assert_eq!(
            ix.resource_type(ix.resolve(sr, "#pr").unwrap()),
            "Practitioner"
        );
        assert_eq!(ix.resolve(sr, "#"), Some(sr));
        assert_eq!(
            ix.path(ix.resolve(sr, "#pr").unwrap()),
            "Bundle.entry[1].resource.contained[0]"
        );
        // From a urn entry, Type/id matches the one entry of that type and id.
        assert_eq!(ix.resolve(Node(0), "Organization/org"), Some(Node(3)));
        // Ambiguous without a base: two Patient/p.
        assert_eq!(ix.resolve(Node(0), "Patient/p"), None);
        assert_eq!(ix.resolve(sr, "urn:uuid:nothing"), None);
        assert_eq!(ix.resolve(sr, "https://gp.example/fhir/Encounter/e"), None);
    }

    #[test]
    fn practice_falls_back_to_the_sender() {
        let b = bundle();
        let ix = BundleIndex::new(&b);
        // The requester is a Practitioner with no PractitionerRole: the sender is next.
        assert_eq!(ix.practice_candidates(Node(1)), vec![Node(3)]);
    }
}

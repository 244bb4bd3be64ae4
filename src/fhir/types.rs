//! FHIR R4 resource types: which are R4 at all, and which the gateway reads.

/// Resource types a referral message may carry that the gateway reads (routing,
/// consent, the dataset mappings). Entries of any other type are checked and dropped.
pub const USED: [&str; 11] = [
    "MessageHeader",
    "ServiceRequest",
    "Patient",
    "PractitionerRole",
    "Practitioner",
    "Organization",
    "Consent",
    "Condition",
    "QuestionnaireResponse",
    "Flag",
    "Observation",
];

/// Whether the gateway reads entries of this type.
pub fn is_used(resource_type: &str) -> bool {
    USED.contains(&resource_type)
}

/// R4 (4.0.1) resource types that the R4B models the gateway validates with do not
/// have, or have in another shape; they are checked for shape only.
pub const R4_ONLY: [&str; 20] = [
    "EffectEvidenceSynthesis",
    "Evidence",
    "EvidenceVariable",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "RiskEvidenceSynthesis",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
];

/// Types that came with R4B or later and are not R4 resources.
pub const NOT_R4: [&str; 13] = [
    "AdministrableProductDefinition",
    "Citation",
    "ClinicalUseDefinition",
    "EvidenceReport",
    "Ingredient",
    "ManufacturedItemDefinition",
    "MedicinalProductDefinition",
    "NutritionProduct",
    "PackagedProductDefinition",
    "RegulatedAuthorization",
    "SubscriptionStatus",
    "SubscriptionTopic",
    "SubstanceDefinition",
];

/// How the gateway can check a resource of this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An R4 type with a model: every element is checked against it.
    Modelled,
    /// An R4 type without a model here: checked for shape only.
    ShapeOnly,
    /// Not an R4 resource type.
    Unknown,
}

pub fn kind(resource_type: &str) -> Kind {
    use fhir_sdk::r4b::resources::ResourceType;
    if NOT_R4.contains(&resource_type) {
        Kind::Unknown
    } else if R4_ONLY.contains(&resource_type) {
        Kind::ShapeOnly
    } else if resource_type.parse::<ResourceType>().is_ok() {
        Kind::Modelled
    } else {
        Kind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_sorted_into_r4_and_not() {
        assert_eq!(kind("Encounter"), Kind::Modelled);
        assert_eq!(kind("MedicationStatement"), Kind::Modelled);
        assert_eq!(kind("MedicinalProduct"), Kind::ShapeOnly);
        assert_eq!(kind("SubscriptionTopic"), Kind::Unknown);
        assert_eq!(kind("Spaceship"), Kind::Unknown);
        assert!(is_used("Consent") && !is_used("Encounter"));
    }
}

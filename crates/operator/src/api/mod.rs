//! The custom resources (group `redeliver.dev`, version `v1alpha1`): the declarations users
//! write and the status Redeliver reports.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

mod assignment;
mod common;
mod connection;
mod guard;
mod resource;
mod safety;
mod shared;

pub use assignment::{
    AccessPackageAssignment, AccessPackageAssignmentSpec, AccessPackageAssignmentStatus, ActorKind,
    DeletionPolicy, MAX_ATTEMPTS_LIMIT, MIN_COOLDOWN, MIN_VERIFY_INTERVAL, Removal, ReprocessMode,
    ReprocessOutcome, ReprocessPolicy, ReprocessStatus, ResourceState, ResourceStatus,
    assignment_spec_problems, validate_assignment_spec,
};
pub use common::{
    AccessPackageSelector, DURATION_PATTERN, DurationError, GUID_PATTERN, PolicySelector,
    SpecError, TargetSelector, format_duration, parse_duration, parse_duration_arg,
};
pub use connection::{
    ClusterGraphConnection, ClusterGraphConnectionSpec, ConnectionCredential, ConnectionKey,
    ConnectionKind, ConnectionRef, ConnectionSettings, DEFAULT_CONNECTION_NAME, DEFAULT_SECRET_KEY,
    GraphConnection, GraphConnectionSpec, GraphConnectionStatus, SecretKeySelector,
    WorkloadIdentity, validate_connection_settings,
};
pub use guard::{
    AccessPackageGuard, AccessPackageGuardSpec, AccessPackageGuardStatus, AssignmentCounts,
    DriftedAssignment, GuardMode, MAX_DRIFTED_LISTED, MAX_UNMANAGED_SAMPLE, MIN_GUARD_INTERVAL,
    UnmanagedMembers, guard_spec_problems, validate_guard_spec,
};
pub use resource::{OriginSystem, RoleKind, RoleMode};
pub use safety::{
    MASS_DRIFT_ACK_ANNOTATION, MassDriftSpec, MassDriftStatus, RespectedActors, SafetySpec,
    UnattributedRule,
};
pub use shared::{SharedStr, interned_len};

/// API group of both kinds.
pub const GROUP: &str = "redeliver.dev";
/// The kind of a declared assignment, as metrics, logs and events name it.
pub const ASSIGNMENT_KIND: &str = "AccessPackageAssignment";
/// The kind of a guard, as metrics, logs and events name it.
pub const GUARD_KIND: &str = "AccessPackageGuard";
/// API version of both kinds.
pub const VERSION: &str = "v1alpha1";
/// Annotation whose new value requests one reprocess (the GitOps *Reprocess* button).
pub const REPROCESS_ANNOTATION: &str = "redeliver.dev/reprocess-requested-at";
/// Finalizer added only when `deletionPolicy: Remove` needs work on delete.
pub const FINALIZER: &str = "redeliver.dev/remove-assignment";

/// Both CRDs, assignment first, with every description's paragraphs on one line each.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        join_description_lines(AccessPackageAssignment::crd()),
        join_description_lines(AccessPackageGuard::crd()),
        join_description_lines(GraphConnection::crd()),
        join_description_lines(ClusterGraphConnection::crd()),
    ]
}

/// Doc comments are wrapped at 100 columns; `kubectl explain` wraps descriptions itself, so
/// kept line breaks would break sentences mid-line. Lines of a paragraph are joined with a
/// space; blank lines stay paragraph breaks.
fn join_description_lines(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    match v {
                        serde_json::Value::String(text) if k == "description" => {
                            *text = join_paragraph_lines(text);
                        }
                        _ => walk(v),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// `"a\nb\n\nc"` → `"a b\n\nc"`.
fn join_paragraph_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|p| {
            p.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// One CRD as a YAML document (deterministic: every map in the CRD type is ordered).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    // Serializing a CRD built from derived types cannot fail: no non-string keys, no
    // unrepresentable floats.
    serde_norway::to_string(crd).unwrap_or_else(|e| format!("# failed to render CRD: {e}\n"))
}

/// Both CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(crd_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The file name a CRD is committed under: `<plural>.redeliver.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.{GROUP}.yaml", crd.spec.names.plural)
}

/// Writes each CRD to `dir/<plural>.redeliver.dev.yaml`, creating `dir` if needed.
pub fn write_crds(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for crd in crds() {
        std::fs::write(dir.join(crd_file_name(&crd)), crd_yaml(&crd))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn descriptions_keep_paragraphs_but_not_line_breaks() {
        assert_eq!(join_paragraph_lines("a\nb\n\nc\n d"), "a b\n\nc d");
        fn all(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        if let (true, Value::String(s)) = (k == "description", v) {
                            out.push(s.clone());
                        } else {
                            all(v, out);
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| all(v, out)),
                _ => {}
            }
        }
        let mut texts = Vec::new();
        for crd in crds() {
            all(&serde_json::to_value(&crd).unwrap(), &mut texts);
        }
        assert!(texts.len() > 40, "{}", texts.len());
        for t in texts {
            assert!(!t.replace("\n\n", "").contains('\n'), "{t:?}");
        }
    }

    fn schema_of(crd: &CustomResourceDefinition) -> Value {
        let v = serde_json::to_value(crd).unwrap();
        v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    #[test]
    fn names_and_scope() {
        let crd = AccessPackageAssignment::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("accesspackageassignments.redeliver.dev")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["apa".to_string()]));
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["redeliver".to_string()])
        );
        let guard = AccessPackageGuard::crd();
        assert_eq!(guard.spec.names.short_names, Some(vec!["apg".to_string()]));
        assert_eq!(
            crd_file_name(&guard),
            "accesspackageguards.redeliver.dev.yaml"
        );
    }

    #[test]
    fn schema_carries_cel_rules_patterns_and_list_map() {
        let s = schema_of(&AccessPackageAssignment::crd());
        let spec = &s["properties"]["spec"];
        let target_rules = spec["properties"]["target"]["x-kubernetes-validations"].to_string();
        assert!(target_rules.contains("has(self.objectId) != has(self.userPrincipalName)"));
        let pkg = &spec["properties"]["accessPackage"];
        assert!(
            pkg["x-kubernetes-validations"]
                .to_string()
                .contains("has(self.id)")
        );
        assert_eq!(pkg["properties"]["id"]["pattern"], GUID_PATTERN);
        let mode = &spec["properties"]["reprocess"]["properties"]["mode"];
        assert_eq!(
            mode["enum"],
            serde_json::json!(["Auto", "Manual", "Disabled"])
        );
        assert_eq!(mode["default"], "Auto");
        let attempts = &spec["properties"]["reprocess"]["properties"]["maxAttempts"];
        assert_eq!(attempts["minimum"].as_f64(), Some(1.0));
        // No default: the operator's --verify-interval applies to objects that set none.
        assert!(
            spec["properties"]["verifyInterval"]
                .get("default")
                .is_none()
        );
        let conditions = &s["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        assert!(
            spec["properties"]["verifyInterval"]["x-kubernetes-validations"]
                .to_string()
                .contains("duration(self)")
        );
    }

    #[test]
    fn printer_columns() {
        let crd = AccessPackageAssignment::crd();
        let cols = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Package",
                "Target",
                "Graph",
                "Delivered",
                "Resources",
                "Reprocess",
                "Age",
                "Reason",
                "Message"
            ]
        );
        assert_eq!(cols[7].priority, Some(1));
        assert!(cols[3].json_path.contains("Delivered"));
    }

    #[test]
    fn yaml_is_deterministic_and_one_document_per_kind() {
        let a = crds_yaml();
        assert_eq!(a, crds_yaml());
        // AccessPackageAssignment, AccessPackageGuard, GraphConnection, ClusterGraphConnection.
        assert_eq!(
            a.matches("\n---\n").count() + usize::from(a.starts_with("---\n")),
            3
        );
        assert!(a.contains("kind: CustomResourceDefinition"));
    }
}

//! Property tests over declarations: any spec either validates or yields a `SpecError`
//! naming a `spec.*` field, never a panic; the YAML loader turns any text into declarations
//! or located errors; durations and GUIDs are parsed strictly.

use std::path::Path;

use proptest::prelude::*;
use redeliver::api::{
    AccessPackageAssignmentSpec, AccessPackageGuardSpec, parse_duration, validate_assignment_spec,
    validate_guard_spec,
};
use serde_json::{Value, json};

const FIELDS: [&str; 11] = [
    "spec.accessPackage",
    "spec.accessPackage.id",
    "spec.accessPackage.displayName",
    "spec.accessPackage.catalog",
    "spec.assignmentPolicy",
    "spec.assignmentPolicy.id",
    "spec.target",
    "spec.target.objectId",
    "spec.target.userPrincipalName",
    "spec.reprocess.maxAttempts",
    "spec.reprocess.cooldown",
];

/// Strings a user might plausibly (or hostilely) write in a field.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("9f1c0c7e-0000-4000-8000-000000000001".to_string()),
        Just("9F1C0C7E-0000-4000-8000-00000000000A".to_string()),
        Just(String::new()),
        Just("   ".to_string()),
        Just("alice@contoso.com".to_string()),
        Just("Finance Analysts".to_string()),
        Just("x' or displayName eq 'y".to_string()),
        Just("30s".to_string()),
        Just("1h30m".to_string()),
        Just("99999999999999999999h".to_string()),
        "[0-9a-fA-F-]{0,40}",
        "[0-9]{0,6}[hms]{0,2}[0-9]{0,3}[hms]?",
        "[a-z.]{0,8}@?[a-z.]{0,8}@?[a-z]{0,3}",
        "\\PC{0,30}",
        any::<String>(),
    ]
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(text())
}

fn int() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-5i64..120).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(2.5)),
        Just(json!("3")),
        Just(Value::Null),
    ]
}

fn selector(keys: [&'static str; 3]) -> impl Strategy<Value = Value> {
    (opt_text(), opt_text(), opt_text()).prop_map(move |(a, b, c)| {
        let mut m = serde_json::Map::new();
        for (k, v) in keys.into_iter().zip([a, b, c]) {
            if let Some(v) = v {
                m.insert(k.to_string(), Value::String(v));
            }
        }
        Value::Object(m)
    })
}

/// A JSON object shaped roughly like an assignment spec, with any field missing, mistyped
/// or hostile.
fn assignment_json() -> impl Strategy<Value = Value> {
    (
        selector(["id", "displayName", "catalog"]),
        prop::option::of(selector(["id", "displayName", "unknownField"])),
        selector(["objectId", "userPrincipalName", "extra"]),
        prop::option::of((
            prop::option::of(prop_oneof![
                Just("Auto"),
                Just("Manual"),
                Just("Disabled"),
                Just("auto"),
                Just("")
            ]),
            int(),
            opt_text(),
        )),
        opt_text(),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(pkg, policy, target, reprocess, verify, suspend)| {
            let mut spec = json!({"accessPackage": pkg, "target": target});
            if let Some(p) = policy {
                spec["assignmentPolicy"] = p;
            }
            if let Some((mode, attempts, cooldown)) = reprocess {
                let mut r = json!({"maxAttempts": attempts});
                if let Some(m) = mode {
                    r["mode"] = json!(m);
                }
                if let Some(c) = cooldown {
                    r["cooldown"] = json!(c);
                }
                spec["reprocess"] = r;
            }
            if let Some(v) = verify {
                spec["verifyInterval"] = json!(v);
            }
            if let Some(s) = suspend {
                spec["suspend"] = json!(s);
            }
            spec
        })
}

fn guard_json() -> impl Strategy<Value = Value> {
    (
        selector(["id", "displayName", "catalog"]),
        prop::option::of(prop_oneof![Just("Enforce"), Just("Audit"), Just("Off")]),
        opt_text(),
        int(),
    )
        .prop_map(|(pkg, mode, interval, max)| {
            let mut spec = json!({"accessPackage": pkg, "maxReprocessPerSweep": max});
            if let Some(m) = mode {
                spec["mode"] = json!(m);
            }
            if let Some(i) = interval {
                spec["interval"] = json!(i);
            }
            spec
        })
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_assignment_spec_validates_or_names_a_field(value in assignment_json()) {
        // Deserialization may refuse the shape (that is the schema's job); what parses must
        // then validate or name the field at fault.
        if let Ok(spec) = serde_json::from_value::<AccessPackageAssignmentSpec>(value.clone()) {
            match validate_assignment_spec(&spec) {
                Ok(()) => {
                    // Accepted specs are really usable: ids are GUIDs, one selector each.
                    if let Some(id) = &spec.access_package.id {
                        prop_assert!(is_guid(id), "accepted non-GUID package id {id:?}");
                    }
                    if let Some(id) = &spec.target.object_id {
                        prop_assert!(is_guid(id), "accepted non-GUID objectId {id:?}");
                    }
                    prop_assert!(spec.target.object_id.is_some() != spec.target.user_principal_name.is_some());
                    prop_assert!(parse_duration(&spec.reprocess.cooldown).is_ok());
                    prop_assert!(spec.verify_interval.as_deref().is_none_or(|v| parse_duration(v).is_ok()));
                }
                Err(e) => {
                    prop_assert!(e.field.starts_with("spec."), "field {:?}", e.field);
                    prop_assert!(
                        FIELDS.contains(&e.field.as_str()) || e.field == "spec.verifyInterval",
                        "unexpected field {:?}", e.field
                    );
                    prop_assert!(!e.message.trim().is_empty());
                    prop_assert!(e.to_string().starts_with(&e.field));
                }
            }
        }
    }

    #[test]
    fn any_guard_spec_validates_or_names_a_field(value in guard_json()) {
        if let Ok(spec) = serde_json::from_value::<AccessPackageGuardSpec>(value) {
            if let Err(e) = validate_guard_spec(&spec) {
                prop_assert!(e.field.starts_with("spec."), "field {:?}", e.field);
                prop_assert!(!e.message.trim().is_empty());
            } else if let Some(id) = &spec.access_package.id {
                prop_assert!(is_guid(id));
            }
        }
    }

    #[test]
    fn non_guid_ids_are_refused_naming_their_field(id in text().prop_filter("not a GUID", |s| !is_guid(s))) {
        let base = json!({
            "accessPackage": {"id": "9f1c0c7e-0000-4000-8000-000000000001"},
            "assignmentPolicy": {"id": "2264bf65-76ba-417b-a27d-54d291f0cb01"},
            "target": {"objectId": "7deff43e-1f17-44ef-9e5f-d516b0ba11d4"}
        });
        for (pointer, field) in [
            ("/accessPackage/id", "spec.accessPackage.id"),
            ("/assignmentPolicy/id", "spec.assignmentPolicy.id"),
            ("/target/objectId", "spec.target.objectId"),
        ] {
            let mut v = base.clone();
            *v.pointer_mut(pointer).unwrap() = json!(id);
            let spec: AccessPackageAssignmentSpec = serde_json::from_value(v).unwrap();
            let e = validate_assignment_spec(&spec).unwrap_err();
            prop_assert_eq!(e.field.as_str(), field);
        }
    }

    #[test]
    fn durations_parse_strictly_and_never_panic(s in prop_oneof!["\\PC{0,20}", "[0-9]{0,25}[hms]{0,3}[0-9]{0,25}[hmsd]?"]) {
        if let Ok(d) = parse_duration(&s) {
            // Only digits and units, and it round-trips.
            let trimmed = s.trim();
            prop_assert!(trimmed.chars().all(|c| c.is_ascii_digit() || "hms".contains(c)), "{s:?}");
            prop_assert_eq!(parse_duration(&redeliver::api::format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn the_loader_turns_any_text_into_declarations_or_located_errors(text in prop_oneof![
        any::<String>(),
        "(apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackage(Assignment|Guard)\n|metadata: \\{name: [a-z]{0,5}\\}\n|spec:\n|  accessPackage: \\{[a-zA-Z]{0,5}: [^\n]{0,10}\\}\n|  target: \\{[a-zA-Z]{0,5}: [^\n]{0,10}\\}\n|---\n|  [a-z]{1,5}: [^\n]{0,8}\n){0,12}",
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fuzz.yaml");
        std::fs::write(&file, &text).unwrap();
        check_load(&file)?;
    }
}

fn check_load(file: &Path) -> Result<(), TestCaseError> {
    match redeliver_audit::load::load_paths(&[file.to_path_buf()]) {
        Ok(decls) => {
            // Everything loaded was validated.
            for (_, a) in &decls.assignments {
                prop_assert!(validate_assignment_spec(&a.spec).is_ok());
            }
            for (_, g) in &decls.guards {
                prop_assert!(validate_guard_spec(&g.spec).is_ok());
            }
        }
        Err(errors) => {
            prop_assert!(!errors.is_empty());
            for e in errors {
                prop_assert_eq!(&e.file, file);
                prop_assert!(!e.message.trim().is_empty());
            }
        }
    }
    Ok(())
}

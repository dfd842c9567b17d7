//! Hostile values against the simulator over real HTTP: quotes, OData operators, URL
//! delimiters, unicode and very long names in display names and UPNs reach Graph as data,
//! never as syntax; GUID fields refuse anything else before a single call is made.

use crate::fault_support::*;
use redeliver::api::AccessPackageSelector;
use redeliver::observe::{ObserveError, Observer};
use redeliver_sim::{
    AccessPackageSpec, AssignmentSpec, PolicySpec, ResourceSpec, Scenario, Simulator,
};

const INJECTION: &str = "x' or displayName eq 'Finance Analysts";

fn hostile_names() -> Vec<String> {
    vec![
        "O'Brien's \"Quoted\" Package".to_string(),
        "R&D = 100% #1 +x / ?a=b".to_string(),
        "Ünïcödé 日本語 🚀 paquete".to_string(),
        "a' or '1' eq '1".to_string(),
        "trailing backslash \\".to_string(),
        "(nested) $filter=displayName eq 'x'".to_string(),
        "L".repeat(40) + &"ö".repeat(200),
    ]
}

fn hostile_upns() -> Vec<String> {
    vec![
        "o'brien@contoso.com".to_string(),
        "first.last+tag@contoso.com".to_string(),
        "ünïcödé@contoso.com".to_string(),
        "hash#percent%amp&@contoso.com".to_string(),
        format!("{}@contoso.com", "u".repeat(60)),
    ]
}

/// The demo tenant plus one package per hostile name (each promising its own group, with
/// the matching hostile user assigned and delivered).
fn hostile_scenario() -> Scenario {
    let mut scenario = Scenario::demo();
    let upns = hostile_upns();
    for (i, name) in hostile_names().iter().enumerate() {
        let group = format!("hostile-group-{i}");
        scenario.spec.groups.push(redeliver_sim::GroupSpec {
            name: group.clone(),
            ..Default::default()
        });
        scenario.spec.access_packages.push(AccessPackageSpec {
            name: name.clone(),
            catalog: "Finance".into(),
            resources: vec![ResourceSpec {
                group: Some(group),
                role: Some("Member".into()),
                ..Default::default()
            }],
            policies: vec![PolicySpec {
                name: "Direct assignment".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let upn = &upns[i % upns.len()];
        if !scenario.spec.users.iter().any(|u| &u.upn == upn) {
            scenario.spec.users.push(redeliver_sim::UserSpec {
                upn: upn.clone(),
                display_name: Some(format!("Hostile {i}")),
                ..Default::default()
            });
        }
        scenario.spec.assignments.push(AssignmentSpec {
            user: upn.clone(),
            package: name.clone(),
            state: Some("delivered".into()),
            ..Default::default()
        });
    }
    scenario
}

fn by_name(name: &str) -> AccessPackageSelector {
    AccessPackageSelector {
        display_name: Some(name.to_string()),
        ..Default::default()
    }
}

#[tokio::test]
async fn odata_injection_in_a_package_name_matches_nothing() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    // Control: the same text pasted into $filter unescaped really would match Finance
    // Analysts on this server, so the simulator can tell injection from escaping.
    let raw = format!(
        "{}/v1.0/identityGovernance/entitlementManagement/accessPackages?$filter=displayName eq '{INJECTION}'",
        sim.graph_url
    );
    let injected: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(&raw)
        .bearer_auth(sim.mint_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = injected["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["displayName"].as_str())
        .collect();
    assert_eq!(names, ["Finance Analysts"], "the control injection works");

    let observer = Observer::new(client_with(&sim, |_| {}), 4);
    let err = observer
        .resolve_package_id(&by_name(INJECTION))
        .await
        .expect_err("nothing is named like that");
    let ObserveError::Resolve(failure) = err else {
        panic!("a resolve failure, not a Graph error: {err:?}")
    };
    assert_eq!(
        failure.kind.reason().as_str(),
        "PackageNotFound",
        "{failure:?}"
    );
    assert!(failure.message.contains(INJECTION), "{}", failure.message);

    // End to end: the audit finds no such package and touches nobody.
    let dir = declarations(&format!(
        "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {{name: inj, namespace: access}}\nspec:\n  accessPackage: {{displayName: \"{}\"}}\n  target: {{userPrincipalName: alice@contoso.com}}\n",
        INJECTION.replace('"', "\\\"")
    ));
    let out = audit(&sim, dir.path(), &["--reprocess", "-o", "json"]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let row = &out.rows()[0];
    assert_eq!(row["verdict"], "Stalled", "{row}");
    assert!(
        row["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no access package named"),
        "{row}"
    );
    assert!(!sim.is_member("fin-writers", "alice@contoso.com"));
    assert_eq!(sim.count_requests("POST", "/v1.0/"), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn hostile_display_names_resolve_to_exactly_their_own_package() {
    let sim = Simulator::start(hostile_scenario(), fast()).await.unwrap();
    let observer = Observer::new(client_with(&sim, |_| {}), 4);
    for name in hostile_names() {
        let id = observer
            .resolve_package_id(&by_name(&name))
            .await
            .unwrap_or_else(|e| panic!("{name:?} resolves: {e:?}"));
        assert_eq!(Some(id), sim.package_id(&name), "{name:?}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn hostile_upns_resolve_through_the_path_and_audit_verifies_them() {
    let sim = Simulator::start(hostile_scenario(), fast()).await.unwrap();
    let observer = Observer::new(client_with(&sim, |_| {}), 4);
    for upn in hostile_upns() {
        let target = redeliver::api::TargetSelector {
            user_principal_name: Some(upn.clone()),
            object_id: None,
        };
        let id = observer
            .resolve_target(&target)
            .await
            .unwrap_or_else(|e| panic!("{upn:?} resolves: {e:?}"));
        assert_eq!(Some(id), sim.user_id(&upn), "{upn:?}");
    }
    // A UPN that tries to walk the path resolves to nobody (it is one escaped segment).
    let walk = redeliver::api::TargetSelector {
        user_principal_name: Some("../groups@contoso.com".into()),
        object_id: None,
    };
    assert!(observer.resolve_target(&walk).await.is_err());
    assert!(
        sim.request_log()
            .iter()
            .any(|e| e.path.starts_with("/v1.0/users/..%2Fgroups@contoso.com")),
        "the slash travelled escaped"
    );

    // The whole chain through the audit binary: YAML (quoted), $filter, paths, report.
    let docs: String = hostile_names()
        .iter()
        .zip(hostile_upns().iter().cycle())
        .enumerate()
        .map(|(i, (name, upn))| {
            format!(
                "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {{name: h{i}, namespace: access}}\nspec:\n  accessPackage: {{displayName: {}}}\n  target: {{userPrincipalName: {}}}\n---\n",
                serde_json::to_string(name).unwrap(),
                serde_json::to_string(upn).unwrap()
            )
        })
        .collect();
    let dir = declarations(&docs);
    let out = audit(&sim, dir.path(), &["-o", "json"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let rows = out.rows();
    assert_eq!(rows.len(), hostile_names().len());
    for (row, name) in rows.iter().zip(hostile_names()) {
        assert_eq!(row["verdict"], "Delivered", "{row}");
        assert_eq!(row["package"], name.as_str(), "{row}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn non_guid_ids_are_refused_before_any_graph_call() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let cases = [
        (
            "accessPackage: {id: \"9f1c0c7e-0000-4000-8000-000000000001' or 1 eq 1\"}\n  target: {userPrincipalName: alice@contoso.com}",
            "spec.accessPackage.id",
        ),
        (
            "accessPackage: {displayName: Finance Analysts}\n  target: {objectId: ../../groups}",
            "spec.target.objectId",
        ),
        (
            "accessPackage: {displayName: Finance Analysts}\n  assignmentPolicy: {id: \"2264bf65-76ba-417b-a27d-54d291f0cb01/../x\"}\n  target: {userPrincipalName: alice@contoso.com}",
            "spec.assignmentPolicy.id",
        ),
        (
            "accessPackage: {id: \"{9f1c0c7e-0000-4000-8000-000000000001}\"}\n  target: {userPrincipalName: alice@contoso.com}",
            "spec.accessPackage.id",
        ),
    ];
    for (spec, field) in cases {
        let dir = declarations(&format!(
            "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {{name: bad, namespace: access}}\nspec:\n  {spec}\n"
        ));
        sim.clear_request_log();
        let out = audit(&sim, dir.path(), &["--reprocess"]).await;
        assert_eq!(out.code, 1, "{field}: {}", out.stderr);
        assert!(out.stderr.contains(field), "{field}: {}", out.stderr);
        assert!(
            out.stderr.contains("nothing was checked or changed"),
            "{}",
            out.stderr
        );
        assert!(
            sim.request_log().is_empty(),
            "{field}: no request reached Graph or the token endpoint"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn path_breaking_ids_never_address_another_resource() {
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let client = client_with(&sim, |_| {});
    for id in [
        "../accessPackages",
        "x/../../users",
        "id?$filter=x",
        "id#frag",
        "%2e%2e",
    ] {
        let got = client.get_assignment(id).await;
        match got {
            Ok(None) => {}
            Ok(Some(a)) => panic!("{id:?} addressed assignment {}", a.id),
            Err(e) => assert_eq!(e.kind(), "bad_request", "{id:?}: {e}"),
        }
    }
    for id in ["", ".", "..", "a\nb"] {
        let e = client.get_assignment(id).await.unwrap_err();
        assert_eq!(e.kind(), "invalid_argument", "{id:?}");
    }
    // Every request the client made stayed under the assignments collection.
    for e in graph_requests(&sim)
        .iter()
        .filter(|e| e.path.starts_with("/v1.0/"))
    {
        assert!(
            e.path
                .starts_with("/v1.0/identityGovernance/entitlementManagement/assignments/"),
            "{}",
            e.path
        );
    }
    sim.shutdown().await;
}

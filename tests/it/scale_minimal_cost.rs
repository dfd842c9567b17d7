//! A full verification spends the minimum: each promised group's members once
//! (`$select=id&$top=999`, following `@odata.nextLink`), each promised app's
//! `appRoleAssignedTo` once, each package's assignments once — shared by every assignment
//! and guard — measured from the simulator's own usage over real HTTP.
//!
//! What is counted: every Graph request the verification makes (directory and
//! entitlement management). RU are charged only on directory reads; the minimum is
//! `2 RU × member pages + 1 RU × app role pages` ([`MinimumCost`]). Excluded, and
//! asserted separately: the resolution of declared users by UPN (`GET /users/{upn}`, 1 RU
//! each), needed only for users the package's assignments do not already name.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use redeliver::api::AccessPackageGuardSpec;
use redeliver::engine::{self, EngineSettings, GuardInput};
use redeliver::graph::{GraphClient, GraphSettings, Secret};
use redeliver::observe::Observer;
use redeliver_bench::cost::{self, MinimumCost, SIM_EM_PAGE};
use redeliver_sim::{
    Scenario, SimHandle, SimOptions, Simulator, SyntheticResource, SyntheticTenant, Usage,
};

/// Groups of 1,500 members (two pages of 999) and of 750 (one page), two apps.
fn tenant() -> SyntheticTenant {
    SyntheticTenant {
        tenant_name: "mincost".into(),
        seed: 3,
        assignments: 3000,
        groups: 6,
        apps: 2,
        packages: 4,
        min_resources: 3,
        max_resources: 5,
        drift_every: 100,
        policies_per_package: 1,
    }
}

async fn start(t: &SyntheticTenant) -> SimHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Simulator::start(Scenario::synthetic_tenant(t), SimOptions::fast())
        .await
        .expect("simulator starts")
}

fn client_for(sim: &SimHandle) -> GraphClient {
    let config = GraphSettings {
        tenant_id: Some(sim.tenant_id.clone()),
        client_id: Some(sim.client_id.clone()),
        client_secret: Some(Secret::new(sim.client_secret.clone())),
        authority_host: sim.authority_host.clone(),
        graph_url: sim.graph_url.clone(),
        ..GraphSettings::with_defaults()
    }
    .validate()
    .expect("simulator config is valid");
    GraphClient::new(config).expect("client builds")
}

fn package_ids(sim: &SimHandle, t: &SyntheticTenant) -> Vec<String> {
    (0..t.packages)
        .map(|p| sim.package_id(&SyntheticTenant::package_name(p)).unwrap())
        .collect()
}

/// Asserts each promised resource was read page for page exactly once with the cheapest
/// query, each package's assignments once, and returns the RU spent on them.
fn assert_minimal_reads(sim: &SimHandle, t: &SyntheticTenant, usage: &Usage) -> u64 {
    let (groups, apps) = t.resource_sizes();
    let promised: BTreeSet<SyntheticResource> = (0..t.packages)
        .flat_map(|p| t.package_resources(p))
        .collect();
    assert_eq!(promised.len(), t.groups + t.apps, "every resource promised");
    let mut multi_page = 0;
    for r in &promised {
        let (path, pages) = match *r {
            SyntheticResource::Group(g) => (
                format!(
                    "GET /v1.0/groups/{}/members",
                    sim.group_id(&SyntheticTenant::group_name(g)).unwrap()
                ),
                cost::pages(groups[g], cost::DIRECTORY_PAGE),
            ),
            SyntheticResource::App(a) => (
                format!(
                    "GET /v1.0/servicePrincipals/{}/appRoleAssignedTo",
                    sim.service_principal_id(&SyntheticTenant::app_name(a))
                        .unwrap()
                ),
                cost::pages(apps[a], cost::DIRECTORY_PAGE),
            ),
        };
        let got = usage.by_path.get(&path).map(|u| u.requests).unwrap_or(0);
        assert_eq!(got, pages, "{path}: {got} requests for {pages} pages");
        if pages > 1 {
            multi_page += 1;
        }
    }
    assert!(multi_page >= 2, "the tenant exercises nextLink paging");
    // Every members and app-role page asked for ids only, 999 at a time (the nextLink
    // pages carry the same query).
    for e in sim.request_log() {
        let path = e.path.replace("%24", "$");
        if path.contains("/members") || path.contains("/appRoleAssignedTo") {
            assert!(path.contains("$select="), "{path} lacks $select");
            assert!(path.contains("$top=999"), "{path} lacks $top=999");
        }
    }
    let min = MinimumCost::for_tenant(t, SIM_EM_PAGE);
    let assignment_reads =
        usage.by_route["GET /v1.0/identityGovernance/entitlementManagement/assignments"].requests;
    assert_eq!(assignment_reads, min.assignment_pages);
    // Resource reads only: the members and app-role routes.
    usage
        .by_route
        .iter()
        .filter(|(k, _)| k.ends_with("/members") || k.ends_with("/appRoleAssignedTo"))
        .map(|(_, u)| u.ru)
        .sum()
}

fn guards_yaml(ids: &[String]) -> String {
    ids.iter()
        .enumerate()
        .map(|(p, id)| {
            format!(
                "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageGuard\nmetadata: {{name: g{p}, namespace: t}}\nspec:\n  accessPackage: {{id: {id}}}\n  mode: Audit\n---\n"
            )
        })
        .collect()
}

async fn audit(sim: &SimHandle, dir: &Path) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redeliver"));
    for var in [
        "AZURE_FEDERATED_TOKEN_FILE",
        "REDELIVER_CLIENT_SECRET_FILE",
        "REDELIVER_GRAPH_CONCURRENCY",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(sim.graph_env())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .args(["audit", "-o", "json", "--no-progress", "-f"])
        .arg(dir)
        .stdin(Stdio::null());
    let out = cmd.output().await.expect("the redeliver binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_audit_of_guards_and_declarations_reads_each_resource_once_at_minimum_ru() {
    let t = tenant();
    let sim = start(&t).await;
    let ids = package_ids(&sim, &t);
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = guards_yaml(&ids);
    // Twenty declared assignments by UPN besides the guards: they share the same reads.
    let declared: u64 = 20;
    for i in 0..declared as usize {
        yaml.push_str(&format!(
            "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageAssignment\nmetadata: {{name: a{i}, namespace: t}}\nspec:\n  accessPackage: {{id: {}}}\n  target: {{userPrincipalName: {}}}\n  reprocess: {{mode: Manual}}\n---\n",
            ids[t.package_of(i)],
            t.upn(i)
        ));
    }
    std::fs::write(dir.path().join("decl.yaml"), yaml).unwrap();

    sim.clear_request_log();
    let (code, stdout, stderr) = audit(&sim, dir.path()).await;
    assert_eq!(code, 2, "drift is reported: {stderr}");
    let usage = sim.usage();
    let resource_ru = assert_minimal_reads(&sim, &t, &usage);
    let min = MinimumCost::for_tenant(&t, SIM_EM_PAGE);

    // Name resolution: the declared users all hold an assignment of their package, which
    // names them; only those about to be repaired (drifted) are confirmed with a lookup.
    let resolution = &usage.by_route;
    let user_lookups: u64 = resolution
        .iter()
        .filter(|(k, _)| k.starts_with("GET /v1.0/users/"))
        .map(|(_, u)| u.requests)
        .sum();
    let resolution_ru: u64 = resolution
        .iter()
        .filter(|(k, _)| k.starts_with("GET /v1.0/users/"))
        .map(|(_, u)| u.ru)
        .sum();
    let drifted_declared = (0..declared as usize)
        .filter(|i| t.drifted_resource(*i).is_some())
        .count() as u64;
    assert_eq!(
        user_lookups, drifted_declared,
        "{declared} declared users: only the drifted ones are read on their own"
    );
    assert_eq!(resolution_ru, drifted_declared);
    // Everything else that cost RU is the resource reads themselves.
    assert_eq!(usage.total.ru, resource_ru + resolution_ru);
    assert!(
        (usage.total.ru - resolution_ru) as f64 <= 1.05 * min.ru() as f64,
        "spent {} RU (excluding {resolution_ru} for name resolution), minimum {}",
        usage.total.ru - resolution_ru,
        min.ru()
    );
    assert_eq!(resource_ru, min.ru(), "exactly the minimum");
    assert_eq!(usage.total.throttled, 0);

    // The guards found every drifted assignment, and nothing else.
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let drifted: BTreeSet<String> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["verdict"] == "Drifted")
        .map(|r| r["target"].as_str().unwrap().to_string())
        // A guard's summary row names "(all N assignments)", not a user.
        .filter(|target| !target.starts_with("(all "))
        .collect();
    let expected: BTreeSet<String> = (0..t.assignments)
        .filter(|i| t.drifted_resource(*i).is_some())
        .map(|i| t.upn(i))
        .collect();
    assert_eq!(expected.len(), t.drifted_count());
    assert_eq!(drifted, expected);
    sim.shutdown().await;
}

/// A guard sweep never looks at assignment requests (they matter only to a declared
/// assignment that is not delivered), so a guard-only audit does not read them: in a
/// large tenant holding them would add substantially to the audit's memory.
#[tokio::test]
async fn a_guard_only_audit_reads_no_assignment_requests() {
    let t = tenant();
    let sim = start(&t).await;
    let ids = package_ids(&sim, &t);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("guards.yaml"), guards_yaml(&ids)).unwrap();
    sim.clear_request_log();
    let (code, _stdout, stderr) = audit(&sim, dir.path()).await;
    assert_eq!(code, 2, "drift is reported: {stderr}");
    let usage = sim.usage();
    assert_minimal_reads(&sim, &t, &usage);
    let request_reads: Vec<_> = usage
        .by_route
        .iter()
        .filter(|(route, _)| route.contains("/assignmentRequests"))
        .collect();
    assert!(request_reads.is_empty(), "{request_reads:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_guard_sweep_through_observe_and_the_engine_shares_one_snapshot() {
    let t = tenant();
    let sim = start(&t).await;
    let ids = package_ids(&sim, &t);
    sim.clear_request_log();
    let observer = Observer::new(client_for(&sim), 8);
    let mut views = Vec::new();
    for id in &ids {
        views.push(observer.package_view(id).await.expect("package reads"));
    }
    let snapshot = observer
        .snapshot(views.iter().flat_map(|v| v.resources.iter()))
        .await;
    let settings = EngineSettings::default();
    let spec: AccessPackageGuardSpec = serde_json::from_value(
        serde_json::json!({"accessPackage": {"id": ids[0]}, "mode": "Audit"}),
    )
    .unwrap();
    let now = jiff::Timestamp::now();
    let mut drifted = 0;
    for v in &views {
        let plan = engine::plan_guard_sweep(
            &GuardInput {
                generation: Some(1),
                spec: &spec,
                previous: None,
                resolved: Ok((v.package.id.clone(), v.package.display_name.clone())),
                assignments: &v.assignments,
                resources: &v.resources,
                snapshot: &snapshot,
                settings: &settings,
                ledger: &redeliver::engine::ledger::RepairLedger::new(),
                who: "AccessPackageGuard test/guard",
                reprocess_budget: None,
                operator_report_only: false,
                reprocess_annotation: None,
                safety: &Default::default(),
                mass_drift_ack: None,
                mass_drift_acknowledged: false,
            },
            now,
        );
        drifted += plan.drifted.len();
    }
    assert_eq!(drifted, t.drifted_count());
    let usage = sim.usage();
    let resource_ru = assert_minimal_reads(&sim, &t, &usage);
    let min = MinimumCost::for_tenant(&t, SIM_EM_PAGE);
    // No name resolution here (packages by id): every RU is a resource read.
    assert_eq!(usage.total.ru, resource_ru);
    assert!(usage.total.ru as f64 <= 1.05 * min.ru() as f64);
    sim.shutdown().await;
}

//! Microsoft Entra roles an access package grants (origin system `DirectoryRole`),
//! verified against the Graph simulator over real HTTP on 127.0.0.1: a role removed
//! outside entitlement management (eligible or active) is detected and repaired, status
//! names each role with its kind, mode and scope, a missing role-management permission
//! leaves the role `Unknown` naming the permission, and every assignment promising a role
//! shares one paged read of its holders.

use redeliver::api::{OriginSystem, RoleKind, RoleMode};
use std::path::Path;
use std::time::Duration;

use redeliver::api::ResourceState;
use redeliver::engine::{self, Action, Write};
use redeliver::observe::Observer;
use redeliver_sim::{Scenario, SimOptions, Simulator};

use crate::fault_support::{audit_json, fabrikam_declarations, processing_after, report_row};

const GLOBAL_READER: &str = "f2ef992c-3afb-46b9-b7cf-a126ee74c451";
const SECURITY_READER: &str = "5d6b6bb7-de71-4623-b4af-96380a352509";

fn fast() -> SimOptions {
    processing_after(Duration::from_millis(200))
}

/// A tenant whose "Security Operations" package grants a group, Global Reader (eligible)
/// and Security Reader (active); alice lost her eligibility, bob his active assignment,
/// carol holds everything.
fn scenario(extra_users: usize) -> Scenario {
    let extra: String = (0..extra_users)
        .map(|i| format!("    - {{upn: user{i}@fabrikam.com}}\n"))
        .collect();
    let extra_assignments: String = (0..extra_users)
        .map(|i| {
            format!(
                "    - {{user: user{i}@fabrikam.com, package: Security Operations, state: delivered}}\n"
            )
        })
        .collect();
    Scenario::from_yaml_str(&format!(
        "apiVersion: sim.redeliver.dev/v1
kind: SimulatorScenario
metadata: {{name: roles}}
spec:
  seed: 7
  tenant: {{name: fabrikam}}
  users:
    - {{upn: alice@fabrikam.com, displayName: Alice}}
    - {{upn: bob@fabrikam.com, displayName: Bob}}
    - {{upn: carol@fabrikam.com, displayName: Carol}}
{extra}  groups:
    - {{name: sec-ops}}
  directoryRoles:
    - {{name: Global Reader, id: {GLOBAL_READER}}}
    - {{name: Security Reader, id: {SECURITY_READER}}}
  catalogs:
    - {{name: Security}}
  accessPackages:
    - name: Security Operations
      catalog: Security
      resources:
        - {{group: sec-ops}}
        - {{entraRole: Global Reader, role: Eligible}}
        - {{entraRole: Security Reader, role: Active}}
  assignments:
    - {{user: alice@fabrikam.com, package: Security Operations, state: delivered, missing: [Global Reader]}}
    - {{user: bob@fabrikam.com, package: Security Operations, state: delivered, missing: [Security Reader]}}
    - {{user: carol@fabrikam.com, package: Security Operations, state: delivered}}
{extra_assignments}"
    ))
    .expect("valid scenario")
}

fn declarations(dir: &Path, users: &[&str]) {
    fabrikam_declarations(dir, "security", "Security Operations", users);
}

fn row<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report_row(report, &format!("security/{name}"))
}

#[tokio::test]
async fn removed_eligible_and_active_entra_roles_are_detected_and_repaired() {
    let sim = Simulator::start(scenario(0), fast()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    declarations(dir.path(), &["alice", "bob", "carol"]);
    assert!(!sim.has_directory_role("Global Reader", "alice@fabrikam.com", true));
    assert!(sim.has_directory_role("Security Reader", "alice@fabrikam.com", false));

    // Detection only.
    let (code, report, stderr) = audit_json(&sim, dir.path(), &[]).await;
    assert_eq!(code, 2, "drift found\n{report}\n{stderr}");
    let alice = row(&report, "alice");
    assert_eq!(alice["verdict"], "Drifted", "{alice}");
    assert_eq!(
        alice["missing"],
        serde_json::json!(["EntraRole Global Reader (Eligible, /)"])
    );
    assert_eq!(
        (alice["present"].as_u64(), alice["promised"].as_u64()),
        (Some(2), Some(3))
    );
    let bob = row(&report, "bob");
    assert_eq!(
        bob["missing"],
        serde_json::json!(["EntraRole Security Reader (Active, /)"])
    );
    assert_eq!(row(&report, "carol")["verdict"], "Delivered");

    // Repair: reprocess re-applies the package, so entitlement management grants the
    // roles again; the final pass sees them.
    let (code, report, stderr) =
        audit_json(&sim, dir.path(), &["--reprocess", "--wait", "20s"]).await;
    assert_eq!(code, 0, "repaired\n{report}\n{stderr}");
    for name in ["alice", "bob", "carol"] {
        assert_eq!(row(&report, name)["verdict"], "Delivered", "{report}");
    }
    assert!(sim.has_directory_role("Global Reader", "alice@fabrikam.com", true));
    assert!(sim.has_directory_role("Security Reader", "bob@fabrikam.com", false));
    let reprocessed = sim.count_requests(
        "POST",
        "/v1.0/identityGovernance/entitlementManagement/assignments/",
    );
    assert_eq!(reprocessed, 2, "one reprocess per drifted assignment");

    // An outside removal after delivery (an admin in PIM) is drift again.
    assert!(
        sim.remove_directory_role("Global Reader", "carol@fabrikam.com", true)
            .unwrap()
    );
    let (code, report, _) = audit_json(&sim, dir.path(), &[]).await;
    assert_eq!(code, 2);
    assert_eq!(
        row(&report, "carol")["missing"],
        serde_json::json!(["EntraRole Global Reader (Eligible, /)"])
    );
    sim.shutdown().await;
}

/// One `AccessPackageAssignment` observed and planned in process, the way the controller
/// does: the status it would write.
async fn plan_for(observer: &Observer, upn: &str) -> engine::Plan {
    crate::fault_support::first_plan(observer, "security", "Security Operations", upn).await
}

#[tokio::test]
async fn status_names_each_role_with_kind_mode_and_scope() {
    let sim = Simulator::start(scenario(0), fast()).await.unwrap();
    let observer = Observer::new(crate::fault_support::graph_client(&sim).unwrap(), 4);
    let plan = plan_for(&observer, "alice@fabrikam.com").await;
    assert!(
        matches!(
            plan.action,
            Action::Write(Write::ReprocessAssignment { .. })
        ),
        "{:?}",
        plan.action
    );
    let status = &plan.status;
    assert_eq!(status.resources_summary.as_deref(), Some("2/3"));
    let role = status
        .resources
        .iter()
        .find(|r| {
            r.origin_system == OriginSystem::DirectoryRole && r.mode == Some(RoleMode::Eligible)
        })
        .expect("the eligible role in status");
    assert_eq!(role.kind, Some(RoleKind::EntraRole));
    assert_eq!(role.scope.as_deref(), Some("/"));
    assert_eq!(role.display_name.as_deref(), Some("Global Reader"));
    assert_eq!(role.origin_id, GLOBAL_READER);
    assert_eq!(role.role.as_deref(), Some("Eligible Member"));
    assert_eq!(role.state, ResourceState::Missing);
    let group = status
        .resources
        .iter()
        .find(|r| r.origin_system == OriginSystem::AadGroup)
        .unwrap();
    assert_eq!((group.kind.as_ref(), group.scope.as_ref()), (None, None));
    sim.shutdown().await;
}

#[tokio::test]
async fn missing_role_management_permission_names_it_and_never_repairs() {
    let sim = Simulator::start(scenario(0), fast()).await.unwrap();
    let fault: redeliver_sim::FaultSpec = serde_json::from_value(serde_json::json!({
        "kind": "error", "status": 403,
        "pathPrefix": "/v1.0/roleManagement/directory/roleEligibilitySchedules", "count": 100
    }))
    .unwrap();
    sim.inject_fault(fault);
    let observer = Observer::new(crate::fault_support::graph_client(&sim).unwrap(), 4);
    // Carol holds everything; the eligible role cannot be read.
    let plan = plan_for(&observer, "carol@fabrikam.com").await;
    let role = plan
        .status
        .resources
        .iter()
        .find(|r| r.mode == Some(RoleMode::Eligible))
        .unwrap();
    assert_eq!(role.state, ResourceState::Unknown);
    let note = role.note.as_deref().unwrap_or_default();
    assert!(
        note.contains("RoleEligibilitySchedule.Read.Directory"),
        "the permission is named: {note}"
    );
    // An unread role is never a reason to reprocess.
    assert!(
        !matches!(plan.action, Action::Write(_)),
        "{:?}",
        plan.action
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn two_hundred_assignments_promising_the_same_roles_share_one_paged_read_each() {
    let sim = Simulator::start(scenario(197), fast()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut users: Vec<String> = (0..197).map(|i| format!("user{i}")).collect();
    users.extend(["alice", "bob", "carol"].map(String::from));
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    declarations(dir.path(), &refs);
    sim.clear_request_log();

    let (code, report, stderr) = audit_json(&sim, dir.path(), &[]).await;
    assert_eq!(code, 2, "alice and bob drifted\n{stderr}");
    assert_eq!(report["summary"]["delivered"], 198);

    // 199 holders of each role at the simulator's (Graph's) default page size of 100:
    // exactly two pages of one read per role, however many assignments promise it.
    let eligible = "/v1.0/roleManagement/directory/roleEligibilitySchedules";
    let active = "/v1.0/roleManagement/directory/roleAssignments";
    assert_eq!(sim.count_requests("GET", eligible), 2, "one paged read");
    assert_eq!(sim.count_requests("GET", active), 2, "one paged read");
    let first = sim
        .request_log()
        .into_iter()
        .find(|e| e.path.starts_with(eligible))
        .unwrap();
    let url = url::Url::parse(&format!("http://x{}", first.path)).unwrap();
    let filter = url
        .query_pairs()
        .find(|(k, _)| k == "$filter")
        .map(|(_, v)| v.into_owned());
    assert_eq!(
        filter.as_deref(),
        Some(format!("roleDefinitionId eq '{GLOBAL_READER}'").as_str())
    );
    sim.shutdown().await;
}

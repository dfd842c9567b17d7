//! The privileged kinds are followed as closely as group membership: with a 10-minute
//! `verifyInterval`, a group ownership, an Entra role, an Azure role, an eligible group
//! membership and an eligible group ownership, each removed outside entitlement management,
//! are detected by the controller within one delta interval (`run_controllers` against the
//! in-process Kubernetes API server and the Graph simulator over HTTP on 127.0.0.1), and
//! the lost eligibility is repaired; without `PrivilegedEligibilitySchedule.Read.AzureADGroup`
//! an eligibility is `Unknown` naming the permission and nothing is reprocessed.

use std::time::{Duration, Instant};

use crate::controller_support::{Controller, operator_context};
use redeliver::controller::Settings;
use redeliver_fake_kube::FakeKube;
use redeliver_sim::{Scenario, SimHandle, SimOptions, Simulator};
use serde_json::{Value, json};

const NS: &str = "privileged";
const APA: &str = "accesspackageassignments";
const SUBSCRIPTION: &str = "6f1b2c3d-0000-4000-8000-00000000a5b1";
const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

/// One package grants every privileged kind; all five users hold it, fully delivered.
fn scenario() -> Scenario {
    scenario_for(&USERS)
}

/// The same tenant, with `names` holding the package.
fn scenario_for(names: &[&str]) -> Scenario {
    let users: String = names
        .iter()
        .map(|u| format!("    - {{upn: {u}@fabrikam.com}}\n"))
        .collect();
    let assignments: String = names
        .iter()
        .map(|u| {
            format!("    - {{user: {u}@fabrikam.com, package: Tier Zero, state: delivered}}\n")
        })
        .collect();
    Scenario::from_yaml_str(&format!(
        "apiVersion: sim.redeliver.dev/v1
kind: SimulatorScenario
metadata: {{name: privileged}}
spec:
  seed: 5
  tenant: {{name: fabrikam}}
  users:
{users}  groups:
    - {{name: tier0-owners}}
    - {{name: tier0-admins}}
    - {{name: tier0-approvers}}
  directoryRoles:
    - {{name: Global Reader, id: f2ef992c-3afb-46b9-b7cf-a126ee74c451}}
  subscriptions:
    - {{name: Finance, id: {SUBSCRIPTION}, resourceGroups: [rg-fin]}}
  azureRoles:
    - {{name: Contributor, id: b24988ac-6180-42a0-ab88-20f7382dd24c}}
  catalogs:
    - {{name: Privileged}}
  accessPackages:
    - name: Tier Zero
      catalog: Privileged
      resources:
        - {{group: tier0-owners, role: Owner}}
        - {{entraRole: Global Reader, role: Eligible}}
        - {{azureRole: Contributor, subscription: Finance, resourceGroup: rg-fin, role: Active}}
        - {{group: tier0-admins, role: Eligible Member}}
        - {{group: tier0-approvers, role: Eligible Owner}}
  assignments:
{assignments}"
    ))
    .expect("valid scenario")
}

fn declaration(user: &str) -> Value {
    json!({
        "apiVersion": "redeliver.dev/v1alpha1", "kind": "AccessPackageAssignment",
        "metadata": {"name": user, "namespace": NS},
        "spec": {
            "accessPackage": {"displayName": "Tier Zero"},
            "target": {"userPrincipalName": format!("{user}@fabrikam.com")},
            "verifyInterval": "10m",
            "reprocess": {"mode": "Auto", "maxAttempts": 3, "cooldown": "5m"}
        }
    })
}

async fn start(kube: &FakeKube, sim: &SimHandle, settings: Settings) -> Controller {
    Controller::start(operator_context(kube, sim, NS, &settings), Vec::new(), 4).await
}

async fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    crate::wait::until(what, timeout, done).await
}

fn status(kube: &FakeKube, name: &str) -> Value {
    kube.object(APA, NS, name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

/// What a delta poll reads for the privileged kinds of the Tier Zero package: group owners,
/// Entra role eligibilities, Azure role assignments (ARM) and PIM for Groups eligibilities.
const PRIVILEGED_READS: [&str; 4] = [
    "/owners",
    "/roleManagement/directory/roleEligibilitySchedules",
    "/arm/",
    "/privilegedAccess/group/eligibilitySchedules",
];

fn delivered(status: &Value) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Delivered").cloned())
        .unwrap_or(Value::Null)
}

fn missing(status: &Value) -> Vec<String> {
    status["resources"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| r["state"] == "Missing")
                .map(|r| {
                    format!(
                        "{} {} {}",
                        r["kind"].as_str().unwrap_or("-"),
                        r["displayName"].as_str().unwrap_or("-"),
                        r["role"].as_str().unwrap_or("-")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn every_privileged_kind_removed_outside_is_detected_within_one_delta_interval() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(scenario(), SimOptions::fast())
        .await
        .unwrap();
    let kube = FakeKube::start(USERS.iter().map(|u| declaration(u)).collect())
        .await
        .unwrap();
    let interval = Duration::from_millis(500);
    let settings = Settings {
        delta_interval: interval,
        verify_interval: Duration::from_secs(600),
        poll_interval: Duration::from_secs(1),
        observation_max_age: Duration::from_millis(500),
        ..crate::controller_support::settings()
    };
    let running = start(&kube, &sim, settings).await;
    wait_until(
        "everyone is verified delivered",
        Duration::from_secs(30),
        || {
            USERS
                .iter()
                .all(|u| delivered(&status(&kube, u))["status"] == "True")
        },
    )
    .await;
    // Let a first poll take its look at every privileged kind (each one's read logged since
    // everyone was verified), so what follows is a change between two polls.
    sim.clear_request_log();
    wait_until(
        "a delta poll read every privileged kind",
        Duration::from_secs(20),
        || {
            let log = sim.request_log();
            PRIVILEGED_READS
                .iter()
                .all(|read| log.iter().any(|e| e.path.contains(read)))
        },
    )
    .await;

    let rg = format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-fin");
    let removed = Instant::now();
    assert!(
        sim.remove_owner("tier0-owners", "alice@fabrikam.com")
            .unwrap()
    );
    assert!(
        sim.remove_directory_role("Global Reader", "bob@fabrikam.com", true)
            .unwrap()
    );
    assert!(
        sim.remove_azure_role("Contributor", &rg, "carol@fabrikam.com", false)
            .unwrap()
    );
    assert!(
        sim.remove_group_eligibility("tier0-admins", "dave@fabrikam.com", false)
            .unwrap()
    );
    assert!(
        sim.remove_group_eligibility("tier0-approvers", "erin@fabrikam.com", true)
            .unwrap()
    );
    let expected = [
        ("alice", "- tier0-owners Owner"),
        ("bob", "EntraRole Global Reader Eligible Member"),
        ("carol", "AzureRole Contributor Contributor"),
        ("dave", "GroupEligible tier0-admins Member"),
        ("erin", "GroupEligible tier0-approvers Owner"),
    ];
    let mut seen = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < expected.len() {
        for (user, what) in expected {
            if !seen.contains_key(user) && missing(&status(&kube, user)).iter().any(|m| m == what) {
                seen.insert(user, removed.elapsed());
            }
        }
        let statuses: Vec<(&str, Vec<String>)> = USERS
            .iter()
            .map(|u| (*u, missing(&status(&kube, u))))
            .collect();
        assert!(
            Instant::now() < deadline,
            "not every removal detected: seen {seen:?}, missing now {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One interval, plus the controller's debounce and the reconcile itself, with room for
    // a loaded machine; far from the 10-minute verification.
    for (user, took) in &seen {
        assert!(
            *took < interval + Duration::from_millis(2500),
            "{user}'s removal detected after {took:?}"
        );
    }

    // The repair: each object reprocesses once, entitlement management grants again.
    wait_until("every removal is repaired", Duration::from_secs(30), || {
        USERS
            .iter()
            .all(|u| delivered(&status(&kube, u))["status"] == "True")
    })
    .await;
    assert!(sim.has_group_eligibility("tier0-admins", "dave@fabrikam.com", false));
    assert!(sim.has_group_eligibility("tier0-approvers", "erin@fabrikam.com", true));
    running.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn without_the_pim_permission_an_eligibility_is_unknown_and_never_reprocessed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(scenario(), SimOptions::fast())
        .await
        .unwrap();
    // dave's eligibility is gone and nothing can say so.
    assert!(
        sim.remove_group_eligibility("tier0-admins", "dave@fabrikam.com", false)
            .unwrap()
    );
    sim.set_permission("PrivilegedEligibilitySchedule.Read.AzureADGroup", false)
        .unwrap();
    let kube = FakeKube::start(vec![declaration("dave")]).await.unwrap();
    let settings = Settings {
        delta_interval: Duration::from_millis(250),
        verify_interval: Duration::from_secs(600),
        poll_interval: Duration::from_secs(1),
        observation_max_age: Duration::from_millis(500),
        ..crate::controller_support::settings()
    };
    let running = start(&kube, &sim, settings).await;
    let unknown = |s: &Value| {
        s["resources"].as_array().is_some_and(|rs| {
            rs.iter()
                .filter(|r| r["kind"] == "GroupEligible")
                .all(|r| r["state"] == "Unknown")
        })
    };
    wait_until(
        "the eligibilities are Unknown",
        Duration::from_secs(20),
        || unknown(&status(&kube, "dave")),
    )
    .await;
    // A few delta polls later: still Unknown, still not Delivered, never reprocessed.
    // (Each poll asks group delta once: counting those counts the polls.)
    let polls = || sim.count_requests("GET", "/v1.0/groups/delta");
    let before = polls();
    wait_until("three more delta polls", Duration::from_secs(20), || {
        polls() >= before + 3
    })
    .await;
    let s = status(&kube, "dave");
    assert!(unknown(&s), "{s}");
    let eligibility = s["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["kind"] == "GroupEligible").cloned())
        .unwrap_or(Value::Null);
    assert!(
        eligibility["note"]
            .as_str()
            .is_some_and(|n| n.contains("PrivilegedEligibilitySchedule.Read.AzureADGroup")),
        "{eligibility}"
    );
    assert_ne!(delivered(&s)["status"], "True", "{s}");
    assert!(
        crate::fault_support::reprocess_calls(&sim, false).is_empty(),
        "nothing is reprocessed on an unread eligibility"
    );
    running.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_role_taken_from_everyone_at_once_trips_the_breaker_before_any_reprocess() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let names: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let sim = Simulator::start(scenario_for(&refs), SimOptions::fast())
        .await
        .unwrap();
    let kube = FakeKube::start(refs.iter().map(|u| declaration(u)).collect())
        .await
        .unwrap();
    let settings = Settings {
        delta_interval: Duration::from_millis(500),
        verify_interval: Duration::from_secs(600),
        poll_interval: Duration::from_secs(1),
        observation_max_age: Duration::from_millis(500),
        ..crate::controller_support::settings()
    };
    let running = start(&kube, &sim, settings).await;
    wait_until(
        "everyone is verified delivered",
        Duration::from_secs(30),
        || {
            refs.iter()
                .all(|u| delivered(&status(&kube, u))["status"] == "True")
        },
    )
    .await;
    sim.clear_request_log();
    // Right after a poll has read the role eligibilities, so that all twelve removals fall
    // in one poll's window (a poll between them would see a few, under the breaker's
    // threshold, and let those be repaired).
    wait_until(
        "a delta poll read the role eligibilities",
        Duration::from_secs(20),
        || {
            sim.count_requests(
                "GET",
                "/v1.0/roleManagement/directory/roleEligibilitySchedules",
            ) > 0
        },
    )
    .await;
    let reconciled = || running.reconciled("AccessPackageAssignment");
    let before_removals = reconciled();
    // An admin takes Global Reader from all twelve at once: more than the breaker's 10 %
    // and at least 10 of the package.
    for u in &refs {
        assert!(
            sim.remove_directory_role("Global Reader", &format!("{u}@fabrikam.com"), true)
                .unwrap()
        );
    }
    wait_until("every removal is detected", Duration::from_secs(30), || {
        refs.iter().all(|u| {
            missing(&status(&kube, u))
                .contains(&"EntraRole Global Reader Eligible Member".to_string())
        })
    })
    .await;
    // A reprocess would go out in the reconcile that found the removal (its status, written
    // ahead of a send, can show the drift a moment before the send); a held object looks
    // again only at its verify interval (10 minutes here). Wait until each object's
    // detecting reconcile has ended.
    wait_until(
        "every object's detecting reconcile has ended",
        Duration::from_secs(20),
        || reconciled() >= before_removals + refs.len() as u64,
    )
    .await;
    assert!(
        crate::fault_support::reprocess_calls(&sim, false).is_empty(),
        "counted against the breaker before the first repair: nothing reprocessed"
    );
    let stalled: Vec<Value> = refs
        .iter()
        .filter_map(|u| {
            status(&kube, u)["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Stalled").cloned())
        })
        .collect();
    assert!(
        stalled.iter().any(|c| c["reason"] == "MassDrift"),
        "{stalled:?}"
    );
    running.stop().await;
    sim.shutdown().await;
}

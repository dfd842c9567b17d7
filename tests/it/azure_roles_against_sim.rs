//! Azure roles an access package grants (origin system `AzureResources`), verified
//! through the simulator's Azure Resource Manager over real HTTP on 127.0.0.1: a second
//! token audience with the same credential, ARM paging (`nextLink`) and throttling
//! (`Retry-After`, `x-ms-ratelimit-remaining-subscription-reads`). A role removed on a
//! resource group is detected and repaired; a scope the app cannot read leaves the role
//! `Unverifiable`, naming the permission and the scope, and the assignment `Delivered`;
//! 200 assignments promising the same role cost one paged read.

use redeliver::api::{RoleKind, RoleMode};
use std::path::Path;
use std::time::Duration;

use redeliver::api::ResourceState;
use redeliver::engine;
use redeliver::observe::Observer;
use redeliver_sim::{Scenario, SimHandle, SimOptions, Simulator};

use crate::fault_support::{audit_json, fabrikam_declarations, processing_after, report_row};

const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const SUBSCRIPTION: &str = "828b526f-c769-4b19-9797-734b4843b978";

fn fast() -> SimOptions {
    processing_after(Duration::from_millis(200))
}

fn rg_scope() -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-fin")
}

/// "Finance Platform" grants a group, Contributor (active) on resource group rg-fin and
/// Reader (eligible) on the subscription. alice lost Contributor on rg-fin; bob holds
/// everything; `extra` more users hold everything too.
fn scenario(extra: usize, deny: &[&str]) -> Scenario {
    let users: String = (0..extra)
        .map(|i| format!("    - {{upn: user{i}@fabrikam.com}}\n"))
        .collect();
    let assignments: String = (0..extra)
        .map(|i| {
            format!(
                "    - {{user: user{i}@fabrikam.com, package: Finance Platform, state: delivered}}\n"
            )
        })
        .collect();
    let deny: String = deny.iter().map(|d| format!("\"{d}\", ")).collect();
    Scenario::from_yaml_str(&format!(
        "apiVersion: sim.redeliver.dev/v1
kind: SimulatorScenario
metadata: {{name: azure}}
spec:
  seed: 11
  tenant: {{name: fabrikam}}
  users:
    - {{upn: alice@fabrikam.com}}
    - {{upn: bob@fabrikam.com}}
{users}  groups:
    - {{name: fin-platform}}
  subscriptions:
    - {{name: Finance, id: {SUBSCRIPTION}, resourceGroups: [rg-fin, rg-ops], denyReads: [{deny}]}}
  azureRoles:
    - {{name: Contributor, id: {CONTRIBUTOR}}}
    - {{name: Reader, id: {READER}}}
  catalogs:
    - {{name: Platform}}
  accessPackages:
    - name: Finance Platform
      catalog: Platform
      resources:
        - {{group: fin-platform}}
        - {{azureRole: Contributor, subscription: Finance, resourceGroup: rg-fin, role: Active}}
        - {{azureRole: Reader, subscription: Finance, role: Eligible}}
  assignments:
    - {{user: alice@fabrikam.com, package: Finance Platform, state: delivered, missing: [Contributor]}}
    - {{user: bob@fabrikam.com, package: Finance Platform, state: delivered}}
{assignments}"
    ))
    .expect("valid scenario")
}

fn declarations(dir: &Path, users: &[String]) {
    fabrikam_declarations(dir, "platform", "Finance Platform", users);
}

fn row<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report_row(report, &format!("platform/{name}"))
}

fn arm_requests(sim: &SimHandle, list: &str) -> Vec<redeliver_sim::LogEntry> {
    sim.request_log()
        .into_iter()
        .filter(|e| e.path.starts_with("/arm/") && e.path.contains(list))
        .collect()
}

#[tokio::test]
async fn azure_role_removed_on_a_resource_group_is_detected_and_repaired() {
    let sim = Simulator::start(scenario(0, &[]), fast()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    declarations(dir.path(), &["alice".into(), "bob".into()]);
    let rg = rg_scope();
    assert!(!sim.has_azure_role("Contributor", &rg, "alice@fabrikam.com", false));

    let (code, report, stderr) = audit_json(&sim, dir.path(), &[]).await;
    assert_eq!(code, 2, "drift found\n{report}\n{stderr}");
    let alice = row(&report, "alice");
    assert_eq!(
        alice["missing"],
        serde_json::json!([format!("AzureRole Contributor (Active, {rg})")])
    );
    assert_eq!(row(&report, "bob")["verdict"], "Delivered");
    // ARM was called with its own token audience: the simulator's ARM refuses Graph tokens
    // (and Graph refuses ARM's), so any answer but 401 shows the second token was used.
    let reads = arm_requests(&sim, "/roleAssignments");
    assert!(!reads.is_empty());
    assert!(reads.iter().all(|e| e.status == 200), "{reads:?}");
    assert!(
        reads[0].path.contains("api-version=2022-04-01"),
        "{}",
        reads[0].path
    );

    let (code, report, stderr) =
        audit_json(&sim, dir.path(), &["--reprocess", "--wait", "20s"]).await;
    assert_eq!(code, 0, "repaired\n{report}\n{stderr}");
    assert_eq!(row(&report, "alice")["verdict"], "Delivered");
    assert!(sim.has_azure_role("Contributor", &rg, "alice@fabrikam.com", false));

    // An Azure admin removes bob's eligible Reader on the subscription: drift again.
    let sub = format!("/subscriptions/{SUBSCRIPTION}");
    assert!(
        sim.remove_azure_role("Reader", &sub, "bob@fabrikam.com", true)
            .unwrap()
    );
    let (code, report, _) = audit_json(&sim, dir.path(), &[]).await;
    assert_eq!(code, 2);
    assert_eq!(
        row(&report, "bob")["missing"],
        serde_json::json!([format!("AzureRole Reader (Eligible, {sub})")])
    );
    sim.shutdown().await;
}

async fn status_for(sim: &SimHandle, upn: &str) -> redeliver::api::AccessPackageAssignmentStatus {
    status_with(sim, crate::fault_support::graph_client(sim).unwrap(), upn).await
}

async fn status_with(
    sim: &SimHandle,
    client: redeliver::graph::GraphClient,
    upn: &str,
) -> redeliver::api::AccessPackageAssignmentStatus {
    let _ = sim;
    let observer = Observer::new(client, 4);
    let plan =
        crate::fault_support::first_plan(&observer, "platform", "Finance Platform", upn).await;
    assert!(
        !matches!(plan.action, engine::Action::Write(_)),
        "{:?}",
        plan.action
    );
    plan.status
}

#[tokio::test]
async fn a_scope_without_reader_is_unverifiable_naming_permission_and_scope_and_stays_delivered() {
    let rg = rg_scope();
    let sim = Simulator::start(scenario(0, &[&rg]), fast()).await.unwrap();
    let status = status_for(&sim, "bob@fabrikam.com").await;
    let role = status
        .resources
        .iter()
        .find(|r| r.kind == Some(RoleKind::AzureRole) && r.mode == Some(RoleMode::Active))
        .expect("Contributor in status");
    assert_eq!(role.state, ResourceState::Unverifiable);
    assert_eq!(role.scope.as_deref(), Some(rg.as_str()));
    let note = role.note.as_deref().unwrap_or_default();
    assert!(
        note.contains("Microsoft.Authorization/roleAssignments/read") && note.contains(&rg),
        "permission and scope named: {note}"
    );
    // The rest is present: Delivered, counting only what could be verified.
    assert_eq!(status.resources_summary.as_deref(), Some("2/2"));
    let delivered = engine::conditions::find(
        &status.conditions,
        engine::conditions::ConditionType::Delivered,
    )
    .expect("Delivered condition");
    assert_eq!(delivered.status, "True", "{delivered:?}");

    // Alice lacks Contributor, but nobody can see it: no reprocess for it either.
    let dir = tempfile::tempdir().unwrap();
    declarations(dir.path(), &["alice".into()]);
    let (code, report, stderr) = audit_json(&sim, dir.path(), &["--reprocess"]).await;
    assert_eq!(code, 0, "nothing verifiable is missing\n{report}\n{stderr}");
    assert_eq!(row(&report, "alice")["verdict"], "Delivered");
    assert_eq!(
        sim.count_requests(
            "POST",
            "/v1.0/identityGovernance/entitlementManagement/assignments/"
        ),
        0,
        "an unverifiable role never triggers a reprocess"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn arm_throttling_is_waited_out_with_retry_after() {
    let sim = Simulator::start(scenario(0, &[]), fast()).await.unwrap();
    // ARM answers the first role read with 429 and Retry-After: the client waits it out
    // and reads again; Graph's calls are not held back by ARM's gate.
    let fault: redeliver_sim::FaultSpec = serde_json::from_value(serde_json::json!({
        "kind": "throttle", "retryAfter": 0.4, "count": 1, "pathPrefix": "/arm/"
    }))
    .unwrap();
    sim.inject_fault(fault);
    let status = status_for(&sim, "bob@fabrikam.com").await;
    assert_eq!(
        status.resources_summary.as_deref(),
        Some("3/3"),
        "{status:?}"
    );
    let reads = arm_requests(&sim, "/providers/Microsoft.Authorization/");
    let throttled: Vec<_> = reads.iter().filter(|e| e.status == 429).collect();
    assert_eq!(throttled.len(), 1, "{reads:?}");
    // The refused read went out again only after the wait (a read already in flight
    // when the 429 arrived was not held).
    let after = reads
        .iter()
        .filter(|e| e.status == 200 && e.path == throttled[0].path)
        .map(|e| e.time_ms)
        .min()
        .unwrap();
    assert!(
        after >= throttled[0].time_ms + 400,
        "ARM's Retry-After was respected: {reads:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn arm_read_quota_header_holds_arm_calls_back_before_a_429() {
    let sim = Simulator::start(scenario(0, &[]), fast()).await.unwrap();
    // One ARM read per second: the first answer says none are left
    // (`x-ms-ratelimit-remaining-subscription-reads: 0`), so the second read waits for the
    // quota instead of being sent into a certain 429.
    sim.set_arm_read_quota(Some((1, Duration::from_secs(1))));
    // One call in flight at a time, so the second read is sent after the first answer.
    let client = crate::fault_support::client_with(&sim, |a| a.graph_concurrency = 1);
    let status = status_with(&sim, client, "bob@fabrikam.com").await;
    assert_eq!(
        status.resources_summary.as_deref(),
        Some("3/3"),
        "{status:?}"
    );
    let reads = arm_requests(&sim, "/providers/Microsoft.Authorization/");
    assert_eq!(
        reads.len(),
        2,
        "one read per (scope, mode), no 429: {reads:?}"
    );
    assert!(reads.iter().all(|e| e.status == 200), "{reads:?}");
    let mut times: Vec<u64> = reads.iter().map(|e| e.time_ms).collect();
    times.sort_unstable();
    assert!(
        times[1] >= times[0] + 900,
        "the second read waited: {reads:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn two_hundred_assignments_promising_the_same_azure_role_share_one_paged_read() {
    let sim = Simulator::start(scenario(198, &[]), fast()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut users: Vec<String> = (0..198).map(|i| format!("user{i}")).collect();
    users.extend(["alice".to_string(), "bob".to_string()]);
    declarations(dir.path(), &users);
    sim.clear_request_log();

    let (code, report, stderr) = audit_json(&sim, dir.path(), &[]).await;
    assert_eq!(code, 2, "alice drifted\n{stderr}");
    assert_eq!(report["summary"]["delivered"], 199);
    // 199 Contributor holders on rg-fin, at ARM's page of 100 in the simulator: two pages
    // of one read, not one read per assignment. The same for the eligible Reader (200).
    let active = arm_requests(
        &sim,
        "/resourceGroups/rg-fin/providers/Microsoft.Authorization/roleAssignments",
    );
    assert_eq!(active.len(), 2, "one paged read: {active:?}");
    assert!(active[1].path.contains("skipToken"), "{}", active[1].path);
    let eligible = arm_requests(&sim, "/roleEligibilityScheduleInstances");
    assert_eq!(eligible.len(), 2, "one paged read: {eligible:?}");
    // The token endpoint was asked twice: Graph's audience and ARM's.
    let tokens = sim
        .request_log()
        .into_iter()
        .filter(|e| e.path.contains("/oauth2/v2.0/token"))
        .count();
    assert_eq!(tokens, 2, "one token per audience");
    sim.shutdown().await;
}

async fn raw_token(c: &reqwest::Client, sim: &SimHandle, scope: &str) -> String {
    let resp = c
        .post(sim.token_url())
        .form(&[
            ("client_id", sim.client_id.as_str()),
            ("client_secret", sim.client_secret.as_str()),
            ("scope", scope),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK, "token for {scope}");
    let v: serde_json::Value = resp.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_simulators_arm_has_its_own_audience_api_versions_and_paging() {
    let sim = Simulator::start(scenario(150, &[]), fast()).await.unwrap();
    let c = reqwest::Client::new();
    let graph = raw_token(&c, &sim, "https://graph.microsoft.com/.default").await;
    let arm = raw_token(&c, &sim, &format!("{}/.default", sim.arm_url)).await;
    let assignments = format!(
        "{}{}/providers/Microsoft.Authorization/roleAssignments",
        sim.arm_url,
        rg_scope()
    );
    let get = |url: String, tok: String| {
        let c = c.clone();
        async move {
            let resp = c.get(url).bearer_auth(tok).send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            (status, headers, body)
        }
    };
    // A Graph token is refused by ARM, an ARM token by Graph.
    let (status, _, body) = get(
        format!("{assignments}?api-version=2022-04-01"),
        graph.clone(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = get(format!("{}/v1.0/users", sim.graph_url), arm.clone()).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(format!("{}/v1.0/users", sim.graph_url), graph).await;
    assert_eq!(status, 200);
    // ARM wants its api-version.
    let (status, _, body) = get(assignments.clone(), arm.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("MissingApiVersionParameter"))
    );
    // 151 Contributor holders on rg-fin (bob and the 150 extra users; alice lost hers):
    // two pages, the second reached by `nextLink`.
    let (status, _, page1) = get(
        format!("{assignments}?api-version=2022-04-01&$filter=atScope()"),
        arm.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page1["value"].as_array().unwrap().len(), 100);
    let first = &page1["value"][0]["properties"];
    assert_eq!(
        first["roleDefinitionId"],
        format!(
            "/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{CONTRIBUTOR}"
        )
    );
    assert_eq!(first["scope"], rg_scope());
    let next = page1["nextLink"].as_str().unwrap().to_string();
    let (_, _, page2) = get(next, arm.clone()).await;
    assert_eq!(page2["value"].as_array().unwrap().len(), 51);
    assert!(page2.get("nextLink").is_none());
    // With a read quota, answers say how many reads are left, then 429 with Retry-After.
    sim.set_arm_read_quota(Some((1, Duration::from_secs(30))));
    let url = format!("{assignments}?api-version=2022-04-01");
    let (status, headers, _) = get(url.clone(), arm.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ms-ratelimit-remaining-subscription-reads"], "0");
    let (status, headers, _) = get(url, arm).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    sim.shutdown().await;
}

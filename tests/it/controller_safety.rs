//! Intent before repair (issue #21), the controller against the simulator over HTTP on
//! 127.0.0.1 (Kubernetes through the `ApiServerVerifier` pattern of `controller_attribution`):
//!
//! - a disabled target gets no reprocess (the simulator's request log says so) and its
//!   object says `TargetDisabled`; re-enabled, the next pass (one delta interval later)
//!   repairs it; a deleted target likewise (`TargetDeleted`);
//! - a removal by a respected actor (by user principal name, by application id, by
//!   membership of a respected group) gets no reprocess and names the actor; the same
//!   removal by anyone else is repaired;
//! - while actors are respected and the audit log lags, the repair waits no longer than
//!   `safety.attributionWait`;
//! - a 30 % mass removal in a 1,000-assignment package trips a guard's breaker before any
//!   reprocess is sent; after the acknowledgement annotation, repairs proceed at the
//!   configured rate;
//! - a healthy object costs no account read.

use std::sync::Arc;
use std::time::Duration;

use redeliver::api::{AccessPackageAssignment, AccessPackageGuard};
use redeliver::controller::{Settings, guard};
use redeliver_sim::{Scenario, SimHandle, SyntheticTenant};
use serde_json::{Value, json};

use crate::controller_attribution::{Env, condition, env, env_with, for_user, with_status};

/// Graph calls that change access: reprocesses and assignment requests.
fn grants(sim: &SimHandle) -> usize {
    sim.request_log()
        .iter()
        .filter(|e| {
            e.method == "POST"
                && (e.path.ends_with("/reprocess") || e.path.ends_with("/assignmentRequests"))
        })
        .count()
}

/// Account reads of the gate: users read by object id (a declaration's user is resolved
/// by its principal name, and only when it holds no assignment).
fn account_reads(sim: &SimHandle) -> usize {
    sim.request_log()
        .iter()
        .filter(|e| e.method == "GET")
        .filter_map(|e| e.path.strip_prefix("/v1.0/users/"))
        .filter(|rest| !rest.contains('@'))
        .count()
}

fn settings() -> Settings {
    // Every pass reads memberships and accounts afresh (in a cluster, group delta drops a
    // changed group's cached read), so a test need not wait out the caches.
    Settings {
        account_max_age: Duration::ZERO,
        observation_max_age: Duration::ZERO,
        ..Settings::default()
    }
}

fn with_safety(obj: &AccessPackageAssignment, safety: Value) -> AccessPackageAssignment {
    let mut v = serde_json::to_value(obj).unwrap();
    v["spec"]["safety"] = safety;
    serde_json::from_value(v).unwrap()
}

fn reasons(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["reason"].as_str()).collect()
}

#[tokio::test]
async fn a_disabled_target_gets_no_reprocess_until_it_is_enabled_again() {
    let Env {
        sim, ctx, mut api, ..
    } = env(settings()).await;
    let bob = for_user("bob-finance", "bob@contoso.com");
    // Healthy: verified with no account read at all.
    let (status, _) = api.reconcile(&ctx, &bob).await;
    assert_eq!(condition(&status, "Delivered")["status"], "True");
    assert_eq!(
        account_reads(&sim),
        0,
        "a healthy object costs no account read"
    );

    sim.set_account_enabled("bob@contoso.com", false).unwrap();
    sim.remove_member("fin-writers", "bob@contoso.com").unwrap();
    sim.clear_request_log();
    let (held, events) = api.reconcile(&ctx, &with_status(&bob, &status)).await;
    assert_eq!(grants(&sim), 0, "nothing granted to a disabled account");
    assert_eq!(account_reads(&sim), 1, "{:#?}", sim.request_log());
    for type_ in ["Delivered", "Stalled", "Ready"] {
        assert_eq!(
            condition(&held, type_)["reason"],
            "TargetDisabled",
            "{held}"
        );
    }
    let message = condition(&held, "Stalled")["message"].as_str().unwrap();
    assert!(message.contains("Re-enable the account"), "{message}");
    assert_eq!(reasons(&events), ["DriftDetected", "TargetHeld"]);

    // A leaver stays held on the next pass, with no new event.
    let (again, events) = api.reconcile(&ctx, &with_status(&bob, &held)).await;
    assert!(again.is_null() || condition(&again, "Stalled")["reason"] == "TargetDisabled");
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(grants(&sim), 0);

    // Re-enabled: the next pass (the hold is looked at again each delta interval) repairs.
    sim.set_account_enabled("bob@contoso.com", true).unwrap();
    let (repairing, events) = api.reconcile(&ctx, &with_status(&bob, &held)).await;
    assert_eq!(grants(&sim), 1, "{repairing}");
    assert!(
        reasons(&events).contains(&"ReprocessRequested"),
        "{events:?}"
    );
    assert_eq!(condition(&repairing, "Stalled"), &Value::Null);
    // Traceable: the write carried the client-request-id the status and the event name.
    let id = repairing["lastClientRequestId"]
        .as_str()
        .unwrap_or_else(|| panic!("no lastClientRequestId: {repairing}"))
        .to_string();
    let sent = sim
        .request_log()
        .into_iter()
        .find(|e| e.method == "POST" && e.path.ends_with("/reprocess"))
        .unwrap();
    assert_eq!(sent.client_request_id.as_deref(), Some(id.as_str()));
    let note = events
        .iter()
        .find(|e| e["reason"] == "ReprocessRequested")
        .and_then(|e| e["note"].as_str())
        .unwrap();
    assert!(
        note.contains("fin-writers") && note.ends_with(&format!("client-request-id: {id}.")),
        "what was granted back, why, and the id: {note}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_deleted_target_gets_no_write() {
    let Env {
        sim, ctx, mut api, ..
    } = env(settings()).await;
    let id = sim.user_id("bob@contoso.com").unwrap();
    let bob: AccessPackageAssignment = {
        let mut v = serde_json::to_value(for_user("bob-finance", "bob@contoso.com")).unwrap();
        v["spec"]["target"] = json!({"objectId": id});
        serde_json::from_value(v).unwrap()
    };
    sim.delete_user("bob@contoso.com").unwrap();
    sim.clear_request_log();
    // A declaration of a deleted user no longer resolves: stalled, nothing written.
    let (status, _) = api.reconcile(&ctx, &bob).await;
    assert_eq!(grants(&sim), 0, "{status}");
    assert_eq!(
        condition(&status, "Stalled")["reason"],
        "TargetNotFound",
        "{status}"
    );

    // A guard still sees the assignment entitlement management keeps for a deleted user,
    // now missing its groups: the gate reads the account (404) and holds it.
    let finance = sim.package_id("Finance Analysts").unwrap();
    let guard: AccessPackageGuard = serde_json::from_value(json!({
        "apiVersion": "redeliver.dev/v1alpha1",
        "kind": "AccessPackageGuard",
        "metadata": {"name": "finance", "namespace": "access", "uid": "uid-g",
                     "generation": 1, "resourceVersion": "1"},
        "spec": {"accessPackage": {"id": finance}},
    }))
    .unwrap();
    let task = tokio::spawn(guard::reconcile(Arc::new(guard.clone()), ctx.clone()));
    let (status, events) = api.drive(&guard, task).await;
    let held: Vec<&Value> = status["drifted"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["targetObjectId"] == json!(id))
        .collect();
    assert_eq!(held.len(), 1, "{status}");
    let why = held[0]["held"].as_str().unwrap_or_default();
    assert!(why.starts_with("TargetDeleted: "), "{why}");
    assert_eq!(status["assignments"]["held"], 1, "{status}");
    let bob_assignment = held[0]["assignmentId"].as_str().unwrap().to_string();
    assert_eq!(
        crate::fault_support::reprocess_calls(&sim, false).get(&bob_assignment),
        None,
        "no reprocess for the deleted user's assignment"
    );
    assert!(reasons(&events).contains(&"DriftDetected"), "{events:?}");
    sim.shutdown().await;
}

/// Removes bob from fin-writers as `actor`, reconciles bob's declaration with `safety`, and
/// returns the status and events.
async fn removed_by(env: &mut Env, actor: &str, safety: Value) -> (Value, Vec<Value>) {
    assert!(
        env.sim
            .remove_member_by("fin-writers", "bob@contoso.com", actor)
            .unwrap()
    );
    env.sim.clear_request_log();
    let bob = with_safety(&for_user("bob-finance", "bob@contoso.com"), safety);
    env.api.reconcile(&env.ctx, &bob).await
}

fn removal(status: &Value) -> Value {
    status["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["displayName"] == "fin-writers"))
        .map(|r| r["removedBy"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_removal_by_a_respected_user_is_not_undone_and_names_the_actor() {
    let mut env = env(settings()).await;
    let safety = json!({"respectedActors": {"userPrincipalNames": ["SOC-Lead@contoso.com"]}});
    let (status, events) = removed_by(&mut env, "soc-lead@contoso.com", safety.clone()).await;
    assert_eq!(grants(&env.sim), 0, "{status}");
    assert_eq!(
        condition(&status, "Stalled")["reason"],
        "RemovedDeliberately"
    );
    let message = condition(&status, "Stalled")["message"].as_str().unwrap();
    assert!(
        message.contains("soc-lead@contoso.com") && message.contains("Remove member from group"),
        "{message}"
    );
    let by = removal(&status);
    assert_eq!(by["actorKind"], "User", "{status}");
    assert_eq!(by["actorName"], "soc-lead@contoso.com");
    assert_eq!(by["activity"], "Remove member from group");
    assert!(by["time"].is_string());
    assert!(
        reasons(&events).contains(&"RemovedDeliberately"),
        "{events:?}"
    );

    // The same removal by someone else is a fault: repaired.
    let mut env2 = crate::controller_attribution::env(settings()).await;
    let (status, _) = removed_by(&mut env2, "intern@contoso.com", safety).await;
    assert_eq!(grants(&env2.sim), 1, "{status}");
    env.sim.shutdown().await;
    env2.sim.shutdown().await;
}

#[tokio::test]
async fn a_removal_by_a_respected_application_is_not_undone() {
    let mut env = env(settings()).await;
    // The simulator names an app actor by display name; its app id is what the audit log
    // carries, so read it from there as an administrator would.
    env.sim
        .add_member("fin-readers", "carol@contoso.com")
        .unwrap();
    env.sim
        .remove_member_by("fin-readers", "carol@contoso.com", "Leaver Workflow")
        .unwrap();
    let entries = crate::fault_support::graph_client(&env.sim)
        .unwrap()
        .list_directory_audits("activityDisplayName eq 'Remove member from group'", 1)
        .await
        .unwrap();
    let app_id = entries
        .iter()
        .find_map(|e| e.initiated_by.app.as_ref().and_then(|a| a.app_id.clone()))
        .expect("the app's removal is in the audit log");
    let safety = json!({"respectedActors": {"applicationIds": [app_id]}});
    let (status, _) = removed_by(&mut env, "Leaver Workflow", safety).await;
    assert_eq!(grants(&env.sim), 0, "{status}");
    assert_eq!(
        condition(&status, "Stalled")["reason"],
        "RemovedDeliberately"
    );
    assert_eq!(removal(&status)["actorKind"], "Application");
    assert_eq!(removal(&status)["actorId"], json!(app_id));
    env.sim.shutdown().await;
}

#[tokio::test]
async fn a_removal_by_a_member_of_a_respected_group_is_not_undone() {
    let mut env = env(settings()).await;
    // eng-tools stands in for a security-responders group; erin is a responder.
    env.sim.add_member("eng-tools", "erin@contoso.com").unwrap();
    let responders = env.sim.group_id("eng-tools").unwrap();
    let safety = json!({"respectedActors": {"groupIds": [responders]}});
    let (status, _) = removed_by(&mut env, "erin@contoso.com", safety.clone()).await;
    assert_eq!(grants(&env.sim), 0, "{status}");
    let message = condition(&status, "Stalled")["message"].as_str().unwrap();
    assert!(message.contains("member of a respected group"), "{message}");
    assert_eq!(
        removal(&status)["actorId"],
        json!(env.sim.user_id("erin@contoso.com").unwrap())
    );

    // dave is no responder: his removal of bob is repaired.
    let mut env2 = crate::controller_attribution::env(settings()).await;
    let (status, _) = removed_by(&mut env2, "dave@contoso.com", safety).await;
    assert_eq!(grants(&env2.sim), 1, "{status}");
    env.sim.shutdown().await;
    env2.sim.shutdown().await;
}

#[tokio::test]
async fn with_the_audit_log_lagging_the_repair_waits_no_longer_than_the_bound() {
    let mut env = env(settings()).await;
    env.sim.set_audit_lag(jiff::SignedDuration::from_hours(1));
    let safety = json!({
        "respectedActors": {"userPrincipalNames": ["soc-lead@contoso.com"]},
        "attributionWait": "5m"
    });
    let (status, _) = removed_by(&mut env, "admin@contoso.com", safety.clone()).await;
    assert_eq!(grants(&env.sim), 0, "waits for the audit log: {status}");
    let reconciling = condition(&status, "Reconciling");
    assert_eq!(reconciling["reason"], "AwaitingAttribution", "{status}");
    // The removal was first seen missing 5 minutes ago (the status says when): the bound
    // has passed, so the next pass repairs although the audit log still says nothing.
    let mut earlier = status.clone();
    for r in earlier["resources"].as_array_mut().unwrap() {
        if r["state"] == "Missing" {
            let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(301);
            r["missingSince"] = json!(since.round(jiff::Unit::Second).unwrap().to_string());
        }
    }
    let bob = with_safety(&for_user("bob-finance", "bob@contoso.com"), safety);
    let (status, _) = env
        .api
        .reconcile(&env.ctx, &with_status(&bob, &earlier))
        .await;
    assert_eq!(
        grants(&env.sim),
        1,
        "repaired once the bound passed: {status}"
    );
    env.sim.shutdown().await;
}

fn guard_of(sim: &SimHandle, annotations: Value, status: Option<&Value>) -> AccessPackageGuard {
    let package = sim
        .package_id(&SyntheticTenant::package_name(0))
        .expect("the synthetic package");
    serde_json::from_value(json!({
        "apiVersion": "redeliver.dev/v1alpha1",
        "kind": "AccessPackageGuard",
        "metadata": {
            "name": "mass", "namespace": "access", "uid": "uid-mass",
            "generation": 1, "resourceVersion": "100", "annotations": annotations
        },
        "spec": {"accessPackage": {"id": package}, "maxReprocessPerSweep": 50},
        "status": status.cloned().unwrap_or(Value::Null),
    }))
    .unwrap()
}

async fn sweep(env: &mut Env, obj: &AccessPackageGuard) -> (Value, Vec<Value>) {
    let task = tokio::spawn(guard::reconcile(Arc::new(obj.clone()), env.ctx.clone()));
    env.api.drive(obj, task).await
}

#[tokio::test]
async fn a_mass_removal_trips_the_breaker_before_any_reprocess_and_an_acknowledgement_resumes() {
    let scenario = Scenario::synthetic_tenant(&crate::fault_support::one_package());
    let mut env = env_with(scenario, settings()).await;
    let group = SyntheticTenant::group_name(0);
    for i in 0..crate::fault_support::ONE_PACKAGE_SIZE * 3 / 10 {
        env.sim
            .remove_member(&group, &format!("user{i}@mass.com"))
            .unwrap();
    }
    env.sim.clear_request_log();
    let mass = guard_of(&env.sim, json!({}), None);
    let (status, events) = sweep(&mut env, &mass).await;
    assert_eq!(grants(&env.sim), 0, "no reprocess before a person looks");
    assert_eq!(
        account_reads(&env.sim),
        0,
        "nothing to confirm while stopped"
    );
    assert_eq!(
        condition(&status, "Stalled")["reason"],
        "MassDrift",
        "{status}"
    );
    let message = condition(&status, "Stalled")["message"].as_str().unwrap();
    assert!(message.contains("300 of 1000"), "{message}");
    assert_eq!(status["massDrift"]["drifted"], 300);
    assert_eq!(status["massDrift"]["delivered"], 1000);
    assert!(reasons(&events).contains(&"MassDrift"), "{events:?}");

    // Acknowledged: repairs proceed, bounded by maxReprocessPerSweep and by the
    // connection's reprocess rate (30 a minute by default).
    let ack = json!({"redeliver.dev/mass-drift-acknowledged-at": "2026-12-04T10:00:00Z"});
    let acknowledged = guard_of(&env.sim, ack, Some(&status));
    let (status, _) = sweep(&mut env, &acknowledged).await;
    let sent = grants(&env.sim);
    assert_eq!(sent, 30, "the rate bounds the first sweep: {status}");
    assert!(
        status["massDrift"]["acknowledgedTime"].is_string(),
        "{status}"
    );
    assert_eq!(condition(&status, "Stalled"), &Value::Null, "{status}");
    // Each reprocess sent is traceable: its drift entry names the client-request-id it
    // carried, and nothing not sent claims one.
    let traced: Vec<(String, String)> = status["drifted"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| {
            Some((
                d["assignmentId"].as_str()?.to_string(),
                d["lastClientRequestId"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(traced.len(), 30, "{status}");
    let log = env.sim.request_log();
    for (assignment, id) in &traced {
        assert!(
            log.iter()
                .any(|e| e.path.ends_with(&format!("{assignment}/reprocess"))
                    && e.client_request_id.as_deref() == Some(id.as_str())),
            "{assignment} was sent with {id}"
        );
    }
    // The 30 targets' accounts were confirmed before the writes, batched (20 to an
    // envelope), not read one request per repair.
    let batched = env
        .sim
        .request_log()
        .iter()
        .filter(|e| e.batch && e.method == "GET" && e.path.starts_with("/v1.0/users/"))
        .count();
    assert_eq!((account_reads(&env.sim), batched), (30, 30));
    env.sim.shutdown().await;
}

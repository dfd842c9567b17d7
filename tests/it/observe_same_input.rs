//! `redeliver audit` and the controller cannot disagree: for the same tenant state they
//! compute the same engine input (one observation function over their two read caches) and
//! so the same decision — and what `audit -o json` prints is that decision. Over the demo
//! tenant and the repository's own example declarations (`examples/*.yaml`).

use std::path::PathBuf;
use std::time::Duration;

use redeliver::api::AccessPackageAssignment;
use redeliver::controller::observation::Observations;
use redeliver::engine::{Action, EngineSettings, Write};
use redeliver::observe::{Observer, observe_assignment, observe_guard};
use redeliver_audit::load::load_paths;
use redeliver_sim::{Scenario, SimHandle, Simulator};

use crate::fault_support::{fast, plan_first_visit};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The action as `redeliver audit` (without `--reprocess`) names it.
fn audit_action(action: &Action) -> String {
    match action {
        Action::None => "none".into(),
        Action::Write(Write::RequestAssignment { .. }) => "would request assignment".into(),
        Action::Write(Write::ReprocessAssignment { .. }) => "would reprocess".into(),
        Action::Write(Write::ReprocessRequest { .. }) => "would reprocess request".into(),
        Action::Wait { reason } => format!("wait ({reason})"),
        // A safety rail's hold: its reason leads the row's message.
        Action::GiveUp { reason } if redeliver::engine::is_hold(*reason) => "held".into(),
        Action::GiveUp { reason } => format!("none ({reason})"),
    }
}

#[tokio::test]
async fn audit_and_controller_observe_and_decide_the_same() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::demo(), fast()).await.unwrap();
    let decls = load_paths(&[examples()]).expect("the examples load");
    assert!(decls.assignments.len() >= 4, "{}", decls.assignments.len());
    assert!(!decls.guards.is_empty());
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    let reads = Reads {
        audit: Observer::new(graph.clone(), 4),
        controller: Observations::new(graph, Duration::from_secs(30), 8),
        accounts: redeliver::observe::safety::SafetyReads::default(),
    };
    let now = jiff::Timestamp::now();

    let mut decisions = Vec::new();
    for (_, apa) in &decls.assignments {
        decisions.push(reads.decide_both_ways(apa, now).await);
    }
    // The demo's story: alice drifted, carol unassigned, dave's request failed.
    let action_of = |name: &str| {
        decisions
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, a)| a.clone())
    };
    assert_eq!(
        action_of("alice-finance").as_deref(),
        Some("would reprocess")
    );
    assert_eq!(
        action_of("carol-finance").as_deref(),
        Some("would request assignment")
    );
    assert_eq!(
        action_of("dave-engineering").as_deref(),
        Some("would reprocess request")
    );

    for (_, guard) in &decls.guards {
        let from_audit = observe_guard(&reads.audit, &guard.spec).await.unwrap();
        let from_controller = observe_guard(&reads.controller, &guard.spec).await.unwrap();
        assert_eq!(from_audit, from_controller);
    }

    // And the audit binary prints exactly these decisions.
    let report = audit_examples(&sim).await;
    for (name, assignment_id, action) in &decisions {
        let row = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["declaration"] == format!("access/{name}"))
            .unwrap_or_else(|| panic!("no row for {name}: {report}"));
        assert_eq!(row["action"], action.as_str(), "{row}");
        assert_eq!(
            row["assignmentId"].as_str(),
            assignment_id.as_deref(),
            "{row}"
        );
    }
    sim.shutdown().await;
}

/// Audit's read cache and the controller's, over one simulator, and the account gate's
/// reader they share.
struct Reads {
    audit: Observer,
    controller: Observations,
    accounts: redeliver::observe::safety::SafetyReads,
}

impl Reads {
    /// Observes `apa` through both caches and plans its first visit from each: the engine
    /// input, the action and the status must be the same. Returns the declaration's name,
    /// the assignment id and the action as audit names it.
    async fn decide_both_ways(
        &self,
        apa: &AccessPackageAssignment,
        now: jiff::Timestamp,
    ) -> (String, Option<String>, String) {
        let from_audit = observe_assignment(&self.audit, &apa.spec, None)
            .await
            .unwrap();
        let from_controller = observe_assignment(&self.controller, &apa.spec, None)
            .await
            .unwrap();
        assert_eq!(
            from_audit,
            from_controller,
            "the same engine input for {}",
            apa.metadata.name.as_deref().unwrap_or_default()
        );
        // The account gate's read, as the drivers make it before a grant: one reader, so
        // the second confirmation is answered from its cache.
        let (mut from_audit, mut from_controller) = (from_audit, from_controller);
        if let Ok(ids) = &from_audit.resolved {
            let target = [ids.target_object_id.clone()];
            for o in [&mut from_audit, &mut from_controller] {
                self.accounts
                    .confirm(
                        self.audit.graph(),
                        &Default::default(),
                        &mut o.snapshot,
                        &target,
                    )
                    .await;
            }
        }
        let who = format!(
            "AccessPackageAssignment {}",
            apa.metadata.name.as_deref().unwrap_or("")
        );
        let settings = EngineSettings::default();
        let a = plan_first_visit(apa, &from_audit, &who, &settings, now);
        let c = plan_first_visit(apa, &from_controller, &who, &settings, now);
        assert_eq!(a.action, c.action);
        assert_eq!(a.status, c.status);
        (
            apa.metadata.name.clone().unwrap_or_default(),
            a.status.assignment_id.clone(),
            audit_action(&a.action),
        )
    }
}

/// `redeliver audit -f examples/ -o json` against `sim`: its report.
async fn audit_examples(sim: &SimHandle) -> serde_json::Value {
    // The same command line every audit test runs: a developer's AZURE_* or REDELIVER_*
    // variables are cleared, so they cannot change what this comparison sees.
    let out = crate::fault_support::audit_command(sim, &examples(), &["-o", "json"])
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

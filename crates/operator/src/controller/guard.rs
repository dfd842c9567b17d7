//! Reconcile (one sweep) of an `AccessPackageGuard`: list every assignment of the package,
//! read each promised resource once, let the engine find the drifted ones, reprocess at
//! most the engine's bounded selection (and within the global budget), write the bounded
//! status only when it changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::Error;
use super::connection::stall_object;
use super::connections::Tenant;
use super::context::{
    Context, error_policy as shared_error_policy, jitter, observe_with_first_status, patch_status,
    reconcile_frame,
};
use super::ledger::name_of;
use super::metrics::ReprocessCall;
use crate::api::{AccessPackageGuard, AccessPackageGuardStatus};
use crate::engine::conditions::first_visit_conditions;
use crate::engine::ledger::{RepairLedger, Undo};
use crate::engine::{
    GuardInput, GuardPlan, guard_status_changed, plan_guard_sweep, record_guard_outcome,
};
use crate::observe::{GuardObservation, observe_guard};

/// The kind label.
pub const KIND: &str = "AccessPackageGuard";

/// Entry point for the controller: a span, a metrics timer and the concurrency slot.
pub async fn reconcile(obj: Arc<AccessPackageGuard>, ctx: Arc<Context>) -> Result<Action, Error> {
    let body = async {
        if obj.meta().deletion_timestamp.is_some() {
            // A guard owns nothing in Entra ID: deletion needs no cleanup.
            Ok(Action::await_change())
        } else {
            sweep(obj.clone(), &ctx).await
        }
    };
    reconcile_frame(&ctx, KIND, obj.as_ref(), body).await
}

/// What to do after a failed sweep (see [`super::context::error_policy`]).
pub fn error_policy(obj: Arc<AccessPackageGuard>, err: &Error, ctx: Arc<Context>) -> Action {
    shared_error_policy(obj, err, ctx)
}

async fn sweep(obj: Arc<AccessPackageGuard>, ctx: &Context) -> Result<Action, Error> {
    let name = obj.name_any();
    let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let status = obj.status.as_ref();
    let spec_changed = status.is_none_or(|s| s.observed_generation != obj.meta().generation);
    let tenant = match ctx
        .connections
        .tenant_for(
            &namespace,
            obj.spec.connection_ref.as_ref(),
            status.and_then(|s| s.connection.as_deref()),
            spec_changed,
        )
        .await
    {
        Ok(t) => t,
        Err(unready) => return stall_object(ctx, obj.as_ref(), status, &unready).await,
    };
    let tenant = tenant.as_ref();
    let api: Api<AccessPackageGuard> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = obj.meta().generation;

    // The first-visit status only if the first sweep's reads are slow (see
    // `FIRST_STATUS_AFTER`).
    let first = obj.status.is_none().then(|| AccessPackageGuardStatus {
        observed_generation: generation,
        access_package_name: Some(obj.spec.access_package.label()),
        conditions: first_visit_conditions(generation, Timestamp::now()),
        ..Default::default()
    });
    // The same observation as `redeliver audit`'s (one function, one read cache).
    let (observed, first) = observe_with_first_status(
        observe_guard(&tenant.observations, &obj.spec),
        first,
        ctx.first_status_after,
        async |first| patch_status(&api, &name, first).await,
    )
    .await?;
    let mut observed = observed?;
    let previous = obj.status.clone().or(first);
    let safety = tenant.safety_policy(obj.spec.safety.as_ref()).await;
    let mass_drift_ack = obj
        .annotations()
        .get(crate::api::MASS_DRIFT_ACK_ANNOTATION)
        .cloned();
    let resolved = observed.resolved.clone();
    let now = Timestamp::now();
    let who = name_of(obj.as_ref());
    // The operator's global rate limit is an input: the plan selects only what may be sent.
    let budget = tenant.reprocess_bucket.available();
    let plan_now = |observed: &GuardObservation, ledger: &RepairLedger| {
        plan_guard_sweep(
            &GuardInput {
                generation,
                spec: &obj.spec,
                previous: previous.as_ref(),
                resolved: resolved.clone(),
                assignments: observed.assignments(),
                resources: observed.resources(),
                snapshot: &observed.snapshot,
                settings: &ctx.engine,
                ledger,
                who: &who,
                reprocess_budget: Some(budget),
                operator_report_only: tenant.reprocess_bucket.is_disabled(),
                reprocess_annotation: obj
                    .annotations()
                    .get(crate::api::REPROCESS_ANNOTATION)
                    .map(String::as_str),
                safety: &safety,
                mass_drift_ack: mass_drift_ack.as_deref(),
                mass_drift_acknowledged: false,
            },
            now,
        )
    };
    let claim = |observed: &GuardObservation| {
        let mut ledger = tenant.ledger();
        let plan = plan_now(observed, &ledger);
        let undo = Undo::apply(&mut ledger, &plan.ledger);
        (plan, undo)
    };
    let (mut plan, mut undo) = claim(&observed);
    // Reprocesses are due: confirm their targets' accounts in one batched read, then sweep
    // again with them. A sweep with nothing to repair is planned once.
    if !plan.needs_accounts.is_empty() {
        let needs_accounts = std::mem::take(&mut plan.needs_accounts);
        undo.restore(&mut tenant.ledger(), None);
        tenant
            .safety
            .confirm(
                tenant.graph(),
                &safety,
                &mut observed.snapshot,
                &needs_accounts,
            )
            .await;
        (plan, undo) = claim(&observed);
    }
    ctx.metrics
        .safety_holds(KIND, &plan.events, &plan.status.conditions);
    let tripped = plan
        .status
        .mass_drift
        .as_ref()
        .is_some_and(|m| m.acknowledged_time.is_none());
    ctx.metrics
        .mass_drift_tripped(KIND, format!("{namespace}/{name}"), usize::from(tripped));
    // An acknowledgement on the guard also resumes the package's declared assignments.
    if let (Some(m), Ok((package_id, _))) = (&plan.status.mass_drift, &resolved)
        && m.acknowledged_time.is_some()
    {
        tenant.breaker().acknowledge_package(package_id);
    }
    plan.status.connection = tenant.key.status_label();
    // Count each drift once, when first seen (the previous list is bounded, so a drift
    // beyond it may be counted again; the bound keeps that rare).
    let known: Vec<&str> = previous
        .iter()
        .flat_map(|p| p.drifted.iter().map(|d| d.assignment_id.as_str()))
        .collect();
    let new_drift = plan
        .drifted
        .iter()
        .filter(|d| !known.contains(&d.assignment_id.as_str()))
        .count();
    ctx.metrics.drift(KIND, new_drift as u64);
    if ctx.use_access_drift_report {
        // Detection only: a note on Delivered and a count, before any write so a
        // reprocess's status write carries it.
        let found =
            crate::observe::guard_drift_report_notes(tenant.observations.observer(), &observed)
                .await;
        ctx.metrics
            .access_drift_disagreements(KIND, found.disagreements as u64);
        crate::engine::note_on_delivered(&mut plan.status.conditions, &found.notes);
    }

    let mut written = previous;
    let mut retry_after = None;
    if !plan.reprocess.is_empty() {
        // Traceable: each reprocess gets its client-request-id now, recorded in its drift
        // entry (written ahead) and the event, and sent as that write's own header.
        let traces: BTreeMap<String, String> = plan
            .reprocess
            .iter()
            .map(|id| (id.clone(), uuid::Uuid::new_v4().to_string()))
            .collect();
        let before: BTreeMap<String, Option<String>> = plan
            .status
            .drifted
            .iter()
            .map(|d| (d.assignment_id.clone(), d.last_client_request_id.clone()))
            .collect();
        for d in &mut plan.status.drifted {
            if let Some(t) = traces.get(&d.assignment_id) {
                d.last_client_request_id = Some(t.clone());
            }
        }
        // Written before it is sent, so a restart never sends it twice.
        if guard_status_changed(written.as_ref(), &plan.status) {
            if let Err(e) = patch_status(&api, &name, &plan.status).await {
                undo.restore(&mut tenant.ledger(), None);
                return Err(e);
            }
            written = Some(plan.status.clone());
        }
        let (sent, come_back) = reprocess_selected(ctx, tenant, &plan, &traces).await;
        retry_after = come_back;
        // A write that did not go out claims no id.
        for d in &mut plan.status.drifted {
            if traces.contains_key(&d.assignment_id) && !sent.contains(&d.assignment_id) {
                d.last_client_request_id = before.get(&d.assignment_id).cloned().flatten();
            }
        }
        // Say what really happened, not what was planned.
        record_guard_outcome(
            &mut plan,
            &sent,
            &mut undo,
            &mut tenant.ledger(),
            &who,
            Timestamp::now(),
        );
        let named: Vec<String> = plan
            .status
            .drifted
            .iter()
            .filter(|d| sent.contains(&d.assignment_id))
            .filter_map(|d| {
                Some(format!(
                    "{} {}",
                    d.target,
                    d.last_client_request_id.as_ref()?
                ))
            })
            .take(10)
            .collect();
        if !named.is_empty() {
            for e in &mut plan.events {
                if e.kind == crate::engine::EventKind::ReprocessRequested {
                    e.message = format!("{} client-request-ids: {}.", e.message, named.join(", "));
                }
            }
        }
        if let Ok((package_id, _)) = &resolved {
            // Reprocesses change memberships, not the package's assignments: keep the view.
            tenant
                .observations
                .invalidate_memberships(observed.resources())
                .await;
            let done: Vec<&str> = plan.reprocess.iter().map(String::as_str).collect();
            ctx.triggers.covering(package_id, &done, &who);
        }
    }

    if guard_status_changed(written.as_ref(), &plan.status) {
        patch_status(&api, &name, &plan.status).await?;
    }
    ctx.publish(&obj.object_ref(&()), "Sweep", &plan.events)
        .await;
    Ok(Action::requeue(match retry_after {
        Some(after) => after,
        None => jitter(plan.requeue_after),
    }))
}

/// Reprocesses the engine's selection, as far as the global reprocess budget allows, in
/// `$batch` requests of 20 (a sweep may find thousands). Returns the assignments Graph
/// accepted, and the time to come back when the sweep was cut short by the budget or by
/// Graph throttling.
async fn reprocess_selected(
    ctx: &Context,
    tenant: &Tenant,
    plan: &GuardPlan,
    traces: &BTreeMap<String, String>,
) -> (Vec<String>, Option<Duration>) {
    let mut come_back: Option<Duration> = None;
    let mut granted: Vec<String> = Vec::new();
    for id in &plan.reprocess {
        if let Err(wait) = tenant.reprocess_bucket.try_acquire() {
            ctx.metrics.reprocess(KIND, ReprocessCall::RateLimited);
            come_back = Some(wait);
            break;
        }
        granted.push(id.clone());
    }
    tracing::info!(
        count = granted.len(),
        assignments = %granted.join(","),
        "reprocess requested"
    );
    let traced: Vec<(String, String)> = granted
        .iter()
        .map(|id| (id.clone(), traces.get(id).cloned().unwrap_or_default()))
        .collect();
    let results = tenant
        .graph()
        .reprocess_assignments(&traced, tenant.observations.concurrency())
        .await;
    let mut sent: Vec<String> = Vec::new();
    for (id, result) in granted.into_iter().zip(results) {
        match result {
            Ok(()) => {
                ctx.metrics.reprocess(KIND, ReprocessCall::Requested);
                sent.push(id);
            }
            Err(e) => {
                tracing::warn!(assignment_id = %id, error = %e, request_id = e.request_id().unwrap_or(""), "reprocess failed");
                ctx.metrics.reprocess(KIND, ReprocessCall::of_error(&e));
                if let Some(after) = e.retry_after() {
                    come_back = Some(come_back.map_or(after, |c| c.max(after)));
                }
            }
        }
    }
    (sent, come_back)
}

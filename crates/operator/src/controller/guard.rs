//! Reconcile (one sweep) of an `AccessPackageGuard`: list every assignment of the package,
//! read each promised resource once, let the engine find the drifted ones, reprocess at
//! most the engine's bounded selection (and within the global budget), write the bounded
//! status only when it changed.

use std::sync::Arc;
use std::time::Duration;

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
use crate::engine::ledger::RepairLedger;
use crate::engine::transaction::{Claim, Transaction};
use crate::engine::{GuardInput, GuardPlan, plan_guard_sweep};
use crate::graph::error::GraphError;
use crate::graph::{Write, Written};
use crate::observe::{GuardObservation, observe_guard};

/// The kind label.
pub const KIND: &str = crate::api::GUARD_KIND;

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
    let (mut observed, previous) = observe(ctx, tenant, &obj, &api, &name).await?;
    let safety = tenant.safety_policy(obj.spec.safety.as_ref()).await;
    let sweep = Sweep {
        obj: &obj,
        ctx,
        tenant,
        previous: previous.as_ref(),
        safety: &safety,
        resolved: observed.resolved.clone(),
        who: name_of(obj.as_ref()),
        now: ctx.now(),
        // The operator's global rate limit is an input: the plan selects only what may be
        // sent.
        budget: tenant.reprocess_bucket.available(),
    };
    let (mut plan, claim) = sweep.plan(&mut observed).await;
    record_sweep(
        ctx,
        tenant,
        &format!("{namespace}/{name}"),
        &mut plan,
        sweep.previous,
        &sweep.resolved,
    );
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

    let tx = Transaction::begin(plan, claim, previous.clone(), || {
        uuid::Uuid::new_v4().to_string()
    });
    let mut effects = Effects {
        ctx,
        tenant,
        api: &api,
        name: &name,
    };
    let ran = crate::repair::run(
        &mut effects,
        tx,
        tenant.reprocess_bucket.rate_per_minute(),
        ctx.engine.default_verify_interval,
        sweep.now,
    )
    .await?;
    let plan = ran.plan;
    sweep.after_reprocess(&plan, &observed).await;
    ctx.publish(&obj.object_ref(&()), "Sweep", &plan.events)
        .await;
    let come_back = match (ran.postponed, ran.retry_after) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Ok(Action::requeue(match come_back {
        Some(after) => after,
        None => jitter(plan.requeue_after),
    }))
}

/// The guard's package and assignments, read the way `redeliver audit` reads them (one
/// function, one read cache), and the status the sweep starts from: the stored one, or the
/// first-visit status written while the first sweep's reads were slow (see
/// `FIRST_STATUS_AFTER`).
async fn observe(
    ctx: &Context,
    tenant: &Tenant,
    obj: &AccessPackageGuard,
    api: &Api<AccessPackageGuard>,
    name: &str,
) -> Result<(GuardObservation, Option<AccessPackageGuardStatus>), Error> {
    let generation = obj.meta().generation;
    let first = obj.status.is_none().then(|| AccessPackageGuardStatus {
        observed_generation: generation,
        access_package_name: Some(obj.spec.access_package.label()),
        conditions: first_visit_conditions(generation, ctx.now()),
        ..Default::default()
    });
    let (observed, first) = observe_with_first_status(
        observe_guard(&tenant.observations, &obj.spec),
        first,
        ctx.first_status_after,
        async |first| patch_status(api, name, first).await,
    )
    .await?;
    Ok((observed?, obj.status.clone().or(first)))
}

/// What one sweep plans from: the guard, its connection and everything the engine weighs
/// besides the observation.
struct Sweep<'a> {
    obj: &'a AccessPackageGuard,
    ctx: &'a Context,
    tenant: &'a Tenant,
    previous: Option<&'a AccessPackageGuardStatus>,
    safety: &'a crate::engine::SafetyPolicy,
    resolved: Result<(String, Option<String>), crate::engine::ResolveFailure>,
    who: String,
    now: jiff::Timestamp,
    budget: usize,
}

impl Sweep<'_> {
    /// The engine's plan and its claim on the ledger. When reprocesses are due, their
    /// targets' accounts are confirmed in one batched read first and the sweep planned
    /// again with them; a sweep with nothing to repair is planned once.
    async fn plan(
        &self,
        observed: &mut GuardObservation,
    ) -> (GuardPlan, Claim<&std::sync::Mutex<RepairLedger>>) {
        let ledger = self.tenant.ledger_cell();
        let (mut plan, mut claim) = Claim::plan(ledger, |l| self.input_plan(observed, l));
        if !plan.needs_accounts.is_empty() {
            let needs_accounts = std::mem::take(&mut plan.needs_accounts);
            claim.abandon();
            self.tenant
                .safety
                .confirm(
                    self.tenant.graph(),
                    self.safety,
                    &mut observed.snapshot,
                    &needs_accounts,
                )
                .await;
            (plan, claim) = Claim::plan(ledger, |l| self.input_plan(observed, l));
        }
        (plan, claim)
    }

    fn input_plan(&self, observed: &GuardObservation, ledger: &RepairLedger) -> GuardPlan {
        let obj = self.obj;
        plan_guard_sweep(
            &GuardInput {
                generation: obj.meta().generation,
                spec: &obj.spec,
                previous: self.previous,
                resolved: self.resolved.clone(),
                assignments: observed.assignments(),
                resources: observed.resources(),
                snapshot: &observed.snapshot,
                settings: &self.ctx.engine,
                ledger,
                who: &self.who,
                reprocess_budget: Some(self.budget),
                operator_report_only: self.tenant.reprocess_bucket.is_disabled(),
                reprocess_annotation: obj
                    .annotations()
                    .get(crate::api::REPROCESS_ANNOTATION)
                    .map(String::as_str),
                safety: self.safety,
                mass_drift_ack: obj
                    .annotations()
                    .get(crate::api::MASS_DRIFT_ACK_ANNOTATION)
                    .map(String::as_str),
                mass_drift_acknowledged: false,
            },
            self.now,
        )
    }

    /// After reprocesses were sent: their memberships are read fresh next time (the
    /// package's assignments did not change, so its view is kept), and the other objects
    /// covering those assignments are told.
    async fn after_reprocess(&self, plan: &GuardPlan, observed: &GuardObservation) {
        let Ok((package_id, _)) = &self.resolved else {
            return;
        };
        if plan.reprocess.is_empty() {
            return;
        }
        self.tenant
            .observations
            .invalidate_memberships(observed.resources())
            .await;
        let done: Vec<&str> = plan.reprocess.iter().map(String::as_str).collect();
        self.ctx.triggers.covering(package_id, &done, &self.who);
    }
}

/// What a sweep's plan says, before anything is sent: the safety-hold and mass-drift
/// metrics, an acknowledgement that also resumes the package's declared assignments, the
/// connection in the status, and the drifts seen for the first time.
fn record_sweep(
    ctx: &Context,
    tenant: &Tenant,
    object: &str,
    plan: &mut GuardPlan,
    previous: Option<&AccessPackageGuardStatus>,
    resolved: &Result<(String, Option<String>), crate::engine::ResolveFailure>,
) {
    ctx.metrics
        .safety_holds(KIND, &plan.events, &plan.status.conditions);
    let tripped = plan
        .status
        .mass_drift
        .as_ref()
        .is_some_and(|m| m.acknowledged_time.is_none());
    ctx.metrics
        .mass_drift_tripped(KIND, object.to_string(), usize::from(tripped));
    // An acknowledgement on the guard also resumes the package's declared assignments.
    if let (Some(m), Ok((package_id, _))) = (&plan.status.mass_drift, &resolved)
        && m.acknowledged_time.is_some()
        && tenant.breaker().acknowledge_package(package_id)
    {
        ctx.triggers
            .wake_mass_drift_held(std::slice::from_ref(package_id));
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
}

/// The controller's side of a sweep's repair transaction: the reprocess budget, status
/// patches, and the reprocesses, in `$batch` requests of 20 (a sweep may find thousands).
struct Effects<'a> {
    ctx: &'a Context,
    tenant: &'a Tenant,
    api: &'a Api<AccessPackageGuard>,
    name: &'a str,
}

impl crate::repair::Effects<AccessPackageGuardStatus> for Effects<'_> {
    type Error = Error;

    fn admit(&mut self, _write: &Write) -> Result<(), Duration> {
        self.tenant.reprocess_bucket.try_acquire().inspect_err(|_| {
            self.ctx.metrics.reprocess(KIND, ReprocessCall::RateLimited);
        })
    }

    async fn store(&mut self, status: &AccessPackageGuardStatus) -> Result<(), Error> {
        patch_status(self.api, self.name, status).await
    }

    async fn send(&mut self, writes: &[(Write, String)]) -> Vec<Result<Written, GraphError>> {
        tracing::info!(count = writes.len(), "reprocess requested");
        let results = self
            .tenant
            .graph()
            .write_many_traced(writes, self.tenant.observations.concurrency())
            .await;
        for ((write, _), result) in writes.iter().zip(&results) {
            match result {
                Ok(_) => self.ctx.metrics.reprocess(KIND, ReprocessCall::Requested),
                Err(e) => {
                    tracing::warn!(?write, error = %e, request_id = e.request_id().unwrap_or(""), "reprocess failed");
                    self.ctx.metrics.reprocess(KIND, ReprocessCall::of_error(e));
                }
            }
        }
        results
    }

    fn failed(&self, err: GraphError) -> Error {
        Error::Graph(err)
    }
}

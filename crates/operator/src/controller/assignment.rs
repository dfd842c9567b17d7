//! Reconcile of one `AccessPackageAssignment`: observe Graph, let the engine decide, perform
//! the one action it chose, write the status only when it changed, record its events.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};

use super::Error;
use super::connection::stall_object;
use super::connections::{Tenant, Unready};
use super::context::{
    Context, error_policy as shared_error_policy, jitter, observe_with_first_status, patch_status,
    reconcile_frame,
};
use super::ledger::name_of;
use super::metrics::ReprocessCall;
use super::observation::split;
use crate::api::{
    AccessPackageAssignment, AccessPackageAssignmentStatus, DeletionPolicy, FINALIZER,
    REPROCESS_ANNOTATION,
};
use crate::engine::conditions::first_visit_conditions;
use crate::engine::ledger::RepairLedger;
use crate::engine::removal::{RemovalSeen, RemovalStep, plan_removal, removal_requested};
use crate::engine::transaction::{Claim, Transaction};
use crate::engine::{AssignmentInput, MassDriftHold, Plan, SafetyPolicy, plan_assignment};
use crate::graph::error::GraphError;
use crate::graph::models::AssignmentState;
use crate::graph::{Write, Written};
use crate::observe::{AssignmentObservation, observe_assignment};

/// The kind label.
pub const KIND: &str = crate::api::ASSIGNMENT_KIND;

/// Entry point for the controller: a span, a metrics timer, the concurrency slot and the
/// finalizer dispatch. The domain logic is in [`apply`] and [`cleanup`].
pub async fn reconcile(
    obj: Arc<AccessPackageAssignment>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    reconcile_frame(&ctx, KIND, obj.as_ref(), dispatch(obj.clone(), &ctx)).await
}

/// What to do after a failed reconcile (see [`super::context::error_policy`]).
pub fn error_policy(obj: Arc<AccessPackageAssignment>, err: &Error, ctx: Arc<Context>) -> Action {
    shared_error_policy(obj, err, ctx)
}

async fn dispatch(obj: Arc<AccessPackageAssignment>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<AccessPackageAssignment> = Api::namespaced(ctx.client.clone(), &namespace);
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = obj.meta().deletion_timestamp.is_some();
    if deleting && !has_finalizer {
        return Ok(Action::await_change());
    }
    if deleting || obj.spec.deletion_policy == DeletionPolicy::Remove {
        let ctx2 = ctx.clone();
        return finalizer(&api, FINALIZER, obj, |event| async move {
            match event {
                Finalizer::Apply(o) => apply(o, &ctx2).await,
                Finalizer::Cleanup(o) => cleanup(o, &ctx2).await,
            }
        })
        .await
        .map_err(Error::from);
    }
    if has_finalizer {
        // deletionPolicy changed from Remove to Orphan: deletion needs no work any more.
        remove_finalizer(&api, &obj).await?;
        return Ok(Action::await_change());
    }
    apply(obj, ctx).await
}

async fn remove_finalizer(
    api: &Api<AccessPackageAssignment>,
    obj: &AccessPackageAssignment,
) -> Result<(), Error> {
    let remaining: Vec<&String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    // resourceVersion makes the merge patch fail instead of overwriting a concurrent change.
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": remaining,
            "resourceVersion": obj.resource_version(),
        }
    });
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// The object's tenant, or why it has none now.
async fn tenant_of(
    obj: &AccessPackageAssignment,
    ctx: &Context,
) -> Result<Result<Arc<Tenant>, Unready>, Error> {
    let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let status = obj.status.as_ref();
    let spec_changed = status.is_none_or(|s| s.observed_generation != obj.meta().generation);
    Ok(ctx
        .connections
        .tenant_for(
            &namespace,
            obj.spec.connection_ref.as_ref(),
            status.and_then(|s| s.connection.as_deref()),
            spec_changed,
        )
        .await)
}

/// One verification pass.
async fn apply(obj: Arc<AccessPackageAssignment>, ctx: &Context) -> Result<Action, Error> {
    let tenant = match tenant_of(&obj, ctx).await? {
        Ok(t) => t,
        Err(unready) => {
            return stall_object(ctx, obj.as_ref(), obj.status.as_ref(), &unready).await;
        }
    };
    let tenant = tenant.as_ref();
    let name = obj.name_any();
    let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<AccessPackageAssignment> = Api::namespaced(ctx.client.clone(), &namespace);
    let reference = obj.object_ref(&());
    let (mut observed, previous) = observe(ctx, tenant, &obj, &api, &name).await?;
    let safety = tenant.safety_policy(obj.spec.safety.as_deref()).await;
    crate::observe::safety::attribute_drift(
        &tenant.attribution,
        tenant.graph(),
        &mut observed,
        previous.as_ref(),
        &safety,
    )
    .await;
    let now = ctx.now();
    let pass = Pass {
        obj: &obj,
        ctx,
        tenant,
        previous: previous.as_ref(),
        safety: &safety,
        who: name_of(obj.as_ref()),
        mass_drift: mass_drift_hold(ctx, tenant, &safety, &observed, now).await,
        now,
    };
    let (mut plan, claim) = pass.plan(&mut observed).await;
    let who = pass.who.clone();
    ctx.metrics
        .safety_holds(KIND, &plan.events, &plan.status.conditions);
    plan.status.connection = tenant.key.status_label().map(Into::into);

    // Before acting, so a reprocess's status write already carries the note (one write).
    cross_check_drift_report(ctx, tenant, &observed, &mut plan).await;
    let tx = Transaction::begin(plan, claim, previous, || uuid::Uuid::new_v4().to_string());
    let mut effects = Effects {
        ctx,
        tenant,
        api: &api,
        name: &name,
        who: &who,
        observed: &observed,
    };
    let ran = crate::repair::run(
        &mut effects,
        tx,
        tenant.reprocess_bucket.rate_per_minute(),
        ctx.engine.default_verify_interval,
        now,
    )
    .await?;
    let plan = ran.plan;
    ctx.publish(&reference, "Reconcile", &plan.events).await;
    if plan
        .events
        .iter()
        .any(|e| e.kind == crate::engine::EventKind::DriftDetected)
    {
        ctx.metrics.drift(KIND, 1);
    }
    Ok(Action::requeue(match ran.postponed {
        Some(wait) => wait,
        None => jitter(plan.requeue_after),
    }))
}

/// The object's package, assignment and promised resources, read the way `redeliver audit`
/// reads them (one function, one read cache), and the status the pass starts from: the
/// stored one, or the first-visit status (kstatus conditions) written only if the first
/// observation is slow — a quick one is followed at once by the verified status: one
/// write, not two.
async fn observe(
    ctx: &Context,
    tenant: &Tenant,
    obj: &AccessPackageAssignment,
    api: &Api<AccessPackageAssignment>,
    name: &str,
) -> Result<(AssignmentObservation, Option<AccessPackageAssignmentStatus>), Error> {
    let generation = obj.meta().generation;
    let first = obj.status.is_none().then(|| AccessPackageAssignmentStatus {
        observed_generation: generation,
        access_package_name: Some(obj.spec.access_package.label().into()),
        target_name: Some(obj.spec.target.label()),
        conditions: first_visit_conditions(generation, ctx.now()),
        ..Default::default()
    });
    let (observed, first) = observe_with_first_status(
        observe_assignment(&tenant.observations, &obj.spec, obj.status.as_ref()),
        first,
        ctx.first_status_after,
        async |first| patch_status(api, name, first).await,
    )
    .await?;
    Ok((observed?, obj.status.clone().or(first)))
}

/// What one verification pass plans from besides the observation.
struct Pass<'a, 'p> {
    obj: &'a AccessPackageAssignment,
    ctx: &'a Context,
    tenant: &'a Tenant,
    previous: Option<&'p AccessPackageAssignmentStatus>,
    safety: &'p SafetyPolicy,
    who: String,
    mass_drift: Option<MassDriftHold>,
    now: jiff::Timestamp,
}

impl<'a> Pass<'a, '_> {
    /// The engine's plan and its claim on the shared ledger: planning and claiming happen
    /// under one lock, so of two objects covering the same Graph assignment exactly one
    /// decides to reprocess it. When a grant is due, the target's account is confirmed
    /// first (one batched read shared with the other repairs of this moment) and the pass
    /// planned again with it; a healthy object is planned once.
    async fn plan(
        &self,
        observed: &mut AssignmentObservation,
    ) -> (Plan, Claim<&'a std::sync::Mutex<RepairLedger>>) {
        let ledger = self.tenant.ledger_cell();
        let (mut plan, mut claim) = Claim::plan(ledger, |l| self.input_plan(observed, l));
        if let Some(target) = plan.needs_account.take() {
            claim.abandon();
            self.tenant
                .safety
                .confirm(
                    self.tenant.graph(),
                    self.safety,
                    &mut observed.snapshot,
                    &[target],
                )
                .await;
            (plan, claim) = Claim::plan(ledger, |l| self.input_plan(observed, l));
        }
        (plan, claim)
    }

    fn input_plan(&self, observed: &AssignmentObservation, ledger: &RepairLedger) -> Plan {
        let obj = self.obj;
        plan_assignment(
            &AssignmentInput {
                generation: obj.meta().generation,
                spec: &obj.spec,
                previous: self.previous,
                reprocess_annotation: obj
                    .annotations()
                    .get(REPROCESS_ANNOTATION)
                    .map(String::as_str),
                resolved: observed.resolved.clone(),
                assignment: observed.assignment.as_ref(),
                latest_request: observed.latest_request.as_ref(),
                resources: observed.resources(),
                snapshot: &observed.snapshot,
                settings: &self.ctx.engine,
                ledger,
                who: &self.who,
                // `--reprocess-rate 0`: every object reports only, and says why.
                operator_report_only: self.tenant.reprocess_bucket.is_disabled(),
                safety: self.safety,
                mass_drift: self.mass_drift.as_ref(),
            },
            self.now,
        )
    }
}

/// The controller's side of a declared assignment's repair transaction: the reprocess
/// budget, status patches, and the Graph write (with its metrics, the caches it makes
/// stale and the other objects covering what it repaired).
struct Effects<'a> {
    ctx: &'a Context,
    tenant: &'a Tenant,
    api: &'a Api<AccessPackageAssignment>,
    name: &'a str,
    who: &'a str,
    observed: &'a AssignmentObservation,
}

impl crate::repair::Effects<AccessPackageAssignmentStatus> for Effects<'_> {
    type Error = Error;

    fn admit(&mut self, write: &Write) -> Result<(), Duration> {
        if !matches!(
            write,
            Write::ReprocessAssignment { .. } | Write::ReprocessRequest { .. }
        ) {
            return Ok(());
        }
        self.tenant
            .reprocess_bucket
            .try_acquire()
            .inspect_err(|wait| {
                self.ctx.metrics.reprocess(KIND, ReprocessCall::RateLimited);
                tracing::info!(
                    wait_s = wait.as_secs_f64(),
                    "reprocess budget spent; waiting"
                );
            })
    }

    async fn store(&mut self, status: &AccessPackageAssignmentStatus) -> Result<(), Error> {
        patch_status(self.api, self.name, status).await
    }

    async fn send(&mut self, writes: &[(Write, String)]) -> Vec<Result<Written, GraphError>> {
        let mut results = Vec::with_capacity(writes.len());
        for (write, id) in writes {
            let is_reprocess = !matches!(write, Write::RequestAssignment { .. });
            if is_reprocess {
                tracing::info!(?write, client_request_id = %id, "reprocess requested");
            }
            let result = self.tenant.graph().write_traced(write, id).await;
            if let Ok(Written::Requested(req)) = &result {
                tracing::info!(request_id = %req.id, "assignment requested");
            }
            // A request (or a failed request's reprocess) changes the package's assignments
            // and requests: read them again. An assignment's reprocess changes neither, only
            // the memberships it restores, and those are read after it on the next check
            // (`engine::fresh_reads`), once for every object waiting on them: a repair costs
            // the re-read of what it changed, not of the whole package.
            if !matches!(write, Write::ReprocessAssignment { .. })
                && let Ok(ids) = &self.observed.resolved
            {
                self.tenant
                    .observations
                    .invalidate_package(&ids.access_package_id, self.observed.resources())
                    .await;
            }
            match &result {
                Ok(_) if is_reprocess => {
                    self.ctx.metrics.reprocess(KIND, ReprocessCall::Requested);
                    if let Ok(ids) = &self.observed.resolved
                        && let Write::ReprocessAssignment { assignment_id } = write
                    {
                        self.ctx.triggers.covering(
                            &ids.access_package_id,
                            &[assignment_id.as_str()],
                            self.who,
                        );
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    if is_reprocess {
                        self.ctx
                            .metrics
                            .reprocess(KIND, ReprocessCall::of_error(err));
                    }
                    match crate::observe::action_failure(err) {
                        Some(_) => {
                            tracing::warn!(error = %err, request_id = err.request_id().unwrap_or(""), "Graph refused the action")
                        }
                        None => {
                            tracing::warn!(error = %err, request_id = err.request_id().unwrap_or(""), "Graph action failed; will retry")
                        }
                    }
                }
            }
            results.push(result);
        }
        results
    }

    fn failed(&self, err: GraphError) -> Error {
        Error::Graph(err)
    }
}

/// With `--use-access-drift-report`: compares Microsoft's report for the package's catalog
/// (read once per window for every object of the catalog, in the object's tenant) with
/// this verification's own read, and notes a disagreement, or the report's unavailability, in the Delivered
/// message. Never anything else: the plan's action and conditions' statuses are kept.
async fn cross_check_drift_report(
    ctx: &Context,
    tenant: &Tenant,
    observed: &AssignmentObservation,
    plan: &mut Plan,
) {
    if !ctx.use_access_drift_report {
        return;
    }
    let found = crate::observe::drift_report_notes(tenant.observations.observer(), observed).await;
    ctx.metrics
        .access_drift_disagreements(KIND, found.disagreements as u64);
    crate::engine::note_on_delivered(&mut plan.status.conditions, &found.notes);
}

/// The package's mass-drift breaker for this object: drift found now counts towards it
/// (a delta window has usually counted it already, before any object acted), a verified
/// delivery no longer does, and a new acknowledgement on the connection resumes repairs.
async fn mass_drift_hold(
    ctx: &Context,
    tenant: &Tenant,
    safety: &SafetyPolicy,
    observed: &AssignmentObservation,
    now: Timestamp,
) -> Option<MassDriftHold> {
    let Ok(ids) = &observed.resolved else {
        return None;
    };
    let a = observed
        .assignment
        .as_ref()
        .filter(|a| a.state == AssignmentState::Delivered)?;
    let package = ids.access_package_id.as_str();
    let name = ids.access_package_name.as_deref().unwrap_or(package);
    let drifted = observed.resources().iter().any(|r| {
        observed.snapshot.check(&r.kind, &ids.target_object_id)
            == crate::api::ResourceState::Missing
    });
    let ack = ctx.connections.mass_drift_ack(&tenant.key);
    // Counted before the board is locked: it may scan the stores.
    let delivered = if drifted {
        Some(ctx.triggers.delivered_in_package(package).await)
    } else {
        None
    };
    let (hold, lifted) = {
        let mut board = tenant.breaker();
        let mut lifted = board.acknowledge(ack.as_deref());
        match delivered {
            Some(delivered) => {
                board.record(&safety.breaker, package, [a.id.as_str()], delivered, now);
            }
            None => {
                if board.repaired(&safety.breaker, package, &a.id) {
                    lifted.push(package.to_string());
                }
            }
        }
        ctx.metrics
            .mass_drift_tripped(KIND, tenant.key.to_string(), board.tripped());
        let hold = safety
            .breaker
            .enabled
            .then(|| board.hold(&safety.breaker, package, name))
            .flatten();
        (hold, lifted)
    };
    ctx.triggers.wake_mass_drift_held(&lifted);
    hold
}

/// Deletion with `deletionPolicy: Remove`: submit an `adminRemove` for the user's live
/// assignment and keep the finalizer until Entra ID no longer lists it. Idempotent: an
/// assignment already gone (or a user or package that no longer exists) counts as done, and
/// a removal already in flight is not submitted twice.
async fn cleanup(obj: Arc<AccessPackageAssignment>, ctx: &Context) -> Result<Action, Error> {
    let reference = obj.object_ref(&());
    let tenant = match tenant_of(&obj, ctx).await? {
        Ok(t) => t,
        // The finalizer stays: removing the assignment needs the object's own tenant.
        Err(unready) => return Err(Error::ConnectionNotReady(unready.message)),
    };
    let status = obj.status.as_ref();
    let plan = |package_id: &str, target_id: &str, seen| {
        plan_removal(&obj.spec, status, package_id, target_id, seen)
    };
    // Orphan or suspended: decided before anything is read.
    match plan("", "", RemovalSeen::Nothing) {
        RemovalStep::ReadAssignments => {}
        RemovalStep::ReleaseWith(event) => {
            tracing::warn!("deleted while suspended: the assignment is left in place");
            ctx.publish_cleanup(&reference, event.kind, event.message)
                .await;
            return Ok(done());
        }
        _ => return Ok(done()),
    }
    let observer = tenant.observations.observer();
    let package_id = match status.and_then(|s| s.access_package_id.as_deref().map(String::from)) {
        Some(id) => id,
        None => match split(observer.resolve_package_id(&obj.spec.access_package).await)? {
            Ok(id) => id,
            // Nothing that does not resolve can hold an assignment: nothing to remove.
            Err(_) => return Ok(done()),
        },
    };
    let target_id = match status.and_then(|s| s.target_object_id.clone()) {
        Some(id) => id,
        None => match split(observer.resolve_target(&obj.spec.target).await)? {
            Ok(id) => id,
            Err(_) => return Ok(done()),
        },
    };
    let graph = tenant.graph();
    let assignments = graph.find_assignments(&package_id, &target_id).await?;
    let mut step = plan(
        &package_id,
        &target_id,
        RemovalSeen::Assignments(&assignments),
    );
    if step == RemovalStep::ReadRequests {
        let requests = graph.list_requests(&package_id).await?;
        step = plan(
            &package_id,
            &target_id,
            RemovalSeen::Requests(&assignments, &requests),
        );
    }
    let (assignment_id, request_id) = match step {
        RemovalStep::Wait {
            assignment_id,
            request_id,
        } => (assignment_id, request_id),
        RemovalStep::Submit { assignment_id } => {
            let req = graph.request_removal(&assignment_id).await?;
            tracing::info!(request_id = %req.id, %assignment_id, "adminRemove submitted");
            let event = removal_requested(&req.id, &assignment_id);
            ctx.publish_cleanup(&reference, event.kind, event.message)
                .await;
            (assignment_id, req.id)
        }
        RemovalStep::ReleaseWith(event) => {
            tracing::info!("assignment is gone; releasing the finalizer");
            ctx.publish_cleanup(&reference, event.kind, event.message)
                .await;
            return Ok(done());
        }
        RemovalStep::Release | RemovalStep::ReadAssignments | RemovalStep::ReadRequests => {
            tracing::info!("assignment is gone; releasing the finalizer");
            return Ok(done());
        }
    };
    Err(Error::RemovalPending {
        assignment_id,
        request_id: Some(request_id),
    })
}

fn done() -> Action {
    Action::await_change()
}

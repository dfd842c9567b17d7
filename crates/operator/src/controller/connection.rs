//! Reconcile of one `GraphConnection` or `ClusterGraphConnection`: check it (Secret, token,
//! one cheap read), write `Ready`/`Stalled` with the Entra error code, wake its objects when
//! it becomes ready or goes away; and the status of an object whose connection is not usable.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::Value;

use super::Error;
use super::connections::{CheckOutcome, ConnectionKey, Unready};
use super::context::{Context, patch_status};
use crate::api::{
    AccessPackageAssignment, AccessPackageGuard, ClusterGraphConnection, ConnectionKind,
    GraphConnection, GraphConnectionStatus,
};
use crate::engine::conditions::{
    ConditionType, Reason, Status, conditions_equal_ignoring_transition_times,
};
use crate::engine::connection::{connection_conditions, not_ready_conditions};

/// The kind label of the namespaced connection.
pub const KIND: &str = "GraphConnection";
/// The kind label of the cluster connection.
pub const CLUSTER_KIND: &str = "ClusterGraphConnection";

/// Checks a `GraphConnection` and reports on it.
pub async fn reconcile(obj: Arc<GraphConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let key = ConnectionKey::Namespaced {
        namespace: namespace.clone(),
        name: obj.name_any(),
    };
    if !ctx.shard.owns(&key) {
        return Ok(Action::await_change());
    }
    let api: Api<GraphConnection> = Api::namespaced(ctx.client.clone(), &namespace);
    let (outcome, became_ready) = ctx
        .connections
        .check(
            &key,
            &obj.uid().unwrap_or_default(),
            obj.metadata.generation,
            &obj.spec.settings(),
            Some(&namespace),
        )
        .await;
    report(
        &ctx,
        &api,
        obj.as_ref(),
        obj.status.as_ref(),
        &key,
        &outcome,
        became_ready,
    )
    .await
}

/// Checks a `ClusterGraphConnection` (its Secret is read from the operator's namespace).
pub async fn reconcile_cluster(
    obj: Arc<ClusterGraphConnection>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let key = ConnectionKey::Cluster {
        name: obj.name_any(),
    };
    if !ctx.shard.owns(&key) {
        return Ok(Action::await_change());
    }
    let api: Api<ClusterGraphConnection> = Api::all(ctx.client.clone());
    let ns = ctx.connections.secret_namespace();
    let (outcome, became_ready) = ctx
        .connections
        .check(
            &key,
            &obj.uid().unwrap_or_default(),
            obj.metadata.generation,
            &obj.spec.settings(),
            ns.as_deref(),
        )
        .await;
    report(
        &ctx,
        &api,
        obj.as_ref(),
        obj.status.as_ref(),
        &key,
        &outcome,
        became_ready,
    )
    .await
}

/// A failed connection reconcile (a status write) is retried soon.
pub fn error_policy<K>(_obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "connection reconcile failed; retrying");
    Action::requeue(ctx.connections.recheck().1)
}

async fn report<K>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    previous: Option<&GraphConnectionStatus>,
    key: &ConnectionKey,
    outcome: &CheckOutcome,
    became_ready: bool,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let generation = obj.meta().generation;
    // Next check when it is due (backed off while stalled), never sooner, and never in a
    // tight loop: a second at least, or the re-check interval when that is shorter (only
    // tests set one: the operator's are 30 s and 5 minutes).
    let (recheck_ready, recheck_stalled) = ctx.connections.recheck();
    let floor = std::time::Duration::from_secs(1)
        .min(recheck_ready)
        .min(recheck_stalled);
    let retry = super::connections::jittered(ctx.connections.recheck_in(key).max(floor));
    let (problem, code) = match outcome {
        CheckOutcome::Ready => (None, None),
        CheckOutcome::Stalled(p) => (Some((p.reason, p.message.as_str())), p.code.clone()),
    };
    ctx.metrics
        .connection_ready(&key.metric_label(), *outcome == CheckOutcome::Ready);
    publish_clients(ctx);
    let old: &[Condition] = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    let status = GraphConnectionStatus {
        observed_generation: generation,
        error_code: code,
        conditions: connection_conditions(old, problem, generation, ctx.now()),
    };
    let changed = previous.is_none_or(|p| {
        p.observed_generation != status.observed_generation
            || p.error_code != status.error_code
            || !conditions_equal_ignoring_transition_times(&p.conditions, &status.conditions)
    });
    if changed {
        match outcome {
            CheckOutcome::Ready => tracing::info!(connection = %key, "connection ready"),
            CheckOutcome::Stalled(p) => {
                tracing::warn!(connection = %key, reason = p.reason.as_str(), code = p.code.as_deref().unwrap_or(""), "connection stalled: {}", p.message)
            }
        }
        patch_status(api, &obj.name_any(), &status).await?;
    }
    let was_ready = previous.is_some_and(|p| {
        crate::engine::conditions::find(&p.conditions, ConditionType::Ready)
            .is_some_and(|c| c.status == Status::True)
    });
    if became_ready {
        // Only those waiting on it: the others are verified on their own schedule, and a
        // wake-up of every object at start-up would verify each of them twice.
        wake(ctx, key, true);
    } else if was_ready && *outcome != CheckOutcome::Ready {
        // It stopped working: every object that uses it says so now (Stalled,
        // ConnectionNotReady), whatever its own verification interval.
        wake(ctx, key, false);
    }
    Ok(Action::requeue(retry))
}

/// Reconciles every object that may use `key` now (it went away), or only those stalled
/// on their connection (`only_stalled`: it became ready).
pub fn wake(ctx: &Context, key: &ConnectionKey, only_stalled: bool) {
    let stalled = |conditions: Option<&Vec<Condition>>| {
        !only_stalled
            || conditions.is_some_and(|c| {
                crate::engine::conditions::true_reason(c, ConditionType::Stalled)
                    == Some(Reason::ConnectionNotReady)
            })
    };
    let uses = |namespace: Option<String>, r: Option<&crate::api::ConnectionRef>| match key {
        ConnectionKey::Operator => r.is_none(),
        ConnectionKey::Namespaced {
            namespace: ns,
            name,
        } => {
            namespace.as_deref() == Some(ns.as_str())
                && r.is_none_or(|r| r.kind == ConnectionKind::GraphConnection && r.name == *name)
        }
        ConnectionKey::Cluster { name } => {
            r.is_some_and(|r| r.kind == ConnectionKind::ClusterGraphConnection && r.name == *name)
        }
    };
    ctx.triggers.wake(
        |a: &AccessPackageAssignment| {
            stalled(a.status.as_ref().map(|s| &s.conditions))
                && uses(a.namespace(), a.spec.connection_ref.as_ref())
        },
        |g: &AccessPackageGuard| {
            stalled(g.status.as_ref().map(|s| &s.conditions))
                && uses(g.namespace(), g.spec.connection_ref.as_ref())
        },
    );
}

/// Forgets deleted connections and wakes their objects (which then stall: a deleted
/// connection never hands its objects to another tenant). Applied to the connection watch
/// events before they reach the store.
///
/// A changed mass-drift acknowledgement annotation is applied here too: annotations do not
/// change the generation, so the connection's own reconcile never sees it.
pub fn on_namespaced_event(ctx: &Context, event: &watcher::Event<GraphConnection>) {
    on_event(ctx, event, |obj| ConnectionKey::Namespaced {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    });
}

/// See [`on_namespaced_event`].
pub fn on_cluster_event(ctx: &Context, event: &watcher::Event<ClusterGraphConnection>) {
    on_event(ctx, event, |obj| ConnectionKey::Cluster {
        name: obj.name_any(),
    });
}

fn on_event<K: ResourceExt>(
    ctx: &Context,
    event: &watcher::Event<K>,
    key: impl Fn(&K) -> ConnectionKey,
) {
    match event {
        watcher::Event::Delete(obj) => gone(ctx, &key(obj)),
        watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
            acknowledged(ctx, &key(obj), obj.annotations());
        }
        _ => {}
    }
}

/// Resumes at once the objects whose mass-drift hold the connection's acknowledgement
/// annotation (as just seen) lifts.
fn acknowledged(
    ctx: &Context,
    key: &ConnectionKey,
    annotations: &std::collections::BTreeMap<String, String>,
) {
    let value = annotations
        .get(crate::api::MASS_DRIFT_ACK_ANNOTATION)
        .map(String::as_str);
    let lifted = ctx.connections.acknowledge_mass_drift(key, value);
    ctx.triggers.wake_mass_drift_held(&lifted);
}

fn gone(ctx: &Context, key: &ConnectionKey) {
    tracing::warn!(connection = %key, "connection deleted; its objects stall until it is back");
    ctx.connections.forget(key);
    ctx.metrics.connection_ready(&key.metric_label(), false);
    publish_clients(ctx);
    wake(ctx, key, false);
}

fn publish_clients(ctx: &Context) {
    ctx.metrics.set_connection_clients(
        ctx.connections
            .ready_tenants()
            .into_iter()
            .filter(|t| t.key != ConnectionKey::Operator)
            .map(|t| (t.key.metric_label(), t.graph().clone()))
            .collect(),
    );
}

/// Writes `Ready=False`/`Stalled=True` (reason `ConnectionNotReady`) on an object whose
/// connection cannot be used, keeping the rest of its status, and comes back later (or when
/// the connection becomes ready).
pub async fn stall_object<K, S>(
    ctx: &Context,
    obj: &K,
    status: Option<&S>,
    unready: &Unready,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: serde::Serialize,
{
    let namespace = obj
        .meta()
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = obj.meta().generation;
    let mut value = status
        .map(serde_json::to_value)
        .transpose()
        .map_err(Error::Serialize)?
        .unwrap_or_else(|| Value::Object(Default::default()));
    let previous: Vec<Condition> = value
        .get("conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let conditions = not_ready_conditions(
        &previous,
        &unready.key.to_string(),
        &unready.message,
        generation,
        ctx.now(),
    );
    if conditions_equal_ignoring_transition_times(&previous, &conditions)
        && value.get("connection").and_then(Value::as_str) == unready.record.as_deref()
    {
        return Ok(Action::requeue(unready.retry));
    }
    tracing::warn!(connection = %unready.key, "object stalled: {}", unready.message);
    let newly_stalled = crate::engine::conditions::true_reason(&previous, ConditionType::Stalled)
        != Some(Reason::ConnectionNotReady);
    if newly_stalled {
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: Reason::ConnectionNotReady.as_str().to_string(),
            note: Some(unready.message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = ctx.publish_event(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %err, "could not record an event; check RBAC for events.k8s.io/events create,patch");
        }
    }
    if let Value::Object(map) = &mut value {
        map.insert(
            "conditions".into(),
            serde_json::to_value(&conditions).map_err(Error::Serialize)?,
        );
        map.insert("observedGeneration".into(), serde_json::json!(generation));
        match &unready.record {
            Some(r) => map.insert("connection".into(), Value::String(r.clone())),
            None => map.remove("connection"),
        };
    }
    patch_status(&api, &obj.meta().name.clone().unwrap_or_default(), &value).await?;
    Ok(Action::requeue(unready.retry))
}

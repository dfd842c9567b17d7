//! The simulator's admin API (`/_sim/...`, no authentication) and the in-process
//! operations behind it, shared with [`super::SimHandle`]. The endpoint list is in
//! docs/simulator.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query as AxQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use jiff::SignedDuration;
use serde::Deserialize;
use serde_json::{Value, json};

use super::audit::{Actor, Change, actor_named};
use super::latency::{LatencyBody, LatencyModel};
use super::odata::ts;
use super::server::{
    ActiveFault, AddOutcome, FaultSpec, LogEntry, RuBucket, Shared, Sim, Usage, log_json,
    new_bucket,
};
use super::state::World;
use super::states::{AssignmentState, RequestState};

/// Why an admin operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request was invalid.
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match self {
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

type AResult<T> = Result<T, AdminError>;

fn user_id(w: &World, key: &str) -> AResult<String> {
    w.user_ref(key)
        .map(|u| u.id.clone())
        .ok_or_else(|| AdminError::NotFound(format!("user {key:?} (give a UPN or object id)")))
}

fn group_id(w: &World, key: &str) -> AResult<String> {
    w.group_ref(key)
        .map(|g| g.id.clone())
        .ok_or_else(|| AdminError::NotFound(format!("group {key:?} (give a name or object id)")))
}

fn sp_role(w: &World, sp: &str, role: Option<&str>) -> AResult<(String, Option<String>)> {
    let s = w.sp_ref(sp).ok_or_else(|| {
        AdminError::NotFound(format!(
            "service principal {sp:?} (give a name, id or appId)"
        ))
    })?;
    let role_id = match role {
        None => None,
        Some(r) => Some(
            s.app_roles
                .iter()
                .find(|ar| {
                    ar.value.eq_ignore_ascii_case(r)
                        || ar.display_name.eq_ignore_ascii_case(r)
                        || ar.id.eq_ignore_ascii_case(r)
                })
                .map(|ar| ar.id.clone())
                .or_else(|| (r == super::state::DEFAULT_ACCESS_ROLE).then(|| r.to_string()))
                .ok_or_else(|| {
                    AdminError::NotFound(format!("app role {r:?} on {}", s.display_name))
                })?,
        ),
    };
    Ok((s.id.clone(), role_id))
}

/// The actor an admin call names, or the simulator's admin.
fn actor_of(w: &World, actor: Option<&str>) -> Actor {
    let default = format!("sim-admin@{}", w.tenant_domain);
    let name = actor
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .unwrap_or(&default);
    actor_named(w.seed_value, name, |upn| {
        w.user_by_upn(upn)
            .map(|u| (u.id.clone(), u.display_name.clone()))
    })
}

fn parse_ago(s: &str) -> AResult<SignedDuration> {
    super::scenario::parse_duration(s).map_err(AdminError::BadRequest)
}

impl Shared {
    /// Outside change: removes a user from a group behind entitlement management's back.
    /// Returns false if the user was not a member.
    pub fn admin_remove_member(&self, group: &str, user: &str) -> AResult<bool> {
        self.admin_remove_member_by(group, user, None)
    }

    /// Like [`Shared::admin_remove_member`], logged in the audit log as made by `actor` (a
    /// UPN names a user, anything else an app; default: the simulator's admin).
    pub fn admin_remove_member_by(
        &self,
        group: &str,
        user: &str,
        actor: Option<&str>,
    ) -> AResult<bool> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let (g, u) = (group_id(w, group)?, user_id(w, user)?);
        let changed = w.remove_member(&g, &u);
        if changed {
            let actor = actor_of(w, actor);
            w.audit_grant(
                &super::state::Grant::GroupMember(g),
                Change::MemberRemoved,
                actor,
                &u,
            );
        }
        Ok(changed)
    }

    /// Outside change: removes a user from a group's owners, as an admin in the portal
    /// would (logged as "Remove owner from group"). Returns false if not an owner.
    pub fn admin_remove_owner(&self, group: &str, user: &str) -> AResult<bool> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let (g, u) = (group_id(w, group)?, user_id(w, user)?);
        let changed = w.group_mut(&g).is_some_and(|g| g.owners.remove(&u));
        if changed {
            let actor = actor_of(w, None);
            w.audit_grant(
                &super::state::Grant::GroupOwner(g),
                Change::OwnerRemoved,
                actor,
                &u,
            );
        }
        Ok(changed)
    }

    /// Outside change: removes a user's eligibility for a group's membership or ownership
    /// (`owner`), as an admin in PIM for Groups would. Returns false if there was none.
    pub fn admin_remove_group_eligibility(
        &self,
        group: &str,
        user: &str,
        owner: bool,
    ) -> AResult<bool> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let (g, u) = (group_id(w, group)?, user_id(w, user)?);
        Ok(w.remove_group_eligibility(&g, &u, owner))
    }

    /// Ends a user's eligibility for a group's membership or ownership at `end` (in the
    /// past: it ended on schedule, as PIM's maximum duration does). Returns false if there
    /// was none.
    pub fn admin_end_group_eligibility(
        &self,
        group: &str,
        user: &str,
        owner: bool,
        end: jiff::Timestamp,
    ) -> AResult<bool> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let (g, u) = (group_id(w, group)?, user_id(w, user)?);
        Ok(w.end_group_eligibility(&g, &u, owner, end))
    }

    /// Outside change: removes a user's Entra role at the directory root (an eligibility
    /// when `eligible`, else an active assignment), as an admin in PIM or the role
    /// management API would. `role` is the role definition's name or id. Returns false if
    /// the user did not hold it.
    pub fn admin_remove_directory_role(
        &self,
        role: &str,
        user: &str,
        eligible: bool,
    ) -> AResult<bool> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let u = user_id(w, user)?;
        let role_id = w
            .role_definition_named(role)
            .map(|d| d.id.clone())
            .ok_or_else(|| AdminError::NotFound(format!("no directory role {role:?}")))?;
        Ok(w.remove_directory_role(&role_id, &u, eligible))
    }

    /// Outside change: removes a user's Azure role `role` (name or GUID) at exactly
    /// `scope` (`/subscriptions/{id}[/resourceGroups/{name}]`), its eligibility when
    /// `eligible`, as an Azure admin would. Returns false if the user did not hold it.
    pub fn admin_remove_azure_role(
        &self,
        role: &str,
        scope: &str,
        user: &str,
        eligible: bool,
    ) -> AResult<bool> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let u = user_id(w, user)?;
        let guid = w
            .azure_roles
            .iter()
            .find(|d| d.display_name.eq_ignore_ascii_case(role) || d.id.eq_ignore_ascii_case(role))
            .map(|d| d.id.clone())
            .ok_or_else(|| AdminError::NotFound(format!("no Azure role {role:?}")))?;
        Ok(w.remove_azure_role(&guid, scope, &u, eligible))
    }

    /// Takes Reader away from the simulated app at `scope` (and below): ARM role reads
    /// there answer 403 `AuthorizationFailed`.
    pub fn admin_deny_arm_reads(&self, scope: &str) {
        let mut sim = self.lock();
        sim.world
            .arm_denied
            .push(scope.trim_end_matches('/').to_ascii_lowercase());
    }

    /// Makes Microsoft's access drift report say exactly `users` (UPNs or ids) are missing
    /// `resource` (a group, or an app's service principal, by name or id), whatever the
    /// tenant's state: a report that lags or disagrees.
    pub fn admin_set_reported_drift(&self, resource: &str, users: &[String]) -> AResult<()> {
        let mut sim = self.lock();
        let w = &sim.world;
        let id = match w.group_ref(resource) {
            Some(g) => g.id.clone(),
            None => w.sp_ref(resource).map(|s| s.id.clone()).ok_or_else(|| {
                AdminError::NotFound(format!(
                    "group or service principal {resource:?} (give a name or object id)"
                ))
            })?,
        };
        let users = users
            .iter()
            .map(|u| user_id(w, u).map(|id| id.to_ascii_lowercase()))
            .collect::<AResult<_>>()?;
        sim.drift.reported.insert(id.to_ascii_lowercase(), users);
        Ok(())
    }

    /// Back to a report computed from the tenant's state.
    pub fn admin_clear_reported_drift(&self) {
        self.lock().drift.reported.clear();
    }

    /// Makes every access drift report request answer `status` (`None`: available again).
    pub fn admin_set_drift_report_unavailable(&self, status: Option<u16>) {
        self.lock().drift.unavailable = status;
    }

    /// Limits ARM reads to `reads` per `window` (`None`: unlimited), as ARM's
    /// `x-ms-ratelimit-remaining-subscription-reads` counts them.
    pub fn admin_set_arm_read_quota(&self, quota: Option<(u32, std::time::Duration)>) {
        self.lock().arm_reads =
            quota.map(|(reads, window)| super::server::ReadQuota::new(reads, window));
    }

    /// Outside change: adds a user to a group. Returns false if already a member.
    pub fn admin_add_member(&self, group: &str, user: &str) -> AResult<bool> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let (g, u) = (group_id(w, group)?, user_id(w, user)?);
        let changed = w.add_member(&g, &u);
        if changed {
            let actor = actor_of(w, None);
            w.audit_grant(
                &super::state::Grant::GroupMember(g),
                Change::MemberAdded,
                actor,
                &u,
            );
        }
        Ok(changed)
    }

    /// Outside change: removes a user's app role assignment(s) on an app (one role, or all).
    pub fn admin_remove_app_role(
        &self,
        sp: &str,
        user: &str,
        role: Option<&str>,
    ) -> AResult<usize> {
        self.admin_remove_app_role_by(sp, user, role, None)
    }

    /// Like [`Shared::admin_remove_app_role`], logged in the audit log as made by `actor`.
    pub fn admin_remove_app_role_by(
        &self,
        sp: &str,
        user: &str,
        role: Option<&str>,
        actor: Option<&str>,
    ) -> AResult<usize> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let u = user_id(w, user)?;
        let (sp_id, role_id) = sp_role(w, sp, role)?;
        let held: Vec<String> = w
            .sp(&sp_id)
            .map(|s| {
                s.assigned_to
                    .iter()
                    .filter(|a| {
                        a.principal_id == u
                            && role_id
                                .as_deref()
                                .is_none_or(|r| a.app_role_id.eq_ignore_ascii_case(r))
                    })
                    .map(|a| a.app_role_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let removed = w.remove_app_role(&sp_id, &u, role_id.as_deref());
        let actor = actor_of(w, actor);
        for role_id in held {
            let grant = super::state::Grant::AppRole {
                sp_id: sp_id.clone(),
                role_id,
            };
            w.audit_grant(&grant, Change::AppRoleRemoved, actor.clone(), &u);
        }
        Ok(removed)
    }

    /// Holds audit log entries back for `lag` of simulated time before
    /// `auditLogs/directoryAudits` lists them.
    pub fn admin_set_audit_lag(&self, lag: SignedDuration) {
        self.lock().world.audit.lag = lag;
    }

    /// Outside change: grants an app role (default: Default Access).
    pub fn admin_add_app_role(&self, sp: &str, user: &str, role: Option<&str>) -> AResult<bool> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let u = user_id(w, user)?;
        let (sp_id, role_id) = sp_role(w, sp, role)?;
        let now = w.now();
        let role_id = role_id.unwrap_or_else(|| super::state::DEFAULT_ACCESS_ROLE.to_string());
        let changed = w.add_app_role(&sp_id, &u, &role_id, now);
        if changed {
            let actor = actor_of(w, None);
            let grant = super::state::Grant::AppRole { sp_id, role_id };
            w.audit_grant(&grant, Change::AppRoleAdded, actor, &u);
        }
        Ok(changed)
    }

    /// Forces an assignment's state (and matching status); stops its background work.
    pub fn admin_set_assignment_state(&self, id: &str, state: &str) -> AResult<()> {
        let state: AssignmentState = state
            .parse()
            .map_err(|_| AdminError::BadRequest(format!("{state:?} is not an assignment state")))?;
        let mut sim = self.lock();
        let now = sim.world.now();
        let a = sim
            .world
            .assignment_mut(id)
            .ok_or_else(|| AdminError::NotFound(format!("assignment {id}")))?;
        a.state = state;
        a.expired = (state == AssignmentState::Expired).then_some(now);
        a.rev += 1;
        Ok(())
    }

    /// Forces a request's state; `completed_ago` sets `completedDateTime` to now minus it
    /// (e.g. `20d` to put a failed request outside the reprocess window).
    pub fn admin_set_request_state(
        &self,
        id: &str,
        state: &str,
        completed_ago: Option<&str>,
    ) -> AResult<()> {
        let state: RequestState = state
            .parse()
            .map_err(|_| AdminError::BadRequest(format!("{state:?} is not a request state")))?;
        let ago = completed_ago.map(parse_ago).transpose()?;
        let mut sim = self.lock();
        let now = sim.world.now();
        let r = sim
            .world
            .request_mut(id)
            .ok_or_else(|| AdminError::NotFound(format!("assignment request {id}")))?;
        r.state = state;
        r.rev += 1;
        if let Some(ago) = ago {
            r.completed = Some(now - ago);
        } else if !state.is_open() && r.completed.is_none() {
            r.completed = Some(now);
        }
        Ok(())
    }

    /// Injects a fault; returns its id.
    pub fn admin_inject_fault(&self, spec: FaultSpec) -> u64 {
        let mut sim = self.lock();
        let id = sim.next_fault_id;
        sim.next_fault_id += 1;
        if let FaultSpec::SilentReprocess {
            assignment_ids,
            request_ids,
        } = &spec
        {
            if assignment_ids.is_empty() && request_ids.is_empty() {
                sim.silent_all = true;
            }
            for i in assignment_ids.iter().chain(request_ids) {
                sim.silent_ids.insert(i.to_ascii_lowercase());
            }
            return id;
        }
        let scope = match &spec {
            FaultSpec::Throttle { scope, .. }
            | FaultSpec::Error { scope, .. }
            | FaultSpec::Latency { scope, .. } => scope.clone(),
            FaultSpec::StuckDelivery { count } => {
                sim.add_outcomes.push((AddOutcome::Stuck, *count));
                return id;
            }
            FaultSpec::FailDelivery { count } => {
                sim.add_outcomes.push((AddOutcome::Fail, *count));
                return id;
            }
            FaultSpec::PartialDelivery { count } => {
                sim.add_outcomes.push((AddOutcome::Partial, *count));
                return id;
            }
            FaultSpec::SilentReprocess { .. } => return id,
        };
        let remaining = match (scope.count, scope.duration_ms) {
            (None, None) => Some(1),
            (c, _) => c,
        };
        let until = scope
            .duration_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        sim.faults.push(ActiveFault {
            id,
            spec,
            remaining,
            until,
        });
        id
    }

    /// Removes every injected fault (including silent reprocess).
    pub fn admin_clear_faults(&self) {
        let mut sim = self.lock();
        sim.faults.clear();
        sim.silent_all = false;
        sim.silent_ids.clear();
        sim.add_outcomes.clear();
    }

    /// How many requests the injected fault `id` has affected so far (a latency fault counts
    /// a request when its delay begins, so a test can wait for a request to be held).
    pub fn admin_fault_hits(&self, id: u64) -> u64 {
        self.lock().fault_hits.get(&id).copied().unwrap_or_default()
    }

    /// Removes one injected fault; returns false if it had already ended or never existed.
    pub fn admin_remove_fault(&self, id: u64) -> bool {
        let mut sim = self.lock();
        let before = sim.faults.len();
        sim.faults.retain(|f| f.id != id);
        before != sim.faults.len()
    }

    /// Enables (Some) or disables (None) resource-unit throttling.
    pub fn admin_set_ru_bucket(&self, bucket: Option<RuBucket>) {
        self.lock().bucket = bucket.map(new_bucket);
    }

    /// The request log so far.
    pub fn admin_request_log(&self) -> Vec<LogEntry> {
        self.lock().log.clone()
    }

    /// Clears the request log and counters.
    pub fn admin_clear_log(&self) {
        let mut sim = self.lock();
        sim.log.clear();
        sim.counters.clear();
        sim.usage = Usage::default();
    }

    /// Expires every group delta token issued so far (the next use answers `410`).
    pub fn admin_expire_delta_tokens(&self) {
        let mut sim = self.lock();
        let w = &mut sim.world;
        w.delta_version += 1;
        w.delta_floor = w.delta_version;
    }

    /// Requests and resource units since the log was last cleared.
    pub fn admin_usage(&self) -> Usage {
        self.lock().usage.clone()
    }

    /// Request counts keyed by `METHOD /path` (no query).
    pub fn admin_counters(&self) -> BTreeMap<String, u64> {
        self.lock().counters.clone()
    }

    /// A leaver workflow or an incident responder: sets the user's `accountEnabled`.
    /// Memberships and assignments stay, and entitlement management keeps delivering to
    /// the account, as in Entra. Returns whether the value changed.
    pub fn admin_set_account_enabled(&self, user: &str, enabled: bool) -> AResult<bool> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let id = user_id(w, user)?;
        Ok(w.set_account_enabled(&id, enabled))
    }

    /// Deletes a user: it leaves every Graph read (`GET /users/{id}` answers 404
    /// `Request_ResourceNotFound`) and its memberships and role assignments go with it;
    /// entitlement management's assignments keep naming it.
    pub fn admin_delete_user(&self, user: &str) -> AResult<()> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let id = user_id(w, user)?;
        w.delete_user(&id);
        Ok(())
    }

    /// Identity Protection flags `user` with `level` / `state` (Graph's literals).
    pub fn admin_set_risky_user(&self, user: &str, level: &str, state: &str) -> AResult<()> {
        const LEVELS: &[&str] = &["low", "medium", "high", "hidden", "none"];
        const STATES: &[&str] = &[
            "none",
            "confirmedSafe",
            "remediated",
            "dismissed",
            "atRisk",
            "confirmedCompromised",
        ];
        let known = |list: &[&str], v: &str| {
            list.iter()
                .find(|l| l.eq_ignore_ascii_case(v))
                .map(|l| l.to_string())
        };
        let level = known(LEVELS, level).ok_or_else(|| {
            AdminError::BadRequest(format!("riskLevel {level:?}: give one of {LEVELS:?}"))
        })?;
        let state = known(STATES, state).ok_or_else(|| {
            AdminError::BadRequest(format!("riskState {state:?}: give one of {STATES:?}"))
        })?;
        let mut sim = self.lock();
        let w = &mut sim.world;
        let u = w.user_ref(user).cloned().ok_or_else(|| {
            AdminError::NotFound(format!("user {user:?} (give a UPN or object id)"))
        })?;
        let detail = if state == "remediated" {
            "userPerformedSecuredPasswordReset"
        } else if state == "dismissed" {
            "adminDismissedAllRiskForUser"
        } else if state == "confirmedCompromised" {
            "adminConfirmedUserCompromised"
        } else {
            "none"
        };
        let updated = w.now();
        w.risky_users.insert(
            u.id.to_ascii_lowercase(),
            super::state::RiskyUser {
                user_id: u.id,
                upn: u.upn,
                display_name: u.display_name,
                risk_level: level,
                risk_state: state,
                risk_detail: detail.into(),
                updated,
                is_deleted: false,
            },
        );
        Ok(())
    }

    /// Identity Protection forgets `user` (never assessed). Returns whether it was listed.
    pub fn admin_clear_risky_user(&self, user: &str) -> AResult<bool> {
        let mut sim = self.lock();
        let w = &mut sim.world;
        let key = match w.user_ref(user) {
            Some(u) => u.id.to_ascii_lowercase(),
            None => user.to_ascii_lowercase(),
        };
        Ok(w.risky_users.remove(&key).is_some())
    }

    /// Takes an application permission from the app (`granted: false`) or gives it back.
    /// Only the permissions the simulator checks are accepted (docs/simulator.md).
    pub fn admin_set_permission(&self, permission: &str, granted: bool) -> AResult<()> {
        const CHECKED: &[&str] = &[
            super::graph::USER_READ_ALL,
            super::risk::IDENTITY_RISKY_USER_READ_ALL,
            super::graph::PRIVILEGED_ELIGIBILITY_READ_GROUP,
        ];
        let name = CHECKED
            .iter()
            .find(|p| p.eq_ignore_ascii_case(permission))
            .ok_or_else(|| {
                AdminError::BadRequest(format!(
                    "permission {permission:?}: the simulator checks only {CHECKED:?}"
                ))
            })?
            .to_ascii_lowercase();
        let mut sim = self.lock();
        if granted {
            sim.world.revoked.remove(&name);
        } else {
            sim.world.revoked.insert(name);
        }
        Ok(())
    }

    /// Back to the loaded scenario: state, faults, log, counters and clock. Issued tokens
    /// stay valid so running clients are not disturbed.
    pub fn admin_reset(&self) -> AResult<()> {
        let world = World::from_scenario(&self.scenario)
            .map_err(|e| AdminError::BadRequest(e.to_string()))?;
        let mut sim = self.lock();
        let tokens = std::mem::take(&mut sim.tokens);
        let arm_tokens = std::mem::take(&mut sim.arm_tokens);
        let epoch = sim.epoch + 1;
        let mut fresh = Sim::new(world, self.opts.ru_bucket, self.opts.latency);
        fresh.tokens = tokens;
        fresh.arm_tokens = arm_tokens;
        fresh.epoch = epoch;
        *sim = fresh;
        Ok(())
    }

    /// Moves the simulated clock forward (token expiry, reprocess windows, timestamps).
    pub fn admin_advance_clock(&self, by: SignedDuration) {
        let mut sim = self.lock();
        sim.world.clock_offset += by;
    }

    /// A readable summary of the whole tenant (ids by name, memberships, states).
    pub fn admin_snapshot(&self) -> Value {
        let sim = self.lock();
        let w = &sim.world;
        let upn = |id: &str| {
            w.user(id)
                .map(|u| u.upn.clone())
                .unwrap_or_else(|| id.to_string())
        };
        json!({
            "tenantId": w.tenant_id,
            "tenantDomain": w.tenant_domain,
            "clientId": w.client_id,
            "now": ts(w.now()),
            "users": w.users.iter().map(|u| json!({"id": u.id, "upn": u.upn, "displayName": u.display_name, "accountEnabled": u.account_enabled})).collect::<Vec<_>>(),
            "riskyUsers": w.risky_users.values().map(|r| json!({"user": r.upn, "riskLevel": r.risk_level, "riskState": r.risk_state})).collect::<Vec<_>>(),
            "revokedPermissions": w.revoked.iter().collect::<Vec<_>>(),
            "groups": w.groups.iter().map(|g| json!({
                "id": g.id, "name": g.display_name,
                "members": g.members.iter().map(|m| upn(m)).collect::<Vec<_>>(),
                "owners": g.owners.iter().map(|m| upn(m)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "servicePrincipals": w.sps.iter().map(|s| json!({
                "id": s.id, "appId": s.app_id, "name": s.display_name,
                "appRoles": s.app_roles.iter().map(|r| json!({"id": r.id, "value": r.value})).collect::<Vec<_>>(),
                "assignedTo": s.assigned_to.iter().map(|a| json!({"user": upn(&a.principal_id), "appRoleId": a.app_role_id})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "catalogs": w.catalogs.iter().map(|c| json!({"id": c.id, "name": c.display_name})).collect::<Vec<_>>(),
            "accessPackages": w.packages.iter().map(|p| json!({
                "id": p.id, "name": p.display_name, "catalogId": p.catalog_id,
                "policies": w.policies.iter().filter(|x| x.package_id == p.id)
                    .map(|x| json!({"id": x.id, "name": x.display_name})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "assignments": w.assignments.iter().map(|a| json!({
                "id": a.id, "user": upn(&a.target_id),
                "package": w.package(&a.package_id).map(|p| p.display_name.clone()),
                "state": a.state, "status": a.state.status(),
                "missing": w.missing_grants(&a.id),
            })).collect::<Vec<_>>(),
            "requests": w.requests.iter().map(|r| json!({
                "id": r.id, "type": r.request_type, "user": upn(&r.target_id),
                "package": w.package(&r.package_id).map(|p| p.display_name.clone()),
                "state": r.state, "status": r.state.status(), "assignmentId": r.assignment_id,
                "completedDateTime": r.completed.map(ts),
            })).collect::<Vec<_>>(),
        })
    }
}

#[derive(Deserialize)]
struct UserBody {
    user: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppRoleBody {
    user: String,
    #[serde(default)]
    app_role: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppRoleQuery {
    #[serde(default)]
    app_role: Option<String>,
    /// Who the audit log says made the change.
    #[serde(default)]
    actor: Option<String>,
}

/// `?actor=` or `{"actor": ...}` on an outside removal: who the audit log names.
#[derive(Deserialize, Default)]
struct ActorBody {
    #[serde(default)]
    actor: Option<String>,
}

/// The actor from the query, else from a JSON body (DELETE bodies are optional).
fn actor_from(query: Option<String>, body: &[u8]) -> AResult<Option<String>> {
    if query.is_some() || body.iter().all(u8::is_ascii_whitespace) {
        return Ok(query);
    }
    serde_json::from_slice::<ActorBody>(body)
        .map(|b| b.actor)
        .map_err(|e| AdminError::BadRequest(format!("body: {e}")))
}

#[derive(Deserialize)]
struct LagBody {
    lag: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateBody {
    state: String,
    #[serde(default)]
    completed_ago: Option<String>,
}

#[derive(Deserialize)]
struct ClockBody {
    by: String,
}

type S = State<Arc<Shared>>;

async fn remove_member(
    State(s): S,
    Path((g, u)): Path<(String, String)>,
    AxQuery(q): AxQuery<ActorBody>,
    body: axum::body::Bytes,
) -> AResult<Json<Value>> {
    let actor = actor_from(q.actor, &body)?;
    Ok(Json(
        json!({"changed": s.admin_remove_member_by(&g, &u, actor.as_deref())?}),
    ))
}

async fn set_audit_lag(State(s): S, Json(b): Json<LagBody>) -> AResult<StatusCode> {
    s.admin_set_audit_lag(parse_ago(&b.lag)?);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AccessQuery {
    #[serde(default)]
    access: Option<String>,
}

/// `member` (the default) or `owner`: which eligibility of a group.
fn owner_access(access: Option<&str>) -> AResult<bool> {
    match access.unwrap_or("member") {
        a if a.eq_ignore_ascii_case("member") => Ok(false),
        a if a.eq_ignore_ascii_case("owner") => Ok(true),
        other => Err(AdminError::BadRequest(format!(
            "access={other:?}: use access=member or access=owner"
        ))),
    }
}

async fn remove_owner(State(s): S, Path((g, u)): Path<(String, String)>) -> AResult<Json<Value>> {
    Ok(Json(json!({"removed": s.admin_remove_owner(&g, &u)?})))
}

async fn remove_group_eligibility(
    State(s): S,
    Path((g, u)): Path<(String, String)>,
    AxQuery(q): AxQuery<AccessQuery>,
) -> AResult<Json<Value>> {
    let owner = owner_access(q.access.as_deref())?;
    Ok(Json(
        json!({"removed": s.admin_remove_group_eligibility(&g, &u, owner)?}),
    ))
}

async fn remove_directory_role(
    State(s): S,
    Path((role, kind, u)): Path<(String, String, String)>,
) -> AResult<Json<Value>> {
    let eligible = match kind.as_str() {
        "eligibilities" => true,
        "assignments" => false,
        other => {
            return Err(AdminError::BadRequest(format!(
                "{other:?}: use /_sim/directoryRoles/{{role}}/assignments/{{user}} or .../eligibilities/{{user}}"
            )));
        }
    };
    Ok(Json(
        json!({"removed": s.admin_remove_directory_role(&role, &u, eligible)?}),
    ))
}

#[derive(Deserialize)]
struct ScopeQuery {
    scope: String,
}

async fn remove_azure_role(
    State(s): S,
    Path((role, kind, u)): Path<(String, String, String)>,
    AxQuery(q): AxQuery<ScopeQuery>,
) -> AResult<Json<Value>> {
    let eligible = match kind.as_str() {
        "eligibilities" => true,
        "assignments" => false,
        other => {
            return Err(AdminError::BadRequest(format!(
                "{other:?}: use /_sim/azureRoles/{{role}}/assignments/{{user}}?scope=... or .../eligibilities/{{user}}?scope=..."
            )));
        }
    };
    Ok(Json(
        json!({"removed": s.admin_remove_azure_role(&role, &q.scope, &u, eligible)?}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArmQuotaBody {
    reads: u32,
    window_ms: u64,
}

async fn set_arm_quota(State(s): S, Json(b): Json<ArmQuotaBody>) -> StatusCode {
    s.admin_set_arm_read_quota(Some((
        b.reads,
        std::time::Duration::from_millis(b.window_ms),
    )));
    StatusCode::NO_CONTENT
}

async fn clear_arm_quota(State(s): S) -> StatusCode {
    s.admin_set_arm_read_quota(None);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ReportedDriftBody {
    missing: Vec<String>,
}

async fn set_reported_drift(
    State(s): S,
    Path(resource): Path<String>,
    Json(b): Json<ReportedDriftBody>,
) -> AResult<StatusCode> {
    s.admin_set_reported_drift(&resource, &b.missing)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_reported_drift(State(s): S) -> StatusCode {
    s.admin_clear_reported_drift();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct UnavailableBody {
    status: u16,
}

async fn set_drift_unavailable(State(s): S, Json(b): Json<UnavailableBody>) -> AResult<StatusCode> {
    if !(400..=599).contains(&b.status) {
        return Err(AdminError::BadRequest(format!(
            "status {}: give an HTTP error status (400-599)",
            b.status
        )));
    }
    s.admin_set_drift_report_unavailable(Some(b.status));
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_drift_unavailable(State(s): S) -> StatusCode {
    s.admin_set_drift_report_unavailable(None);
    StatusCode::NO_CONTENT
}

async fn add_member(
    State(s): S,
    Path(g): Path<String>,
    Json(b): Json<UserBody>,
) -> AResult<Json<Value>> {
    Ok(Json(json!({"changed": s.admin_add_member(&g, &b.user)?})))
}

async fn remove_app_role(
    State(s): S,
    Path((sp, u)): Path<(String, String)>,
    AxQuery(q): AxQuery<AppRoleQuery>,
    body: axum::body::Bytes,
) -> AResult<Json<Value>> {
    let actor = actor_from(q.actor, &body)?;
    Ok(Json(json!({"removed": s.admin_remove_app_role_by(
        &sp,
        &u,
        q.app_role.as_deref(),
        actor.as_deref()
    )?})))
}

async fn add_app_role(
    State(s): S,
    Path(sp): Path<String>,
    Json(b): Json<AppRoleBody>,
) -> AResult<Json<Value>> {
    Ok(Json(
        json!({"changed": s.admin_add_app_role(&sp, &b.user, b.app_role.as_deref())?}),
    ))
}

async fn assignment_state(
    State(s): S,
    Path(id): Path<String>,
    Json(b): Json<StateBody>,
) -> AResult<StatusCode> {
    s.admin_set_assignment_state(&id, &b.state)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn request_state(
    State(s): S,
    Path(id): Path<String>,
    Json(b): Json<StateBody>,
) -> AResult<StatusCode> {
    s.admin_set_request_state(&id, &b.state, b.completed_ago.as_deref())?;
    Ok(StatusCode::NO_CONTENT)
}

async fn inject_fault(State(s): S, Json(spec): Json<FaultSpec>) -> Json<Value> {
    Json(json!({"id": s.admin_inject_fault(spec)}))
}

async fn clear_faults(State(s): S) -> StatusCode {
    s.admin_clear_faults();
    StatusCode::NO_CONTENT
}

async fn remove_fault(State(s): S, Path(id): Path<u64>) -> AResult<StatusCode> {
    if s.admin_remove_fault(id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound(format!("fault {id}")))
    }
}

async fn set_throttling(State(s): S, Json(b): Json<RuBucket>) -> AResult<StatusCode> {
    if b.capacity == 0 || b.window_ms == 0 {
        return Err(AdminError::BadRequest(
            "capacity and windowMs must be positive".into(),
        ));
    }
    s.admin_set_ru_bucket(Some(b));
    Ok(StatusCode::NO_CONTENT)
}

async fn set_latency(State(s): S, Json(b): Json<LatencyBody>) -> AResult<StatusCode> {
    let model: LatencyModel = b
        .model
        .parse()
        .map_err(|e: crate::LatencyParseError| AdminError::BadRequest(e.to_string()))?;
    s.lock().latency = model;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_latency(State(s): S) -> Json<LatencyBody> {
    Json(LatencyBody {
        model: s.lock().latency.to_string(),
    })
}

async fn clear_latency(State(s): S) -> StatusCode {
    s.lock().latency = LatencyModel::default();
    StatusCode::NO_CONTENT
}

async fn clear_throttling(State(s): S) -> StatusCode {
    s.admin_set_ru_bucket(None);
    StatusCode::NO_CONTENT
}

async fn requests(State(s): S) -> Json<Value> {
    Json(log_json(&s.admin_request_log()))
}

async fn clear_requests(State(s): S) -> StatusCode {
    s.admin_clear_log();
    StatusCode::NO_CONTENT
}

async fn expire_delta(State(s): S) -> StatusCode {
    s.admin_expire_delta_tokens();
    StatusCode::NO_CONTENT
}

async fn usage(State(s): S) -> Json<Usage> {
    Json(s.admin_usage())
}

async fn counters(State(s): S) -> Json<Value> {
    Json(json!(s.admin_counters()))
}

async fn reset(State(s): S) -> AResult<StatusCode> {
    s.admin_reset()?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clock(State(s): S) -> Json<Value> {
    let sim = s.lock();
    Json(json!({"now": ts(sim.world.now()), "offsetSeconds": sim.world.clock_offset.as_secs()}))
}

async fn advance_clock(State(s): S, Json(b): Json<ClockBody>) -> AResult<Json<Value>> {
    s.admin_advance_clock(parse_ago(&b.by)?);
    Ok(clock(State(s)).await)
}

async fn snapshot(State(s): S) -> Json<Value> {
    Json(s.admin_snapshot())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UserPatchBody {
    account_enabled: bool,
}

async fn patch_user(
    State(s): S,
    Path(u): Path<String>,
    Json(b): Json<UserPatchBody>,
) -> AResult<Json<Value>> {
    Ok(Json(
        json!({"changed": s.admin_set_account_enabled(&u, b.account_enabled)?}),
    ))
}

async fn delete_user(State(s): S, Path(u): Path<String>) -> AResult<StatusCode> {
    s.admin_delete_user(&u)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RiskBody {
    risk_level: String,
    risk_state: String,
}

async fn set_risky_user(
    State(s): S,
    Path(u): Path<String>,
    Json(b): Json<RiskBody>,
) -> AResult<StatusCode> {
    s.admin_set_risky_user(&u, &b.risk_level, &b.risk_state)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_risky_user(State(s): S, Path(u): Path<String>) -> AResult<Json<Value>> {
    Ok(Json(json!({"removed": s.admin_clear_risky_user(&u)?})))
}

async fn grant_permission(State(s): S, Path(p): Path<String>) -> AResult<StatusCode> {
    s.admin_set_permission(&p, true)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_permission(State(s): S, Path(p): Path<String>) -> AResult<StatusCode> {
    s.admin_set_permission(&p, false)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn health() -> Json<Value> {
    Json(json!({"ok": true}))
}

/// The `/_sim` router.
pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/health", get(health))
        .route("/_sim/state", get(snapshot))
        .route("/_sim/users/{user}", patch(patch_user).delete(delete_user))
        .route(
            "/_sim/riskyUsers/{user}",
            put(set_risky_user).delete(clear_risky_user),
        )
        .route(
            "/_sim/permissions/{permission}",
            put(grant_permission).delete(revoke_permission),
        )
        .route("/_sim/groups/{group}/members", post(add_member))
        .route("/_sim/groups/{group}/members/{user}", delete(remove_member))
        .route("/_sim/groups/{group}/owners/{user}", delete(remove_owner))
        .route(
            "/_sim/groups/{group}/eligibilities/{user}",
            delete(remove_group_eligibility),
        )
        .route(
            "/_sim/servicePrincipals/{sp}/appRoleAssignedTo",
            post(add_app_role),
        )
        .route(
            "/_sim/servicePrincipals/{sp}/appRoleAssignedTo/{user}",
            delete(remove_app_role),
        )
        .route(
            "/_sim/directoryRoles/{role}/{kind}/{user}",
            delete(remove_directory_role),
        )
        .route(
            "/_sim/azureRoles/{role}/{kind}/{user}",
            delete(remove_azure_role),
        )
        .route("/_sim/accessDrift/reported", delete(clear_reported_drift))
        .route(
            "/_sim/accessDrift/reported/{resource}",
            put(set_reported_drift),
        )
        .route(
            "/_sim/accessDrift/unavailable",
            put(set_drift_unavailable).delete(clear_drift_unavailable),
        )
        .route(
            "/_sim/arm/throttling",
            put(set_arm_quota).delete(clear_arm_quota),
        )
        .route("/_sim/assignments/{id}/state", put(assignment_state))
        .route("/_sim/assignmentRequests/{id}/state", put(request_state))
        .route("/_sim/faults", post(inject_fault).delete(clear_faults))
        .route("/_sim/faults/{id}", delete(remove_fault))
        .route(
            "/_sim/throttling",
            put(set_throttling).delete(clear_throttling),
        )
        .route(
            "/_sim/latency",
            get(get_latency).put(set_latency).delete(clear_latency),
        )
        .route("/_sim/requests", get(requests).delete(clear_requests))
        .route("/_sim/counters", get(counters))
        .route("/_sim/usage", get(usage))
        .route("/_sim/delta/expire", post(expire_delta))
        .route("/_sim/auditLog", put(set_audit_lag))
        .route("/_sim/reset", post(reset))
        .route("/_sim/clock", get(clock))
        .route("/_sim/clock/advance", post(advance_clock))
}

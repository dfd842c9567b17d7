//! `safety`: what Redeliver must ask before it grants access back (README, "Safety"). Set on
//! a connection for its whole tenant, and overridable field by field on an
//! `AccessPackageAssignment` or an `AccessPackageGuard`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DURATION_PATTERN, GUID_PATTERN};

/// Annotation on an `AccessPackageGuard` (or a connection) whose new value acknowledges a
/// tripped mass-drift breaker: automatic repairs resume.
pub const MASS_DRIFT_ACK_ANNOTATION: &str = "redeliver.dev/mass-drift-acknowledged-at";

/// The safety rails. Every field is optional: an object's own value wins over its
/// connection's, and the connection's over the defaults (the account gate and the mass-drift
/// breaker on, no respected actors, risky users not checked).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SafetySpec {
    /// Hold repairs for users Microsoft Entra ID Protection flags: riskLevel high, or
    /// riskState atRisk or confirmedCompromised. Needs the application permission
    /// IdentityRiskyUser.Read.All; without it the object carries one note and nothing is held.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_risky_users: Option<bool>,
    /// Actors whose removals are never undone: a resource they removed stays removed, and
    /// the object says RemovedDeliberately, naming them. Decided from Entra's directory
    /// audit log (needs AuditLog.Read.All). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respected_actors: Option<RespectedActors>,
    /// While respectedActors names anyone: how long a removal that the audit log does not
    /// show yet waits before it is repaired (audit entries can appear minutes late), e.g.
    /// 10m. Default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    pub attribution_wait: Option<String>,
    /// While respectedActors names anyone and the audit log cannot be read (no
    /// AuditLog.Read.All): Hold (default) leaves removals in place and says so; Repair
    /// repairs them as if no actor were respected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_unattributed: Option<UnattributedRule>,
    /// The mass-drift circuit breaker: when too much of a package drifts at once, automatic
    /// repair of that package stops until a person acknowledges it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass_drift: Option<MassDriftSpec>,
}

/// Who may remove access on purpose.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RespectedActors {
    /// Users by user principal name, e.g. soc-lead@contoso.com.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 1024)))]
    pub user_principal_names: Vec<String>,
    /// Applications by application (client) id, e.g. a leaver workflow's app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(regex(pattern = GUID_PATTERN)))]
    pub application_ids: Vec<String>,
    /// Entra groups by object id: a removal by any direct member is respected (e.g. a
    /// security-responders group). Members are read once per delta interval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = GUID_PATTERN)))]
    pub group_ids: Vec<String>,
}

impl RespectedActors {
    /// Whether it names nobody.
    pub fn is_empty(&self) -> bool {
        self.user_principal_names.is_empty()
            && self.application_ids.is_empty()
            && self.group_ids.is_empty()
    }
}

/// What to do with a removal nobody can attribute.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UnattributedRule {
    /// Leave it and say why (the safe choice while actors are respected).
    #[default]
    Hold,
    /// Repair it.
    Repair,
}

/// When drift counts as a mass removal.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct MassDriftSpec {
    /// Trip at all. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Share of the package's delivered assignments, in percent, found drifted at once that
    /// trips the breaker (together with minCount). Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub min_share_percent: Option<u32>,
    /// Fewest drifted assignments of one package that can trip the breaker, so one user in a
    /// small package never does. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_count: Option<u32>,
    /// Most drifted assignments one connection may repair automatically in an hour, across
    /// its packages; more trips the breaker for each package that drifts further. Default 250.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_per_hour: Option<u32>,
}

impl SafetySpec {
    /// `self` with every field `over` sets replaced by `over`'s (an object's own settings
    /// over its connection's).
    pub fn overlay(&self, over: Option<&SafetySpec>) -> SafetySpec {
        let Some(over) = over else {
            return self.clone();
        };
        let mass_drift = match (&self.mass_drift, &over.mass_drift) {
            (Some(base), Some(o)) => Some(MassDriftSpec {
                enabled: o.enabled.or(base.enabled),
                min_share_percent: o.min_share_percent.or(base.min_share_percent),
                min_count: o.min_count.or(base.min_count),
                max_per_hour: o.max_per_hour.or(base.max_per_hour),
            }),
            (base, o) => o.clone().or_else(|| base.clone()),
        };
        SafetySpec {
            hold_risky_users: over.hold_risky_users.or(self.hold_risky_users),
            respected_actors: over
                .respected_actors
                .clone()
                .or_else(|| self.respected_actors.clone()),
            attribution_wait: over
                .attribution_wait
                .clone()
                .or_else(|| self.attribution_wait.clone()),
            when_unattributed: over.when_unattributed.or(self.when_unattributed),
            mass_drift,
        }
    }
}

/// A tripped mass-drift breaker, as a guard's status records it.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MassDriftStatus {
    /// When the breaker tripped.
    pub tripped_time: Time,
    /// Drifted assignments when it tripped.
    pub drifted: i32,
    /// Delivered assignments of the package when it tripped.
    pub delivered: i32,
    /// The value of the redeliver.dev/mass-drift-acknowledged-at annotation when it tripped:
    /// a different value acknowledges it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledgement_before: Option<String>,
    /// When a person acknowledged it: repairs proceed (at the configured rate) until the drift
    /// falls back below the threshold, when this record is cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_time: Option<Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_objects_fields_win_field_by_field() {
        let conn: SafetySpec = serde_json::from_value(serde_json::json!({
            "holdRiskyUsers": true,
            "attributionWait": "5m",
            "massDrift": {"minCount": 20, "maxPerHour": 100}
        }))
        .unwrap();
        let obj: SafetySpec = serde_json::from_value(serde_json::json!({
            "attributionWait": "1m",
            "massDrift": {"minCount": 3}
        }))
        .unwrap();
        let eff = conn.overlay(Some(&obj));
        assert_eq!(eff.hold_risky_users, Some(true));
        assert_eq!(eff.attribution_wait.as_deref(), Some("1m"));
        let md = eff.mass_drift.unwrap();
        assert_eq!(md.min_count, Some(3));
        assert_eq!(md.max_per_hour, Some(100));
        assert_eq!(conn.overlay(None), conn);
    }
}

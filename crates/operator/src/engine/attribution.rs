//! Who removed a resource: an outside change found in Entra's directory audit log, looked
//! up by the drivers (`observe::attribution`) and handed to the engine in the
//! [`super::Snapshot`]. The engine only turns it into text: `status.resources[].lastChange`,
//! the `Delivered` message and the `DriftDetected` event.

use jiff::Timestamp;

/// Who made a change, as the audit log's `initiatedBy` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A user.
    User {
        /// Directory object id, when the entry carries it.
        id: Option<String>,
        /// User principal name (or display name when the entry has no UPN).
        name: Option<String>,
    },
    /// An application (a sync job, entitlement management itself).
    App {
        /// Its display name.
        display_name: String,
        /// Its application (client) id.
        app_id: String,
    },
    /// The entry names no initiator.
    Unknown,
}

/// What the audit log says about one missing resource of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// The latest removal found.
    Found {
        /// Who removed it.
        actor: Actor,
        /// When.
        at: Timestamp,
        /// The audit activity, e.g. "Remove member from group".
        activity: String,
    },
    /// The audit log cannot be read (e.g. 403 without `AuditLog.Read.All`).
    Unavailable {
        /// Why, for users: "the app lacks AuditLog.Read.All".
        reason: String,
    },
    /// Looked up `lookups` times (entries can lag by minutes) without finding the removal.
    NotFound {
        /// How many lookups were made.
        lookups: u32,
    },
}

impl Actor {
    /// How messages name the actor: `admin@contoso.com`, `Payroll Sync (app 1b2c)`.
    pub fn describe(&self) -> String {
        match self {
            Actor::User { id, name } => name
                .clone()
                .or_else(|| id.clone())
                .unwrap_or_else(|| "an unnamed user".to_string()),
            Actor::App {
                display_name,
                app_id,
            } => format!("{display_name} (app {app_id})"),
            Actor::Unknown => "an unnamed initiator".to_string(),
        }
    }

    /// The structured record kept in `status.resources[].removedBy`.
    pub fn to_removal(&self, at: Timestamp, activity: &str) -> crate::api::Removal {
        use crate::api::ActorKind;
        let (actor_kind, actor_id, actor_name) = match self {
            Actor::User { id, name } => (ActorKind::User, id.clone(), name.clone()),
            Actor::App {
                display_name,
                app_id,
            } => (
                ActorKind::Application,
                Some(app_id.clone()).filter(|s| !s.is_empty()),
                Some(display_name.clone()).filter(|s| !s.is_empty()),
            ),
            Actor::Unknown => (ActorKind::Unknown, None, None),
        };
        crate::api::Removal {
            actor_kind,
            actor_id,
            actor_name,
            time: super::conditions::to_time(at),
            activity: activity.to_string(),
        }
    }

    /// The actor a stored `removedBy` names.
    pub fn from_removal(r: &crate::api::Removal) -> Self {
        use crate::api::ActorKind;
        match r.actor_kind {
            ActorKind::User => Actor::User {
                id: r.actor_id.clone(),
                name: r.actor_name.clone(),
            },
            ActorKind::Application => Actor::App {
                display_name: r.actor_name.clone().unwrap_or_default(),
                app_id: r.actor_id.clone().unwrap_or_default(),
            },
            ActorKind::Unknown => Actor::Unknown,
        }
    }
}

/// How a found attribution starts, so a stored one is recognised (and kept) later.
const FOUND_PREFIX: &str = "removed by ";

impl Attribution {
    /// The text of `status.resources[].lastChange`, e.g. `removed by admin@contoso.com at
    /// 2026-12-01T10:42:07Z via "Remove member from group"`.
    pub fn describe(&self) -> String {
        match self {
            Attribution::Found {
                actor,
                at,
                activity,
            } => {
                let at = at.round(jiff::Unit::Second).unwrap_or(*at);
                format!(
                    "{FOUND_PREFIX}{} at {at} via \"{activity}\"",
                    actor.describe()
                )
            }
            Attribution::Unavailable { reason } => format!("attribution unavailable: {reason}"),
            Attribution::NotFound { lookups } => format!(
                "not found in the audit log yet ({lookups} lookups; entries can appear minutes late)"
            ),
        }
    }
}

/// Whether a stored `lastChange` names who made the change (rather than saying why it is
/// unknown): only those go into the `Delivered` message and the `DriftDetected` event.
pub fn names_actor(last_change: &str) -> bool {
    last_change.starts_with(FOUND_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_users_apps_and_failures() {
        let at: Timestamp = "2026-12-01T10:42:07.5Z".parse().unwrap();
        let user = Attribution::Found {
            actor: Actor::User {
                id: Some("u-admin".into()),
                name: Some("admin@contoso.com".into()),
            },
            at,
            activity: "Remove member from group".into(),
        };
        assert_eq!(
            user.describe(),
            "removed by admin@contoso.com at 2026-12-01T10:42:08Z via \"Remove member from group\""
        );
        assert!(names_actor(&user.describe()));
        let app = Attribution::Found {
            actor: Actor::App {
                display_name: "Payroll Sync".into(),
                app_id: "1b2c".into(),
            },
            at,
            activity: "Remove app role assignment from user".into(),
        };
        assert!(
            app.describe()
                .starts_with("removed by Payroll Sync (app 1b2c) at ")
        );
        let no = Attribution::Unavailable {
            reason: "the app lacks AuditLog.Read.All".into(),
        };
        assert_eq!(
            no.describe(),
            "attribution unavailable: the app lacks AuditLog.Read.All"
        );
        assert!(!names_actor(&no.describe()));
        assert!(!names_actor(
            &Attribution::NotFound { lookups: 3 }.describe()
        ));
    }
}

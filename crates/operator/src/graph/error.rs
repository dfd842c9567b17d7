//! Typed errors of the Graph client. Every variant that comes from an HTTP exchange names
//! the operation and carries Graph's `request-id` when there is one, so a failure can be
//! quoted in a support case.

use std::fmt;
use std::time::Duration;

/// Formats an optional Graph `request-id` as ` (request-id …)` or nothing.
struct Rid<'a>(&'a Option<String>);

impl fmt::Display for Rid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " (request-id {id})"),
            None => Ok(()),
        }
    }
}

fn rid(r: &Option<String>) -> Rid<'_> {
    Rid(r)
}

fn codes(c: &[i64]) -> String {
    if c.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = c.iter().map(|n| format!("AADSTS{n}")).collect();
        format!(" [{}]", list.join(", "))
    }
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

/// What the Entra token endpoint said when it refused a token (safe to log: no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "token request refused: {error}{codes} (HTTP {status}, correlation-id {cid}): {hint}",
    codes = codes(error_codes),
    cid = opt(correlation_id)
)]
pub struct TokenFailure {
    /// HTTP status of the token response.
    pub status: u16,
    /// OAuth `error` (e.g. `invalid_client`).
    pub error: String,
    /// Entra `error_codes` (the AADSTS numbers).
    pub error_codes: Vec<i64>,
    /// Entra `error_description` (contains no secret).
    pub description: Option<String>,
    /// Entra `correlation_id`.
    pub correlation_id: Option<String>,
    /// Entra `trace_id`.
    pub trace_id: Option<String>,
    /// What to check.
    pub hint: String,
}

/// A failure talking to Microsoft Graph or the Entra token endpoint.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    /// The configuration is invalid or incomplete.
    #[error("Graph configuration: {message}")]
    Config {
        /// What is wrong and which flag or environment variable to set.
        message: String,
    },

    /// A credential file could not be read at token time.
    #[error("Graph credential: {message}")]
    Credential {
        /// What failed (path and I/O error; never the secret).
        message: String,
    },

    /// The token endpoint refused to issue a token.
    #[error("{0}")]
    Auth(Box<TokenFailure>),

    /// Graph answered 401 even with a freshly issued token.
    #[error("{operation}: Graph rejected the access token ({code}: {message}){rid}; check that the token's audience matches --graph-url", rid = rid(request_id))]
    Unauthorized {
        /// Client operation name.
        operation: &'static str,
        /// Graph error code.
        code: String,
        /// Graph error message.
        message: String,
        /// Graph `request-id`.
        request_id: Option<String>,
    },

    /// The object does not exist (404).
    #[error("{operation}: not found ({code}: {message}){rid}", rid = rid(request_id))]
    NotFound {
        /// Client operation name.
        operation: &'static str,
        /// Graph error code.
        code: String,
        /// Graph error message.
        message: String,
        /// Graph `request-id`.
        request_id: Option<String>,
    },

    /// The app lacks a permission, role or licence for this operation (403).
    #[error("{operation}: forbidden ({code}: {message}){rid}; the app likely lacks {hint}", rid = rid(request_id))]
    Forbidden {
        /// Client operation name.
        operation: &'static str,
        /// Graph error code.
        code: String,
        /// Graph error message.
        message: String,
        /// Graph `request-id`.
        request_id: Option<String>,
        /// The permission most likely missing (docs/graph.md "Permissions"), or a licence hint.
        hint: &'static str,
    },

    /// Graph refused the request as invalid (400, 409, 412 and other 4xx).
    #[error("{operation}: rejected with HTTP {status} ({code}: {message}){rid}", rid = rid(request_id))]
    BadRequest {
        /// Client operation name.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// Graph error code (e.g. `InvalidFilter`).
        code: String,
        /// Graph error message.
        message: String,
        /// Graph `request-id`.
        request_id: Option<String>,
    },

    /// Still throttled (429) after the retries, or the server asked for a wait longer than
    /// the client will sleep inside one call.
    #[error("{operation}: throttled by Graph{after}{rid}", after = match retry_after { Some(d) => format!(", retry after {:.3}s", d.as_secs_f64()), None => String::new() }, rid = rid(request_id))]
    Throttled {
        /// Client operation name.
        operation: &'static str,
        /// The server's last `Retry-After`, if any: do not call again before it elapses.
        retry_after: Option<Duration>,
        /// Graph `request-id`.
        request_id: Option<String>,
    },

    /// Graph failed (5xx), after retries where retrying was safe.
    #[error("{operation}: Graph server error HTTP {status} ({code}: {message}){rid}", rid = rid(request_id))]
    Server {
        /// Client operation name.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// Graph error code, if the body had one.
        code: String,
        /// Graph error message or a body excerpt.
        message: String,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// Graph `request-id`.
        request_id: Option<String>,
    },

    /// The HTTP exchange failed (connect, TLS, timeout, broken body).
    #[error("{operation}: HTTP transport failure calling {target}: {message}")]
    Transport {
        /// Client operation name.
        operation: &'static str,
        /// Host (and path) called, without query.
        target: String,
        /// The underlying error chain.
        message: String,
        /// True when the failure was a timeout.
        timeout: bool,
    },

    /// A response body was not what the wire reference promises (non-JSON, truncated,
    /// missing fields).
    #[error("{operation}: cannot decode Graph response: {message}{rid}", rid = rid(request_id))]
    Decode {
        /// Client operation name.
        operation: &'static str,
        /// What was wrong, with a short body excerpt.
        message: String,
        /// Graph `request-id`.
        request_id: Option<String>,
    },

    /// A caller-supplied argument cannot be put on the wire safely (e.g. an empty id).
    #[error("{operation}: invalid argument: {message}")]
    InvalidArgument {
        /// Client operation name.
        operation: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl GraphError {
    /// A short stable label for metrics (`config`, `auth`, `forbidden`, `throttled`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config { .. } => "config",
            Self::Credential { .. } => "credential",
            Self::Auth(_) => "auth",
            Self::Unauthorized { .. } => "unauthorized",
            Self::NotFound { .. } => "not_found",
            Self::Forbidden { .. } => "forbidden",
            Self::BadRequest { .. } => "bad_request",
            Self::Throttled { .. } => "throttled",
            Self::Server { .. } => "server",
            Self::Transport { .. } => "transport",
            Self::Decode { .. } => "decode",
            Self::InvalidArgument { .. } => "invalid_argument",
        }
    }

    /// The earliest time from now the server allows another call, when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } | Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True for a 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// True when a delta link can no longer be used and a full resync is needed
    /// (`410 Gone`, or `syncStateNotFound` / `resyncRequired`; docs/graph.md "Group delta").
    pub fn is_resync_required(&self) -> bool {
        match self {
            Self::BadRequest { status: 410, .. } => true,
            Self::BadRequest { code, .. } | Self::NotFound { code, .. } => {
                code.eq_ignore_ascii_case("syncStateNotFound")
                    || code.eq_ignore_ascii_case("resyncRequired")
            }
            _ => false,
        }
    }

    /// True when Graph refused a write for good (403, another 4xx such as a policy's
    /// requirements not met): sending it again unchanged is refused again. Every writer
    /// (controller and audit) reports these as `Stalled` instead of retrying.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Forbidden { .. } | Self::BadRequest { .. } | Self::NotFound { .. }
        )
    }

    /// True for a 403.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Forbidden { .. })
    }

    /// True when trying again later may succeed without anyone changing anything
    /// (throttling, server errors, transport failures).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Server { .. } | Self::Transport { .. }
        )
    }

    /// Graph's error code (`InvalidFilter`, `Authorization_RequestDenied`, ...), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { code, .. }
            | Self::NotFound { code, .. }
            | Self::Forbidden { code, .. }
            | Self::BadRequest { code, .. }
            | Self::Server { code, .. } => Some(code.as_str()).filter(|c| !c.is_empty()),
            Self::Auth(f) => Some(f.error.as_str()),
            _ => None,
        }
    }

    /// Graph's `request-id` (or Entra's correlation id for token errors), if any.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { request_id, .. }
            | Self::NotFound { request_id, .. }
            | Self::Forbidden { request_id, .. }
            | Self::BadRequest { request_id, .. }
            | Self::Throttled { request_id, .. }
            | Self::Server { request_id, .. }
            | Self::Decode { request_id, .. } => request_id.as_deref(),
            Self::Auth(f) => f.correlation_id.as_deref(),
            _ => None,
        }
    }

    /// The client operation that failed, when the error came from one.
    pub fn operation(&self) -> Option<&'static str> {
        match self {
            Self::Unauthorized { operation, .. }
            | Self::NotFound { operation, .. }
            | Self::Forbidden { operation, .. }
            | Self::BadRequest { operation, .. }
            | Self::Throttled { operation, .. }
            | Self::Server { operation, .. }
            | Self::Transport { operation, .. }
            | Self::Decode { operation, .. }
            | Self::InvalidArgument { operation, .. } => Some(operation),
            Self::Auth(_) => Some("token"),
            Self::Config { .. } | Self::Credential { .. } => None,
        }
    }
}

/// The application permission most likely missing when `operation` gets a 403
/// (docs/graph.md "Permissions").
pub fn permission_hint(operation: &str) -> &'static str {
    match operation {
        "request_assignment" | "request_removal" | "reprocess_assignment" | "reprocess_request" => {
            "EntitlementManagement.ReadWrite.All (or the Access package assignment manager role on the catalog); a tenant without an Entra ID Governance/P2 licence also gets 403"
        }
        "get_access_package"
        | "find_access_packages"
        | "suggest_access_packages"
        | "list_policies"
        | "list_assignments"
        | "find_assignments"
        | "list_requests"
        | "get_request" => {
            "EntitlementManagement.Read.All (or the Catalog reader role on the package's catalog); a tenant without an Entra ID Governance/P2 licence also gets 403"
        }
        "list_group_members" | "list_group_owners" | "group_members_delta" => {
            "GroupMember.Read.All (hidden-membership groups also need Member.Read.Hidden)"
        }
        "list_app_role_assignments" => "Application.Read.All",
        "list_directory_role_assignments" => {
            "RoleManagement.Read.Directory (only packages that grant an active Microsoft Entra role need it)"
        }
        "list_azure_role_assignments" => {
            "Microsoft.Authorization/roleAssignments/read on the Azure scope (the Reader role there grants it)"
        }
        "list_azure_role_eligibilities" => {
            "Microsoft.Authorization/roleEligibilityScheduleInstances/read on the Azure scope (the Reader role there grants it)"
        }
        "list_directory_role_eligibilities" => {
            "RoleEligibilitySchedule.Read.Directory (only packages that grant an eligible Microsoft Entra role need it)"
        }
        "list_group_eligibilities" => {
            "PrivilegedEligibilitySchedule.Read.AzureADGroup (only packages that grant an eligible group membership or ownership need it)"
        }
        "get_user" | "suggest_users" | "get_user_account" => "User.Read.All",
        "list_risky_users" => {
            "IdentityRiskyUser.Read.All (optional: only holding risky users reads Identity Protection; the tenant also needs Microsoft Entra ID P2)"
        }
        "list_directory_audits" => {
            "AuditLog.Read.All (optional: only drift attribution reads the audit log)"
        }
        _ => "a Graph application permission for this call (see the permissions table in the docs)",
    }
}

/// Maps Entra AADSTS codes to what the operator should check.
pub fn token_error_hint(error: &str, error_codes: &[i64]) -> String {
    for code in error_codes {
        let hint = match code {
            7000215 => {
                "the client secret is invalid: check that AZURE_CLIENT_SECRET / --client-secret-file holds the secret VALUE (not its id) of this app registration"
            }
            7000222 => {
                "the client secret has expired: create a new secret on the app registration and update AZURE_CLIENT_SECRET / the secret file"
            }
            700016 => {
                "the application was not found in the tenant: check --client-id / AZURE_CLIENT_ID and --tenant-id / AZURE_TENANT_ID, and that the app is consented in that tenant"
            }
            90002 | 900023 => {
                "the tenant was not found: check --tenant-id / AZURE_TENANT_ID and --authority-host (national cloud?)"
            }
            70011 => "the scope is invalid: check --graph-url (the scope is <graph-url>/.default)",
            500011 => {
                "the Graph resource was not found in the tenant: check --graph-url matches the tenant's cloud"
            }
            700024 => {
                "the federated token is expired or not yet valid: check that the projected service-account token file is being rotated"
            }
            70021 | 700211 | 700212 | 700213 => {
                "no federated credential on the app matches the service account token: check issuer, subject (system:serviceaccount:<namespace>:<name>) and audience api://AzureADTokenExchange on the app registration"
            }
            7000218 => {
                "the token request lacked a credential: set a client secret or a federated token file"
            }
            700027 => {
                "the client assertion is invalid: check AZURE_FEDERATED_TOKEN_FILE points at the projected service-account token"
            }
            _ => continue,
        };
        return hint.to_string();
    }
    match error {
        "invalid_client" => "the client credential was refused: check the client id, the secret or the federated credential".to_string(),
        "unauthorized_client" => "the application is not allowed to use this grant in this tenant: check the client id and tenant id".to_string(),
        "invalid_scope" => "the scope is invalid: check --graph-url".to_string(),
        _ => "check the tenant id, client id and credential, and that the authority host matches the tenant's cloud".to_string(),
    }
}

/// Labels of ids that name one request or one sign-in, never the state of the tenant.
const RUN_ID_LABELS: [&str; 4] = [
    "client-request-id",
    "request-id",
    "correlation-id",
    "trace-id",
];

/// `text` without ` (request-id X)`, `, correlation-id X` and the like: for text that is
/// compared for change (a status condition) or for identical reruns (an audit report). The
/// ids belong in logs and events, where one failure can be quoted in a support case.
pub fn without_run_ids(text: &str) -> String {
    let mut out = text.to_string();
    for label in RUN_ID_LABELS {
        let needle = format!("{label} ");
        let mut from = 0;
        while let Some(found) = out[from..].find(&needle) {
            let at = from + found;
            // `client-request-id` contains `request-id`: only a whole label is an id.
            if out[..at].ends_with(|c: char| c.is_alphanumeric() || c == '-') {
                from = at + needle.len();
                continue;
            }
            let id_start = at + needle.len();
            let id_len = out[id_start..]
                .find(|c: char| c.is_whitespace() || matches!(c, ')' | ',' | ';'))
                .unwrap_or(out.len() - id_start);
            let mut start = at;
            let mut end = id_start + id_len;
            if out[..start].ends_with(" (") && out[end..].starts_with(')') {
                // ` (request-id X)`: the parentheses go with it.
                start -= 2;
                end += 1;
            } else if out[..start].ends_with(", ") {
                start -= 2;
            } else if out[end..].starts_with(", ") {
                end += 2;
            }
            out.replace_range(start..end, "");
            from = start;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_helpers() {
        let e = GraphError::Throttled {
            operation: "list_assignments",
            retry_after: Some(Duration::from_millis(2128)),
            request_id: Some("rid-1".into()),
        };
        assert_eq!(e.kind(), "throttled");
        assert_eq!(e.retry_after(), Some(Duration::from_millis(2128)));
        assert_eq!(e.request_id(), Some("rid-1"));
        assert!(e.is_transient());
        let text = e.to_string();
        assert!(text.contains("2.128s") && text.contains("rid-1"), "{text}");

        let e = GraphError::Forbidden {
            operation: "list_group_members",
            code: "Authorization_RequestDenied".into(),
            message: "Insufficient privileges".into(),
            request_id: None,
            hint: permission_hint("list_group_members"),
        };
        assert!(e.to_string().contains("GroupMember.Read.All"));
        assert!(e.is_forbidden() && !e.is_not_found());
        assert_eq!(e.code(), Some("Authorization_RequestDenied"));
    }

    #[test]
    fn token_hints_name_what_to_check() {
        assert!(token_error_hint("invalid_client", &[7000215]).contains("secret"));
        assert!(token_error_hint("unauthorized_client", &[700016]).contains("AZURE_CLIENT_ID"));
        assert!(token_error_hint("invalid_request", &[90002]).contains("AZURE_TENANT_ID"));
        assert!(token_error_hint("invalid_client", &[1, 700213]).contains("subject"));
        assert!(token_error_hint("invalid_client", &[]).contains("client credential"));
    }
}

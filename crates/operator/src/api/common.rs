//! Pieces shared by both custom resources: selectors for packages, policies and users,
//! durations, and the spec error type.

use std::time::Duration;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Regular expression (anchored) for a Microsoft Entra object id / GUID.
pub const GUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// Regular expression (anchored) for the name of a Kubernetes object (a DNS-1123
/// subdomain): no `/`, so `ns/name` can never be written where a name is meant.
pub const OBJECT_NAME_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Regular expression (anchored) for a duration such as `30s`, `5m` or `1h30m`.
pub const DURATION_PATTERN: &str = "^([0-9]+(h|m|s))+$";

/// CEL rule for a duration of at least 30s. The `matches` guard keeps each number to six
/// digits and three parts, so `duration()` cannot overflow (CEL would then answer a bare
/// "type conversion error" instead of the field's message); `&&` short-circuits.
pub const DURATION_RULE_30S: &str =
    "self.matches('^([0-9]{1,6}[hms]){1,3}$') && duration(self) >= duration('30s')";

/// [`DURATION_RULE_30S`] with a 1m minimum.
pub const DURATION_RULE_1M: &str =
    "self.matches('^([0-9]{1,6}[hms]){1,3}$') && duration(self) >= duration('1m')";

/// Selects one access package, by object id or by display name.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.displayName)").message("set exactly one of accessPackage.id or accessPackage.displayName"))]
#[x_kube(validation = Rule::new("!has(self.catalog) || has(self.displayName)").message("accessPackage.catalog narrows a displayName lookup; use it only together with accessPackage.displayName"))]
pub struct AccessPackageSelector {
    /// Object id (GUID) of the access package, as shown in the Entra admin center under
    /// Identity Governance > Access packages > Overview. Set this or displayName, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub id: Option<String>,
    /// Display name of the access package. Must match exactly one package; add catalog when
    /// the same name exists in several catalogs. Set this or id, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub display_name: Option<String>,
    /// Display name of the catalog that holds the package. Only used to disambiguate a
    /// displayName lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub catalog: Option<String>,
}

impl AccessPackageSelector {
    /// A short human label: the display name (with catalog) or the id.
    pub fn label(&self) -> String {
        match (&self.display_name, &self.catalog, &self.id) {
            (Some(name), Some(catalog), _) => format!("{name} (catalog {catalog})"),
            (Some(name), None, _) => name.clone(),
            (None, _, Some(id)) => id.clone(),
            (None, _, None) => String::from("<unspecified package>"),
        }
    }
}

/// Selects one assignment policy of the access package, by object id or by display name.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.displayName)").message("set exactly one of assignmentPolicy.id or assignmentPolicy.displayName"))]
pub struct PolicySelector {
    /// Object id (GUID) of the assignment policy. Set this or displayName, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub id: Option<String>,
    /// Display name of the assignment policy, for example "Direct assignment". Must match
    /// exactly one policy of the package. Set this or id, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub display_name: Option<String>,
}

impl PolicySelector {
    /// A short human label: the display name or the id.
    pub fn label(&self) -> String {
        self.display_name
            .clone()
            .or_else(|| self.id.clone())
            .unwrap_or_else(|| String::from("<unspecified policy>"))
    }
}

/// Selects the user who must hold the access package, by object id or by user principal name.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.objectId) != has(self.userPrincipalName)").message("set exactly one of target.objectId or target.userPrincipalName"))]
pub struct TargetSelector {
    /// Directory object id (GUID) of the user. Set this or userPrincipalName, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = GUID_PATTERN))]
    pub object_id: Option<String>,
    /// User principal name (sign-in name) of the user, for example alice@contoso.com.
    /// Set this or objectId, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[^@\\s]+@[^@\\s]+$"), length(max = 1024))]
    pub user_principal_name: Option<String>,
}

impl TargetSelector {
    /// A short human label: the user principal name or the object id.
    pub fn label(&self) -> String {
        self.user_principal_name
            .clone()
            .or_else(|| self.object_id.clone())
            .unwrap_or_else(|| String::from("<unspecified target>"))
    }
}

/// A declaration that the schema could not refuse (for example one read from a file by
/// `redeliver audit`) but that Redeliver cannot act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// JSON path of the offending field, e.g. `spec.target.userPrincipalName`.
    pub field: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl SpecError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration; write a number and a unit such as 30s, 5m or 1h30m")]
    Empty,
    /// A number is not followed by a unit, or the unit is unknown.
    #[error(
        "invalid duration {0:?}; write numbers followed by h, m or s, such as 30s, 5m or 1h30m"
    )]
    Invalid(String),
    /// The value does not fit in a duration.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// [`parse_duration`] as a clap value parser (`value_parser = parse_duration_arg`), for
/// every command-line flag that takes a duration.
pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Parses a duration written as one or more `<number><unit>` pairs, units `h`, `m`, `s`
/// (a subset of Go's `time.ParseDuration`, so the same string also works in CEL rules),
/// e.g. `30s`, `5m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let invalid = || DurationError::Invalid(s.to_string());
    let overflow = || DurationError::Overflow(s.to_string());
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(invalid()),
        };
        if digits.is_empty() {
            return Err(invalid());
        }
        let n: u64 = digits.parse().map_err(|_| overflow())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(overflow)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `45s`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

pub(crate) fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, l)| g.len() == l && g.chars().all(|c| c.is_ascii_hexdigit()))
}

pub(crate) fn check_duration(field: &str, value: &str, min: Duration) -> Result<(), SpecError> {
    let d = parse_duration(value).map_err(|e| SpecError::new(field, e.to_string()))?;
    // The same bound as the CRD's CEL rule: at most three parts of at most six digits.
    let parts: Vec<&str> = value
        .trim()
        .split(['h', 'm', 's'])
        .filter(|p| !p.is_empty())
        .collect();
    if parts.len() > 3 || parts.iter().any(|p| p.len() > 6) {
        return Err(SpecError::new(
            field,
            format!(
                "{value} is too large; use at most three parts of at most six digits each, such as 1h30m"
            ),
        ));
    }
    if d < min {
        return Err(SpecError::new(
            field,
            format!(
                "{value} is shorter than the minimum {}; raise it so Graph is not polled or \
                 reprocessed too often",
                format_duration(min)
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_package(
    field: &str,
    selector: &AccessPackageSelector,
) -> Result<(), SpecError> {
    check_one_of(
        field,
        ("id", selector.id.as_deref()),
        ("displayName", selector.display_name.as_deref()),
    )?;
    if let Some(id) = &selector.id {
        check_guid(&format!("{field}.id"), id)?;
    }
    if selector.catalog.is_some() && selector.display_name.is_none() {
        return Err(SpecError::new(
            format!("{field}.catalog"),
            "catalog only narrows a displayName lookup; remove it or select the package by displayName",
        ));
    }
    for (name, value) in [
        ("displayName", &selector.display_name),
        ("catalog", &selector.catalog),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(SpecError::new(
                format!("{field}.{name}"),
                "is empty; give the exact display name",
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_one_of(
    field: &str,
    a: (&str, Option<&str>),
    b: (&str, Option<&str>),
) -> Result<(), SpecError> {
    match (a.1, b.1) {
        (Some(_), Some(_)) => Err(SpecError::new(
            field,
            format!(
                "set exactly one of {field}.{} or {field}.{}, not both",
                a.0, b.0
            ),
        )),
        (None, None) => Err(SpecError::new(
            field,
            format!("set exactly one of {field}.{} or {field}.{}", a.0, b.0),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn check_guid(field: &str, value: &str) -> Result<(), SpecError> {
    if is_guid(value) {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!("{value:?} is not a GUID; copy the object id from the Entra admin center"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h0m5s"), Ok(Duration::from_secs(3605)));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("5"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration("m"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration("5d"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration("-5m"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_durations_round_trip() {
        for s in ["0s", "45s", "5m", "1h30m", "2h0m1s"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn guid_check() {
        assert!(is_guid("9f1c0c7e-0000-4000-8000-000000000001"));
        assert!(!is_guid("9f1c0c7e-0000-4000-8000-00000000000"));
        assert!(!is_guid("not-a-guid"));
        assert!(!is_guid("9f1c0c7e-0000-4000-8000-00000000000g"));
    }

    #[test]
    fn spec_error_display_names_field() {
        let e = SpecError::new("spec.target", "set exactly one");
        assert_eq!(e.to_string(), "spec.target: set exactly one");
    }
}

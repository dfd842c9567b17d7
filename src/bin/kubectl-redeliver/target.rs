//! Which object a command is about: `apa/NAME`, `accesspackageguard/NAME`, `apg NAME`.

use std::fmt;

/// One of Redeliver's two kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `AccessPackageAssignment` (`apa`).
    Assignment,
    /// `AccessPackageGuard` (`apg`).
    Guard,
}

impl Kind {
    /// The names kubectl accepts for the kind: short name, singular, plural, each optionally
    /// qualified with the group, case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.to_ascii_lowercase();
        let s = s.strip_suffix(".redeliver.dev").unwrap_or(&s);
        match s {
            "apa" | "accesspackageassignment" | "accesspackageassignments" => {
                Some(Self::Assignment)
            }
            "apg" | "accesspackageguard" | "accesspackageguards" => Some(Self::Guard),
            _ => None,
        }
    }

    /// `AccessPackageAssignment`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Assignment => "AccessPackageAssignment",
            Self::Guard => "AccessPackageGuard",
        }
    }

    /// `accesspackageassignment`: how kubectl names the kind in messages.
    pub fn singular(self) -> &'static str {
        match self {
            Self::Assignment => "accesspackageassignment",
            Self::Guard => "accesspackageguard",
        }
    }

    /// `apa`.
    pub fn short(self) -> &'static str {
        match self {
            Self::Assignment => "apa",
            Self::Guard => "apg",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.singular())
    }
}

/// A kind and an object name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// The kind.
    pub kind: Kind,
    /// `metadata.name`.
    pub name: String,
}

/// Why an object reference could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// The kind is none of Redeliver's.
    #[error(
        "unknown kind {0:?}: use apa (accesspackageassignment[s]) or apg (accesspackageguard[s])"
    )]
    UnknownKind(String),
    /// A kind without a name, or a name without a kind.
    #[error("{0:?} names no object: write KIND/NAME, e.g. apa/alice-finance or apg/finance")]
    Incomplete(String),
    /// Too many parts.
    #[error("{0:?} is not KIND/NAME")]
    Malformed(String),
}

/// Reads `KIND/NAME`, or `KIND` followed by `NAME` as a separate argument (as `kubectl get`
/// takes both).
pub fn parse_ref(first: &str, second: Option<&str>) -> Result<ObjectRef, RefError> {
    let (kind, name) = match (first.split_once('/'), second) {
        (Some(_), Some(_)) => {
            return Err(RefError::Malformed(format!(
                "{first} {}",
                second.unwrap_or_default()
            )));
        }
        (Some((kind, name)), None) => (kind, name),
        (None, Some(name)) => (first, name),
        (None, None) => return Err(RefError::Incomplete(first.to_string())),
    };
    if name.contains('/') {
        return Err(RefError::Malformed(first.to_string()));
    }
    if kind.is_empty() || name.is_empty() {
        return Err(RefError::Incomplete(first.to_string()));
    }
    let kind = Kind::parse(kind).ok_or_else(|| RefError::UnknownKind(kind.to_string()))?;
    Ok(ObjectRef {
        kind,
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_short_singular_plural_and_qualified_names() {
        for k in [
            "apa",
            "accesspackageassignment",
            "AccessPackageAssignments",
            "accesspackageassignments.redeliver.dev",
        ] {
            assert_eq!(
                parse_ref(&format!("{k}/x"), None),
                Ok(ObjectRef {
                    kind: Kind::Assignment,
                    name: "x".into()
                }),
                "{k}"
            );
        }
        assert_eq!(parse_ref("apg", Some("finance")).unwrap().kind, Kind::Guard);
        assert_eq!(
            parse_ref("accesspackageguards/finance", None).unwrap().name,
            "finance"
        );
    }

    #[test]
    fn refuses_what_names_no_single_object() {
        assert_eq!(
            parse_ref("pod/x", None),
            Err(RefError::UnknownKind("pod".into()))
        );
        assert!(matches!(
            parse_ref("apa", None),
            Err(RefError::Incomplete(_))
        ));
        assert!(matches!(
            parse_ref("apa/", None),
            Err(RefError::Incomplete(_))
        ));
        assert!(matches!(
            parse_ref("apa/x/y", None),
            Err(RefError::Malformed(_))
        ));
        assert!(matches!(
            parse_ref("apa/x", Some("y")),
            Err(RefError::Malformed(_))
        ));
        assert!(
            parse_ref("pod/x", None)
                .unwrap_err()
                .to_string()
                .contains("apa (accesspackageassignment[s])")
        );
    }
}

/// What `ack` acknowledges: a guard, or a connection of either kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// `AccessPackageGuard` (`apg`).
    Guard,
    /// `GraphConnection` (`gconn`), namespaced.
    Connection,
    /// `ClusterGraphConnection` (`cgconn`), cluster-scoped.
    ClusterConnection,
}

impl AckKind {
    fn parse(s: &str) -> Option<Self> {
        let s = s.to_ascii_lowercase();
        let s = s.strip_suffix(".redeliver.dev").unwrap_or(&s);
        match s {
            "apg" | "accesspackageguard" | "accesspackageguards" => Some(Self::Guard),
            "gconn" | "graphconnection" | "graphconnections" => Some(Self::Connection),
            "cgconn" | "clustergraphconnection" | "clustergraphconnections" => {
                Some(Self::ClusterConnection)
            }
            _ => None,
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self != Self::ClusterConnection
    }

    /// The kind's API resource, for untyped reads and patches.
    pub fn api_resource(self) -> kube::api::ApiResource {
        use redeliver::api::{AccessPackageGuard, ClusterGraphConnection, GraphConnection};
        match self {
            Self::Guard => kube::api::ApiResource::erase::<AccessPackageGuard>(&()),
            Self::Connection => kube::api::ApiResource::erase::<GraphConnection>(&()),
            Self::ClusterConnection => kube::api::ApiResource::erase::<ClusterGraphConnection>(&()),
        }
    }
}

impl fmt::Display for AckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Guard => "accesspackageguard",
            Self::Connection => "graphconnection",
            Self::ClusterConnection => "clustergraphconnection",
        })
    }
}

/// An object `ack` may annotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRef {
    pub kind: AckKind,
    pub name: String,
}

/// Reads `apg/NAME`, `gconn/NAME`, `cgconn/NAME`, or a kind and a separate name.
pub fn parse_ack(object: &str, name: Option<&str>) -> Result<AckRef, AckRefError> {
    let (kind, name) = match (object.split_once('/'), name) {
        (Some((k, n)), None) if !k.is_empty() && !n.is_empty() && !n.contains('/') => (k, n),
        (None, Some(n)) if !n.is_empty() => (object, n),
        _ => return Err(AckRefError::Incomplete(object.to_string())),
    };
    let kind = AckKind::parse(kind).ok_or_else(|| AckRefError::UnknownKind(kind.to_string()))?;
    Ok(AckRef {
        kind,
        name: name.to_string(),
    })
}

/// Why `ack`'s object reference could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckRefError {
    /// Not a kind whose breaker can be acknowledged.
    #[error(
        "cannot acknowledge mass drift on {0:?}: use apg/NAME (a guard), gconn/NAME (a GraphConnection) or cgconn/NAME (a ClusterGraphConnection)"
    )]
    UnknownKind(String),
    /// A kind without a name, or a name without a kind.
    #[error("{0:?} names no object: write KIND/NAME, e.g. apg/finance or gconn/default")]
    Incomplete(String),
}

#[cfg(test)]
mod ack_tests {
    use super::*;

    #[test]
    fn ack_takes_guards_and_connections_only() {
        assert_eq!(
            parse_ack("apg/finance", None).unwrap(),
            AckRef {
                kind: AckKind::Guard,
                name: "finance".into()
            }
        );
        assert_eq!(
            parse_ack("ClusterGraphConnection", Some("contoso"))
                .unwrap()
                .kind,
            AckKind::ClusterConnection
        );
        assert_eq!(
            parse_ack("gconn/default", None).unwrap().kind,
            AckKind::Connection
        );
        assert!(matches!(
            parse_ack("apa/alice", None),
            Err(AckRefError::UnknownKind(k)) if k == "apa"
        ));
        assert!(matches!(
            parse_ack("apg/", None),
            Err(AckRefError::Incomplete(_))
        ));
    }
}

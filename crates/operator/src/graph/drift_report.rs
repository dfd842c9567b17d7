//! Microsoft's access drift report (Graph beta), read as an optional cross-check.
//!
//! Every beta path Redeliver uses is here and nowhere else. The resource types and the
//! permission are documented by Microsoft; the request paths below follow entitlement
//! management's conventions but were not confirmed against Microsoft's reference (see
//! docs/graph.md): a 404 turns the cross-check off with one warning, nothing else.

use serde::Deserialize;

use super::odata::build_url;
use super::{GraphClient, GraphError};

/// The Graph version the report lives in.
pub const BETA_VERSION: &str = "beta";
/// The summaries collection, under the beta root.
pub const SUMMARIES_PATH: &str = "/identityGovernance/entitlementManagement/accessDriftSummaries";
/// One summary's details, relative to the summaries collection (`/{id}` + this).
pub const DETAILS_SEGMENT: &str = "details";
/// `$filter` selecting one catalog's summaries (`{catalog}` is an id, quoted below).
pub const CATALOG_FILTER: &str = "resource/catalogIdentifier eq '{catalog}'";
/// `$filter` selecting only the details that say a user is missing something.
pub const MISSING_FILTER: &str = "driftType eq 'missing'";

/// The beta root for a Graph base URL ending in `/v1.0`: the same host, version `beta`.
pub fn beta_base(v1_base: &str) -> String {
    let root = v1_base.trim_end_matches('/');
    let root = root.strip_suffix("/v1.0").unwrap_or(root);
    format!("{root}/{BETA_VERSION}")
}

/// `accessDriftSummary`: one governed resource's drift in a catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessDriftSummary {
    /// The summary's id (used to list its details).
    pub id: String,
    /// Aggregate counts.
    #[serde(default)]
    pub drift_counts: DriftCounts,
    /// The comparison that found it (`entra`, `externalApplication`).
    #[serde(default)]
    pub drift_source: Option<String>,
    /// The resource it is about.
    #[serde(default)]
    pub resource: Option<DriftResourceInfo>,
}

/// `driftCounts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftCounts {
    /// Users missing what a package delivers.
    #[serde(default)]
    pub missing: i32,
    /// Users holding it without a package.
    #[serde(default)]
    pub unauthorized: i32,
    /// Both.
    #[serde(default)]
    pub total: i32,
}

/// `driftResourceInfo` (`groupDriftResourceInfo`, `applicationDriftResourceInfo`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftResourceInfo {
    /// The resource's object id (group or service principal).
    #[serde(default)]
    pub identifier: Option<String>,
    /// `group`, `application`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// The catalog's id.
    #[serde(default)]
    pub catalog_identifier: Option<String>,
    /// The resource's display name.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `accessDriftDetail` / `entraAccessDriftDetail`: who drifted on the resource.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessDriftDetail {
    /// `missing`, `unauthorized`, `inSync`.
    #[serde(default)]
    pub drift_type: Option<String>,
    /// The resource (the summary's, repeated).
    #[serde(default)]
    pub resource: Option<DriftResourceInfo>,
    /// The identities concerned (`entraDriftIdentityInfo`).
    #[serde(default)]
    pub identities: Vec<DriftIdentityInfo>,
}

/// `entraDriftIdentityInfo`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftIdentityInfo {
    /// The user's (or group's) object id.
    #[serde(default)]
    pub identifier: Option<String>,
    /// `user` or `group`.
    #[serde(default)]
    pub identity_type: Option<String>,
}

/// One catalog's report: each summary with its `missing` details (details are read only
/// for summaries that count any).
#[derive(Debug, Clone, Default)]
pub struct CatalogDrift {
    /// Summaries, with the missing details read for each.
    pub summaries: Vec<(AccessDriftSummary, Vec<AccessDriftDetail>)>,
}

impl GraphClient {
    /// Reads the access drift report of `catalog_id`: its summaries (one paged read) and
    /// the `missing` details of those counting any (one paged read each).
    pub async fn read_access_drift(&self, catalog_id: &str) -> Result<CatalogDrift, GraphError> {
        const OP: &str = "list_access_drift_summaries";
        const DETAILS_OP: &str = "list_access_drift_details";
        let beta = beta_base(self.base_url());
        let filter = CATALOG_FILTER.replace("{catalog}", &catalog_id.replace('\'', "''"));
        let url = build_url(OP, &beta, SUMMARIES_PATH, &[("$filter", &filter)])?;
        let summaries: Vec<AccessDriftSummary> = self.get_paged(OP, url).await?;
        let mut out = CatalogDrift::default();
        for s in summaries {
            let details = if s.drift_counts.missing > 0 {
                let path = format!(
                    "{SUMMARIES_PATH}/{}/{DETAILS_SEGMENT}",
                    super::odata::segment(DETAILS_OP, &s.id)?
                );
                let url = build_url(DETAILS_OP, &beta, &path, &[("$filter", MISSING_FILTER)])?;
                self.get_paged(DETAILS_OP, url).await?
            } else {
                Vec::new()
            };
            out.summaries.push((s, details));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_is_derived_from_the_v1_base() {
        assert_eq!(
            beta_base("https://graph.microsoft.com/v1.0"),
            "https://graph.microsoft.com/beta"
        );
        assert_eq!(
            beta_base("https://graph.microsoft.us/v1.0/"),
            "https://graph.microsoft.us/beta"
        );
        assert_eq!(
            beta_base("http://127.0.0.1:9/v1.0"),
            "http://127.0.0.1:9/beta"
        );
    }
}

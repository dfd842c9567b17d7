//! Microsoft's access drift report (Graph beta `accessDriftSummary` / `accessDriftDetail`),
//! per catalog, for groups and apps.
//!
//! By default the report is computed from the simulator's own state, as entitlement
//! management would: a user with a delivered assignment of a package who lacks a group
//! membership or app role the package grants is `missing`. A test can make the report lag
//! or disagree (`reported` overrides one resource's missing users) or make it unavailable
//! (`unavailable`: every report request answers that status).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::odata::{GResult, GraphError, Query, page, ts};
use super::state::{Grant, World};
use super::states::AssignmentState;

/// Test controls of the report.
#[derive(Debug, Clone, Default)]
pub(crate) struct DriftControls {
    /// Per resource (group or service principal id, lower-cased): the users (ids,
    /// lower-cased) the report says are missing, whatever the state says.
    pub reported: BTreeMap<String, BTreeSet<String>>,
    /// Every report request answers this HTTP status (e.g. 403, 404).
    pub unavailable: Option<u16>,
}

/// One resource of a catalog, as the report sees it.
struct Covered {
    catalog_id: String,
    catalog_name: String,
    id: String,
    name: String,
    kind: &'static str,
    missing: BTreeSet<String>,
}

fn covered(w: &World, controls: &DriftControls, catalog_id: &str) -> Vec<Covered> {
    let mut out: BTreeMap<String, Covered> = BTreeMap::new();
    let catalog_name = w
        .catalog(catalog_id)
        .map(|c| c.display_name.clone())
        .unwrap_or_default();
    for p in w
        .packages
        .iter()
        .filter(|p| p.catalog_id.eq_ignore_ascii_case(catalog_id))
    {
        for rs in &p.role_scopes {
            let (id, name, kind) = match &rs.grant {
                Grant::GroupMember(g) | Grant::GroupOwner(g) => (
                    g.clone(),
                    w.group(g).map(|g| g.display_name.clone()),
                    "group",
                ),
                Grant::AppRole { sp_id, .. } => (
                    sp_id.clone(),
                    w.sp(sp_id).map(|s| s.display_name.clone()),
                    "application",
                ),
                _ => continue,
            };
            let entry = out
                .entry(id.to_ascii_lowercase())
                .or_insert_with(|| Covered {
                    catalog_id: catalog_id.to_string(),
                    catalog_name: catalog_name.clone(),
                    id: id.clone(),
                    name: name.unwrap_or_else(|| id.clone()),
                    kind,
                    missing: BTreeSet::new(),
                });
            for a in w
                .assignments
                .iter()
                .filter(|a| a.package_id == p.id && a.state == AssignmentState::Delivered)
            {
                if !w.grant_present(&rs.grant, &a.target_id) {
                    entry.missing.insert(a.target_id.to_ascii_lowercase());
                }
            }
        }
    }
    for (id, c) in out.iter_mut() {
        if let Some(reported) = controls.reported.get(id) {
            c.missing = reported.clone();
        }
    }
    out.into_values().collect()
}

fn summary_id(catalog_id: &str, resource_id: &str) -> String {
    format!(
        "{}_{}",
        catalog_id.to_ascii_lowercase(),
        resource_id.to_ascii_lowercase()
    )
}

fn resource_json(c: &Covered) -> Value {
    json!({
        "@odata.type": if c.kind == "group" { "#microsoft.graph.groupDriftResourceInfo" } else { "#microsoft.graph.applicationDriftResourceInfo" },
        "catalogIdentifier": c.catalog_id,
        "catalogName": c.catalog_name,
        "displayName": c.name,
        "identifier": c.id,
        "type": c.kind,
    })
}

/// The catalog a `resource/catalogIdentifier eq '{id}'` filter names.
fn catalog_of_filter(q: &Query) -> Result<String, GraphError> {
    let bad = || {
        GraphError::bad_request(
            "BadRequest",
            "The simulator's access drift report needs $filter=resource/catalogIdentifier eq '{catalog id}'.",
        )
    };
    let f = q.get("filter").ok_or_else(bad)?;
    let (k, v) = f.split_once(" eq ").ok_or_else(bad)?;
    if !k.trim().eq_ignore_ascii_case("resource/catalogIdentifier") {
        return Err(bad());
    }
    Ok(v.trim().trim_matches('\'').to_string())
}

/// Handles `/beta/identityGovernance/entitlementManagement/accessDriftSummaries[/{id}/details]`
/// (`rest` is what follows `accessDriftSummaries`).
pub(crate) fn route(
    w: &World,
    controls: &DriftControls,
    rest: &[&str],
    q: &Query,
    base: &str,
    path: &str,
) -> GResult {
    if let Some(status) = controls.unavailable {
        return Err(GraphError::new(
            status,
            if status == 403 {
                "Authorization_RequestDenied"
            } else {
                "ResourceNotFound"
            },
            "The access drift report is not available to this app (set by the simulator's admin API).",
        ));
    }
    let now = ts(w.now());
    match rest {
        [] => {
            let catalog = catalog_of_filter(q)?;
            let items: Vec<Value> = covered(w, controls, &catalog)
                .iter()
                .map(|c| {
                    let missing = i32::try_from(c.missing.len()).unwrap_or(i32::MAX);
                    json!({
                        "id": summary_id(&c.catalog_id, &c.id),
                        "createdDateTime": now,
                        "driftCounts": {"missing": missing, "unauthorized": 0, "total": missing},
                        "driftSource": "entra",
                        "resource": resource_json(c),
                    })
                })
                .collect();
            page(items, q, base, path, "accessDriftSummaries", "BadRequest")
        }
        [id, rel] if rel.eq_ignore_ascii_case("details") => {
            let (catalog, resource) = id.split_once('_').ok_or_else(|| {
                GraphError::not_found(
                    "ResourceNotFound",
                    format!("No access drift summary '{id}'."),
                )
            })?;
            let c = covered(w, controls, catalog)
                .into_iter()
                .find(|c| c.id.eq_ignore_ascii_case(resource))
                .ok_or_else(|| {
                    GraphError::not_found(
                        "ResourceNotFound",
                        format!("No access drift summary '{id}'."),
                    )
                })?;
            let only_missing = q.get("filter").is_some_and(|f| {
                f.replace(' ', "")
                    .eq_ignore_ascii_case("driftType eq 'missing'".replace(' ', "").as_str())
            });
            if q.has("filter") && !only_missing {
                return Err(GraphError::bad_request(
                    "BadRequest",
                    "The simulator's access drift details accept only $filter=driftType eq 'missing'.",
                ));
            }
            let items: Vec<Value> = c
                .missing
                .iter()
                .map(|u| {
                    let user = w.user(u);
                    json!({
                        "@odata.type": "#microsoft.graph.entraAccessDriftDetail",
                        "id": format!("{id}_{u}"),
                        "createdDateTime": now,
                        "driftSource": "entra",
                        "driftType": "missing",
                        "resource": resource_json(&c),
                        "identities": [{
                            "identifier": user.map_or(u.as_str(), |x| x.id.as_str()),
                            "identityType": "user",
                            "principalName": user.map(|x| x.upn.clone()),
                            "displayName": user.map(|x| x.display_name.clone()),
                        }],
                    })
                })
                .collect();
            page(items, q, base, path, "accessDriftDetails", "BadRequest")
        }
        _ => Err(GraphError::not_found(
            "itemNotFound",
            format!("No HTTP resource was found that matches the request URI '{path}'."),
        )),
    }
}

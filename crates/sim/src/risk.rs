//! Identity Protection's risky users (`GET /identityProtection/riskyUsers[/{id}]`,
//! docs/graph.md "Account state"). Only users flagged through the admin API
//! (`PUT /_sim/riskyUsers/{user}`) are listed, as Identity Protection lists only users it
//! has assessed; the rest answer 404 by id and are absent from the list.

use serde_json::{Value, json};

use super::odata::{
    GResult, GraphError, Query, Reply, apply_select, directory_filter, page_lazy, ts,
};
use super::state::{RiskyUser, World};

/// The application permission every riskyUsers read needs.
pub(crate) const IDENTITY_RISKY_USER_READ_ALL: &str = "IdentityRiskyUser.Read.All";

fn risky_json(r: &RiskyUser) -> Value {
    json!({
        "id": r.user_id,
        "isDeleted": r.is_deleted,
        "isProcessing": false,
        "riskLastUpdatedDateTime": ts(r.updated),
        "riskLevel": r.risk_level,
        "riskState": r.risk_state,
        "riskDetail": r.risk_detail,
        "userDisplayName": r.display_name,
        "userPrincipalName": r.upn,
    })
}

/// `rest` is what follows `identityProtection/riskyUsers`.
pub(crate) fn route(w: &World, rest: &[&str], q: &Query, base: &str, path: &str) -> GResult {
    if !w.has_permission(IDENTITY_RISKY_USER_READ_ALL) {
        // The code Graph uses here is not documented (docs/graph.md); clients switch on
        // the status only.
        return Err(GraphError::new(
            403,
            "accessDenied",
            "Insufficient privileges to complete the operation. (The app lacks IdentityRiskyUser.Read.All, or the tenant lacks Microsoft Entra ID P2.)",
        ));
    }
    let sel = q.select();
    match rest {
        [] => {
            let filter = directory_filter(
                q,
                &["id", "riskLevel", "riskState", "userPrincipalName"],
                &[],
            )?;
            let items: Vec<&RiskyUser> = w
                .risky_users
                .values()
                .filter(|r| {
                    filter.as_ref().is_none_or(|f| {
                        f.eval(&|p| match p {
                            "id" => Some(r.user_id.clone()),
                            "risklevel" => Some(r.risk_level.clone()),
                            "riskstate" => Some(r.risk_state.clone()),
                            "userprincipalname" => Some(r.upn.clone()),
                            _ => None,
                        })
                    })
                })
                .collect();
            page_lazy(
                items,
                |r| apply_select(risky_json(r), sel.as_deref(), &[]),
                q,
                base,
                path,
                "identityProtection/riskyUsers",
                "BadRequest",
            )
        }
        [id] => {
            let r = w.risky_users.get(&id.to_ascii_lowercase()).ok_or_else(|| {
                GraphError::not_found(
                    "itemNotFound",
                    format!("The risky user '{id}' was not found."),
                )
            })?;
            let mut v = risky_json(r);
            v["@odata.context"] = json!(format!(
                "{base}/v1.0/$metadata#identityProtection/riskyUsers/$entity"
            ));
            Ok(Reply::ok(apply_select(v, sel.as_deref(), &[])))
        }
        _ => Err(GraphError::not_found(
            "itemNotFound",
            format!("No HTTP resource was found that matches the request URI '{path}'."),
        )),
    }
}

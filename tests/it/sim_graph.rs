//! The simulator over real HTTP: tokens, directory reads, entitlement-management reads,
//! paging, filters, errors and determinism.

use std::time::Duration;

use redeliver_sim::{
    AccessPackageSpec, AssignmentSpec, ResourceSpec, Scenario, SimHandle, SimOptions, Simulator,
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const EM: &str = "/v1.0/identityGovernance/entitlementManagement";

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder().build().unwrap()
}

async fn start(scenario: Scenario) -> SimHandle {
    Simulator::start(scenario, SimOptions::fast())
        .await
        .unwrap()
}

async fn token(c: &Client, h: &SimHandle) -> String {
    let resp = c
        .post(h.token_url())
        .form(&[
            ("client_id", h.client_id.as_str()),
            ("client_secret", h.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

async fn get(c: &Client, h: &SimHandle, tok: &str, path: &str) -> (StatusCode, Value) {
    let url = if path.starts_with("http") {
        path.to_string()
    } else {
        format!("{}{path}", h.graph_url)
    };
    let resp = c.get(url).bearer_auth(tok).send().await.unwrap();
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn token_endpoint_accepts_secret_and_assertion_and_rejects_the_rest() {
    let h = start(Scenario::demo()).await;
    let c = client();
    let scope = format!("{}/.default", h.graph_url);

    // Federated assertion, with the simulator's own URL as the scope resource.
    let resp = c
        .post(h.token_url())
        .form(&[
            ("client_id", h.client_id.as_str()),
            ("scope", scope.as_str()),
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", "eyJhbGciOi.fake.jwt"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);

    let cases = [
        (
            h.client_id.as_str(),
            "wrong",
            "https://graph.microsoft.com/.default",
            401,
            "invalid_client",
            7000215,
        ),
        (
            "11111111-2222-3333-4444-555555555555",
            h.client_secret.as_str(),
            "https://graph.microsoft.com/.default",
            400,
            "unauthorized_client",
            700016,
        ),
        (
            h.client_id.as_str(),
            h.client_secret.as_str(),
            "https://graph.microsoft.com/User.Read",
            400,
            "invalid_scope",
            1002012,
        ),
    ];
    for (id, secret, scope, status, error, code) in cases {
        let resp = c
            .post(h.token_url())
            .form(&[
                ("client_id", id),
                ("client_secret", secret),
                ("scope", scope),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{error}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], error);
        assert_eq!(v["error_codes"], json!([code]));
        let desc = v["error_description"].as_str().unwrap();
        assert!(desc.starts_with(&format!("AADSTS{code}:")), "{desc}");
        assert!(
            v["correlation_id"].is_string()
                && v["trace_id"].is_string()
                && v["timestamp"].is_string()
        );
    }

    // Unknown tenant.
    let resp = c
        .post(format!(
            "{}/not-a-tenant/oauth2/v2.0/token",
            h.authority_host
        ))
        .form(&[
            ("client_id", h.client_id.as_str()),
            ("client_secret", h.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    h.shutdown().await;
}

#[tokio::test]
async fn graph_requires_a_valid_unexpired_token() {
    let h = start(Scenario::demo()).await;
    let c = client();
    let path = format!("{}/v1.0/users/alice@contoso.com", h.graph_url);

    let resp = c.get(&path).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");

    let (status, _) = get(&c, &h, "not-a-token", "/v1.0/users/alice@contoso.com").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let tok = token(&c, &h).await;
    let (status, user) = get(&c, &h, &tok, "/v1.0/users/alice@contoso.com").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["userPrincipalName"], "alice@contoso.com");

    // Past the token lifetime (simulated time) the same token is refused.
    h.advance_clock(Duration::from_secs(3601));
    let (status, body) = get(&c, &h, &tok, "/v1.0/users/alice@contoso.com").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    let fresh = token(&c, &h).await;
    let (status, _) = get(&c, &h, &fresh, "/v1.0/users/alice@contoso.com").await;
    assert_eq!(status, StatusCode::OK);
    h.shutdown().await;
}

#[tokio::test]
async fn users_and_groups_with_select_paging_and_correlation_headers() {
    let scenario = Scenario::synthetic("fabrikam", 250, 1, 1, 0);
    let h = start(scenario).await;
    let c = client();
    let tok = token(&c, &h).await;

    let resp = c
        .get(format!(
            "{}/v1.0/users/user7@fabrikam.com?$select=id,displayName",
            h.graph_url
        ))
        .bearer_auth(&tok)
        .header("client-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["client-request-id"], "abc-123");
    assert!(resp.headers().contains_key("request-id"));
    assert_eq!(resp.headers()["x-ms-resource-unit"], "1"); // users 2, $select -1
    let user: Value = resp.json().await.unwrap();
    assert_eq!(user["displayName"], "User 7");
    assert!(
        user.get("userPrincipalName").is_none(),
        "$select must drop other properties"
    );

    // Members: 250 in one group, pages of 100 with absolute nextLinks.
    let gid = h.group_id("pkg-0-g0").unwrap();
    let mut url = format!("{}/v1.0/groups/{gid}/members?$select=id", h.graph_url);
    let mut seen = std::collections::HashSet::new();
    let mut pages = 0;
    loop {
        let (status, body) = get(&c, &h, &tok, &url).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        pages += 1;
        for item in body["value"].as_array().unwrap() {
            assert_eq!(item["@odata.type"], "#microsoft.graph.user");
            assert!(seen.insert(item["id"].as_str().unwrap().to_string()));
        }
        match body["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&format!("{}/v1.0/groups/{gid}/members?", h.graph_url)),
                    "{next}"
                );
                assert!(next.contains("$skiptoken="), "{next}");
                url = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (3, 250));

    let (_, body) = get(
        &c,
        &h,
        &tok,
        &format!("/v1.0/groups/{gid}/members?$select=id&$top=999"),
    )
    .await;
    assert_eq!(body["value"].as_array().unwrap().len(), 250);
    assert!(body.get("@odata.nextLink").is_none());

    let (status, body) = get(
        &c,
        &h,
        &tok,
        &format!("/v1.0/groups/{gid}/members?$top=1000"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Errors: bad GUID, unknown group, unknown path — all Graph error bodies.
    let (status, body) = get(&c, &h, &tok, "/v1.0/groups/not-a-guid/members").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "Request_BadRequest");
    let (status, body) = get(
        &c,
        &h,
        &tok,
        "/v1.0/groups/00000000-0000-4000-8000-000000000000/members",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "Request_ResourceNotFound");
    assert!(body["error"]["innerError"]["request-id"].is_string());
    // An unknown segment is Graph's 400, not a 404 (unknown_segments_are_answered_as_graph_does).
    let (status, body) = get(&c, &h, &tok, "/v1.0/nothingHere").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "BadRequest");
    assert!(body["error"]["innerError"]["request-id"].is_string());
    h.shutdown().await;
}

#[tokio::test]
async fn member_writes_check_member_groups_and_app_role_assignments() {
    let h = start(Scenario::demo()).await;
    let c = client();
    let tok = token(&c, &h).await;
    let g = h.group_id("fin-writers").unwrap();
    let carol = h.user_id("carol@contoso.com").unwrap();
    let add = |body: Value| {
        c.post(format!("{}/v1.0/groups/{g}/members/$ref", h.graph_url))
            .bearer_auth(&tok)
            .json(&body)
            .send()
    };
    let odata_id =
        json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{carol}")});
    assert_eq!(
        add(odata_id.clone()).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert!(h.is_member("fin-writers", "carol@contoso.com"));
    assert_eq!(
        add(odata_id).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let ghost = json!({"@odata.id": "https://graph.microsoft.com/v1.0/directoryObjects/00000000-0000-4000-8000-00000000dead"});
    assert_eq!(add(ghost).await.unwrap().status(), StatusCode::NOT_FOUND);

    let resp = c
        .post(format!(
            "{}/v1.0/users/{carol}/checkMemberGroups",
            h.graph_url
        ))
        .bearer_auth(&tok)
        .json(&json!({"groupIds": [g, h.group_id("fin-readers").unwrap()]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-ms-resource-unit"], "4");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["value"], json!([g]));

    let resp = c
        .delete(format!("{}/v1.0/groups/{g}/members/{carol}", h.graph_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "DELETE without $ref must not succeed"
    );
    assert!(h.is_member("fin-writers", "carol@contoso.com"));
    let resp = c
        .delete(format!(
            "{}/v1.0/groups/{g}/members/{carol}/$ref",
            h.graph_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(!h.is_member("fin-writers", "carol@contoso.com"));

    // Payroll.Read is granted to alice and bob by their delivered Finance assignments.
    let sp = h.service_principal_id("Payroll").unwrap();
    let (status, body) = get(
        &c,
        &h,
        &tok,
        &format!("/v1.0/servicePrincipals/{sp}/appRoleAssignedTo"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let principals: Vec<&str> = body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["principalId"].as_str().unwrap())
        .collect();
    assert_eq!(principals.len(), 2);
    assert!(principals.contains(&h.user_id("alice@contoso.com").unwrap().as_str()));
    assert_eq!(body["value"][0]["resourceId"], sp.as_str());
    h.shutdown().await;
}

#[tokio::test]
async fn entitlement_management_reads_filters_and_expands() {
    let g = Signed::start(Scenario::demo()).await;
    let pkg = "9f1c0c7e-0000-4000-8000-000000000001";
    package_and_catalog_reads_filter_by_name_and_expand(&g, pkg).await;
    assignment_filters_match_graphs(&g, pkg).await;
    assignments_page_and_bad_filters_and_ids_are_refused(&g).await;
    // dave's failed request, found by its state, with its assignment and package.
    let (status, body) = g.get(&format!("{EM}/assignmentRequests?$filter=state eq 'deliveryFailed'&$expand=assignment,accessPackage")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let reqs = body["value"].as_array().unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["requestType"], "adminAdd");
    assert_eq!(reqs[0]["accessPackage"]["displayName"], "Engineering Tools");
    assert_eq!(
        reqs[0]["assignment"]["target"]["principalName"],
        "dave@contoso.com"
    );
    assert!(reqs[0]["completedDateTime"].is_string());
    g.h.shutdown().await;
}

/// A simulator with a client signed in to it.
struct Signed {
    h: SimHandle,
    c: Client,
    tok: String,
}

impl Signed {
    async fn start(scenario: Scenario) -> Self {
        let h = start(scenario).await;
        let c = client();
        let tok = token(&c, &h).await;
        Self { h, c, tok }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        get(&self.c, &self.h, &self.tok, path).await
    }
}

/// Packages and catalogs filtered by display name; a package's role scopes (group, app
/// role, SharePoint site) and policies expanded or filtered by package.
async fn package_and_catalog_reads_filter_by_name_and_expand(g: &Signed, pkg: &str) {
    let (status, body) = g
        .get(&format!(
            "{EM}/accessPackages?$filter=displayName eq 'Finance Analysts'&$expand=catalog"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"].as_array().unwrap().len(), 1);
    assert_eq!(body["value"][0]["id"], pkg);
    assert_eq!(body["value"][0]["catalog"]["displayName"], "Finance");

    let (_, body) = g
        .get(&format!(
            "{EM}/catalogs?$filter=displayName eq 'Engineering'"
        ))
        .await;
    assert_eq!(
        body["value"][0]["id"],
        "0f1e2d3c-0000-4000-8000-00000000ca02"
    );

    let (status, p) = g
        .get(&format!(
            "{EM}/accessPackages/{pkg}?$expand=resourceRoleScopes($expand=role,scope)"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let scopes = p["resourceRoleScopes"].as_array().unwrap();
    assert_eq!(scopes.len(), 4);
    let readers = g.h.group_id("fin-readers").unwrap();
    assert!(
        scopes
            .iter()
            .any(|s| s["role"]["originId"] == format!("Member_{readers}")
                && s["scope"]["originId"] == readers.as_str()
                && s["role"]["originSystem"] == "AadGroup")
    );
    let sp = g.h.service_principal_id("Payroll").unwrap();
    assert!(
        scopes
            .iter()
            .any(|s| s["role"]["originSystem"] == "AadApplication"
                && s["scope"]["originId"] == sp.as_str())
    );
    assert!(
        scopes.iter().any(
            |s| s["role"]["originSystem"] == "SharePointOnline" && s["role"]["originId"] == "4"
        )
    );

    let (_, p) = g
        .get(&format!(
            "{EM}/accessPackages/{pkg}?$expand=assignmentPolicies"
        ))
        .await;
    assert_eq!(
        p["assignmentPolicies"][0]["id"],
        "2264bf65-76ba-417b-a27d-54d291f0cb01"
    );
    let (_, pols) = g
        .get(&format!(
            "{EM}/assignmentPolicies?$filter=accessPackage/id eq '{pkg}'"
        ))
        .await;
    assert_eq!(pols["value"].as_array().unwrap().len(), 1);
}

/// Both documented casings of the assignment filter by package and target, and the filter
/// by state.
async fn assignment_filters_match_graphs(g: &Signed, pkg: &str) {
    let alice = g.h.user_id("alice@contoso.com").unwrap();
    for f in [
        format!("accessPackage/id eq '{pkg}' and target/objectid eq '{alice}'"),
        format!(
            "accessPackage/id eq '{pkg}' and target/objectId eq '{alice}' and state eq 'Delivered'"
        ),
    ] {
        let (status, body) = g
            .get(&format!(
                "{EM}/assignments?$expand=target,accessPackage&$filter={f}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v = body["value"].as_array().unwrap();
        assert_eq!(v.len(), 1, "{f}");
        assert_eq!(v[0]["state"], "delivered");
        assert_eq!(v[0]["status"], "Delivered");
        assert_eq!(v[0]["target"]["objectId"], alice.as_str());
        assert_ne!(
            v[0]["target"]["id"],
            alice.as_str(),
            "subject id differs from object id"
        );
        assert_eq!(v[0]["accessPackage"]["displayName"], "Finance Analysts");
    }
    let (_, body) = g
        .get(&format!(
            "{EM}/assignments?$filter=state eq 'deliveryFailed'"
        ))
        .await;
    assert_eq!(
        body["value"].as_array().unwrap().len(),
        1,
        "dave's failed assignment"
    );
}

async fn assignments_page_and_bad_filters_and_ids_are_refused(g: &Signed) {
    // Assignment paging with $top.
    let (_, body) = g.get(&format!("{EM}/assignments?$top=2")).await;
    assert_eq!(body["value"].as_array().unwrap().len(), 2);
    let next = body["@odata.nextLink"].as_str().unwrap().to_string();
    let (_, body) = g.get(&next).await;
    // The demo's four assignments: alice, bob, dave, erin.
    assert_eq!(body["value"].as_array().unwrap().len(), 2);

    let (status, body) = g
        .get(&format!("{EM}/assignments?$filter=catalogId eq 'x'"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "InvalidFilter");
    let (status, _) = g.get(&format!("{EM}/assignments/not-a-guid")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = g
        .get(&format!(
            "{EM}/assignments/00000000-0000-4000-8000-000000000000"
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn same_seed_gives_same_ids_and_a_different_seed_does_not() {
    let build = |seed: u64| {
        Scenario::builder("tailspin")
            .seed(seed)
            .user("ann@tailspin.com", "Ann")
            .group("crew", &[])
            .catalog("Ops")
            .access_package(AccessPackageSpec {
                name: "Crew".into(),
                catalog: "Ops".into(),
                resources: vec![ResourceSpec {
                    group: Some("crew".into()),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .assignment(AssignmentSpec {
                user: "ann@tailspin.com".into(),
                package: "Crew".into(),
                ..Default::default()
            })
            .build()
    };
    let c = client();
    let mut seen = Vec::new();
    for seed in [7, 7, 8] {
        let h = start(build(seed)).await;
        let tok = token(&c, &h).await;
        let (_, user) = get(&c, &h, &tok, "/v1.0/users/ann@tailspin.com").await;
        let (_, asg) = get(&c, &h, &tok, &format!("{EM}/assignments")).await;
        let (_, pkgs) = get(&c, &h, &tok, &format!("{EM}/accessPackages")).await;
        seen.push((
            h.tenant_id.clone(),
            user["id"].as_str().unwrap().to_string(),
            asg["value"][0]["id"].as_str().unwrap().to_string(),
            pkgs["value"][0]["id"].as_str().unwrap().to_string(),
        ));
        h.shutdown().await;
    }
    assert_eq!(seen[0], seen[1]);
    assert_ne!(seen[0].1, seen[2].1);
    assert_ne!(seen[0].2, seen[2].2);
}

#[tokio::test]
async fn a_ten_thousand_user_synthetic_tenant_loads_fast_and_pages_completely() {
    let t0 = std::time::Instant::now();
    let scenario = Scenario::synthetic("big", 10_000, 10, 3, 100);
    let h = start(scenario).await;
    let load = t0.elapsed();
    eprintln!("loaded 10k users in {load:?}");
    assert!(load < Duration::from_secs(10), "took {load:?}");
    let c = client();
    let tok = token(&c, &h).await;

    let mut url = format!("{}{EM}/assignments?$top=999&$select=id,state", h.graph_url);
    let mut total = 0;
    while !url.is_empty() {
        let (status, body) = get(&c, &h, &tok, &url).await;
        assert_eq!(status, StatusCode::OK);
        total += body["value"].as_array().unwrap().len();
        url = body["@odata.nextLink"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    assert_eq!(total, 10_000);

    // Every 100th user misses its package's first group.
    let g = h.group_id("pkg-0-g0").unwrap();
    let (_, body) = get(
        &c,
        &h,
        &tok,
        &format!("/v1.0/groups/{g}/members?$select=id&$top=999"),
    )
    .await;
    let mut n = body["value"].as_array().unwrap().len();
    let mut next = body["@odata.nextLink"].as_str().map(str::to_string);
    while let Some(u) = next {
        let (_, body) = get(&c, &h, &tok, &u).await;
        n += body["value"].as_array().unwrap().len();
        next = body["@odata.nextLink"].as_str().map(str::to_string);
    }
    // Package 0 holds users 0, 10, 20, ...; every 100th user (0, 100, ...) is missing.
    assert_eq!(n, 1000 - 100);
    let a0 = h.assignment_id("user0@big.com", "pkg-0").unwrap();
    assert_eq!(h.missing_resources(&a0), vec!["pkg-0-g0"]);
    h.shutdown().await;
}

#[tokio::test]
async fn transitive_members_and_check_member_groups_follow_nested_groups() {
    let h = start(Scenario::demo()).await;
    let c = client();
    let tok = token(&c, &h).await;
    let eng = h.group_id("eng-tools").unwrap();
    let readers = h.group_id("fin-readers").unwrap();
    let resp = c
        .post(format!("{}/v1.0/groups/{eng}/members/$ref", h.graph_url))
        .bearer_auth(&tok)
        .json(&json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{readers}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let alice = h.user_id("alice@contoso.com").unwrap();

    let (_, direct) = get(
        &c,
        &h,
        &tok,
        &format!("/v1.0/groups/{eng}/members?$select=id"),
    )
    .await;
    assert_eq!(direct["value"].as_array().unwrap().len(), 1);
    assert_eq!(direct["value"][0]["@odata.type"], "#microsoft.graph.group");
    let (_, all) = get(
        &c,
        &h,
        &tok,
        &format!("/v1.0/groups/{eng}/transitiveMembers?$select=id"),
    )
    .await;
    let ids: Vec<&str> = all["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&alice.as_str()) && ids.contains(&readers.as_str()),
        "{ids:?}"
    );

    let resp = c
        .post(format!(
            "{}/v1.0/users/{alice}/checkMemberGroups",
            h.graph_url
        ))
        .bearer_auth(&tok)
        .json(&json!({"groupIds": [eng]}))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["value"], json!([eng]), "checkMemberGroups is transitive");

    let (_, g) = get(
        &c,
        &h,
        &tok,
        &format!("/v1.0/groups/{eng}?$select=id,displayName&$expand=members($select=id)"),
    )
    .await;
    assert_eq!(g["displayName"], "eng-tools");
    assert!(g.get("description").is_none());
    assert_eq!(
        g["members"],
        json!([{"@odata.type": "#microsoft.graph.group", "id": readers}])
    );

    let resp = c
        .get(format!("{}/v1.0/groups/{eng}", h.graph_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer ")
    );
    h.shutdown().await;
}

#[tokio::test]
async fn catalog_resources_and_roles_match_the_package_role_scopes() {
    let h = start(Scenario::demo()).await;
    let c = client();
    let tok = token(&c, &h).await;
    let cat = "0f1e2d3c-0000-4000-8000-00000000ca01";
    let pkg = "9f1c0c7e-0000-4000-8000-000000000001";
    let readers = h.group_id("fin-readers").unwrap();

    let (status, body) = get(
        &c,
        &h,
        &tok,
        &format!("{EM}/catalogs/{cat}/resources?$expand=roles,scopes"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resources = body["value"].as_array().unwrap();
    assert_eq!(resources.len(), 4, "two groups, one app, one site");
    let r = resources
        .iter()
        .find(|r| r["originId"] == readers.as_str())
        .unwrap();
    assert_eq!(r["originSystem"], "AadGroup");
    let roles: Vec<&str> = r["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["Member", "Owner"]);
    assert_eq!(r["scopes"][0]["isRootScope"], true);

    let filter = format!(
        "(originSystem eq 'AadGroup' and resource/id eq '{}')",
        r["id"].as_str().unwrap()
    );
    let (status, body) = get(
        &c,
        &h,
        &tok,
        &format!("{EM}/catalogs/{cat}/resourceRoles?$filter={filter}&$expand=resource"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let roles = body["value"].as_array().unwrap();
    assert_eq!(roles.len(), 2);
    assert_eq!(roles[0]["resource"]["originId"], readers.as_str());

    let (_, p) = get(
        &c,
        &h,
        &tok,
        &format!("{EM}/accessPackages/{pkg}?$expand=resourceRoleScopes($expand=role,scope)"),
    )
    .await;
    let member_role = p["resourceRoleScopes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["role"]["originId"] == format!("Member_{readers}"))
        .unwrap()["role"]["id"]
        .clone();
    assert!(
        roles.iter().any(|x| x["id"] == member_role),
        "catalog role ids are the package's role ids"
    );

    let (status, body) = get(
        &c,
        &h,
        &tok,
        &format!("{EM}/catalogs/{cat}/resources?$filter=catalogId eq 'x'"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "InvalidFilter");
    h.shutdown().await;
}

/// `GET /groups` as Graph documents it: the list, `$filter` by `displayName` (`eq` and
/// `startswith`), `$top` with `@odata.nextLink` paging, and `$count=true`, which needs
/// `ConsistencyLevel: eventual` and then carries `@odata.count` on the first page only.
#[tokio::test]
async fn groups_list_filters_pages_and_counts_as_graph_does() {
    let h = start(Scenario::demo()).await;
    let c = client();
    let tok = token(&c, &h).await;

    let (status, all) = get(&c, &h, &tok, "/v1.0/groups").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert!(
        all["@odata.context"]
            .as_str()
            .is_some_and(|s| s.ends_with("$metadata#groups")),
        "{all}"
    );
    let names: Vec<&str> = all["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["displayName"].as_str())
        .collect();
    assert!(
        names.contains(&"fin-writers") && names.contains(&"eng-tools"),
        "{names:?}"
    );
    let total = names.len();

    let (status, one) = get(
        &c,
        &h,
        &tok,
        "/v1.0/groups?$filter=displayName%20eq%20'fin-writers'&$select=id,displayName",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(
        one["value"],
        json!([{"id": h.group_id("fin-writers").unwrap(), "displayName": "fin-writers"}])
    );
    let (_, fin) = get(
        &c,
        &h,
        &tok,
        "/v1.0/groups?$filter=startswith(displayName,'fin-')",
    )
    .await;
    assert_eq!(fin["value"].as_array().unwrap().len(), 2, "{fin}");

    // Pages of two, followed by nextLink, with the count on the first page only.
    let mut url = format!("{}/v1.0/groups?$top=2&$count=true", h.graph_url);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let resp = c
            .get(&url)
            .bearer_auth(&tok)
            .header("ConsistencyLevel", "eventual")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let page: Value = resp.json().await.unwrap();
        if pages == 0 {
            assert_eq!(page["@odata.count"], json!(total), "{page}");
        } else {
            assert!(page.get("@odata.count").is_none(), "{page}");
        }
        pages += 1;
        let items = page["value"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|g| g["id"].as_str().unwrap().to_string()));
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), total);
    assert_eq!(pages, total.div_ceil(2));

    // $count without the header is refused, as Graph refuses it.
    let (status, body) = get(&c, &h, &tok, "/v1.0/groups?$count=true").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "Request_BadRequest");
    // A property Graph does not filter groups on is an unsupported query.
    let (status, body) = get(&c, &h, &tok, "/v1.0/groups?$filter=description%20eq%20'x'").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "Request_UnsupportedQuery");
    h.shutdown().await;
}

/// A segment Graph does not serve is `400 BadRequest` "Resource not found for the segment
/// 'x'." (a 404 means an object that does not exist).
#[tokio::test]
async fn unknown_segments_are_answered_as_graph_does() {
    let h = start(Scenario::demo()).await;
    let c = client();
    let tok = token(&c, &h).await;
    let gid = h.group_id("fin-writers").unwrap();
    for (path, segment) in [
        ("/v1.0/nosuch".to_string(), "nosuch"),
        (format!("/v1.0/groups/{gid}/nosuch"), "nosuch"),
        (format!("{EM}/nosuch"), "nosuch"),
        (format!("{EM}/catalogs/x/nosuch"), "nosuch"),
    ] {
        let (status, body) = get(&c, &h, &tok, &path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], "BadRequest", "{path}: {body}");
        assert_eq!(
            body["error"]["message"],
            format!("Resource not found for the segment '{segment}'."),
            "{path}"
        );
    }
    // An object that does not exist is still a 404.
    let (status, _) = get(
        &c,
        &h,
        &tok,
        "/v1.0/groups/00000000-0000-4000-8000-000000000000",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    h.shutdown().await;
}

#[tokio::test]
async fn pim_for_groups_eligibility_schedules_filter_page_and_need_their_permission() {
    let h = start(Scenario::demo()).await;
    let c = client();
    let tok = token(&c, &h).await;
    let list = "/v1.0/identityGovernance/privilegedAccess/group/eligibilitySchedules";
    let admins = h.group_id("finance-admins").unwrap();
    let bob = h.user_id("bob@contoso.com").unwrap();

    // A filter on the group or the principal is required, as Redeliver always sends one.
    let (status, body) = get(&c, &h, &tok, list).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = get(
        &c,
        &h,
        &tok,
        &format!("{list}?$filter=groupId%20eq%20'{admins}'%20and%20accessId%20eq%20'member'"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let value = body["value"].as_array().unwrap();
    // bob is eligible; erin's eligibility was removed in PIM (the demo's drift).
    assert_eq!(value.len(), 1, "{body}");
    assert_eq!(value[0]["principalId"], bob.as_str());
    assert_eq!(value[0]["accessId"], "member");
    assert_eq!(value[0]["groupId"], admins.as_str());
    assert_eq!(
        value[0]["scheduleInfo"]["expiration"]["type"],
        "noExpiration"
    );
    // Nobody is an eligible owner of it.
    let (_, owners) = get(
        &c,
        &h,
        &tok,
        &format!("{list}?$filter=groupId%20eq%20'{admins}'%20and%20accessId%20eq%20'owner'"),
    )
    .await;
    assert_eq!(owners["value"], json!([]), "{owners}");

    // Without PrivilegedEligibilitySchedule.Read.AzureADGroup: 403.
    h.set_permission("PrivilegedEligibilitySchedule.Read.AzureADGroup", false)
        .unwrap();
    let (status, body) = get(
        &c,
        &h,
        &tok,
        &format!("{list}?$filter=groupId%20eq%20'{admins}'"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    h.shutdown().await;
}

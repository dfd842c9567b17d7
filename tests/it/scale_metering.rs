//! The simulator meters like Graph (docs/graph.md "Throttling and retries"): the published
//! resource-unit cost table with its modifiers, `x-ms-resource-unit`, the app + tenant
//! token bucket with its `429` headers, and the admin API's requests and RU per path — all
//! over real HTTP.

use redeliver_sim::{PathUsage, RuBucket, Scenario, SimHandle, SimOptions, Simulator, Usage};
use reqwest::{Client, Method, StatusCode};
use serde_json::json;

const EM: &str = "/v1.0/identityGovernance/entitlementManagement";

async fn start() -> (SimHandle, Client, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .expect("simulator starts");
    let tok = h.mint_token();
    (h, Client::new(), tok)
}

/// Sends one request and returns (status, `x-ms-resource-unit`).
async fn call(
    c: &Client,
    tok: &str,
    h: &SimHandle,
    method: Method,
    path: &str,
) -> (StatusCode, Option<u32>) {
    let mut req = c
        .request(method.clone(), format!("{}{path}", h.graph_url))
        .bearer_auth(tok);
    if method == Method::POST {
        req = req.json(&json!({"groupIds": []}));
    }
    let resp = req.send().await.expect("request is answered");
    let ru = resp
        .headers()
        .get("x-ms-resource-unit")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (resp.status(), ru)
}

/// What each directory request costs in RU, for group `g`, service principal `sp` and
/// user `alice`: base cost, then `$select` -1, `$expand` +1, `$top` < 20 -1, minimum 1.
fn published_costs(g: &str, sp: &str, alice: &str) -> Vec<(Method, String, u32)> {
    vec![
        (Method::GET, format!("/v1.0/groups/{g}/members"), 3),
        (
            Method::GET,
            format!("/v1.0/groups/{g}/members?$select=id"),
            2,
        ),
        (
            Method::GET,
            format!("/v1.0/groups/{g}/members?$select=id&$top=999"),
            2,
        ),
        (Method::GET, format!("/v1.0/groups/{g}/members?$top=5"), 2),
        (
            Method::GET,
            format!("/v1.0/groups/{g}/members?$select=id&$top=5"),
            1,
        ),
        (
            Method::GET,
            format!("/v1.0/groups/{g}/transitiveMembers"),
            5,
        ),
        (
            Method::GET,
            format!("/v1.0/groups/{g}/transitiveMembers?$select=id"),
            4,
        ),
        (Method::GET, format!("/v1.0/groups/{g}"), 1),
        (Method::GET, format!("/v1.0/groups/{g}?$expand=members"), 2),
        (
            Method::GET,
            format!("/v1.0/groups/{g}?$select=id&$top=5"),
            1,
        ),
        (Method::GET, "/v1.0/users".to_string(), 2),
        (Method::GET, "/v1.0/users?$select=id".to_string(), 1),
        (Method::GET, format!("/v1.0/users/{alice}"), 2),
        (
            Method::GET,
            format!("/v1.0/servicePrincipals/{sp}/appRoleAssignedTo"),
            2,
        ),
        (
            Method::GET,
            format!(
                "/v1.0/servicePrincipals/{sp}/appRoleAssignedTo?$select=principalId,appRoleId&$top=999"
            ),
            1,
        ),
        (
            Method::POST,
            format!("/v1.0/users/{alice}/checkMemberGroups"),
            4,
        ),
    ]
}

#[tokio::test]
async fn every_directory_request_is_charged_per_the_published_table() {
    let (h, c, tok) = start().await;
    let g = h.group_id("fin-readers").unwrap();
    let sp = h.service_principal_id("Payroll").unwrap();
    let alice = h.user_id("alice@contoso.com").unwrap();
    let cases = published_costs(&g, &sp, &alice);
    let mut expected_total = 0u64;
    for (method, path, want) in &cases {
        let (status, ru) = call(&c, &tok, &h, method.clone(), path).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}");
        assert_eq!(ru, Some(*want), "{method} {path} charged {ru:?}");
        expected_total += u64::from(*want);
    }
    // Entitlement management has no published RU limits: no header, no charge.
    let (status, ru) = call(&c, &tok, &h, Method::GET, &format!("{EM}/catalogs")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ru, None);

    // The admin API (over HTTP, as any tool would read it) adds up the same numbers.
    let usage: Usage = c
        .get(format!("{}/_sim/usage", h.graph_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage.total.ru, expected_total);
    assert_eq!(usage.total.requests, cases.len() as u64 + 1);
    assert_eq!(
        usage.by_path[&format!("GET /v1.0/groups/{g}/members")],
        PathUsage {
            requests: 5,
            ru: 3 + 2 + 2 + 2 + 1,
            throttled: 0
        }
    );
    assert_eq!(
        usage.by_route["POST /v1.0/users/{id}/checkMemberGroups"],
        PathUsage {
            requests: 1,
            ru: 4,
            throttled: 0
        }
    );
    assert_eq!(usage.by_route[&format!("GET {EM}/catalogs")].ru, 0);
    // Inside $batch each item is charged on its own; the outer request costs nothing.
    h.clear_request_log();
    let resp = c
        .post(format!("{}/v1.0/$batch", h.graph_url))
        .bearer_auth(&tok)
        .json(&json!({"requests": [
            {"id": "1", "method": "GET", "url": format!("/groups/{g}/members?$select=id&$top=999")},
            {"id": "2", "method": "GET", "url": format!("/groups/{g}/members")},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let usage = h.usage();
    assert_eq!(usage.total.ru, 2 + 3);
    assert_eq!(usage.by_route["POST /v1.0/$batch"].ru, 0);
    assert_eq!(usage.by_route["GET /v1.0/groups/{id}/members"].requests, 2);
    h.shutdown().await;
}

#[tokio::test]
async fn the_token_bucket_defaults_to_a_large_tenant_and_answers_429_with_graph_headers() {
    let (h, c, tok) = start().await;
    // `{}` means the large-tenant bucket: 8,000 RU per 10 s.
    let resp = c
        .put(format!("{}/_sim/throttling", h.graph_url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(RuBucket::default(), RuBucket::LARGE_TENANT);
    assert_eq!(
        (
            RuBucket::LARGE_TENANT.capacity,
            RuBucket::LARGE_TENANT.window_ms
        ),
        (8000, 10_000)
    );
    let g = h.group_id("fin-readers").unwrap();
    let members = format!("/v1.0/groups/{g}/members");
    // 2,666 full-price reads (3 RU) fit at once, and the bucket refills at 800 RU/s: the
    // first 429 comes after 2,666 requests plus what the refill paid for meanwhile.
    let started = std::time::Instant::now();
    let mut first_429 = None;
    for i in 0..20_000u32 {
        let (status, _) = call(&c, &tok, &h, Method::GET, &members).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            first_429 = Some(i);
            break;
        }
    }
    let refill = started.elapsed().as_secs_f64() * 800.0 / 3.0;
    let first_429 = f64::from(first_429.expect("a long burst exceeds 8,000 RU per 10 s"));
    assert!(
        first_429 >= 2_666.0 && first_429 <= 2_667.0 + refill,
        "first 429 after {first_429} requests (refill allowed {refill:.0})"
    );

    // A small bucket makes the 429 easy to look at.
    let small = RuBucket {
        capacity: 6,
        window_ms: 60_000,
    };
    let resp = c
        .put(format!("{}/_sim/throttling", h.graph_url))
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    h.clear_request_log();
    for _ in 0..2 {
        let (status, ru) = call(&c, &tok, &h, Method::GET, &members).await;
        assert_eq!((status, ru), (StatusCode::OK, Some(3)));
    }
    let resp = c
        .get(format!("{}{members}", h.graph_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = resp.headers().clone();
    let retry_after: f64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // 3 RU at 0.1 RU/s: about 30 s.
    assert!(
        (20.0..=31.0).contains(&retry_after),
        "retry-after {retry_after}"
    );
    let scope = headers["x-ms-throttle-scope"].to_str().unwrap();
    assert_eq!(
        scope,
        format!(
            "Tenant_Application/ReadWrite/{}/{}",
            h.client_id, h.tenant_id
        )
    );
    assert_eq!(
        headers["x-ms-throttle-information"],
        "ResourceUnitLimitExceeded"
    );
    assert!(headers.get("x-ms-resource-unit").is_none());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TooManyRequests");
    // Refused requests cost nothing, and the admin API counts them per path.
    let usage = h.usage();
    let per_path = usage.by_path[&format!("GET {members}")];
    assert_eq!(
        per_path,
        PathUsage {
            requests: 3,
            ru: 6,
            throttled: 1
        }
    );
    // Disabling the bucket lifts the limit at once.
    let resp = c
        .delete(format!("{}/_sim/throttling", h.graph_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, _) = call(&c, &tok, &h, Method::GET, &members).await;
    assert_eq!(status, StatusCode::OK);
    h.shutdown().await;
}

#[tokio::test]
async fn responses_report_the_limit_percentage_above_80_percent() {
    let (h, c, tok) = start().await;
    h.set_ru_bucket(Some(RuBucket {
        capacity: 10,
        window_ms: 600_000,
    }));
    let g = h.group_id("fin-readers").unwrap();
    let url = format!("{}/v1.0/groups/{g}/members", h.graph_url);
    let mut percentages = Vec::new();
    for _ in 0..3 {
        let resp = c.get(&url).bearer_auth(&tok).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        percentages.push(
            resp.headers()
                .get("x-ms-throttle-limit-percentage")
                .map(|v| v.to_str().unwrap().parse::<f64>().unwrap()),
        );
    }
    // 3, 6, 9 of 10 RU used: the header appears only above 80 %.
    assert_eq!(percentages[..2], [None, None]);
    assert!(
        percentages[2].is_some_and(|p| (0.8..=1.8).contains(&p)),
        "{percentages:?}"
    );
    h.shutdown().await;
}

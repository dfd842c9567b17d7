//! Transport-level behaviour of the simulator over real HTTP(S): `$batch`, throttling
//! (injected and RU bucket), TLS with the generated CA, OpenID discovery, group delta.

use std::time::Duration;

use redeliver_sim::{
    FaultScope, FaultSpec, RuBucket, Scenario, SimHandle, SimOptions, Simulator, TlsOptions,
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const EM: &str = "/v1.0/identityGovernance/entitlementManagement";

async fn start() -> (SimHandle, Client, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let tok = h.mint_token();
    (h, Client::new(), tok)
}

#[tokio::test]
async fn batch_dispatches_each_item_through_the_normal_pipeline() {
    let (h, c, tok) = start().await;
    let readers = h.group_id("fin-readers").unwrap();
    let alice_asg = h
        .assignment_id("alice@contoso.com", "Finance Analysts")
        .unwrap();
    // The next request to /groups is throttled: only the matching inner item gets 429.
    h.inject_fault(FaultSpec::Throttle {
        retry_after: 1.5,
        scope: FaultScope {
            path_prefix: Some("/groups".into()),
            count: Some(1),
            ..Default::default()
        },
    });
    let body = json!({"requests": [
        {"id": "1", "method": "GET", "url": format!("/groups/{readers}/members?$select=id&$top=999")},
        {"id": "2", "method": "POST", "url": format!("/identityGovernance/entitlementManagement/assignments/{alice_asg}/reprocess")},
        {"id": "3", "method": "GET", "url": "/users/bob@contoso.com?$select=id"},
        {"id": "4", "method": "GET", "url": "/users/nobody@contoso.com"},
        {"id": "5", "method": "GET", "url": "/users/carol@contoso.com", "dependsOn": ["4"]},
    ]});
    let resp = c
        .post(format!("{}/v1.0/$batch", h.graph_url))
        .bearer_auth(&tok)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    let by_id = |id: &str| {
        v["responses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .clone()
    };
    let r1 = by_id("1");
    assert_eq!(r1["status"], 429);
    assert_eq!(r1["headers"]["retry-after"], "1.5");
    assert_eq!(r1["body"]["error"]["code"], "TooManyRequests");
    assert_eq!(by_id("2")["status"], 202);
    let r3 = by_id("3");
    assert_eq!(r3["status"], 200);
    assert_eq!(
        r3["body"]["id"],
        h.user_id("bob@contoso.com").unwrap().as_str()
    );
    assert!(r3["headers"]["request-id"].is_string());
    assert_eq!(by_id("4")["status"], 404);
    assert_eq!(by_id("5")["status"], 424);
    // Retrying the throttled item alone now works.
    let retry = json!({"requests": [{"id": "1", "method": "GET", "url": format!("{}/v1.0/groups/{readers}/members?$select=id", h.graph_url)}]});
    let v: Value = c
        .post(format!("{}/v1.0/$batch", h.graph_url))
        .bearer_auth(&tok)
        .json(&retry)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["responses"][0]["status"], 200);
    assert_eq!(
        v["responses"][0]["body"]["value"].as_array().unwrap().len(),
        2
    );
    // Inner requests are logged individually.
    assert!(
        h.request_log()
            .iter()
            .any(|l| l.batch && l.path.contains("/reprocess"))
    );

    // Malformed batches.
    let too_many: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/users/bob@contoso.com"}))
        .collect();
    for bad in [
        json!({"requests": too_many}),
        json!({"nope": []}),
        json!({"requests": [{"id": "1", "method": "GET"}]}),
        json!({"requests": [{"id": "1", "method": "GET", "url": "/a"}, {"id": "1", "method": "GET", "url": "/b"}]}),
    ] {
        let resp = c
            .post(format!("{}/v1.0/$batch", h.graph_url))
            .bearer_auth(&tok)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // Without a token the batch itself is refused.
    let v: Value = c
        .post(format!("{}/v1.0/$batch", h.graph_url))
        .json(&retry)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    h.shutdown().await;
}

#[tokio::test]
async fn injected_throttling_has_fractional_retry_after_and_graph_headers() {
    let (h, c, tok) = start().await;
    h.inject_fault(FaultSpec::Throttle {
        retry_after: 2.128,
        scope: FaultScope {
            path_prefix: Some("/identityGovernance".into()),
            count: Some(2),
            ..Default::default()
        },
    });
    for _ in 0..2 {
        let resp = c
            .get(format!("{}{EM}/assignments", h.graph_url))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "2.128");
        let scope = resp.headers()["x-ms-throttle-scope"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            scope.starts_with("Tenant_Application/ReadWrite/") && scope.ends_with(&h.tenant_id),
            "{scope}"
        );
        assert_eq!(
            resp.headers()["x-ms-throttle-information"],
            "ResourceUnitLimitExceeded"
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "TooManyRequests");
        assert_eq!(v["error"]["innerError"]["code"], "429");
        assert!(v["error"]["innerError"]["request-id"].is_string());
    }
    let resp = c
        .get(format!("{}{EM}/assignments", h.graph_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A time-window fault ends by itself.
    h.inject_fault(FaultSpec::Throttle {
        retry_after: 0.2,
        scope: FaultScope {
            duration_ms: Some(150),
            count: None,
            ..Default::default()
        },
    });
    let url = format!("{}/v1.0/users/bob@contoso.com", h.graph_url);
    assert_eq!(
        c.get(&url).bearer_auth(&tok).send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        c.get(&url).bearer_auth(&tok).send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        c.get(&url).bearer_auth(&tok).send().await.unwrap().status(),
        StatusCode::OK
    );
    h.shutdown().await;
}

#[tokio::test]
async fn ru_bucket_charges_documented_costs_and_throttles() {
    let (h, c, tok) = start().await;
    h.set_ru_bucket(Some(RuBucket {
        capacity: 10,
        window_ms: 10_000,
    }));
    let g = h.group_id("fin-readers").unwrap();
    let url = format!("{}/v1.0/groups/{g}/members", h.graph_url);
    for _ in 0..3 {
        let resp = c.get(&url).bearer_auth(&tok).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-ms-resource-unit"], "3");
    }
    let resp = c.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let ra: f64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ra > 0.0 && ra <= 3.0, "retry-after {ra}");
    // $select -1, $top<20 -1: a 1-RU read still fits in the remaining unit.
    let resp = c
        .get(format!("{url}?$select=id&$top=5"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-ms-resource-unit"], "1");
    assert_eq!(resp.status(), StatusCode::OK);
    // Entitlement management is not metered.
    let resp = c
        .get(format!("{}{EM}/catalogs", h.graph_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("x-ms-resource-unit").is_none());
    h.set_ru_bucket(None);
    assert_eq!(
        c.get(&url).bearer_auth(&tok).send().await.unwrap().status(),
        StatusCode::OK
    );
    h.shutdown().await;
}

#[tokio::test]
async fn https_with_the_generated_ca_and_msal_discovery() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    let opts = SimOptions {
        tls: Some(TlsOptions {
            ca_out: Some(ca_path.clone()),
        }),
        ..SimOptions::fast()
    };
    let h = Simulator::start(Scenario::demo(), opts).await.unwrap();
    assert!(h.graph_url.starts_with("https://127.0.0.1:"));
    assert!(h.env_exports().contains("export REDELIVER_CA_FILE="));
    let pem = std::fs::read(&ca_path).unwrap();
    assert_eq!(Some(String::from_utf8(pem.clone()).unwrap()), h.ca_pem);
    let c = Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap();

    let oidc: Value = c
        .get(format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            h.authority_host, h.tenant_id
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(oidc["token_endpoint"], h.token_url());
    assert_eq!(
        oidc["issuer"],
        format!("{}/{}/v2.0", h.authority_host, h.tenant_id)
    );
    assert!(oidc["authorization_endpoint"].is_string() && oidc["jwks_uri"].is_string());

    let authz = format!("{}/{}/oauth2/v2.0/authorize", h.authority_host, h.tenant_id);
    let inst: Value = c
        .get(format!("{}/common/discovery/instance", h.authority_host))
        .query(&[
            ("api-version", "1.1"),
            ("authorization_endpoint", authz.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        inst["tenant_discovery_endpoint"],
        format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            h.authority_host, h.tenant_id
        )
    );
    assert!(inst["metadata"][0]["aliases"].is_array());

    let t: Value = c
        .post(h.token_url())
        .form(&[
            ("client_id", h.client_id.as_str()),
            ("client_secret", h.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tok = t["access_token"].as_str().unwrap();
    let resp = c
        .get(format!("{}{EM}/accessPackages", h.graph_url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A client that does not trust the CA is refused.
    let strict = Client::builder().tls_certs_only([]).build().unwrap();
    assert!(
        strict
            .get(format!("{}/_sim/health", h.graph_url))
            .send()
            .await
            .is_err()
    );
    h.shutdown().await;
}

#[tokio::test]
async fn group_delta_reports_additions_and_removals_since_the_token() {
    let (h, c, tok) = start().await;
    let readers = h.group_id("fin-readers").unwrap();
    let writers = h.group_id("fin-writers").unwrap();
    let get = |url: String| {
        let c = c.clone();
        let tok = tok.clone();
        async move {
            let r = c.get(url).bearer_auth(tok).send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let first = format!(
        "{}/v1.0/groups/delta?$select=members&$filter=id eq '{readers}' or id eq '{writers}'",
        h.graph_url
    );
    let (status, body) = get(first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let groups = body["value"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    let readers_members =
        groups.iter().find(|g| g["id"] == readers.as_str()).unwrap()["members@delta"]
            .as_array()
            .unwrap()
            .len();
    assert_eq!(readers_members, 2, "alice and bob");
    let delta_link = body["@odata.deltaLink"].as_str().unwrap().to_string();
    assert!(delta_link.contains("$deltatoken="));

    // Nothing changed yet.
    let (_, body) = get(delta_link.clone()).await;
    assert_eq!(body["value"], json!([]));

    h.remove_member("fin-readers", "bob@contoso.com").unwrap();
    h.add_member("fin-writers", "carol@contoso.com").unwrap();
    h.remove_member("eng-tools", "dave@contoso.com").unwrap(); // not a member; not filtered anyway
    let (_, body) = get(delta_link).await;
    let groups = body["value"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{body}");
    let r = groups.iter().find(|g| g["id"] == readers.as_str()).unwrap();
    assert_eq!(
        r["members@delta"][0]["id"],
        h.user_id("bob@contoso.com").unwrap().as_str()
    );
    assert_eq!(r["members@delta"][0]["@removed"]["reason"], "deleted");
    let w = groups.iter().find(|g| g["id"] == writers.as_str()).unwrap();
    assert_eq!(
        w["members@delta"][0]["id"],
        h.user_id("carol@contoso.com").unwrap().as_str()
    );
    assert!(w["members@delta"][0].get("@removed").is_none());
    assert!(body["@odata.deltaLink"].is_string());

    let (_, body) = get(format!(
        "{}/v1.0/groups/delta?$select=members&$deltatoken=latest",
        h.graph_url
    ))
    .await;
    assert_eq!(body["value"], json!([]));
    assert!(
        body["@odata.deltaLink"]
            .as_str()
            .unwrap()
            .contains("$deltatoken=")
    );

    // A delta link older than 7 days (simulated) asks for a full resync.
    let (_, body) = get(first.clone()).await;
    let stale = body["@odata.deltaLink"].as_str().unwrap().to_string();
    h.advance_clock(Duration::from_secs(8 * 24 * 3600));
    let tok2 = h.mint_token();
    let resp = c.get(&stale).bearer_auth(&tok2).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
            .contains("/v1.0/groups/delta?")
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "resyncRequired");
    let get = |url: String| {
        let c = c.clone();
        let tok = tok2.clone();
        async move {
            let r = c.get(url).bearer_auth(tok).send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap())
        }
    };

    let many: Vec<String> = (0..51)
        .map(|i| format!("id eq '00000000-0000-4000-8000-{i:012}'"))
        .collect();
    let (status, body) = get(format!(
        "{}/v1.0/groups/delta?$select=members&$filter={}",
        h.graph_url,
        many.join(" or ")
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "Request_UnsupportedQuery");
    h.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_faults_only_when_targeted_and_every_response_is_correlated() {
    let (h, c, tok) = start().await;
    let form = [
        ("client_id", h.client_id.clone()),
        ("client_secret", h.client_secret.clone()),
        ("scope", "https://graph.microsoft.com/.default".to_string()),
        ("grant_type", "client_credentials".to_string()),
    ];
    // An untargeted fault hits Graph, not the token endpoint.
    h.inject_fault(FaultSpec::Error {
        status: 503,
        retry_after: None,
        scope: FaultScope::default(),
    });
    let resp = c.post(h.token_url()).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("request-id"));
    let resp = c
        .get(format!("{}/v1.0/users/bob@contoso.com", h.graph_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    h.inject_fault(FaultSpec::Throttle {
        retry_after: 0.5,
        scope: FaultScope {
            path_prefix: Some("/oauth2".into()),
            ..Default::default()
        },
    });
    let resp = c
        .post(h.token_url())
        .form(&form)
        .header("client-request-id", "tok-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "0.5");
    assert_eq!(resp.headers()["client-request-id"], "tok-1");
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS")
    );
    assert_eq!(
        c.post(h.token_url())
            .form(&form)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let resp = c
        .get(format!("{}/health", h.admin_url))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("request-id"));
    assert_eq!(
        h.count_requests("POST", "/"),
        3,
        "token requests are logged"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_all_served_and_counted() {
    let (h, c, tok) = start().await;
    let g = h.group_id("fin-readers").unwrap();
    let url = format!("{}/v1.0/groups/{g}/members?$select=id", h.graph_url);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (c, url, tok) = (c.clone(), url.clone(), tok.clone());
            tokio::spawn(async move { c.get(url).bearer_auth(tok).send().await.unwrap().status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.counters()[&format!("GET /v1.0/groups/{g}/members")], 100);
    let ids: std::collections::HashSet<String> =
        h.request_log().into_iter().map(|l| l.request_id).collect();
    assert_eq!(ids.len(), 100, "every response has its own request-id");
    h.shutdown().await;
}

/// The latency model over real HTTP: each class waits its delay (only lower bounds are
/// asserted, so a busy machine cannot fail it), a `$batch` waits for its longest
/// `dependsOn` chain, and the admin API sets, shows and clears the model.
#[tokio::test]
async fn the_latency_model_delays_each_route_class_and_a_batch_by_its_longest_chain() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = SimOptions {
        latency: "directory=300ms".parse().unwrap(),
        ..SimOptions::fast()
    };
    let h = Simulator::start(Scenario::demo(), opts).await.unwrap();
    let c = Client::new();
    let tok = h.mint_token();
    let ms = Duration::from_millis;

    let t0 = std::time::Instant::now();
    let resp = c
        .get(format!(
            "{}/v1.0/users/bob@contoso.com?$select=id",
            h.graph_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(t0.elapsed() >= ms(300), "{:?}", t0.elapsed());

    // Two chained directory reads: the batch waits for both, one after the other.
    let body = json!({"requests": [
        {"id": "1", "method": "GET", "url": "/users/bob@contoso.com?$select=id"},
        {"id": "2", "method": "GET", "url": "/users/carol@contoso.com?$select=id", "dependsOn": ["1"]},
        {"id": "3", "method": "GET", "url": "/users/alice@contoso.com?$select=id"},
    ]});
    let t0 = std::time::Instant::now();
    let v: Value = c
        .post(format!("{}/v1.0/$batch", h.graph_url))
        .bearer_auth(&tok)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(t0.elapsed() >= ms(600), "{:?}", t0.elapsed());
    let statuses: Vec<&Value> = v["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(statuses, [&json!(200), &json!(200), &json!(200)]);

    // Through the admin API: a bad model names its bad part; a good one applies to the
    // token endpoint; GET shows it; DELETE turns it off.
    let resp = c
        .put(format!("{}/latency", h.admin_url))
        .json(&json!({"model": "token=250ms,graph=1s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("graph=1s"));
    let resp = c
        .put(format!("{}/latency", h.admin_url))
        .json(&json!({"model": "token=250ms, em=10ms±5ms"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let shown: Value = c
        .get(format!("{}/latency", h.admin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["model"], "em=10ms±5ms,token=250ms");
    let t0 = std::time::Instant::now();
    let resp = c
        .post(h.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", h.client_id.as_str()),
            ("client_secret", h.client_secret.as_str()),
            ("scope", &format!("{}/.default", h.graph_url)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(t0.elapsed() >= ms(250), "{:?}", t0.elapsed());
    let resp = c
        .delete(format!("{}/latency", h.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let shown: Value = c
        .get(format!("{}/latency", h.admin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["model"], "off");
    h.shutdown().await;
}

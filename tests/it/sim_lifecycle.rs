//! Assignment lifecycle against the simulator over real HTTP: adminAdd delivery,
//! reprocess after an outside change, reprocess preconditions, the request reprocess
//! window, silent failures, adminRemove and the admin API.

use std::time::{Duration, Instant};

use redeliver_sim::{FaultSpec, Scenario, SimHandle, SimOptions, Simulator};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const EM: &str = "/v1.0/identityGovernance/entitlementManagement";
const FINANCE: &str = "9f1c0c7e-0000-4000-8000-000000000001";
const FINANCE_POLICY: &str = "2264bf65-76ba-417b-a27d-54d291f0cb01";
const ENG: &str = "9f1c0c7e-0000-4000-8000-000000000002";

struct Env {
    h: SimHandle,
    c: Client,
    tok: String,
}

impl Env {
    async fn start() -> Env {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let h = Simulator::start(Scenario::demo(), SimOptions::fast())
            .await
            .unwrap();
        let c = Client::new();
        let tok = h.mint_token();
        Env { h, c, tok }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.h.graph_url)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .c
            .get(self.url(path))
            .bearer_auth(&self.tok)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut rb = self.c.post(self.url(path)).bearer_auth(&self.tok);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// A request to the simulator's admin API (which takes no token).
    fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.c
            .request(method, format!("{}{path}", self.h.admin_url))
    }

    async fn assignment_of(&self, user: &str, pkg: &str) -> Option<Value> {
        let oid = self.h.user_id(user).unwrap();
        let (_, body) = self
            .get(&format!("{EM}/assignments?$filter=accessPackage/id eq '{pkg}' and target/objectid eq '{oid}'"))
            .await;
        body["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["state"] != "expired")
            .cloned()
    }
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn admin_add_progresses_to_delivered_with_real_memberships() {
    let e = Env::start().await;
    let carol = e.h.user_id("carol@contoso.com").unwrap();
    let body = json!({"requestType": "adminAdd", "assignment": {
        "targetId": carol, "assignmentPolicyId": FINANCE_POLICY, "accessPackageId": FINANCE}});
    let (status, created) = e
        .post(&format!("{EM}/assignmentRequests"), Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["state"], "submitted");
    assert_eq!(created["status"], "Accepted");
    assert_eq!(created["requestType"], "adminAdd");
    let rid = created["id"].as_str().unwrap().to_string();

    // A second identical request while the first is open is refused.
    let (status, err) = e
        .post(&format!("{EM}/assignmentRequests"), Some(body))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"]["code"].is_string());

    eventually("request delivered", async || {
        e.get(&format!("{EM}/assignmentRequests/{rid}")).await.1["state"] == "delivered"
    })
    .await;
    let a = e.assignment_of("carol@contoso.com", FINANCE).await.unwrap();
    assert_eq!(a["state"], "delivered");
    assert!(e.h.is_member("fin-readers", "carol@contoso.com"));
    assert!(e.h.is_member("fin-writers", "carol@contoso.com"));
    let sp = e.h.service_principal_id("Payroll").unwrap();
    let (_, roles) = e
        .get(&format!("/v1.0/servicePrincipals/{sp}/appRoleAssignedTo"))
        .await;
    assert!(
        roles["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["principalId"] == carol.as_str())
    );
    let (_, req) = e
        .get(&format!("{EM}/assignmentRequests/{rid}?$expand=assignment"))
        .await;
    assert_eq!(req["assignment"]["id"], a["id"]);
    assert!(req["completedDateTime"].is_string());

    // Now bob already holds the package: duplicate.
    let bob = e.h.user_id("bob@contoso.com").unwrap();
    let (status, _) = e
        .post(
            &format!("{EM}/assignmentRequests"),
            Some(json!({"requestType": "adminAdd", "assignment": {
            "targetId": bob, "assignmentPolicyId": FINANCE_POLICY, "accessPackageId": FINANCE}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Policy of another package, unknown user.
    let eng_policy = e.h.policy_id("Engineering Tools", None).unwrap();
    let (status, err) = e
        .post(
            &format!("{EM}/assignmentRequests"),
            Some(json!({"requestType": "adminAdd", "assignment": {
            "targetId": carol, "assignmentPolicyId": eng_policy, "accessPackageId": FINANCE}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not belong")
    );
    let (status, _) = e
        .post(&format!("{EM}/assignmentRequests"), Some(json!({"requestType": "adminAdd", "assignment": {
            "targetId": "00000000-0000-4000-8000-00000000beef", "assignmentPolicyId": FINANCE_POLICY, "accessPackageId": FINANCE}})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    e.h.shutdown().await;
}

#[tokio::test]
async fn admin_remove_revokes_memberships_and_expires_the_assignment() {
    let e = Env::start().await;
    let a = e.assignment_of("bob@contoso.com", FINANCE).await.unwrap();
    let (status, _) = e
        .post(
            &format!("{EM}/assignmentRequests"),
            Some(json!({"requestType": "adminRemove", "assignment": {"id": a["id"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let aid = a["id"].as_str().unwrap().to_string();
    eventually("assignment expired", async || {
        e.get(&format!("{EM}/assignments/{aid}")).await.1["state"] == "expired"
    })
    .await;
    assert!(!e.h.is_member("fin-readers", "bob@contoso.com"));
    // alice still holds fin-readers through her own assignment.
    assert!(e.h.is_member("fin-readers", "alice@contoso.com"));
    e.h.shutdown().await;
}

#[tokio::test]
async fn reprocess_restores_an_outside_removal() {
    let e = Env::start().await;
    // The demo drift: alice lost fin-writers by hand. Remove her app role too.
    assert!(!e.h.is_member("fin-writers", "alice@contoso.com"));
    assert_eq!(
        e.h.remove_app_role("Payroll", "alice@contoso.com", None)
            .unwrap(),
        1
    );
    let a = e.assignment_of("alice@contoso.com", FINANCE).await.unwrap();
    assert_eq!(a["state"], "delivered", "Graph still says delivered");
    let aid = a["id"].as_str().unwrap().to_string();
    let mut missing = e.h.missing_resources(&aid);
    missing.sort();
    assert_eq!(missing, vec!["Payroll", "fin-writers"]);

    let (status, body) = e
        .post(&format!("{EM}/assignments/{aid}/reprocess"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(e.h.pending_work(), 1);
    assert!(e.h.settle(Duration::from_secs(5)).await);
    assert!(e.h.missing_resources(&aid).is_empty());
    assert!(e.h.is_member("fin-writers", "alice@contoso.com"));
    assert_eq!(e.h.assignment_state(&aid).as_deref(), Some("delivered"));
    assert_eq!(
        e.h.count_requests("POST", &format!("{EM}/assignments/{aid}/reprocess")),
        1
    );
    e.h.shutdown().await;
}

#[tokio::test]
async fn reprocess_preconditions_and_silent_failure() {
    let e = Env::start().await;
    let dave = e.assignment_of("dave@contoso.com", ENG).await.unwrap();
    assert_eq!(dave["state"], "deliveryFailed");
    let (status, body) = e
        .post(
            &format!(
                "{EM}/assignments/{}/reprocess",
                dave["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "BadRequest");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deliveryFailed")
    );
    let (status, _) = e
        .post(
            &format!("{EM}/assignments/00000000-0000-4000-8000-000000000000/reprocess"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = e
        .post(&format!("{EM}/assignments/nope/reprocess"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Silent failure: accepted, nothing restored.
    let aid =
        e.h.assignment_id("alice@contoso.com", "Finance Analysts")
            .unwrap();
    e.h.inject_fault(FaultSpec::SilentReprocess {
        assignment_ids: vec![aid.clone()],
        request_ids: vec![],
    });
    let (status, _) = e
        .post(&format!("{EM}/assignments/{aid}/reprocess"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A reprocess that worked would have taken effect once the background work is done.
    assert!(
        e.h.settle(Duration::from_secs(10)).await,
        "the simulator settles"
    );
    assert_eq!(e.h.missing_resources(&aid), vec!["fin-writers"]);
    e.h.clear_faults();
    let (status, _) = e
        .post(&format!("{EM}/assignments/{aid}/reprocess"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually("restored after the fault is cleared", async || {
        e.h.missing_resources(&aid).is_empty()
    })
    .await;
    e.h.shutdown().await;
}

#[tokio::test]
async fn failed_request_reprocess_delivers_within_the_window_only() {
    let mut e = Env::start().await;
    let (_, body) = e.get(&format!("{EM}/assignmentRequests?$filter=accessPackage/id eq '{ENG}' and state eq 'deliveryFailed'")).await;
    let rid = body["value"][0]["id"].as_str().unwrap().to_string();

    // Outside the 14-day window: refused.
    e.h.set_request_state(&rid, "deliveryFailed", Some("15d"))
        .unwrap();
    let (status, body) = e
        .post(&format!("{EM}/assignmentRequests/{rid}/reprocess"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Inside: accepted, then delivered with the membership.
    e.h.set_request_state(&rid, "deliveryFailed", Some("2h"))
        .unwrap();
    let (status, _) = e
        .post(&format!("{EM}/assignmentRequests/{rid}/reprocess"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Now delivering: a second reprocess is refused.
    let (status, _) = e
        .post(&format!("{EM}/assignmentRequests/{rid}/reprocess"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    eventually("request delivered", async || {
        e.h.request_state(&rid).as_deref() == Some("delivered")
    })
    .await;
    let a = e.assignment_of("dave@contoso.com", ENG).await.unwrap();
    assert_eq!(a["state"], "delivered");
    assert!(e.h.is_member("eng-tools", "dave@contoso.com"));

    // Delivered requests cannot be reprocessed; unknown ones are 404.
    let (status, _) = e
        .post(&format!("{EM}/assignmentRequests/{rid}/reprocess"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = e
        .post(
            &format!("{EM}/assignmentRequests/00000000-0000-4000-8000-000000000000/reprocess"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Simulated time also closes the window.
    e.h.reset().unwrap();
    e.h.advance_clock(Duration::from_secs(15 * 24 * 3600));
    e.tok = e.h.mint_token(); // the old one expired with the jump
    let (status, _) = e
        .post(&format!("{EM}/assignmentRequests/{rid}/reprocess"), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    e.h.shutdown().await;
}

/// The body of `request`'s answer, as JSON.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn admin_http_api_changes_state_and_reports_requests() {
    let e = Env::start().await;
    memberships_and_app_roles_change(&e).await;
    let aid = an_assignment_state_is_set(&e).await;
    faults_are_injected_and_requests_reported(&e).await;

    let state = json_of(e.admin(Method::GET, "/state")).await;
    let alice = state["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["user"] == "alice@contoso.com")
        .unwrap();
    assert_eq!(alice["missing"], json!(["fin-writers"]));

    let r = e.admin(Method::POST, "/reset").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(e.h.assignment_state(&aid).as_deref(), Some("delivered"));
    assert!(e.h.request_log().is_empty());
    // Tokens survive a reset.
    assert_eq!(e.get("/v1.0/users/bob@contoso.com").await.0, StatusCode::OK);

    let r = json_of(
        e.admin(Method::POST, "/clock/advance")
            .json(&json!({"by": "2h"})),
    )
    .await;
    assert_eq!(r["offsetSeconds"], 7200);
    e.h.shutdown().await;
}

/// Group members removed and added (an unknown group is a 404), an app role assignment
/// removed.
async fn memberships_and_app_roles_change(e: &Env) {
    let r = e
        .admin(
            Method::DELETE,
            "/groups/fin-readers/members/bob@contoso.com",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["changed"], true);
    assert!(!e.h.is_member("fin-readers", "bob@contoso.com"));
    let r = json_of(
        e.admin(Method::POST, "/groups/fin-readers/members")
            .json(&json!({"user": "bob@contoso.com"})),
    )
    .await;
    assert_eq!(r["changed"], true);
    let r = e
        .admin(
            Method::DELETE,
            "/groups/no-such-group/members/bob@contoso.com",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = json_of(e.admin(
        Method::DELETE,
        "/servicePrincipals/Payroll/appRoleAssignedTo/bob@contoso.com?appRole=Payroll.Read",
    ))
    .await;
    assert_eq!(r["removed"], 1);
}

/// bob's Finance assignment set to `deliveryFailed`, as Graph then reads it; returns its id.
async fn an_assignment_state_is_set(e: &Env) -> String {
    let aid =
        e.h.assignment_id("bob@contoso.com", "Finance Analysts")
            .unwrap();
    let r = e
        .admin(Method::PUT, &format!("/assignments/{aid}/state"))
        .json(&json!({"state": "deliveryFailed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, a) = e.get(&format!("{EM}/assignments/{aid}")).await;
    assert_eq!(a["state"], "deliveryFailed");
    assert_eq!(a["status"], "DeliveryFailed");
    aid
}

/// A 503 for the next two entitlement-management calls, injected over HTTP; the request
/// log and the per-route counters report what was sent.
async fn faults_are_injected_and_requests_reported(e: &Env) {
    let r = json_of(e.admin(Method::POST, "/faults").json(&json!({"kind": "error", "status": 503, "count": 2, "retryAfter": 1, "pathPrefix": "/identityGovernance"}))).await;
    assert!(r["id"].is_u64());
    let resp =
        e.c.get(e.url(&format!("{EM}/assignments")))
            .bearer_auth(&e.tok)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(
        e.get(&format!("{EM}/catalogs")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(e.get(&format!("{EM}/catalogs")).await.0, StatusCode::OK);
    assert_eq!(e.get("/v1.0/users/bob@contoso.com").await.0, StatusCode::OK);

    let log = json_of(e.admin(Method::GET, "/requests")).await;
    let entries = log["value"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|l| l["status"] == 503 && l["path"].as_str().unwrap().ends_with("/assignments"))
    );
    let users = entries
        .iter()
        .find(|l| l["path"] == "/v1.0/users/bob@contoso.com")
        .unwrap();
    assert_eq!(users["ru"], 2);
    assert!(users["timeMs"].is_u64());
    let counters = json_of(e.admin(Method::GET, "/counters")).await;
    assert_eq!(counters[format!("GET {EM}/catalogs")], 2);
}

#[tokio::test]
async fn delivery_outcome_faults_fail_stick_or_partially_deliver_new_requests() {
    let e = Env::start().await;
    let eng_policy = e.h.policy_id("Engineering Tools", None).unwrap();
    let add = async |user: &str, pkg: &str, policy: &str| {
        let oid = e.h.user_id(user).unwrap();
        let (status, body) = e
            .post(
                &format!("{EM}/assignmentRequests"),
                Some(json!({"requestType": "adminAdd", "assignment": {
                    "targetId": oid, "assignmentPolicyId": policy, "accessPackageId": pkg}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    };

    // Failed delivery, then repaired by reprocessing the request.
    e.h.inject_fault(FaultSpec::FailDelivery { count: 1 });
    let rid = add("carol@contoso.com", FINANCE, FINANCE_POLICY).await;
    eventually("request failed", async || {
        e.h.request_state(&rid).as_deref() == Some("deliveryFailed")
    })
    .await;
    let a = e.assignment_of("carol@contoso.com", FINANCE).await.unwrap();
    assert_eq!(a["state"], "deliveryFailed");
    assert!(!e.h.is_member("fin-readers", "carol@contoso.com"));
    let (status, _) = e
        .post(&format!("{EM}/assignmentRequests/{rid}/reprocess"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually("request delivered", async || {
        e.h.request_state(&rid).as_deref() == Some("delivered")
    })
    .await;
    assert!(e.h.is_member("fin-readers", "carol@contoso.com"));

    // Partial delivery: the first group is missing.
    e.h.inject_fault(FaultSpec::PartialDelivery { count: 1 });
    let rid = add("bob@contoso.com", ENG, &eng_policy).await;
    eventually("partially delivered", async || {
        e.h.request_state(&rid).as_deref() == Some("partiallyDelivered")
    })
    .await;
    assert!(!e.h.is_member("eng-tools", "bob@contoso.com"));

    // Stuck: stays delivering once every processing step has run.
    e.h.inject_fault(FaultSpec::StuckDelivery { count: 1 });
    let rid = add("alice@contoso.com", ENG, &eng_policy).await;
    assert!(
        e.h.settle(Duration::from_secs(10)).await,
        "the simulator settles"
    );
    assert_eq!(e.h.request_state(&rid).as_deref(), Some("delivering"));
    let a = e.assignment_of("alice@contoso.com", ENG).await.unwrap();
    assert_eq!(a["state"], "delivering");
    e.h.shutdown().await;
}

//! The Graph client over real HTTP against small hand-rolled Graph/Entra emulators on
//! 127.0.0.1 (random ports). Each test scripts the server's answers and asserts on what
//! the server saw and what the client returned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use redeliver::graph::models::{RequestState, RequestType};
use redeliver::graph::{GraphClient, GraphConfig, GraphError, GraphSettings, Secret};

const TENANT: &str = "tenant-1";
const TOKEN_PATH: &str = "/tenant-1/oauth2/v2.0/token";
const SECRET: &str = "s3cr3t-value";

/// One request as the fake server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: String,
    at: Instant,
}

impl Seen {
    fn bearer(&self) -> Option<&str> {
        self.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    }

    fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }

    fn form_value(&self, key: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn query_param(&self, key: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// A scripted answer.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Answer {
    fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    fn raw(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Script = dyn Fn(&Seen, &FakeState) -> Answer + Send + Sync;

#[derive(Default)]
struct FakeState {
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    tokens_issued: AtomicUsize,
}

impl FakeState {
    /// Requests so far to paths other than the token endpoint.
    fn graph_requests(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path != TOKEN_PATH)
            .cloned()
            .collect()
    }
    fn token_requests(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == TOKEN_PATH)
            .cloned()
            .collect()
    }
    /// Number of earlier requests (this one excluded) to `path`.
    fn prior(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
            - 1
    }
    /// A standard token answer: `tok-1`, `tok-2`, ... with the given lifetime.
    fn issue_token(&self, expires_in: u64) -> Answer {
        let n = self.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        Answer::json(
            200,
            serde_json::json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": format!("tok-{n}")}),
        )
    }
}

struct Fake {
    base: String,
    state: Arc<FakeState>,
}

async fn start(script: impl Fn(&Seen, &FakeState) -> Answer + Send + Sync + 'static) -> Fake {
    let state = Arc::new(FakeState::default());
    let script: Arc<Script> = Arc::new(script);
    let st = state.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let st = st.clone();
        let script = script.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let seen = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().map(str::to_string),
                headers: parts.headers.clone(),
                body: String::from_utf8_lossy(&body).into_owned(),
                at: Instant::now(),
            };
            let n = {
                let mut log = st.seen.lock().unwrap();
                log.push(seen.clone());
                log.len()
            };
            let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            st.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let answer = script(&seen, &st);
            if !answer.delay.is_zero() {
                tokio::time::sleep(answer.delay).await;
            }
            st.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut resp = Response::builder()
                .status(StatusCode::from_u16(answer.status).unwrap())
                .header("request-id", format!("rid-{n}"));
            for (k, v) in answer.headers {
                resp = resp.header(k, v);
            }
            resp.body(Body::from(answer.body)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Fake {
        base: format!("http://{addr}"),
        state,
    }
}

fn args(fake: &Fake) -> GraphSettings {
    GraphSettings {
        tenant_id: Some(TENANT.into()),
        client_id: Some("client-1".into()),
        client_secret: Some(Secret::new(SECRET)),
        graph_url: format!("{}/", fake.base),
        authority_host: format!("{}/", fake.base),
        ..GraphSettings::with_defaults()
    }
}

fn fast(mut c: GraphConfig) -> GraphConfig {
    c.backoff_base = Duration::from_millis(10);
    c.backoff_cap = Duration::from_millis(40);
    c
}

fn client(fake: &Fake) -> GraphClient {
    GraphClient::new(fast(args(fake).validate().unwrap())).unwrap()
}

fn graph_error(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message,
        "innerError": {"date": "2025-03-01T10:00:00", "request-id": "inner-rid", "client-request-id": "x"}}})
}

#[tokio::test]
async fn paging_follows_absolute_next_links_and_caches_the_token() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        let host = seen.headers["host"].to_str().unwrap().to_string();
        let next = |tok: &str| format!("http://{host}/v1.0/groups/g1/members?$select=id&$top=999&$skiptoken={tok}");
        match seen.query_param("$skiptoken").as_deref() {
            None => Answer::json(200, serde_json::json!({
                "@odata.context": "x", "value": [{"@odata.type": "#microsoft.graph.user", "id": "u1"}, {"id": "u2"}],
                "@odata.nextLink": next("p2")})),
            Some("p2") => Answer::json(200, serde_json::json!({"value": [], "@odata.nextLink": next("p3")})),
            Some("p3") => Answer::json(200, serde_json::json!({"value": [{"id": "u3"}]})),
            Some(other) => Answer::json(400, graph_error("Request_BadRequest", &format!("bad token {other}"))),
        }
    })
    .await;
    let c = client(&fake);
    let ids = c.list_group_members("g1").await.unwrap();
    assert_eq!(ids, vec!["u1", "u2", "u3"]);

    let reqs = fake.state.graph_requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].path, "/v1.0/groups/g1/members");
    assert_eq!(reqs[0].query.as_deref(), Some("$select=id&$top=999"));
    // The nextLink is followed verbatim.
    assert_eq!(
        reqs[1].query.as_deref(),
        Some("$select=id&$top=999&$skiptoken=p2")
    );
    for r in &reqs {
        assert_eq!(r.bearer(), Some("tok-1"));
        let crid = r.headers["client-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(crid).is_ok(), "{crid}");
    }
    // A second listing reuses the cached token.
    c.list_group_owners("g1").await.unwrap();
    assert_eq!(fake.state.token_requests().len(), 1);
    let stats = c.stats();
    let members = stats
        .iter()
        .find(|s| s.operation == "list_group_members")
        .unwrap();
    assert_eq!(
        (members.requests, members.retries, members.failures),
        (3, 0, 0)
    );
}

#[tokio::test]
async fn token_request_carries_the_documented_form_fields() {
    let fake = start(|seen, st| {
        assert_eq!(seen.path, TOKEN_PATH);
        st.issue_token(3599)
    })
    .await;
    let c = client(&fake);
    c.check_token().await.unwrap();
    let t = &fake.state.token_requests()[0];
    assert_eq!(t.method, "POST");
    assert_eq!(
        t.headers["content-type"].to_str().unwrap(),
        "application/x-www-form-urlencoded"
    );
    assert_eq!(t.form_value("client_id").as_deref(), Some("client-1"));
    assert_eq!(
        t.form_value("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(t.form_value("client_secret").as_deref(), Some(SECRET));
    assert_eq!(
        t.form_value("scope"),
        Some(format!("{}/.default", fake.base))
    );
    assert_eq!(t.form_value("client_assertion"), None);
}

#[tokio::test]
async fn throttling_honours_fractional_retry_after() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        if st.prior(&seen.path) == 0 {
            Answer::json(
                429,
                graph_error("TooManyRequests", "Please retry again later."),
            )
            .header("retry-after", "0.75")
        } else {
            Answer::json(
                200,
                serde_json::json!({"value": [{"appRoleId": "r1", "principalId": "u1"}]}),
            )
        }
    })
    .await;
    let c = client(&fake);
    let got = c.list_app_role_assignments("sp1").await.unwrap();
    assert_eq!(got[0].principal_id, "u1");
    let reqs = fake.state.graph_requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(750),
        "resent after only {gap:?}"
    );
    // A fresh client-request-id per attempt.
    assert_ne!(
        reqs[0].headers["client-request-id"],
        reqs[1].headers["client-request-id"]
    );
    let s = c
        .stats()
        .into_iter()
        .find(|s| s.operation == "list_app_role_assignments")
        .unwrap();
    assert_eq!((s.requests, s.retries, s.throttled), (2, 1, 1));
}

#[tokio::test]
async fn throttling_exhausted_and_long_waits_surface_retry_after() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        let after = if seen.path.contains("g-long") {
            "3600"
        } else {
            "0.05"
        };
        Answer::json(429, graph_error("TooManyRequests", "slow down")).header("retry-after", after)
    })
    .await;
    let mut a = args(&fake);
    a.max_retries = 2;
    let c = GraphClient::new(fast(a.validate().unwrap())).unwrap();

    let e = c.list_group_members("g-short").await.unwrap_err();
    assert_eq!(e.kind(), "throttled");
    assert_eq!(e.retry_after(), Some(Duration::from_millis(50)));
    assert!(e.request_id().unwrap().starts_with("rid-"));
    assert_eq!(fake.state.graph_requests().len(), 3, "1 try + 2 retries");

    // A wait longer than the client will sleep through is handed back at once.
    let started = Instant::now();
    let e = c.list_group_members("g-long").await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3600)));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(fake.state.graph_requests().len(), 4);
}

#[tokio::test]
async fn server_errors_are_retried_for_reads_but_not_for_creates() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        if seen.method == "GET" {
            match st.prior(&seen.path) {
                0 => Answer::raw(503, "upstream unavailable"),
                1 => Answer::json(504, graph_error("GatewayTimeout", "try later")),
                _ => Answer::json(
                    200,
                    serde_json::json!({"id": "u1", "userPrincipalName": "alice@contoso.com"}),
                ),
            }
        } else {
            Answer::json(504, graph_error("GatewayTimeout", "maybe processed"))
        }
    })
    .await;
    let c = client(&fake);
    let user = c.get_user("u1").await.unwrap().unwrap();
    assert_eq!(
        user.user_principal_name.as_deref(),
        Some("alice@contoso.com")
    );
    assert_eq!(fake.state.graph_requests().len(), 3);

    let e = c.request_assignment("p1", "pol1", "u1").await.unwrap_err();
    match &e {
        GraphError::Server { status, code, .. } => {
            assert_eq!(*status, 504);
            assert_eq!(code, "GatewayTimeout");
        }
        other => panic!("expected Server, got {other:?}"),
    }
    let posts: Vec<_> = fake
        .state
        .graph_requests()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(
        posts.len(),
        1,
        "a create that may have been processed is not resent"
    );
}

#[tokio::test]
async fn create_request_sends_documented_body_and_retries_on_429() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        if st.prior(&seen.path) == 0 {
            return Answer::json(429, graph_error("TooManyRequests", "later"))
                .header("retry-after", "0.1");
        }
        Answer::json(
            201,
            serde_json::json!({"id": "req-1", "requestType": "adminAdd", "state": "submitted",
            "status": "Accepted", "createdDateTime": null, "completedDateTime": null}),
        )
    })
    .await;
    let c = client(&fake);
    let r = c.request_assignment("p1", "pol1", "u1").await.unwrap();
    assert_eq!(r.id, "req-1");
    assert_eq!(r.request_type, RequestType::AdminAdd);
    assert_eq!(r.state, RequestState::Submitted);
    let reqs = fake.state.graph_requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].path,
        "/v1.0/identityGovernance/entitlementManagement/assignmentRequests"
    );
    let body: serde_json::Value = serde_json::from_str(&reqs[1].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"requestType": "adminAdd", "assignment": {"targetId": "u1",
            "assignmentPolicyId": "pol1", "accessPackageId": "p1"}})
    );
    assert_eq!(
        reqs[1].headers["content-type"].to_str().unwrap(),
        "application/json"
    );
}

#[tokio::test]
async fn reprocess_posts_without_body_and_accepts_202() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        if seen.path.contains("missing") {
            return Answer::json(404, graph_error("NotFound", "no such assignment"));
        }
        Answer::raw(202, "")
    })
    .await;
    let c = client(&fake);
    c.reprocess_assignment("a1").await.unwrap();
    c.reprocess_request("r1").await.unwrap();
    let reqs = fake.state.graph_requests();
    assert_eq!(
        reqs[0].path,
        "/v1.0/identityGovernance/entitlementManagement/assignments/a1/reprocess"
    );
    assert_eq!(
        reqs[1].path,
        "/v1.0/identityGovernance/entitlementManagement/assignmentRequests/r1/reprocess"
    );
    assert!(reqs.iter().all(|r| r.method == "POST" && r.body.is_empty()));
    assert!(reqs[0].headers.get("content-type").is_none());

    let e = c.reprocess_assignment("missing").await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(e.code(), Some("NotFound"));
}

#[tokio::test]
async fn token_is_refreshed_on_expiry_and_after_a_401() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            // 2 s lifetime: refreshed 0.2 s before expiry.
            return st.issue_token(2);
        }
        // The server has "revoked" tok-2: only tok-1 and tok-3+ are accepted.
        if seen.bearer() == Some("tok-2") {
            return Answer::json(
                401,
                graph_error("InvalidAuthenticationToken", "Access token has expired"),
            );
        }
        Answer::json(200, serde_json::json!({"value": []}))
    })
    .await;
    let c = client(&fake);
    c.list_group_members("g1").await.unwrap();
    c.list_group_members("g1").await.unwrap();
    assert_eq!(fake.state.token_requests().len(), 1, "cached");

    // The cache runs on tokio's clock: let the token age past its refresh point at once.
    crate::clock::skip(Duration::from_millis(1900)).await;
    // Expired → tok-2 → 401 → dropped → tok-3 → success.
    c.list_group_members("g1").await.unwrap();
    assert_eq!(fake.state.token_requests().len(), 3);
    let bearers: Vec<_> = fake
        .state
        .graph_requests()
        .iter()
        .map(|r| r.bearer().unwrap_or_default().to_string())
        .collect();
    assert_eq!(bearers, vec!["tok-1", "tok-1", "tok-2", "tok-3"]);
}

#[tokio::test]
async fn persistent_401_fails_after_one_refresh() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        Answer::json(
            401,
            graph_error("InvalidAuthenticationToken", "wrong audience"),
        )
    })
    .await;
    let c = client(&fake);
    let e = c.list_assignments("p1").await.unwrap_err();
    assert_eq!(e.kind(), "unauthorized");
    assert_eq!(e.operation(), Some("list_assignments"));
    assert_eq!(fake.state.token_requests().len(), 2);
    assert_eq!(fake.state.graph_requests().len(), 2);
}

#[tokio::test]
async fn token_error_body_is_mapped_without_leaking_the_secret() {
    let fake = start(|_, _| {
        Answer::json(401, serde_json::json!({
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided. Trace ID: t1 Correlation ID: c1",
            "error_codes": [7000215], "timestamp": "2025-03-01 10:00:00Z",
            "trace_id": "trace-1", "correlation_id": "corr-1"}))
    })
    .await;
    let c = client(&fake);
    let e = c.check_token().await.unwrap_err();
    let GraphError::Auth(f) = &e else {
        panic!("expected Auth, got {e:?}")
    };
    assert_eq!(f.error, "invalid_client");
    assert_eq!(f.error_codes, vec![7000215]);
    assert_eq!(f.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(f.status, 401);
    let text = e.to_string();
    assert!(
        text.contains("AADSTS7000215") && text.contains("secret") && text.contains("corr-1"),
        "{text}"
    );
    assert!(!text.contains(SECRET) && !format!("{e:?}").contains(SECRET));
    assert_eq!(e.kind(), "auth");
    // A token error is not retried.
    assert_eq!(fake.state.token_requests().len(), 1);
}

#[tokio::test]
async fn unknown_app_error_points_at_client_and_tenant_ids() {
    let fake = start(|_, _| {
        Answer::json(400, serde_json::json!({"error": "unauthorized_client",
            "error_description": "AADSTS700016: Application with identifier 'client-1' was not found",
            "error_codes": [700016], "correlation_id": "corr-2"}))
    })
    .await;
    let e = client(&fake).check_token().await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("AZURE_CLIENT_ID") && text.contains("AZURE_TENANT_ID"),
        "{text}"
    );
}

#[tokio::test]
async fn non_json_and_truncated_bodies_are_decode_errors() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        if seen.path.starts_with("/v1.0/users/") {
            Answer::raw(200, "<html>proxy login page</html>")
        } else {
            Answer::json(200, serde_json::json!({"value": [{"id": "u1"}]})).truncate(12)
        }
    })
    .await;
    let c = client(&fake);
    let e = c.get_user("alice@contoso.com").await.unwrap_err();
    assert_eq!(e.kind(), "decode");
    assert!(e.to_string().contains("<html>proxy login page"), "{e}");
    assert!(e.request_id().is_some());

    let e = c.list_group_members("g1").await.unwrap_err();
    assert_eq!(e.kind(), "decode", "{e}");
}

trait Truncate {
    fn truncate(self, n: usize) -> Self;
}
impl Truncate for Answer {
    fn truncate(mut self, n: usize) -> Self {
        self.body.truncate(n);
        self
    }
}

#[tokio::test]
async fn federated_token_file_is_reread_for_every_token_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("azure-identity-token");
    std::fs::write(&path, "jwt-one\n").unwrap();
    let fake = start(|seen, st| {
        assert_eq!(seen.path, TOKEN_PATH);
        // Zero lifetime: every call needs a new token.
        st.issue_token(0)
    })
    .await;
    let mut a = args(&fake);
    a.client_secret = None;
    a.federated_token_file = Some(path.clone());
    let c = GraphClient::new(fast(a.validate().unwrap())).unwrap();
    c.check_token().await.unwrap();
    // The kubelet rotates the projected token by replacing the file.
    let tmp = dir.path().join("new");
    std::fs::write(&tmp, "jwt-two").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    c.check_token().await.unwrap();

    let reqs = fake.state.token_requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].form_value("client_assertion").as_deref(),
        Some("jwt-one")
    );
    assert_eq!(
        reqs[1].form_value("client_assertion").as_deref(),
        Some("jwt-two")
    );
    assert_eq!(
        reqs[0].form_value("client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(reqs[0].form_value("client_secret"), None);

    // A token file that disappears is a credential error naming the path.
    std::fs::remove_file(&path).unwrap();
    let e = c.check_token().await.unwrap_err();
    assert_eq!(e.kind(), "credential");
    assert!(e.to_string().contains("azure-identity-token"), "{e}");
}

#[tokio::test]
async fn forbidden_names_the_likely_missing_permission() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        Answer::json(
            403,
            graph_error(
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
        )
    })
    .await;
    let c = client(&fake);
    let cases: Vec<(GraphError, &str)> = vec![
        (
            c.list_group_members("g1").await.unwrap_err(),
            "GroupMember.Read.All",
        ),
        (
            c.list_app_role_assignments("sp1").await.unwrap_err(),
            "Application.Read.All",
        ),
        (
            c.get_user("u1").await.map(|_| ()).unwrap_err(),
            "User.Read.All",
        ),
        (
            c.list_assignments("p1").await.map(|_| ()).unwrap_err(),
            "EntitlementManagement.Read.All",
        ),
        (
            c.reprocess_assignment("a1").await.unwrap_err(),
            "EntitlementManagement.ReadWrite.All",
        ),
    ];
    for (e, permission) in cases {
        match &e {
            GraphError::Forbidden {
                hint: p,
                code,
                request_id,
                ..
            } => {
                assert!(p.contains(permission), "{p}");
                assert_eq!(code, "Authorization_RequestDenied");
                assert!(request_id.is_some());
            }
            other => panic!("expected Forbidden, got {other:?}"),
        }
        assert!(e.to_string().contains(permission));
    }
    // 403 is not retried.
    assert_eq!(fake.state.graph_requests().len(), 5);
}

#[tokio::test]
async fn ids_and_filters_are_encoded_not_injected() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        if seen.path.starts_with("/v1.0/users/") {
            return Answer::json(404, graph_error("Request_ResourceNotFound", "no such user"));
        }
        if seen.path.ends_with("/assignments") {
            return Answer::json(200, serde_json::json!({"value": []}));
        }
        Answer::json(
            200,
            serde_json::json!({"value": [{"id": "p1", "displayName": "O'Brien & Co",
            "catalog": {"id": "c1", "displayName": "General"}}]}),
        )
    })
    .await;
    let c = client(&fake);
    assert_eq!(c.get_user("o'neil#1/x?y@contoso.com").await.unwrap(), None);
    let found = c.find_access_packages("O'Brien & Co").await.unwrap();
    assert_eq!(found[0].catalog.as_ref().unwrap().id, "c1");
    c.find_assignments("p1", "u1' or '1' eq '1").await.unwrap();

    let reqs = fake.state.graph_requests();
    assert_eq!(reqs[0].path, "/v1.0/users/o%27neil%231%2Fx%3Fy@contoso.com");
    assert_eq!(
        reqs[0].query_param("$select").as_deref(),
        Some("id,userPrincipalName,displayName")
    );
    assert_eq!(
        reqs[1].query_param("$filter").as_deref(),
        Some("displayName eq 'O''Brien & Co'")
    );
    assert_eq!(reqs[1].query_param("$expand").as_deref(), Some("catalog"));
    assert_eq!(
        reqs[2].query_param("$filter").as_deref(),
        Some("accessPackage/id eq 'p1' and target/objectid eq 'u1'' or ''1'' eq ''1'")
    );
    // Nothing the caller passed became a separate parameter.
    let params: Vec<_> = url::form_urlencoded::parse(reqs[2].query.as_deref().unwrap().as_bytes())
        .into_owned()
        .collect();
    let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["$select", "$expand", "$filter"]);

    let e = c.get_access_package("..").await.unwrap_err();
    assert_eq!(e.kind(), "invalid_argument");
    assert_eq!(
        fake.state.graph_requests().len(),
        3,
        "invalid id never sent"
    );
}

#[tokio::test]
async fn documented_query_shapes_for_entitlement_reads() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        if seen.path.ends_with("/accessPackages/p1") {
            return Answer::json(200, serde_json::json!({"id": "p1", "displayName": "Finance Analysts",
                "resourceRoleScopes": [{"id": "r_s", "role": {"id": "r", "originId": "Member_g1", "originSystem": "AadGroup", "displayName": "Member"},
                    "scope": {"id": "s", "originId": "g1", "originSystem": "AadGroup", "isRootScope": true}}]}));
        }
        if seen.path.ends_with("/accessPackages/gone") || seen.path.ends_with("/assignmentRequests/gone") {
            return Answer::json(404, graph_error("NotFound", "gone"));
        }
        if seen.path.ends_with("/assignmentRequests/q1") {
            return Answer::json(200, serde_json::json!({"id": "q1", "requestType": "adminAdd", "state": "deliveryFailed",
                "completedDateTime": "2025-03-01T08:00:00Z", "assignment": {"id": "a1", "target": {"objectId": "u1"}}}));
        }
        Answer::json(200, serde_json::json!({"value": []}))
    })
    .await;
    let c = client(&fake);
    let p = c.get_access_package("p1").await.unwrap().unwrap();
    let rrs = p.resource_role_scopes.unwrap();
    assert_eq!(
        rrs[0].role.as_ref().unwrap().origin_id.as_deref(),
        Some("Member_g1")
    );
    assert_eq!(c.get_access_package("gone").await.unwrap(), None);
    let q = c.get_request("q1").await.unwrap().unwrap();
    assert_eq!(q.state, RequestState::DeliveryFailed);
    assert_eq!(q.assignment.unwrap().id.as_deref(), Some("a1"));
    assert!(c.get_request("gone").await.unwrap().is_none());
    c.list_policies("p1").await.unwrap();
    c.list_requests("p1").await.unwrap();
    c.list_assignments("p1").await.unwrap();

    let reqs = fake.state.graph_requests();
    let em = "/v1.0/identityGovernance/entitlementManagement";
    let shape = |i: usize| {
        (
            reqs[i].path.clone(),
            reqs[i].query_param("$expand"),
            reqs[i].query_param("$filter"),
        )
    };
    assert_eq!(
        shape(0),
        (
            format!("{em}/accessPackages/p1"),
            Some("catalog,resourceRoleScopes($expand=role($expand=resource),scope)".into()),
            None
        )
    );
    assert_eq!(
        shape(2),
        (
            format!("{em}/assignmentRequests/q1"),
            Some("assignment($expand=target)".into()),
            None
        )
    );
    assert_eq!(
        shape(4),
        (
            format!("{em}/assignmentPolicies"),
            None,
            Some("accessPackage/id eq 'p1'".into())
        )
    );
    assert_eq!(
        shape(5),
        (
            format!("{em}/assignmentRequests"),
            Some("assignment,requestor".into()),
            Some("accessPackage/id eq 'p1'".into())
        )
    );
    assert_eq!(
        shape(6),
        (
            format!("{em}/assignments"),
            Some("target".into()),
            Some("accessPackage/id eq 'p1'".into())
        )
    );
    // Only what a decision reads: no schedule, no expanded policy.
    assert_eq!(
        reqs[6].query_param("$select").as_deref(),
        Some("id,state,status,expiredDateTime")
    );
}

#[tokio::test]
async fn next_link_to_another_origin_is_refused() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        Answer::json(
            200,
            serde_json::json!({"value": [{"id": "u1"}],
            "@odata.nextLink": "https://attacker.example/v1.0/groups/g1/members?$skiptoken=x"}),
        )
    })
    .await;
    let e = client(&fake).list_group_members("g1").await.unwrap_err();
    assert_eq!(e.kind(), "decode");
    assert!(e.to_string().contains("attacker.example"), "{e}");
    assert_eq!(fake.state.graph_requests().len(), 1);
}

#[tokio::test]
async fn concurrency_is_bounded_by_the_semaphore() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        Answer::json(200, serde_json::json!({"value": []})).delayed(Duration::from_millis(100))
    })
    .await;
    let mut a = args(&fake);
    a.graph_concurrency = 2;
    let c = GraphClient::new(fast(a.validate().unwrap())).unwrap();
    let calls = (0..8).map(|i| {
        let c = c.clone();
        async move { c.list_group_members(&format!("g{i}")).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(fake.state.graph_requests().len(), 8);
    assert_eq!(fake.state.max_in_flight.load(Ordering::SeqCst), 2);
    // Concurrent first calls share one token fetch (single-flight).
    assert_eq!(fake.state.token_requests().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_a_transport_error_after_retries() {
    // Bind then drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let fake = Fake {
        base: format!("http://127.0.0.1:{port}"),
        state: Arc::new(FakeState::default()),
    };
    let mut a = args(&fake);
    a.max_retries = 1;
    let c = GraphClient::new(fast(a.validate().unwrap())).unwrap();
    let e = c.check_token().await.unwrap_err();
    assert_eq!(e.kind(), "transport");
    assert!(e.to_string().contains("127.0.0.1"), "{e}");
    let s = c
        .stats()
        .into_iter()
        .find(|s| s.operation == "token")
        .unwrap();
    assert_eq!((s.requests, s.retries, s.failures), (2, 1, 1));
}

#[tokio::test]
async fn retry_after_holds_back_other_calls_in_the_same_scope() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        match seen.path.as_str() {
            "/v1.0/groups/g-short/members" => {
                Answer::json(429, graph_error("TooManyRequests", "later"))
                    .header("retry-after", "0.5")
            }
            "/v1.0/groups/g-long/members" => {
                Answer::json(429, graph_error("TooManyRequests", "later"))
                    .header("retry-after", "3600")
            }
            _ => Answer::json(200, serde_json::json!({"value": []})),
        }
    })
    .await;
    let mut a = args(&fake);
    a.max_retries = 0;
    let c = GraphClient::new(fast(a.validate().unwrap())).unwrap();

    // A refused call closes the directory scope for 0.5 s: the next directory call waits.
    assert_eq!(
        c.list_group_members("g-short").await.unwrap_err().kind(),
        "throttled"
    );
    c.list_group_owners("g-other").await.unwrap();
    let reqs = fake.state.graph_requests();
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(500), "sent after only {gap:?}");

    // A long Retry-After makes later directory calls fail fast without reaching the server,
    // while entitlement-management calls (another throttling budget) still go out.
    assert!(c.list_group_members("g-long").await.is_err());
    let e = c.list_app_role_assignments("sp1").await.unwrap_err();
    assert_eq!(e.kind(), "throttled");
    assert!(e.retry_after().unwrap() > Duration::from_secs(3500));
    assert_eq!(fake.state.graph_requests().len(), 3);
    c.list_assignments("p1").await.unwrap();
    assert_eq!(fake.state.graph_requests().len(), 4);
}

#[tokio::test]
async fn batch_correlates_by_id_and_resends_only_throttled_items() {
    use redeliver::graph::{BatchItem, models::DirectoryObject, models::Page};
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        assert_eq!(seen.path, "/v1.0/$batch");
        let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
        let reqs = body["requests"].as_array().unwrap().clone();
        let round = st.prior("/v1.0/$batch");
        // Answer in reverse order; on the first round throttle item "2".
        let responses: Vec<serde_json::Value> = reqs
            .iter()
            .rev()
            .map(|r| {
                let id = r["id"].as_str().unwrap();
                match (round, id) {
                    (0, "2") => serde_json::json!({"id": "2", "status": 429,
                        "headers": {"Retry-After": "0.3"}, "body": graph_error("TooManyRequests", "later")}),
                    (_, "3") => serde_json::json!({"id": "3", "status": 403,
                        "headers": {"request-id": "inner-3"}, "body": graph_error("Authorization_RequestDenied", "no")}),
                    (_, "4") => serde_json::json!({"id": "4", "status": 202, "headers": {}, "body": null}),
                    (_, id) => serde_json::json!({"id": id, "status": 200,
                        "headers": {"Content-Type": "application/json"},
                        "body": {"value": [{"id": format!("member-of-{id}")}]}}),
                }
            })
            .collect();
        // The second round comes back as 424, as one doc version describes.
        let status = if round == 0 { 200 } else { 424 };
        Answer::json(status, serde_json::json!({"responses": responses}))
    })
    .await;
    let c = client(&fake);
    let items = vec![
        BatchItem::get("1", "/groups/g1/members?$select=id&$top=999"),
        BatchItem::get("2", "/groups/g2/members?$select=id&$top=999"),
        BatchItem::get("3", "/groups/g3/members?$select=id&$top=999"),
        BatchItem::post(
            "4",
            "/identityGovernance/entitlementManagement/assignments/a1/reprocess",
        ),
    ];
    let results = c.batch(&items).await.unwrap();
    let ids: Vec<_> = results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["1", "2", "3", "4"]);
    assert_eq!(results[1].status, 200);
    assert!(results[3].is_success());

    let reqs = fake.state.graph_requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].at - reqs[0].at >= Duration::from_millis(300));
    let second: serde_json::Value = serde_json::from_str(&reqs[1].body).unwrap();
    assert_eq!(
        second["requests"].as_array().unwrap().len(),
        1,
        "only the throttled item is resent"
    );
    assert_eq!(second["requests"][0]["id"], "2");
    let first: serde_json::Value = serde_json::from_str(&reqs[0].body).unwrap();
    assert_eq!(
        first["requests"][3],
        serde_json::json!({"id": "4", "method": "POST",
        "url": "/identityGovernance/entitlementManagement/assignments/a1/reprocess"})
    );

    let mut results = results.into_iter();
    let page: Page<DirectoryObject> = results
        .next()
        .unwrap()
        .into_result("list_group_members")
        .unwrap();
    assert_eq!(page.value[0].id, "member-of-1");
    let e = results
        .nth(1)
        .unwrap()
        .into_result::<Page<DirectoryObject>>("list_group_members")
        .unwrap_err();
    assert!(e.is_forbidden());
    assert_eq!(e.request_id(), Some("inner-3"));
    assert!(e.to_string().contains("GroupMember.Read.All"));

    assert_eq!(
        c.relative_url(&format!(
            "{}/v1.0/groups/g1/members?$skiptoken=x",
            fake.base
        ))
        .as_deref(),
        Some("/groups/g1/members?$skiptoken=x")
    );
    assert_eq!(
        c.relative_url("https://elsewhere.example/v1.0/groups"),
        None
    );
    let too_many: Vec<_> = (0..21)
        .map(|i| BatchItem::get(i.to_string(), "/groups"))
        .collect();
    assert_eq!(
        c.batch(&too_many).await.unwrap_err().kind(),
        "invalid_argument"
    );
}

#[tokio::test]
async fn get_assignment_expands_and_maps_404_to_none() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        if seen.path.ends_with("/a1") {
            return Answer::json(200, serde_json::json!({"id": "a1", "state": "deliveryFailed", "status": "DeliveryFailed",
                "target": {"objectId": "u1"}, "accessPackage": {"id": "p1"}, "assignmentPolicy": {"id": "pol1"}}));
        }
        Answer::json(404, graph_error("NotFound", "no"))
    })
    .await;
    let c = client(&fake);
    let a = c.get_assignment("a1").await.unwrap().unwrap();
    assert_eq!(
        a.state,
        redeliver::graph::models::AssignmentState::DeliveryFailed
    );
    assert_eq!(a.assignment_policy.unwrap().id, "pol1");
    assert_eq!(c.get_assignment("a2").await.unwrap(), None);
    let reqs = fake.state.graph_requests();
    assert_eq!(
        reqs[0].query_param("$expand").as_deref(),
        Some("target,accessPackage,assignmentPolicy")
    );
}

#[tokio::test]
async fn group_delta_merges_pages_and_reports_resync() {
    let fake = start(|seen, st| {
        if seen.path == TOKEN_PATH {
            return st.issue_token(3599);
        }
        let host = seen.headers["host"].to_str().unwrap().to_string();
        let link = |q: &str| format!("http://{host}/v1.0/groups/delta?{q}");
        match (seen.query_param("$skiptoken"), seen.query_param("$deltatoken")) {
            (None, None) => Answer::json(200, serde_json::json!({
                "value": [{"id": "g1", "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": "u1"}, {"id": "u2"}]}],
                "@odata.nextLink": link("$skiptoken=p2")})),
            // g1 reappears on a later page: u2 removed; g2 comes in.
            (Some(_), None) => Answer::json(200, serde_json::json!({
                "value": [{"id": "g2", "members@delta": [{"id": "u3"}]},
                          {"id": "g1", "members@delta": [{"id": "u2", "@removed": {"reason": "deleted"}}]}],
                "@odata.deltaLink": link("$deltatoken=d1")})),
            (None, Some(t)) if t == "d1" => Answer::json(200, serde_json::json!({
                "value": [{"id": "g2", "members@delta": [{"id": "u3", "@removed": {"reason": "deleted"}}]}],
                "@odata.deltaLink": link("$deltatoken=d2")})),
            _ => Answer::json(410, graph_error("resyncRequired", "start over")).header("location", &link("")),
        }
    })
    .await;
    let c = client(&fake);
    let first = c
        .group_members_delta(&["g1".to_string(), "g2".to_string()])
        .await
        .unwrap();
    let reqs = fake.state.graph_requests();
    assert_eq!(reqs[0].path, "/v1.0/groups/delta");
    assert_eq!(reqs[0].query_param("$select").as_deref(), Some("members"));
    assert_eq!(
        reqs[0].query_param("$filter").as_deref(),
        Some("id eq 'g1' or id eq 'g2'")
    );
    let g1 = &first.changes["g1"];
    assert_eq!(g1.added.iter().collect::<Vec<_>>(), vec!["u1"]);
    assert_eq!(g1.removed.iter().collect::<Vec<_>>(), vec!["u2"]);
    assert!(first.changes["g2"].added.contains("u3"));
    assert!(
        first.delta_link.ends_with("$deltatoken=d1"),
        "{}",
        first.delta_link
    );

    let second = c.group_members_delta_next(&first.delta_link).await.unwrap();
    assert!(second.changes["g2"].removed.contains("u3"));
    assert!(!second.changes.contains_key("g1"));

    let expired = first.delta_link.replace("d1", "old");
    let e = c.group_members_delta_next(&expired).await.unwrap_err();
    assert!(e.is_resync_required(), "{e:?}");
    assert_eq!(
        c.group_members_delta_next("https://elsewhere.example/v1.0/groups/delta?$deltatoken=x")
            .await
            .unwrap_err()
            .kind(),
        "invalid_argument"
    );
    let too_many: Vec<String> = (0..51).map(|i| format!("g{i}")).collect();
    assert!(c.group_members_delta(&too_many).await.is_err());
}

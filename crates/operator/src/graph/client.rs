//! [`GraphClient`]: typed calls for the Graph subset Redeliver uses, on a generic core
//! (`send`, `get_json`, `get_paged`) that later calls can reuse. Every call, with the Graph
//! behaviour it relies on, is described in docs/graph.md; quoted section names below are
//! that file's.

use std::sync::Arc;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use url::Url;

use super::auth::TokenProvider;
use super::config::GraphConfig;
use super::error::{GraphError, permission_hint};
use super::http::{Http, OperationStats, RawResponse, RetryMode, excerpt};
use super::models::{
    AccessPackage, AppRoleAssignment, ArmPage, ArmRoleHolder, Assignment, AssignmentPolicy,
    AssignmentRequest, DeltaGroup, DirectoryObject, DirectoryRoleHolder, ErrorEnvelope, Page, User,
};
use super::odata::{build_url, segment, string_literal};

pub(super) const EM: &str = "/identityGovernance/entitlementManagement";

/// The properties of an assignment a package's list asks for. A full verification reads
/// every assignment of the tenant (300,000 at Entra's limit), and each would otherwise carry
/// its `schedule` and custom-extension instances; the expanded policy, which nothing reads,
/// is not asked for at all. Together that is more than half of each page's bytes, all of it
/// JSON to scan. `target` is expanded, which OData includes whatever `$select` says.
pub const ASSIGNMENT_SELECT: &str = "id,state,status,expiredDateTime";

/// Upper bound on pages followed in one listing; a server that keeps returning nextLinks
/// beyond this is looping.
const MAX_PAGES: usize = 100_000;

/// A Microsoft Graph client. Cheap to clone; clones share the token cache, the concurrency
/// limit and the counters.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

struct Inner {
    http: Http,
    tokens: TokenProvider,
    /// `{graph root}/v1.0`, no trailing slash.
    base: String,
    /// Origin of the Graph root: nextLinks must point there (they receive our token).
    origin: url::Origin,
    /// Azure Resource Manager, when its root is known (`--arm-url` or a known cloud).
    arm: Option<Arm>,
}

/// The Azure Resource Manager side of one connection: its root, and tokens for its own
/// audience from the same credential (a second cache). Calls share the client's HTTP
/// core, so they get ARM's own throttling gate ([`super::http`]'s `arm` scope).
struct Arm {
    /// `https://management.azure.com`, no trailing slash.
    root: String,
    /// Origin of the ARM root: ARM's `nextLink`s must point there.
    origin: url::Origin,
    tokens: TokenProvider,
}

/// One Graph request for [`GraphClient::send`].
#[derive(Clone, Debug)]
pub struct GraphRequest {
    /// Operation name, used in errors, logs and counters.
    pub operation: &'static str,
    /// HTTP method.
    pub method: Method,
    /// Absolute URL (build it with [`GraphClient::url`]).
    pub url: Url,
    /// JSON body, if any.
    pub body: Option<serde_json::Value>,
    /// Which failures may be retried.
    pub retry: RetryMode,
    /// Extra headers (e.g. `ConsistencyLevel: eventual`), sent on every attempt.
    pub headers: Vec<(&'static str, String)>,
}

impl GraphRequest {
    /// A GET (idempotent).
    pub fn get(operation: &'static str, url: Url) -> Self {
        Self {
            operation,
            method: Method::GET,
            url,
            body: None,
            retry: RetryMode::Idempotent,
            headers: Vec::new(),
        }
    }

    /// A POST with an optional JSON body and an explicit retry mode.
    pub fn post(
        operation: &'static str,
        url: Url,
        body: Option<serde_json::Value>,
        retry: RetryMode,
    ) -> Self {
        Self {
            operation,
            method: Method::POST,
            url,
            body,
            retry,
            headers: Vec::new(),
        }
    }
}

/// A successful Graph response.
#[derive(Debug)]
pub struct GraphResponse {
    /// HTTP status (2xx).
    pub status: StatusCode,
    /// Graph's `request-id`.
    pub request_id: Option<String>,
    /// Response headers (e.g. `Location`).
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: bytes::Bytes,
}

impl GraphClient {
    /// Builds a client. No network traffic happens here; see [`GraphClient::check_token`].
    pub fn new(config: GraphConfig) -> Result<GraphClient, GraphError> {
        let http = Http::new(&config)?;
        let base = config.graph_base();
        let origin = Url::parse(&base)
            .map_err(|e| GraphError::Config {
                message: format!("Graph URL {base}: {e}"),
            })?
            .origin();
        let arm = match (&config.arm_root, config.arm_scope()) {
            (Some(root), Some(scope)) => Some(Arm {
                origin: Url::parse(root)
                    .map_err(|e| GraphError::Config {
                        message: format!("ARM URL {root}: {e}"),
                    })?
                    .origin(),
                root: root.clone(),
                tokens: TokenProvider::for_scope(&config, scope),
            }),
            _ => None,
        };
        Ok(GraphClient {
            inner: Arc::new(Inner {
                http,
                tokens: TokenProvider::new(&config),
                base,
                origin,
                arm,
            }),
        })
    }

    /// The versioned base URL, e.g. `https://graph.microsoft.com/v1.0`.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Request counters per operation (including `token`), sorted by operation name.
    pub fn stats(&self) -> Vec<OperationStats> {
        self.inner.http.stats()
    }

    /// Obtains a token now (start-up check of the credential and tenant).
    pub async fn check_token(&self) -> Result<(), GraphError> {
        self.inner.tokens.token(&self.inner.http).await.map(|_| ())
    }

    /// Builds an absolute URL under the versioned base. `path` must start with `/` and put
    /// caller-supplied ids through [`segment`]; query values are encoded here.
    pub fn url(
        &self,
        operation: &'static str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Url, GraphError> {
        build_url(operation, &self.inner.base, path, query)
    }

    /// Sends one request with authentication and retries; maps every non-2xx status to a
    /// typed error. On a 401 the cached token is dropped and the call is made once more
    /// with a new token.
    pub async fn send(&self, req: GraphRequest) -> Result<GraphResponse, GraphError> {
        self.send_accepting(&req, &[]).await
    }

    /// [`GraphClient::send`], also treating the `extra_ok` statuses as success.
    pub(super) async fn send_accepting(
        &self,
        req: &GraphRequest,
        extra_ok: &[u16],
    ) -> Result<GraphResponse, GraphError> {
        let result = self.send_inner(req, extra_ok).await;
        if result.is_err() {
            self.inner.http.count(req.operation, |s| s.failures += 1);
        }
        result
    }

    async fn send_inner(
        &self,
        req: &GraphRequest,
        extra_ok: &[u16],
    ) -> Result<GraphResponse, GraphError> {
        self.send_with(req, extra_ok, &self.inner.tokens).await
    }

    /// Sends `req` with tokens from `tokens` (Graph's, or ARM's audience).
    async fn send_with(
        &self,
        req: &GraphRequest,
        extra_ok: &[u16],
        tokens: &TokenProvider,
    ) -> Result<GraphResponse, GraphError> {
        let inner = &self.inner;
        let mut refreshed = false;
        loop {
            let token = tokens.token(&inner.http).await?;
            let bearer = format!("Bearer {}", token.value.expose());
            let build = || {
                let mut b = inner
                    .http
                    .client
                    .request(req.method.clone(), req.url.clone())
                    .header(AUTHORIZATION, &bearer)
                    .header(ACCEPT, "application/json");
                for (name, value) in &req.headers {
                    b = b.header(*name, value);
                }
                match &req.body {
                    Some(body) => b.json(body),
                    // Actions such as `reprocess` take no body; send an explicit empty one
                    // so proxies see a Content-Length.
                    None if req.method == Method::POST => b.header(CONTENT_LENGTH, "0"),
                    None => b,
                }
            };
            let resp = inner.http.execute(req.operation, req.retry, &build).await?;
            if resp.status == StatusCode::UNAUTHORIZED && !refreshed {
                refreshed = true;
                tokens.invalidate(&token).await;
                continue;
            }
            if resp.status.is_success() || extra_ok.contains(&resp.status.as_u16()) {
                return Ok(GraphResponse {
                    status: resp.status,
                    request_id: resp.request_id,
                    headers: resp.headers,
                    body: resp.body,
                });
            }
            return Err(map_error(req.operation, resp));
        }
    }

    /// GETs one JSON object.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        url: Url,
    ) -> Result<T, GraphError> {
        let resp = self.send(GraphRequest::get(operation, url)).await?;
        self.decode(operation, &resp)
    }

    /// GETs one JSON object, or `None` on 404 (an expected answer here, so not counted as
    /// a failure).
    pub async fn get_optional<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        url: Url,
    ) -> Result<Option<T>, GraphError> {
        let req = GraphRequest::get(operation, url);
        let resp = self.send_accepting(&req, &[404]).await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.decode(operation, &resp).map(Some)
    }

    /// GETs one page of a collection (the caller handles `nextLink`/`deltaLink`).
    pub async fn get_page<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        url: Url,
    ) -> Result<Page<T>, GraphError> {
        self.get_json(operation, url).await
    }

    /// GETs a whole collection, following `@odata.nextLink` verbatim until it is absent.
    /// A nextLink pointing outside the Graph origin is refused (it would receive our token).
    pub async fn get_paged<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        url: Url,
    ) -> Result<Vec<T>, GraphError> {
        let mut items = Vec::new();
        let mut next = Some(url);
        let mut pages = 0usize;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(GraphError::Decode {
                    operation,
                    message: format!("more than {MAX_PAGES} pages; the server seems to loop"),
                    request_id: None,
                });
            }
            let page: Page<T> = self.get_page(operation, url.clone()).await?;
            items.extend(page.value);
            if let Some(link) = page.next_link {
                next = Some(self.checked_link(operation, &url, &link)?);
            }
        }
        Ok(items)
    }

    pub(super) fn decode<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        resp: &GraphResponse,
    ) -> Result<T, GraphError> {
        serde_json::from_slice(&resp.body).map_err(|e| {
            self.inner.http.count(operation, |s| s.failures += 1);
            GraphError::Decode {
                operation,
                message: format!("{e}; body starts with: {}", excerpt(&resp.body)),
                request_id: resp.request_id.clone(),
            }
        })
    }

    // ---- entitlement management ("Entitlement management reads") ----

    /// The access package with its catalog and its resource role scopes (role with its
    /// resource, and scope expanded), or `None` if it does not exist. The role's resource names an Entra role
    /// ("Global Reader"), whose scope is only the directory root ("Root").
    pub async fn get_access_package(&self, id: &str) -> Result<Option<AccessPackage>, GraphError> {
        const OP: &str = "get_access_package";
        let path = format!("{EM}/accessPackages/{}", segment(OP, id)?);
        let url = self.url(
            OP,
            &path,
            &[(
                "$expand",
                "catalog,resourceRoleScopes($expand=role($expand=resource),scope)",
            )],
        )?;
        self.get_optional(OP, url).await
    }

    /// Access packages whose `displayName` equals `display_name`, with `catalog` expanded
    /// (several packages in different catalogs may share a name).
    pub async fn find_access_packages(
        &self,
        display_name: &str,
    ) -> Result<Vec<AccessPackage>, GraphError> {
        const OP: &str = "find_access_packages";
        let filter = format!("displayName eq {}", string_literal(display_name));
        let url = self.url(
            OP,
            &format!("{EM}/accessPackages"),
            &[("$filter", &filter), ("$expand", "catalog")],
        )?;
        self.get_paged(OP, url).await
    }

    /// One page (never more) of the access packages whose `displayName` starts with
    /// `prefix`, with `catalog` expanded: the candidates of a "did you mean" after a name
    /// matched no package. Read only on that failure path.
    pub async fn suggest_access_packages(
        &self,
        prefix: &str,
    ) -> Result<Vec<AccessPackage>, GraphError> {
        const OP: &str = "suggest_access_packages";
        let filter = format!("startswith(displayName,{})", string_literal(prefix));
        let url = self.url(
            OP,
            &format!("{EM}/accessPackages"),
            &[("$filter", &filter), ("$expand", "catalog")],
        )?;
        Ok(self.get_page::<AccessPackage>(OP, url).await?.value)
    }

    /// Assignment policies of one access package.
    pub async fn list_policies(
        &self,
        access_package_id: &str,
    ) -> Result<Vec<AssignmentPolicy>, GraphError> {
        const OP: &str = "list_policies";
        let filter = format!("accessPackage/id eq {}", string_literal(access_package_id));
        let url = self.url(
            OP,
            &format!("{EM}/assignmentPolicies"),
            &[("$filter", &filter)],
        )?;
        self.get_paged(OP, url).await
    }

    /// One assignment with `target`, `accessPackage` and `assignmentPolicy` expanded,
    /// or `None` if it does not exist.
    pub async fn get_assignment(&self, id: &str) -> Result<Option<Assignment>, GraphError> {
        const OP: &str = "get_assignment";
        let path = format!("{EM}/assignments/{}", segment(OP, id)?);
        let url = self.url(
            OP,
            &path,
            &[("$expand", "target,accessPackage,assignmentPolicy")],
        )?;
        self.get_optional(OP, url).await
    }

    /// Every assignment of a package (all states, including expired), with `target`
    /// expanded and only the properties a decision reads ([`ASSIGNMENT_SELECT`]).
    pub async fn list_assignments(
        &self,
        access_package_id: &str,
    ) -> Result<Vec<Assignment>, GraphError> {
        const OP: &str = "list_assignments";
        let filter = format!("accessPackage/id eq {}", string_literal(access_package_id));
        self.assignments_where(OP, &filter).await
    }

    /// The assignments of a package under one of its policies (all states), shaped as
    /// [`GraphClient::list_assignments`]: `assignmentPolicy/id eq` is a documented filter
    /// form. One package's list split by policy is several `nextLink` chains that can be
    /// paged side by side; the partition benchmark measures when that shortens a read.
    pub async fn list_policy_assignments(
        &self,
        access_package_id: &str,
        policy_id: &str,
    ) -> Result<Vec<Assignment>, GraphError> {
        const OP: &str = "list_assignments";
        let filter = format!(
            "accessPackage/id eq {} and assignmentPolicy/id eq {}",
            string_literal(access_package_id),
            string_literal(policy_id)
        );
        self.assignments_where(OP, &filter).await
    }

    /// Assignments of a package for one target object id. Uses the documented
    /// `target/objectid` spelling ("Entitlement management reads"); callers check `state`
    /// themselves.
    pub async fn find_assignments(
        &self,
        access_package_id: &str,
        target_object_id: &str,
    ) -> Result<Vec<Assignment>, GraphError> {
        const OP: &str = "find_assignments";
        let filter = format!(
            "accessPackage/id eq {} and target/objectid eq {}",
            string_literal(access_package_id),
            string_literal(target_object_id)
        );
        self.assignments_where(OP, &filter).await
    }

    /// Every assignment matching `filter`, all pages, in the one shape every list of
    /// assignments uses: [`ASSIGNMENT_SELECT`] with `target` expanded.
    async fn assignments_where(
        &self,
        op: &'static str,
        filter: &str,
    ) -> Result<Vec<Assignment>, GraphError> {
        let url = self.url(
            op,
            &format!("{EM}/assignments"),
            &[
                ("$select", ASSIGNMENT_SELECT),
                ("$expand", "target"),
                ("$filter", filter),
            ],
        )?;
        self.get_paged(op, url).await
    }

    /// Assignment requests of a package, with `assignment` (its id correlates requests with
    /// assignments) and `requestor` expanded. Nested expansion is documented only for a
    /// single request ("Entitlement management reads"), so the list does not rely on it.
    pub async fn list_requests(
        &self,
        access_package_id: &str,
    ) -> Result<Vec<AssignmentRequest>, GraphError> {
        const OP: &str = "list_requests";
        let filter = format!("accessPackage/id eq {}", string_literal(access_package_id));
        let url = self.url(
            OP,
            &format!("{EM}/assignmentRequests"),
            &[("$expand", "assignment,requestor"), ("$filter", &filter)],
        )?;
        self.get_paged(OP, url).await
    }

    /// One assignment request with `assignment($expand=target)`, or `None` if unknown.
    pub async fn get_request(&self, id: &str) -> Result<Option<AssignmentRequest>, GraphError> {
        const OP: &str = "get_request";
        let path = format!("{EM}/assignmentRequests/{}", segment(OP, id)?);
        let url = self.url(OP, &path, &[("$expand", "assignment($expand=target)")])?;
        self.get_optional(OP, url).await
    }

    // ---- directory ("Directory reads") ----

    /// A user by object id or UPN (`$select=id,userPrincipalName,displayName`), or `None`.
    pub async fn get_user(&self, id_or_upn: &str) -> Result<Option<User>, GraphError> {
        const OP: &str = "get_user";
        let path = format!("/users/{}", segment(OP, id_or_upn)?);
        let url = self.url(
            OP,
            &path,
            &[("$select", "id,userPrincipalName,displayName")],
        )?;
        self.get_optional(OP, url).await
    }

    /// One page (never more, at most 100) of the users whose `userPrincipalName` starts
    /// with `prefix`: the candidates of a "did you mean" after a user was not found. Read
    /// only on that failure path.
    pub async fn suggest_users(&self, prefix: &str) -> Result<Vec<User>, GraphError> {
        const OP: &str = "suggest_users";
        let filter = format!("startswith(userPrincipalName,{})", string_literal(prefix));
        let url = self.url(
            OP,
            "/users",
            &[
                ("$filter", &filter),
                ("$select", "id,userPrincipalName,displayName"),
                ("$top", "100"),
            ],
        )?;
        Ok(self.get_page::<User>(OP, url).await?.value)
    }

    /// Object ids of a group's direct members (all pages).
    pub async fn list_group_members(&self, group_id: &str) -> Result<Vec<String>, GraphError> {
        self.list_directory_ids("list_group_members", group_id, "members")
            .await
    }

    /// Object ids of a group's owners (same shape as members).
    pub async fn list_group_owners(&self, group_id: &str) -> Result<Vec<String>, GraphError> {
        self.list_directory_ids("list_group_owners", group_id, "owners")
            .await
    }

    async fn list_directory_ids(
        &self,
        operation: &'static str,
        group_id: &str,
        relation: &str,
    ) -> Result<Vec<String>, GraphError> {
        let path = format!("/groups/{}/{relation}", segment(operation, group_id)?);
        let url = self.url(operation, &path, &[("$select", "id"), ("$top", "999")])?;
        let objects: Vec<DirectoryObject> = self.get_paged(operation, url).await?;
        Ok(objects.into_iter().map(|o| o.id).collect())
    }

    /// Starts tracking the membership of up to [`MAX_DELTA_GROUPS`] groups with a delta
    /// query (`GET /groups/delta?$select=members&$filter=id eq ..`, "Group delta"). The first round
    /// reports every current member as added; keep [`GroupMembershipDelta::delta_link`] and
    /// pass it to [`GraphClient::group_members_delta_next`] for the changes since.
    pub async fn group_members_delta(
        &self,
        group_ids: &[String],
    ) -> Result<GroupMembershipDelta, GraphError> {
        const OP: &str = "group_members_delta";
        if group_ids.is_empty() || group_ids.len() > MAX_DELTA_GROUPS {
            return Err(GraphError::InvalidArgument {
                operation: OP,
                message: format!(
                    "{} group ids; a delta query takes 1 to {MAX_DELTA_GROUPS}",
                    group_ids.len()
                ),
            });
        }
        let filter = group_ids
            .iter()
            .map(|id| format!("id eq {}", string_literal(id)))
            .collect::<Vec<_>>()
            .join(" or ");
        let url = self.url(
            OP,
            "/groups/delta",
            &[("$select", "members"), ("$filter", &filter)],
        )?;
        self.follow_delta(OP, url).await
    }

    /// A delta link for `groups` (at most [`MAX_DELTA_GROUPS`]) that reports membership
    /// changes from now on (`$deltatoken=latest`: no initial sync is read).
    pub async fn group_members_delta_latest(
        &self,
        groups: &[String],
    ) -> Result<String, GraphError> {
        const OP: &str = "group_members_delta";
        let filter = groups
            .iter()
            .map(|id| format!("id eq '{}'", id.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(" or ");
        let url = self.url(
            OP,
            "/groups/delta",
            &[
                ("$select", "members"),
                ("$filter", &filter),
                ("$deltatoken", "latest"),
            ],
        )?;
        Ok(self.follow_delta(OP, url).await?.delta_link)
    }

    /// Changes since a previous round's delta link. Fails with an error for which
    /// [`GraphError::is_resync_required`] is true when the link expired (start over with
    /// [`GraphClient::group_members_delta`]).
    pub async fn group_members_delta_next(
        &self,
        delta_link: &str,
    ) -> Result<GroupMembershipDelta, GraphError> {
        const OP: &str = "group_members_delta";
        let url = Url::parse(delta_link)
            .ok()
            .filter(|u| u.origin() == self.inner.origin)
            .ok_or_else(|| GraphError::InvalidArgument {
                operation: OP,
                message: format!(
                    "delta link {delta_link:?} is not a URL under {}",
                    self.inner.base
                ),
            })?;
        self.follow_delta(OP, url).await
    }

    async fn follow_delta(
        &self,
        operation: &'static str,
        url: Url,
    ) -> Result<GroupMembershipDelta, GraphError> {
        // Last event per (group, member) wins: the same group may reappear on later pages
        // and replays happen ("Group delta").
        let mut state: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, bool>,
        > = Default::default();
        let mut deleted_groups = std::collections::BTreeSet::new();
        let mut url = url;
        let mut pages = 0usize;
        loop {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(GraphError::Decode {
                    operation,
                    message: format!("more than {MAX_PAGES} delta pages; the server seems to loop"),
                    request_id: None,
                });
            }
            let page: Page<DeltaGroup> = self.get_page(operation, url.clone()).await?;
            for group in page.value {
                if group.removed.is_some() {
                    deleted_groups.insert(group.id.clone());
                }
                let entry = state.entry(group.id).or_default();
                for m in group.members_delta {
                    entry.insert(m.id, m.removed.is_none());
                }
            }
            match (page.next_link, page.delta_link) {
                (Some(link), _) => url = self.checked_link(operation, &url, &link)?,
                (None, Some(delta)) => {
                    // When nothing changed, the deltaLink may well be the URL just fetched:
                    // that is the next round's starting point, not a paging loop.
                    let delta_url = self.same_origin_link(operation, &url, &delta)?;
                    let changes = state
                        .into_iter()
                        .map(|(group, members)| {
                            let mut c = MemberChanges::default();
                            for (member, present) in members {
                                if present {
                                    c.added.insert(member);
                                } else {
                                    c.removed.insert(member);
                                }
                            }
                            (group, c)
                        })
                        .collect();
                    return Ok(GroupMembershipDelta {
                        changes,
                        deleted_groups,
                        delta_link: delta_url.to_string(),
                    });
                }
                (None, None) => {
                    return Err(GraphError::Decode {
                        operation,
                        message: "delta page has neither @odata.nextLink nor @odata.deltaLink"
                            .to_string(),
                        request_id: None,
                    });
                }
            }
        }
    }

    /// Resolves a nextLink against the current page, refusing other origins and a link
    /// that repeats the current page (a server paging loop).
    fn checked_link(
        &self,
        operation: &'static str,
        current: &Url,
        link: &str,
    ) -> Result<Url, GraphError> {
        let url = self.same_origin_link(operation, current, link)?;
        if &url == current {
            return Err(GraphError::Decode {
                operation,
                message: "@odata.nextLink repeats the current page URL".to_string(),
                request_id: None,
            });
        }
        Ok(url)
    }

    /// Resolves a nextLink/deltaLink against the current page and refuses other origins.
    fn same_origin_link(
        &self,
        operation: &'static str,
        current: &Url,
        link: &str,
    ) -> Result<Url, GraphError> {
        let url = current.join(link).map_err(|e| GraphError::Decode {
            operation,
            message: format!("invalid link {link:?}: {e}"),
            request_id: None,
        })?;
        if url.origin() != self.inner.origin {
            return Err(GraphError::Decode {
                operation,
                message: format!(
                    "link points to {} outside the Graph URL {}; refusing to send the token there",
                    url.origin().ascii_serialization(),
                    self.inner.origin.ascii_serialization()
                ),
                request_id: None,
            });
        }
        Ok(url)
    }

    /// App role assignments granted on a resource service principal (all pages).
    /// Only the fields verification needs are selected, in pages of 999: `$select` takes the
    /// cost from 2 RU to 1 per page ("Throttling and retries") and the large pages keep the
    /// page count minimal.
    pub async fn list_app_role_assignments(
        &self,
        service_principal_id: &str,
    ) -> Result<Vec<AppRoleAssignment>, GraphError> {
        const OP: &str = "list_app_role_assignments";
        let path = format!(
            "/servicePrincipals/{}/appRoleAssignedTo",
            segment(OP, service_principal_id)?
        );
        let url = self.url(
            OP,
            &path,
            &[
                ("$select", "id,appRoleId,principalId,principalType"),
                ("$top", "999"),
            ],
        )?;
        self.get_paged(OP, url).await
    }
}

// ---- Azure Resource Manager ("Azure roles") ----

/// ARM's role assignments API version.
const ARM_ROLE_ASSIGNMENTS_API: &str = "2022-04-01";
/// ARM's role eligibility schedule instances API version.
const ARM_ROLE_ELIGIBILITY_API: &str = "2020-10-01";

impl GraphClient {
    /// Whether an Azure Resource Manager root is configured (`--arm-url`, or derived from
    /// a known cloud's Graph URL).
    pub fn arm_configured(&self) -> bool {
        self.inner.arm.is_some()
    }

    /// Everyone holding any Azure role at or above the ARM `scope`
    /// (`/subscriptions/{id}[/resourceGroups/{name}]`, `/providers/Microsoft.Management/
    /// managementGroups/{id}`): its role assignments, or with `eligible` its role
    /// eligibility schedule instances, `$filter=atScope()`, every page (`nextLink`). One read
    /// per scope serves every role and every target promised there.
    pub async fn list_azure_role_holders(
        &self,
        scope: &str,
        eligible: bool,
    ) -> Result<Vec<ArmRoleHolder>, GraphError> {
        let (op, list, api) = if eligible {
            (
                "list_azure_role_eligibilities",
                "roleEligibilityScheduleInstances",
                ARM_ROLE_ELIGIBILITY_API,
            )
        } else {
            (
                "list_azure_role_assignments",
                "roleAssignments",
                ARM_ROLE_ASSIGNMENTS_API,
            )
        };
        let Some(arm) = &self.inner.arm else {
            return Err(GraphError::Config {
                message: "no Azure Resource Manager URL: set --arm-url / REDELIVER_ARM_URL to verify Azure roles".into(),
            });
        };
        // The scope comes from Graph: each segment is escaped, so it can only name a scope.
        let segments = scope
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| segment(op, s))
            .collect::<Result<Vec<_>, _>>()?;
        if segments.is_empty() || !scope.starts_with('/') {
            return Err(GraphError::InvalidArgument {
                operation: op,
                message: format!("{scope:?} is not an Azure scope (/subscriptions/...)"),
            });
        }
        let path = format!(
            "/{}/providers/Microsoft.Authorization/{list}",
            segments.join("/")
        );
        let url = build_url(
            op,
            &arm.root,
            &path,
            &[("api-version", api), ("$filter", "atScope()")],
        )?;
        let mut items = Vec::new();
        let mut next = Some(url);
        let mut pages = 0usize;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(GraphError::Decode {
                    operation: op,
                    message: format!("more than {MAX_PAGES} pages; the server seems to loop"),
                    request_id: None,
                });
            }
            let req = GraphRequest::get(op, url.clone());
            let resp = match self.send_with(&req, &[], &arm.tokens).await {
                Ok(resp) => resp,
                Err(e) => {
                    self.inner.http.count(op, |s| s.failures += 1);
                    return Err(e);
                }
            };
            let page: ArmPage<ArmRoleHolder> = self.decode(op, &resp)?;
            items.extend(page.value);
            if let Some(link) = page.next_link {
                let link = url.join(&link).map_err(|e| GraphError::Decode {
                    operation: op,
                    message: format!("invalid nextLink {link:?}: {e}"),
                    request_id: None,
                })?;
                if link.origin() != arm.origin || link == url {
                    return Err(GraphError::Decode {
                        operation: op,
                        message: format!(
                            "nextLink {} is outside the ARM URL {} or repeats the page; refusing to follow it",
                            link.origin().ascii_serialization(),
                            arm.origin.ascii_serialization()
                        ),
                        request_id: None,
                    });
                }
                next = Some(link);
            }
        }
        Ok(items)
    }
}

// ---- role management ("Microsoft Entra roles") ----

impl GraphClient {
    /// Everyone holding the Entra role definition `role_definition_id`, at any directory
    /// scope: its active role assignments, or with `eligible` its eligibility schedules.
    /// One `$filter` by role definition, every page: a read shared by every assignment that
    /// promises the role, whoever its target.
    pub async fn list_directory_role_holders(
        &self,
        role_definition_id: &str,
        eligible: bool,
    ) -> Result<Vec<DirectoryRoleHolder>, GraphError> {
        // Two operations, since each needs its own permission (`permission_hint`).
        let (op, path) = if eligible {
            (
                "list_directory_role_eligibilities",
                "/roleManagement/directory/roleEligibilitySchedules",
            )
        } else {
            (
                "list_directory_role_assignments",
                "/roleManagement/directory/roleAssignments",
            )
        };
        let filter = format!("roleDefinitionId eq {}", string_literal(role_definition_id));
        let url = self.url(
            op,
            path,
            &[
                ("$filter", &filter),
                (
                    "$select",
                    "id,principalId,roleDefinitionId,directoryScopeId",
                ),
            ],
        )?;
        self.get_paged(op, url).await
    }
}

// ---- PIM for Groups ----

impl GraphClient {
    /// Every eligibility for `access` (`member` or `owner`) of group `group_id` through
    /// Privileged Identity Management for Groups: one `$filter` by group and relationship,
    /// every page, shared by every assignment that promises it, whoever its target.
    /// Schedules, not schedule instances: a schedule exists for the whole eligibility and
    /// carries its end date, so one that ended on schedule is told apart from one removed
    /// (docs/graph.md "PIM for Groups").
    pub async fn list_group_eligibilities(
        &self,
        group_id: &str,
        access_id: &str,
    ) -> Result<Vec<super::models::GroupEligibilitySchedule>, GraphError> {
        const OP: &str = "list_group_eligibilities";
        let filter = format!(
            "groupId eq {} and accessId eq {}",
            string_literal(group_id),
            string_literal(access_id)
        );
        let url = self.url(
            OP,
            "/identityGovernance/privilegedAccess/group/eligibilitySchedules",
            &[("$filter", &filter)],
        )?;
        self.get_paged(OP, url).await
    }
}

// ---- audit log ("Drift attribution") ----

impl GraphClient {
    /// The directory audit entries matching `filter` (one of the forms docs/graph.md
    /// "Drift attribution" lists), newest first, at most `max_pages` pages of 100: a
    /// bounded read, since only the latest few entries of one group or app matter.
    pub async fn list_directory_audits(
        &self,
        filter: &str,
        max_pages: usize,
    ) -> Result<Vec<super::models::DirectoryAudit>, GraphError> {
        Ok(self.directory_audits(filter, max_pages).await?.0)
    }

    /// As [`GraphClient::list_directory_audits`], and whether the entries are all those
    /// matching (false when `max_pages` ran out with more to read).
    pub async fn directory_audits(
        &self,
        filter: &str,
        max_pages: usize,
    ) -> Result<(Vec<super::models::DirectoryAudit>, bool), GraphError> {
        const OP: &str = "list_directory_audits";
        let url = self.url(
            OP,
            "/auditLogs/directoryAudits",
            &[
                ("$filter", filter),
                ("$orderby", "activityDateTime desc"),
                ("$top", "100"),
            ],
        )?;
        let mut items = Vec::new();
        let mut next = Some(url);
        let mut pages = 0usize;
        while let Some(url) = next.take() {
            pages += 1;
            let page: Page<super::models::DirectoryAudit> = self.get_page(OP, url.clone()).await?;
            items.extend(page.value);
            if let Some(link) = page.next_link {
                if pages >= max_pages {
                    return Ok((items, false));
                }
                next = Some(self.checked_link(OP, &url, &link)?);
            }
        }
        Ok((items, true))
    }
}

/// Most group ids one delta query may filter on (docs/graph.md "Group delta").
pub const MAX_DELTA_GROUPS: usize = 50;

/// Membership changes found by one delta round, per group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupMembershipDelta {
    /// Per group id, members added and removed (net of replays within the round).
    pub changes: std::collections::BTreeMap<String, MemberChanges>,
    /// Groups reported as deleted.
    pub deleted_groups: std::collections::BTreeSet<String>,
    /// The link for the next round (store it whole; valid about 7 days).
    pub delta_link: String,
}

/// Added and removed member ids of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberChanges {
    /// Members added (or, on a first round, currently present).
    pub added: std::collections::BTreeSet<String>,
    /// Members removed.
    pub removed: std::collections::BTreeSet<String>,
}

/// Most requests one `$batch` may carry (docs/graph.md "JSON batching").
pub const MAX_BATCH: usize = 20;

/// One inner request of a `$batch`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchItem {
    /// Unique id within the batch; responses are correlated by it.
    pub id: String,
    /// HTTP method (`GET`, `POST`, ...).
    pub method: Method,
    /// URL relative to the version root, e.g. `/groups/g1/members?$select=id&$top=999`
    /// (see [`GraphClient::relative_url`] for turning a nextLink into one).
    pub url: String,
    /// JSON body; `Content-Type: application/json` is added for it.
    pub body: Option<serde_json::Value>,
    /// Extra inner headers (e.g. `ConsistencyLevel`).
    pub headers: Vec<(String, String)>,
}

impl BatchItem {
    /// A GET of `url` (relative to the version root).
    pub fn get(id: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            method: Method::GET,
            url: url.into(),
            body: None,
            headers: Vec::new(),
        }
    }

    /// A body-less POST (e.g. a `reprocess` action).
    pub fn post(id: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: Method::POST,
            ..Self::get(id, url)
        }
    }
}

/// One inner response of a `$batch`.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchResult {
    /// The request id it answers.
    pub id: String,
    /// Inner HTTP status.
    pub status: u16,
    /// Inner headers (names lower-cased).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Inner body (`null` when empty).
    pub body: serde_json::Value,
}

impl BatchResult {
    /// True for a 2xx inner status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The inner `request-id` header, if any.
    pub fn request_id(&self) -> Option<&str> {
        self.headers.get("request-id").map(String::as_str)
    }

    /// Decodes a successful inner body, or maps a failed one to the same typed error a
    /// direct call would give, named `operation`.
    pub fn into_result<T: DeserializeOwned>(
        self,
        operation: &'static str,
    ) -> Result<T, GraphError> {
        let request_id = self.request_id().map(str::to_string);
        if self.is_success() {
            return serde_json::from_value(self.body).map_err(|e| GraphError::Decode {
                operation,
                message: format!("batch item: {e}"),
                request_id,
            });
        }
        let retry_after = self
            .headers
            .get("retry-after")
            .and_then(|v| super::retry::parse_retry_after(v, std::time::SystemTime::now()));
        let body = serde_json::to_vec(&self.body).unwrap_or_default();
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        Err(map_error(
            operation,
            RawResponse {
                status,
                headers: reqwest::header::HeaderMap::new(),
                body: body.into(),
                request_id,
                retry_after,
            },
        ))
    }
}

#[derive(serde::Deserialize)]
struct BatchEnvelope {
    #[serde(default)]
    responses: Vec<BatchWireResponse>,
}

#[derive(serde::Deserialize)]
struct BatchWireResponse {
    id: String,
    status: u16,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    body: serde_json::Value,
}

impl GraphClient {
    /// The part of an absolute Graph URL (e.g. a nextLink) after the version root, for use
    /// in a [`BatchItem`]; `None` if it is not under this client's base URL.
    pub fn relative_url(&self, absolute: &str) -> Option<String> {
        absolute
            .strip_prefix(&self.inner.base)
            .filter(|rest| rest.starts_with('/'))
            .map(str::to_string)
    }

    /// Sends up to [`MAX_BATCH`] requests in one `POST /$batch` ("JSON batching") and returns one
    /// result per item, in the order given. Inner 429s are resent (only those) after the
    /// longest inner `Retry-After`, up to the retry limit; whatever is still throttled is
    /// returned as is. Inner failures are results, not errors: check each with
    /// [`BatchResult::into_result`].
    pub async fn batch(&self, items: &[BatchItem]) -> Result<Vec<BatchResult>, GraphError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        check_batch(items)?;
        // Only an all-GET batch may be resent blindly after an ambiguous failure.
        let retry = if items.iter().all(|i| i.method == Method::GET) {
            RetryMode::Idempotent
        } else {
            RetryMode::NonIdempotent
        };
        let url = self.url(BATCH_OP, "/$batch", &[])?;
        let mut results: std::collections::HashMap<String, BatchResult> = Default::default();
        let mut pending: Vec<&BatchItem> = items.iter().collect();
        // The same policy as a direct call's retries: one retry per round of resent items.
        let mut retries = self.inner.http.retries();
        loop {
            let round = self
                .batch_round(&url, retry, &pending, &mut results)
                .await?;
            if round.throttled.is_empty() {
                break;
            }
            // The throttled items wait for the longest Retry-After among them; a zero one
            // says nothing useful about when they may go again, so they back off instead.
            // Out of retries, or told to wait longer than the client sleeps through, they
            // are returned as they are.
            let Some(wait) = retries.next_wait(round.longest_wait.filter(|d| !d.is_zero())) else {
                break;
            };
            self.inner.http.back_off(BATCH_OP, Some(429), wait).await;
            pending = round.throttled;
        }
        items
            .iter()
            .map(|i| {
                results.remove(&i.id).ok_or_else(|| GraphError::Decode {
                    operation: BATCH_OP,
                    message: format!("batch response lacks item {:?}", i.id),
                    request_id: None,
                })
            })
            .collect()
    }

    /// Sends `pending` in one envelope and files every answer in `results` (a resent
    /// item's new answer replaces the old one). Fails when an item goes unanswered.
    async fn batch_round<'a>(
        &self,
        url: &Url,
        retry: RetryMode,
        pending: &[&'a BatchItem],
        results: &mut std::collections::HashMap<String, BatchResult>,
    ) -> Result<BatchRound<'a>, GraphError> {
        let wire: Vec<serde_json::Value> = pending.iter().map(|i| batch_wire(i)).collect();
        let request = GraphRequest::post(
            BATCH_OP,
            url.clone(),
            Some(json!({"requests": wire})),
            retry,
        );
        // One doc version answers a batch holding throttled items with 424 instead of 200
        // ("JSON batching"); its body still lists the per-item responses.
        let resp = self.send_accepting(&request, &[424]).await?;
        let envelope: BatchEnvelope = self.decode(BATCH_OP, &resp)?;
        let mut round = BatchRound {
            throttled: Vec::new(),
            longest_wait: None,
        };
        for r in envelope.responses {
            let Some(item) = pending.iter().find(|i| i.id == r.id) else {
                continue;
            };
            let (result, wait) = self.inner_response(item, r);
            if result.status == 429 {
                round.longest_wait = round.longest_wait.max(wait);
                round.throttled.push(item);
            }
            results.insert(result.id.clone(), result);
        }
        let missing: Vec<&str> = pending
            .iter()
            .filter(|i| !results.contains_key(&i.id))
            .map(|i| i.id.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(GraphError::Decode {
                operation: BATCH_OP,
                message: format!("batch response lacks items {missing:?}"),
                request_id: resp.request_id,
            });
        }
        Ok(round)
    }

    /// One inner response to `item`, headers lower-cased, with its `Retry-After` (any
    /// status may carry one), which is applied to the item's throttling scope.
    fn inner_response(
        &self,
        item: &BatchItem,
        r: BatchWireResponse,
    ) -> (BatchResult, Option<std::time::Duration>) {
        let headers: std::collections::BTreeMap<String, String> = r
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let wait = headers
            .get("retry-after")
            .and_then(|v| super::retry::parse_retry_after(v, std::time::SystemTime::now()));
        // An inner refusal binds the whole throttling scope, as a direct one does:
        // no call of this client in that scope goes out before its Retry-After.
        if let Some(after) = wait {
            let path = item.url.split('?').next().unwrap_or_default();
            self.inner
                .http
                .refused(super::http::throttle_scope(path), r.status, after);
        }
        let result = BatchResult {
            id: r.id,
            status: r.status,
            headers,
            body: r.body,
        };
        (result, wait)
    }
}

/// What `GraphClient::batch` calls its requests (operation name in errors and metrics).
const BATCH_OP: &str = "batch";

/// The items of one batch round Graph throttled, and the longest `Retry-After` among them.
struct BatchRound<'a> {
    throttled: Vec<&'a BatchItem>,
    longest_wait: Option<std::time::Duration>,
}

/// Refuses a batch Graph would reject whole: too many items, a duplicate id, or a URL
/// not relative to the version root.
fn check_batch(items: &[BatchItem]) -> Result<(), GraphError> {
    if items.len() > MAX_BATCH {
        return Err(GraphError::InvalidArgument {
            operation: BATCH_OP,
            message: format!(
                "{} requests in one batch; the limit is {MAX_BATCH}",
                items.len()
            ),
        });
    }
    let mut ids = std::collections::HashSet::new();
    for item in items {
        if !ids.insert(item.id.as_str()) {
            return Err(GraphError::InvalidArgument {
                operation: BATCH_OP,
                message: format!("duplicate batch id {:?}", item.id),
            });
        }
        if !item.url.starts_with('/') {
            return Err(GraphError::InvalidArgument {
                operation: BATCH_OP,
                message: format!(
                    "batch url {:?} must be relative to the version root",
                    item.url
                ),
            });
        }
    }
    Ok(())
}

fn batch_wire(item: &BatchItem) -> serde_json::Value {
    let mut v = json!({"id": item.id, "method": item.method.as_str(), "url": item.url});
    let mut headers: serde_json::Map<String, serde_json::Value> = item
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if let Some(body) = &item.body {
        v["body"] = body.clone();
        headers
            .entry("Content-Type")
            .or_insert_with(|| json!("application/json"));
    }
    if !headers.is_empty() {
        v["headers"] = serde_json::Value::Object(headers);
    }
    v
}

/// Maps a non-2xx Graph response to a typed error (docs/graph.md "Errors").
fn map_error(operation: &'static str, resp: RawResponse) -> GraphError {
    let envelope = serde_json::from_slice::<ErrorEnvelope>(&resp.body).ok();
    let (code, message) = match &envelope {
        Some(env) => (env.error.code.clone(), env.error.message.clone()),
        None => (String::new(), excerpt(&resp.body)),
    };
    let request_id = resp.request_id.clone().or_else(|| {
        envelope
            .as_ref()
            .and_then(|e| e.error.inner_error.as_ref())
            .and_then(|ie| ie.get("request-id"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    });
    let status = resp.status.as_u16();
    match status {
        401 => GraphError::Unauthorized {
            operation,
            code,
            message,
            request_id,
        },
        403 => GraphError::Forbidden {
            operation,
            code,
            message,
            request_id,
            hint: permission_hint(operation),
        },
        404 => GraphError::NotFound {
            operation,
            code,
            message,
            request_id,
        },
        429 => GraphError::Throttled {
            operation,
            retry_after: resp.retry_after,
            request_id,
        },
        500..=599 => GraphError::Server {
            operation,
            status,
            code,
            message,
            retry_after: resp.retry_after,
            request_id,
        },
        _ => GraphError::BadRequest {
            operation,
            status,
            code,
            message,
            request_id,
        },
    }
}

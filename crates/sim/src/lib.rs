//! A Microsoft Graph + Entra token endpoint simulator (`redeliver sim`).
//!
//! A real HTTP(S) server implementing the subset of Graph v1.0 that Redeliver uses, with
//! the same paths, JSON shapes, paging, errors and throttling (docs/graph.md), plus a
//! separate admin API for scenarios. Start it in-process with [`Simulator::start`] or from
//! the command line with [`run`] (`redeliver sim`).
//!
//! The behaviour it models, its URLs, the admin API (`/_sim/...`) and the fault kinds are
//! documented in docs/simulator.md; change it together with the admin router
//! (`admin.rs`) and [`FaultSpec`], or the documented API drifts from the served one.

mod admin;
mod arm;
mod audit;
mod batch;
mod cli;
mod delta;
mod dispatch;
mod drift;
mod graph;
mod latency;
mod odata;
mod risk;
mod scenario;
mod server;
mod state;
mod states;
mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use admin::AdminError;
pub use cli::{SimArgs, run};
pub use latency::{LatencyDist, LatencyModel, LatencyParseError, RouteClass};
pub use scenario::{
    AccessPackageSpec, AppRoleGrantSpec, AppRoleSpec, AssignmentSpec, AzureRoleSpec, CatalogSpec,
    ClientSpec, DirectoryRoleSpec, GroupSpec, PolicySpec, RequestSpec, ResourceSpec,
    SCENARIO_API_VERSION, SCENARIO_KIND, Scenario, ScenarioBuilder, ScenarioError,
    ScenarioMetadata, ScenarioSpec, ServicePrincipalSpec, SubscriptionSpec, SyntheticResource,
    SyntheticTenant, TenantSpec, UserSpec, derive_id,
};
pub use server::{FaultScope, FaultSpec, LogEntry, PathUsage, RuBucket, Usage};

use server::{Shared, Sim};
use state::World;

/// HTTPS settings.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Where to write the generated CA certificate (PEM) so clients can trust it.
    pub ca_out: Option<PathBuf>,
}

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Listen address; default `127.0.0.1:0` (a free port).
    pub listen: SocketAddr,
    /// Serve HTTPS with a generated self-signed CA when set.
    pub tls: Option<TlsOptions>,
    /// Lifetime of issued access tokens (`expires_in`); default 1 h.
    pub token_lifetime: Duration,
    /// Delay of each step of `adminAdd`/`adminRemove` processing; default 1 s.
    pub request_delay: Duration,
    /// Delay before a reprocess takes effect; default 2 s.
    pub reprocess_delay: Duration,
    /// RU token bucket; default off.
    pub ru_bucket: Option<RuBucket>,
    /// Delays per route class (docs/simulator.md, "Latency model"); default off.
    pub latency: LatencyModel,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            tls: None,
            token_lifetime: Duration::from_secs(3600),
            request_delay: Duration::from_secs(1),
            reprocess_delay: Duration::from_secs(2),
            ru_bucket: None,
            latency: LatencyModel::default(),
        }
    }
}

impl SimOptions {
    /// Options for tests: free loopback port, fast background processing (50 ms).
    pub fn fast() -> Self {
        Self {
            request_delay: Duration::from_millis(50),
            reprocess_delay: Duration::from_millis(50),
            ..Self::default()
        }
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// Binding the listener or writing the CA file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate the simulator's TLS certificate: {0}")]
    Tls(String),
}

/// Entry point: `Simulator::start(scenario, options)`.
pub struct Simulator;

enum Server {
    Plain(oneshot::Sender<()>),
    Tls(axum_server::Handle<SocketAddr>),
}

/// A running simulator. Dropping it leaves the server running until the runtime ends;
/// call [`SimHandle::shutdown`] to stop it.
pub struct SimHandle {
    /// Graph root without `/v1.0`, e.g. `http://127.0.0.1:43123`.
    pub graph_url: String,
    /// Azure Resource Manager root, e.g. `http://127.0.0.1:43123/arm` (token scope
    /// `{arm_url}/.default`).
    pub arm_url: String,
    /// Token authority root, e.g. `http://127.0.0.1:43123` (token URL
    /// `{authority_host}/{tenant_id}/oauth2/v2.0/token`).
    pub authority_host: String,
    /// Admin API root, e.g. `http://127.0.0.1:43123/_sim`.
    pub admin_url: String,
    /// Tenant id (GUID).
    pub tenant_id: String,
    /// Tenant verified domain (also accepted in token URLs).
    pub tenant_domain: String,
    /// Client (application) id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Bound socket address.
    pub local_addr: SocketAddr,
    /// The CA certificate (PEM) when serving HTTPS.
    pub ca_pem: Option<String>,
    /// Where the CA PEM was written, if requested.
    pub ca_file: Option<PathBuf>,
    shared: Arc<Shared>,
    server: Server,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client secret is a throwaway, but keep it out of test logs anyway.
        f.debug_struct("SimHandle")
            .field("graph_url", &self.graph_url)
            .field("authority_host", &self.authority_host)
            .field("admin_url", &self.admin_url)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("local_addr", &self.local_addr)
            .field("tls", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SimError {
    let context = context.into();
    move |source| SimError::Io { context, source }
}

impl Simulator {
    /// Loads the scenario, binds the listener and serves in a background task.
    pub async fn start(scenario: Scenario, opts: SimOptions) -> Result<SimHandle, SimError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let world = World::from_scenario(&scenario)?;
        let listener = std::net::TcpListener::bind(opts.listen)
            .map_err(io(format!("cannot listen on {}", opts.listen)))?;
        listener
            .set_nonblocking(true)
            .map_err(io("cannot configure the listener"))?;
        let local_addr = listener
            .local_addr()
            .map_err(io("cannot read the listener address"))?;
        let host = match local_addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let base_url = format!("{scheme}://{host}:{}", local_addr.port());

        let tls_material = match &opts.tls {
            None => None,
            Some(t) => {
                let extra = vec![local_addr.ip().to_string()];
                let material = tls::generate(&extra).map_err(|e| SimError::Tls(e.to_string()))?;
                if let Some(path) = &t.ca_out {
                    std::fs::write(path, &material.ca_pem).map_err(io(format!(
                        "cannot write the CA certificate to {}",
                        path.display()
                    )))?;
                }
                Some(material)
            }
        };

        let (tenant_id, tenant_domain, client_id, client_secret) = (
            world.tenant_id.clone(),
            world.tenant_domain.clone(),
            world.client_id.clone(),
            world.client_secret.clone(),
        );
        let shared = Arc::new(Shared {
            inner: Mutex::new(Sim::new(world, opts.ru_bucket, opts.latency)),
            opts: opts.clone(),
            scenario,
            base_url: base_url.clone(),
            started: Instant::now(),
            pending: std::sync::atomic::AtomicUsize::new(0),
        });
        let app = router(shared.clone());

        let (server, task, ca_pem) = match tls_material {
            None => {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(io("cannot register the listener with tokio"))?;
                let (tx, rx) = oneshot::channel::<()>();
                let task = tokio::spawn(async move {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = rx.await;
                    });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "simulator server stopped");
                    }
                });
                (Server::Plain(tx), task, None)
            }
            Some(material) => {
                let config = axum_server::tls_rustls::RustlsConfig::from_pem(
                    material.cert_pem.into_bytes(),
                    material.key_pem.into_bytes(),
                )
                .await
                .map_err(io("cannot load the generated TLS certificate"))?;
                let handle = axum_server::Handle::<SocketAddr>::new();
                let server = axum_server::from_tcp_rustls(listener, config)
                    .map_err(io("cannot start the TLS listener"))?
                    .handle(handle.clone());
                let task = tokio::spawn(async move {
                    if let Err(e) = server.serve(app.into_make_service()).await {
                        tracing::error!(error = %e, "simulator server stopped");
                    }
                });
                (Server::Tls(handle), task, Some(material.ca_pem))
            }
        };

        Ok(SimHandle {
            admin_url: format!("{base_url}/_sim"),
            authority_host: base_url.clone(),
            arm_url: format!("{base_url}/arm"),
            graph_url: base_url,
            tenant_id,
            tenant_domain,
            client_id,
            client_secret,
            local_addr,
            ca_pem,
            ca_file: opts.tls.as_ref().and_then(|t| t.ca_out.clone()),
            shared,
            server,
            task,
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token::token))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(token::openid_configuration),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(token::jwks))
        .route("/common/discovery/instance", get(token::instance_discovery))
        .merge(admin::router())
        .fallback(dispatch::entry)
        .layer(axum::middleware::from_fn(correlation))
        .with_state(shared)
}

/// Gives token, discovery and admin responses the same `request-id` /
/// `client-request-id` headers Graph responses carry (Graph paths set their own).
async fn correlation(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let client_request_id = req.headers().get("client-request-id").cloned();
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    if !headers.contains_key("request-id") {
        let id = server::new_request_id();
        if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
            headers.insert("request-id", v.clone());
            if !headers.contains_key("client-request-id") {
                headers.insert("client-request-id", client_request_id.unwrap_or(v));
            }
        }
    }
    resp
}

mod token;

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl SimHandle {
    /// The environment that points `redeliver` (or any Azure SDK) at this simulator:
    /// tenant, client, the simulator's own throwaway secret, authority and Graph URL.
    pub fn graph_env(&self) -> [(&'static str, &str); 6] {
        [
            ("AZURE_TENANT_ID", &self.tenant_id),
            ("AZURE_CLIENT_ID", &self.client_id),
            ("AZURE_CLIENT_SECRET", &self.client_secret),
            ("AZURE_AUTHORITY_HOST", &self.authority_host),
            ("REDELIVER_GRAPH_URL", &self.graph_url),
            ("REDELIVER_ARM_URL", &self.arm_url),
        ]
    }

    /// Shell `export` lines for the operator / CLI (secret included: it is the
    /// simulator's own throwaway secret).
    pub fn env_exports(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.graph_env() {
            out.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        if let Some(ca) = &self.ca_file {
            out.push_str(&format!(
                "export REDELIVER_CA_FILE={}\n",
                shell_quote(&ca.display().to_string())
            ));
        }
        out
    }

    /// Token endpoint URL for this tenant.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_host, self.tenant_id
        )
    }

    /// Issues a valid access token directly (no HTTP), for tests.
    pub fn mint_token(&self) -> String {
        let token = format!("sim.test.{}", uuid::Uuid::new_v4().simple());
        let mut sim = self.shared.lock();
        let lifetime = jiff::SignedDuration::try_from(self.shared.opts.token_lifetime)
            .unwrap_or(jiff::SignedDuration::from_hours(1));
        let exp = sim.world.now() + lifetime;
        sim.tokens.insert(token.clone(), exp);
        token
    }

    /// Every access token the token endpoint (or [`SimHandle::mint_token`]) has issued and
    /// still knows, so tests can prove no token ever reaches a log.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().tokens.keys().cloned().collect()
    }

    /// Outside change: removes `user` (UPN or id) from `group` (name or id).
    pub fn remove_member(&self, group: &str, user: &str) -> Result<bool, AdminError> {
        self.shared.admin_remove_member(group, user)
    }

    /// Outside change: removes `user` (UPN or id) from `group`'s owners.
    pub fn remove_owner(&self, group: &str, user: &str) -> Result<bool, AdminError> {
        self.shared.admin_remove_owner(group, user)
    }

    /// Outside change made by `actor` (a UPN names a user, anything else an app), as the
    /// audit log will say.
    pub fn remove_member_by(
        &self,
        group: &str,
        user: &str,
        actor: &str,
    ) -> Result<bool, AdminError> {
        self.shared.admin_remove_member_by(group, user, Some(actor))
    }

    /// Outside app role removal made by `actor`, as the audit log will say.
    pub fn remove_app_role_by(
        &self,
        app: &str,
        user: &str,
        role: Option<&str>,
        actor: &str,
    ) -> Result<usize, AdminError> {
        self.shared
            .admin_remove_app_role_by(app, user, role, Some(actor))
    }

    /// Sets `user`'s `accountEnabled` (a leaver workflow, an incident responder); returns
    /// whether it changed. Entitlement management keeps delivering to a disabled account.
    pub fn set_account_enabled(&self, user: &str, enabled: bool) -> Result<bool, AdminError> {
        self.shared.admin_set_account_enabled(user, enabled)
    }

    /// Deletes `user`: Graph answers 404 for it and it leaves every membership.
    pub fn delete_user(&self, user: &str) -> Result<(), AdminError> {
        self.shared.admin_delete_user(user)
    }

    /// Identity Protection flags `user` with `risk_level` and `risk_state` (Graph's
    /// literals, e.g. `high` / `atRisk`).
    pub fn set_risky_user(
        &self,
        user: &str,
        risk_level: &str,
        risk_state: &str,
    ) -> Result<(), AdminError> {
        self.shared
            .admin_set_risky_user(user, risk_level, risk_state)
    }

    /// Identity Protection forgets `user`; returns whether it was listed.
    pub fn clear_risky_user(&self, user: &str) -> Result<bool, AdminError> {
        self.shared.admin_clear_risky_user(user)
    }

    /// Takes an application permission the simulator checks (`User.Read.All`,
    /// `IdentityRiskyUser.Read.All`) from the app, or gives it back: the reads that need
    /// it answer 403 meanwhile.
    pub fn set_permission(&self, permission: &str, granted: bool) -> Result<(), AdminError> {
        self.shared.admin_set_permission(permission, granted)
    }

    /// Holds audit log entries back for `lag` (simulated time), like Entra's delay.
    pub fn set_audit_lag(&self, lag: jiff::SignedDuration) {
        self.shared.admin_set_audit_lag(lag)
    }

    /// Outside change: adds `user` to `group`.
    pub fn add_member(&self, group: &str, user: &str) -> Result<bool, AdminError> {
        self.shared.admin_add_member(group, user)
    }

    /// Outside change: removes `user`'s app role assignment(s) on `app`.
    pub fn remove_app_role(
        &self,
        app: &str,
        user: &str,
        role: Option<&str>,
    ) -> Result<usize, AdminError> {
        self.shared.admin_remove_app_role(app, user, role)
    }

    /// Outside change: grants `user` an app role on `app`.
    pub fn add_app_role(
        &self,
        app: &str,
        user: &str,
        role: Option<&str>,
    ) -> Result<bool, AdminError> {
        self.shared.admin_add_app_role(app, user, role)
    }

    /// Forces an assignment state (e.g. `deliveryFailed`).
    pub fn set_assignment_state(&self, id: &str, state: &str) -> Result<(), AdminError> {
        self.shared.admin_set_assignment_state(id, state)
    }

    /// Forces a request state; `completed_ago` like `20d` moves `completedDateTime`.
    pub fn set_request_state(
        &self,
        id: &str,
        state: &str,
        completed_ago: Option<&str>,
    ) -> Result<(), AdminError> {
        self.shared
            .admin_set_request_state(id, state, completed_ago)
    }

    /// Injects a fault; returns its id.
    pub fn inject_fault(&self, fault: FaultSpec) -> u64 {
        self.shared.admin_inject_fault(fault)
    }

    /// How many requests the injected fault `id` has affected so far; a latency fault counts
    /// a request when its delay begins (a test waits on this for "a request is being held").
    pub fn fault_hits(&self, id: u64) -> u64 {
        self.shared.admin_fault_hits(id)
    }

    /// Removes one fault; false if it already ended.
    pub fn remove_fault(&self, id: u64) -> bool {
        self.shared.admin_remove_fault(id)
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.shared.admin_clear_faults()
    }

    /// Enables or disables RU throttling.
    pub fn set_ru_bucket(&self, bucket: Option<RuBucket>) {
        self.shared.admin_set_ru_bucket(bucket)
    }

    /// Replaces the latency model (`LatencyModel::default()` turns it off). The request
    /// sequence the delays are drawn from goes on.
    pub fn set_latency(&self, model: LatencyModel) {
        self.shared.lock().latency = model;
    }

    /// The request log.
    pub fn request_log(&self) -> Vec<LogEntry> {
        self.shared.admin_request_log()
    }

    /// Clears the request log and counters.
    pub fn clear_request_log(&self) {
        self.shared.admin_clear_log()
    }

    /// Requests and resource units since the log was last cleared: in total, per path
    /// and per route (ids replaced by `{id}`).
    pub fn usage(&self) -> Usage {
        self.shared.admin_usage()
    }

    /// Expires every group delta token issued so far: the next round with one answers
    /// `410 Gone` (`resyncRequired`).
    pub fn expire_delta_tokens(&self) {
        self.shared.admin_expire_delta_tokens()
    }

    /// Request counts keyed by `METHOD /path`.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.shared.admin_counters()
    }

    /// Number of logged requests with this method whose path (without query) starts with
    /// `path_prefix` (e.g. `/v1.0/identityGovernance/entitlementManagement/assignments/`).
    pub fn count_requests(&self, method: &str, path_prefix: &str) -> usize {
        self.request_log()
            .iter()
            .filter(|e| e.method.eq_ignore_ascii_case(method) && e.path.starts_with(path_prefix))
            .count()
    }

    /// Back to the loaded scenario.
    pub fn reset(&self) -> Result<(), AdminError> {
        self.shared.admin_reset()
    }

    /// Moves simulated time forward.
    pub fn advance_clock(&self, by: Duration) {
        self.shared
            .admin_advance_clock(jiff::SignedDuration::try_from(by).unwrap_or_default())
    }

    /// The `/_sim/state` snapshot.
    pub fn snapshot(&self) -> Value {
        self.shared.admin_snapshot()
    }

    /// Object id of a user by UPN.
    pub fn user_id(&self, upn: &str) -> Option<String> {
        self.shared.lock().world.user_ref(upn).map(|u| u.id.clone())
    }

    /// Object id of a group by display name.
    pub fn group_id(&self, name: &str) -> Option<String> {
        self.shared
            .lock()
            .world
            .group_ref(name)
            .map(|g| g.id.clone())
    }

    /// Object id of a service principal by display name or app id.
    pub fn service_principal_id(&self, name: &str) -> Option<String> {
        self.shared.lock().world.sp_ref(name).map(|s| s.id.clone())
    }

    /// Id of an access package by display name.
    pub fn package_id(&self, name: &str) -> Option<String> {
        self.shared
            .lock()
            .world
            .package_named(name)
            .map(|p| p.id.clone())
    }

    /// Id of a package's policy by display name (`None` = the package's first policy).
    pub fn policy_id(&self, package: &str, policy: Option<&str>) -> Option<String> {
        let sim = self.shared.lock();
        let w = &sim.world;
        let pkg = w.package_named(package).or_else(|| w.package(package))?;
        w.policies
            .iter()
            .filter(|p| p.package_id == pkg.id)
            .find(|p| policy.is_none_or(|n| p.display_name.eq_ignore_ascii_case(n)))
            .map(|p| p.id.clone())
    }

    /// The newest non-expired assignment of `user` (UPN or id) for `package` (name or id).
    pub fn assignment_id(&self, user: &str, package: &str) -> Option<String> {
        let sim = self.shared.lock();
        let w = &sim.world;
        let uid = w.user_ref(user)?.id.clone();
        let pkg = w
            .package_named(package)
            .or_else(|| w.package(package))?
            .id
            .clone();
        w.assignments
            .iter()
            .rev()
            .find(|a| {
                a.target_id == uid
                    && a.package_id == pkg
                    && a.state != states::AssignmentState::Expired
            })
            .map(|a| a.id.clone())
    }

    /// Current state literal of an assignment.
    pub fn assignment_state(&self, id: &str) -> Option<String> {
        self.shared
            .lock()
            .world
            .assignment(id)
            .map(|a| a.state.as_str().to_string())
    }

    /// Current state literal of a request.
    pub fn request_state(&self, id: &str) -> Option<String> {
        self.shared
            .lock()
            .world
            .request(id)
            .map(|r| r.state.as_str().to_string())
    }

    /// Names of the groups/apps an assignment promises that are not really in place.
    pub fn missing_resources(&self, assignment_id: &str) -> Vec<String> {
        self.shared.lock().world.missing_grants(assignment_id)
    }

    /// Outside change: removes `user`'s eligibility for `group`'s ownership (`owner`) or
    /// membership, as an admin in PIM for Groups would.
    pub fn remove_group_eligibility(
        &self,
        group: &str,
        user: &str,
        owner: bool,
    ) -> Result<bool, AdminError> {
        self.shared
            .admin_remove_group_eligibility(group, user, owner)
    }

    /// Ends `user`'s eligibility for `group`'s ownership (`owner`) or membership at `end`.
    pub fn end_group_eligibility(
        &self,
        group: &str,
        user: &str,
        owner: bool,
        end: jiff::Timestamp,
    ) -> Result<bool, AdminError> {
        self.shared
            .admin_end_group_eligibility(group, user, owner, end)
    }

    /// Whether `user` is eligible (ended or not) for `group`'s ownership (`owner`) or
    /// membership.
    pub fn has_group_eligibility(&self, group: &str, user: &str, owner: bool) -> bool {
        let sim = self.shared.lock();
        let w = &sim.world;
        match (
            w.group_named(group).or_else(|| w.group(group)),
            w.user_ref(user),
        ) {
            (Some(g), Some(u)) => w.has_group_eligibility(&g.id, &u.id, owner),
            _ => false,
        }
    }

    /// Outside change: removes `user`'s Entra role `role` (name or role definition id) at
    /// the directory root, its eligibility when `eligible`, else its active assignment.
    pub fn remove_directory_role(
        &self,
        role: &str,
        user: &str,
        eligible: bool,
    ) -> Result<bool, AdminError> {
        self.shared
            .admin_remove_directory_role(role, user, eligible)
    }

    /// Whether `user` holds the Entra role `role` (name or id) at the directory root,
    /// eligible or active as `eligible` says.
    pub fn has_directory_role(&self, role: &str, user: &str, eligible: bool) -> bool {
        let sim = self.shared.lock();
        let w = &sim.world;
        match (w.role_definition_named(role), w.user_ref(user)) {
            (Some(d), Some(u)) => w.has_directory_role(&d.id, &u.id, eligible),
            _ => false,
        }
    }

    /// The id of the Entra role definition named `name`.
    pub fn role_definition_id(&self, name: &str) -> Option<String> {
        self.shared
            .lock()
            .world
            .role_definition_named(name)
            .map(|d| d.id.clone())
    }

    /// Outside change: removes `user`'s Azure role `role` (name or GUID) at exactly
    /// `scope`, its eligibility when `eligible`, else its active assignment.
    pub fn remove_azure_role(
        &self,
        role: &str,
        scope: &str,
        user: &str,
        eligible: bool,
    ) -> Result<bool, AdminError> {
        self.shared
            .admin_remove_azure_role(role, scope, user, eligible)
    }

    /// Whether `user` holds Azure role `role` (name or GUID) at exactly `scope`.
    pub fn has_azure_role(&self, role: &str, scope: &str, user: &str, eligible: bool) -> bool {
        let sim = self.shared.lock();
        let w = &sim.world;
        let guid = w
            .azure_roles
            .iter()
            .find(|d| d.display_name.eq_ignore_ascii_case(role) || d.id.eq_ignore_ascii_case(role))
            .map(|d| d.id.clone());
        match (guid, w.user_ref(user)) {
            (Some(g), Some(u)) => w.has_azure_role(&g, scope, &u.id, eligible),
            _ => false,
        }
    }

    /// The id of the Azure subscription named `name`.
    pub fn subscription_id(&self, name: &str) -> Option<String> {
        self.shared
            .lock()
            .world
            .subscriptions
            .iter()
            .find(|s| s.display_name.eq_ignore_ascii_case(name))
            .map(|s| s.id.clone())
    }

    /// Takes Reader away from the simulated app at `scope` (and below).
    pub fn deny_arm_reads(&self, scope: &str) {
        self.shared.admin_deny_arm_reads(scope)
    }

    /// Makes Microsoft's access drift report say exactly `missing` (UPNs or ids) lack
    /// `resource` (a group or service principal, by name or id): a lagging report.
    pub fn set_reported_drift(&self, resource: &str, missing: &[&str]) -> Result<(), AdminError> {
        let missing: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
        self.shared.admin_set_reported_drift(resource, &missing)
    }

    /// Makes every access drift report request answer `status` (`None`: available).
    pub fn set_drift_report_unavailable(&self, status: Option<u16>) {
        self.shared.admin_set_drift_report_unavailable(status)
    }

    /// Limits ARM reads to `reads` per `window` (`None`: unlimited).
    pub fn set_arm_read_quota(&self, quota: Option<(u32, Duration)>) {
        self.shared.admin_set_arm_read_quota(quota)
    }

    /// Whether `user` is a direct member of `group`.
    pub fn is_member(&self, group: &str, user: &str) -> bool {
        let sim = self.shared.lock();
        let w = &sim.world;
        match (w.group_ref(group), w.user_ref(user)) {
            (Some(g), Some(u)) => g.members.contains(&u.id),
            _ => false,
        }
    }

    /// Number of background operations (request processing steps, reprocesses) still
    /// scheduled.
    pub fn pending_work(&self) -> usize {
        self.shared
            .pending
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until no background work is scheduled (every accepted request and reprocess
    /// has taken effect, or was dropped), polling every 10 ms. Returns false on timeout.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.pending_work() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn shutdown(self) {
        match self.server {
            Server::Plain(tx) => {
                let _ = tx.send(());
            }
            Server::Tls(h) => h.graceful_shutdown(Some(Duration::from_secs(2))),
        }
        // Graceful shutdown waits for open connections; do not hang on a stuck client.
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

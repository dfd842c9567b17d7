//! The flags of `redeliver controller` ([`ControllerArgs`]), converted into the library's
//! [`ControllerOptions`].

use std::net::SocketAddr;
use std::time::Duration;

use redeliver::controller::ControllerOptions;

use crate::GraphArgs;

/// Options of `redeliver controller`. Every flag has an environment-variable equivalent.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Microsoft Graph connection and credentials.
    #[command(flatten)]
    pub graph: GraphArgs,

    /// Namespace to watch (repeat for several). All namespaces when omitted. Comma-separated
    /// in the environment variable.
    #[arg(
        long = "namespace",
        env = "REDELIVER_NAMESPACES",
        value_name = "NAMESPACE",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,

    /// Reconciles running at once (both kinds, all namespaces together).
    #[arg(long, env = "REDELIVER_CONCURRENCY", value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Verify interval for objects whose spec.verifyInterval is unusable (e.g. 10m, 1h).
    #[arg(long, env = "REDELIVER_VERIFY_INTERVAL", value_name = "DURATION", default_value = "10m", value_parser = redeliver::api::parse_duration_arg)]
    pub verify_interval: Duration,

    /// Reprocess calls allowed per minute across all objects (a token bucket; bursts up to the
    /// same number). 0 disables reprocessing: assignments report drift only, and say so.
    #[arg(
        long,
        env = "REDELIVER_REPROCESS_RATE",
        value_name = "PER_MINUTE",
        default_value_t = 30
    )]
    pub reprocess_rate: u32,

    /// Address of the /metrics, /livez and /readyz endpoint.
    #[arg(
        long,
        env = "REDELIVER_METRICS_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,

    /// Run the controllers only while holding a coordination.k8s.io Lease, so that of several
    /// replicas exactly one reconciles.
    #[arg(long, env = "REDELIVER_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Name of the Lease used for leader election (with --leader-election only: alone it
    /// would have no effect, and is refused).
    #[arg(
        long,
        env = "REDELIVER_LEASE_NAME",
        value_name = "NAME",
        default_value = "redeliver",
        requires = "leader_election"
    )]
    pub lease_name: String,

    /// Namespace of the Lease (normally the pod's own, via the downward API).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Identity of this replica: the Lease holder and the events' reporting instance
    /// (normally the pod name, via the downward API). A random id when omitted.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,

    /// A request or assignment in a transitional state longer than this is reported as
    /// Stalled (reason DeliveryStuck).
    #[arg(long, env = "REDELIVER_STUCK_AFTER", value_name = "DURATION", default_value = "30m", value_parser = redeliver::api::parse_duration_arg)]
    pub stuck_after: Duration,

    /// How long one Graph read (a package, a group's members, ...) is shared between objects.
    /// A package's view (its assignments, one page per 100) that is older is read again in
    /// the background while objects keep using the previous one, never older than twice
    /// this; a write to the package drops it at once.
    #[arg(long, env = "REDELIVER_OBSERVATION_MAX_AGE", value_name = "DURATION", default_value = "30s", value_parser = redeliver::api::parse_duration_arg)]
    pub observation_max_age: Duration,

    /// Between full verifications, poll group delta this often and reconcile an assignment
    /// at once when one of its users leaves a promised group (0 turns it off).
    #[arg(long, env = "REDELIVER_DELTA_INTERVAL", value_name = "DURATION", default_value = "60s", value_parser = redeliver::api::parse_duration_arg)]
    pub delta_interval: Duration,

    /// Read the privileged kinds (app roles, group owners, PIM-for-Groups eligibilities,
    /// Entra and Azure roles) again at most this often, on a delta poll; 0: every delta
    /// interval. Each promised one costs a paged read per poll (README "Detection latency").
    #[arg(long, env = "REDELIVER_PRIVILEGED_POLL_INTERVAL", value_name = "DURATION", default_value = "0s", value_parser = redeliver::api::parse_duration_arg)]
    pub privileged_poll_interval: Duration,

    /// A new object gets its first-visit status (Reconciling=True, reason Verifying) only
    /// if its first verification takes longer than this; a quicker one is written once,
    /// with the verified status (0 always writes the first-visit status first).
    #[arg(long, env = "REDELIVER_FIRST_STATUS_AFTER", value_name = "DURATION", default_value = "5s", value_parser = redeliver::api::parse_duration_arg)]
    pub first_status_after: Duration,

    /// When drift is detected, look up who removed the resource in Entra's directory audit
    /// log and say so in the DriftDetected event, the Delivered message and
    /// status.resources[].lastChange. Needs AuditLog.Read.All; without it the status says
    /// attribution is unavailable and everything else works. One audit query per
    /// detection batch (the removals one group delta poll of a connection reports), one per
    /// group or app for a removal found otherwise, never for healthy objects.
    #[arg(long, env = "REDELIVER_DRIFT_ATTRIBUTION", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub drift_attribution: bool,

    /// Namespace the Secrets of ClusterGraphConnections are read from: the operator's own
    /// (like cert-manager's cluster resource namespace). Default: the pod's namespace
    /// (POD_NAMESPACE, the same as --lease-namespace).
    #[arg(
        long,
        env = "REDELIVER_CLUSTER_SECRET_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub cluster_secret_namespace: Option<String>,

    /// Reconcile ClusterGraphConnections (check them and write their status). Default: on
    /// when every namespace is watched, off with --namespace: a namespace-restricted
    /// installation uses cluster connections for its own objects but leaves their status to
    /// the installation that owns them (whose Secret namespace holds their Secrets).
    #[arg(long, env = "REDELIVER_CLUSTER_CONNECTIONS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cluster_connections: Option<bool>,

    /// Field manager of the controller's status writes (server-side apply). Give each
    /// installation in a cluster its own (the chart uses the release name), so
    /// `kubectl get --show-managed-fields` tells who wrote what.
    #[arg(
        long,
        env = "REDELIVER_FIELD_MANAGER",
        value_name = "NAME",
        default_value = redeliver::controller::context::FIELD_MANAGER
    )]
    pub field_manager: String,

    /// Number of shards: the connections (tenants) are split across this many replicas
    /// (or leader-elected groups of replicas, one Lease per shard), each reconciling the
    /// objects of the connections that hash to its shard. Helps with many tenants, not with
    /// one huge tenant (the Graph budget is per application and tenant).
    #[arg(long, env = "REDELIVER_SHARD_COUNT", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub shard_count: u32,

    /// This replica's shard, 0-based (below --shard-count). Default: the StatefulSet ordinal
    /// at the end of --pod-name.
    #[arg(
        long,
        env = "REDELIVER_SHARD_INDEX",
        value_name = "INDEX",
        requires = "shard_count"
    )]
    pub shard_index: Option<u32>,

    /// Cross-check each verification against Microsoft's access drift report (Graph beta,
    /// per catalog, groups and apps only): where it disagrees with Redeliver's own read the
    /// Delivered message says so and redeliver_access_drift_report_disagreements_total
    /// counts it. Detection only: never a reprocess, never a different status. Needs
    /// EntitlementManagement.Read.All (already required); if the report cannot be read the
    /// message says it is unavailable and nothing else changes.
    #[arg(long, env = "REDELIVER_USE_ACCESS_DRIFT_REPORT", value_name = "BOOL", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub use_access_drift_report: bool,
}

impl From<ControllerArgs> for ControllerOptions {
    fn from(args: ControllerArgs) -> Self {
        Self {
            graph: args.graph.into(),
            namespaces: args.namespaces,
            concurrency: args.concurrency,
            verify_interval: args.verify_interval,
            reprocess_rate: args.reprocess_rate,
            metrics_addr: args.metrics_addr,
            leader_election: args.leader_election,
            lease_name: args.lease_name,
            lease_namespace: args.lease_namespace,
            pod_name: args.pod_name,
            stuck_after: args.stuck_after,
            observation_max_age: args.observation_max_age,
            delta_interval: args.delta_interval,
            privileged_poll_interval: args.privileged_poll_interval,
            first_status_after: args.first_status_after,
            drift_attribution: args.drift_attribution,
            cluster_secret_namespace: args.cluster_secret_namespace,
            cluster_connections: args.cluster_connections,
            field_manager: args.field_manager,
            shard_count: args.shard_count,
            shard_index: args.shard_index,
            use_access_drift_report: args.use_access_drift_report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let a = Cli::try_parse_from(["redeliver"]).unwrap().args;
        assert!(a.namespaces.is_empty());
        assert_eq!(a.concurrency, 4);
        assert_eq!(a.verify_interval, Duration::from_secs(600));
        assert_eq!(a.reprocess_rate, 30);
        assert_eq!(a.metrics_addr, "0.0.0.0:8080".parse().unwrap());
        assert!(!a.leader_election);
        assert_eq!(a.lease_name, "redeliver");
        assert_eq!(a.stuck_after, Duration::from_secs(1800));
    }

    #[test]
    fn flags_without_effect_are_refused() {
        assert!(Cli::try_parse_from(["redeliver", "--lease-name", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["redeliver", "--leader-election", "--lease-name", "x"]).is_ok()
        );
        assert!(Cli::try_parse_from(["redeliver", "--shard-index", "0"]).is_err());
    }

    #[test]
    fn cluster_connections_are_reconciled_only_by_a_cluster_wide_installation_unless_told() {
        let settings = |args: &[&str]| {
            let mut all = vec!["redeliver"];
            all.extend_from_slice(args);
            ControllerOptions::from(Cli::try_parse_from(all).unwrap().args).settings("me")
        };
        assert!(settings(&[]).cluster_connections);
        assert!(!settings(&["--namespace", "team-b"]).cluster_connections);
        assert!(settings(&["--namespace", "team-b", "--cluster-connections"]).cluster_connections);
        assert!(!settings(&["--cluster-connections=false"]).cluster_connections);
        let a = Cli::try_parse_from(["redeliver"]).unwrap().args;
        assert_eq!(a.field_manager, "redeliver");
        let a = Cli::try_parse_from(["redeliver", "--field-manager", "redeliver-team-b"])
            .unwrap()
            .args;
        assert_eq!(a.field_manager, "redeliver-team-b");
    }

    #[test]
    fn shard_flags_and_the_statefulset_ordinal() {
        let parse = |args: &[&str]| {
            let mut all = vec!["redeliver"];
            all.extend_from_slice(args);
            ControllerOptions::from(Cli::try_parse_from(all).unwrap().args).shard()
        };
        assert_eq!(
            parse(&[]).unwrap(),
            redeliver::controller::shard::Shard::default()
        );
        let s = parse(&["--shard-count", "4", "--shard-index", "2"]).unwrap();
        assert_eq!((s.index, s.count), (2, 4));
        let s = parse(&["--shard-count", "4", "--pod-name", "redeliver-3"]).unwrap();
        assert_eq!(s.index, 3);
        assert!(parse(&["--shard-count", "4", "--shard-index", "4"]).is_err());
        assert!(parse(&["--shard-count", "2", "--pod-name", "redeliver-abc"]).is_err());
        assert!(Cli::try_parse_from(["redeliver", "--shard-count", "0"]).is_err());
    }

    #[test]
    fn flags_parse_and_validate() {
        let a = Cli::try_parse_from([
            "redeliver",
            "--namespace",
            "a",
            "--namespace",
            "b",
            "--concurrency",
            "8",
            "--verify-interval",
            "1h30m",
            "--reprocess-rate",
            "0",
            "--leader-election",
            "--lease-namespace",
            "ops",
            "--pod-name",
            "redeliver-0",
        ])
        .unwrap()
        .args;
        assert_eq!(a.namespaces, ["a", "b"]);
        assert_eq!(a.concurrency, 8);
        assert_eq!(a.verify_interval, Duration::from_secs(5400));
        assert_eq!(a.reprocess_rate, 0);
        assert!(a.leader_election);
        assert_eq!(a.lease_namespace.as_deref(), Some("ops"));
        let s = ControllerOptions::from(a).settings("redeliver-0");
        assert_eq!(s.instance.as_deref(), Some("redeliver-0"));
        assert_eq!(s.concurrency, 8);
        assert!(Cli::try_parse_from(["redeliver", "--concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["redeliver", "--verify-interval", "soon"]).is_err());
    }
}

//! Redeliver's integration tests, in one test binary.
//!
//! Each module is one suite (its file's doc comment says what it proves). They share one
//! binary so the workspace links the library into a single test executable instead of
//! one per suite: a clean `cargo test` writes about half the bytes to disk and spends a
//! fraction of the time linking. Run one suite with `cargo test --test it <module>::`.

mod accounts_against_sim;
mod audit_against_sim;
mod audit_ci_output;
mod audit_safety;
mod audit_tenants;
mod azure_roles_against_sim;
mod chart_metrics;
mod cli_audit;
mod clock;
mod controller_attribution;
mod controller_cluster;
mod controller_delta;
mod controller_health;
mod controller_ledger;
mod controller_mass_drift;
mod controller_observations;
mod controller_privileged;
mod controller_reconcile;
mod controller_runtime;
mod controller_safety;
mod controller_shard;
mod controller_support;
mod controller_tenants;
mod crds_in_sync;
mod docs_in_sync;
mod drift_report_against_sim;
mod fault_batch;
mod fault_reprocess;
mod fault_restart;
mod fault_server_errors;
mod fault_support;
mod fault_throttling;
mod fault_token;
mod graph_against_sim;
mod graph_client;
mod graph_tls;
mod input_fuzz_corpus;
mod input_hostile;
mod input_props;
mod observe_same_input;
mod pim_groups_against_sim;
mod plugin_kubectl;
mod process_memory;
mod roles_against_sim;
mod scale_delta;
mod scale_metering;
mod scale_minimal_cost;
mod security_controller_logs;
mod security_logs;
mod security_tls;
mod sim_graph;
mod sim_lifecycle;
mod sim_transport;
mod wait;

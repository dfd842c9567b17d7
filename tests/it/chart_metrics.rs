//! The chart's Grafana dashboard and PrometheusRule use only metrics the operator exports,
//! and `.ci/exported-metrics.txt` (the list `.ci/chart-check` checks the rendered chart
//! against, without building Rust) is exactly what the registry exports.
//!
//! Regenerate the list with `UPDATE_METRICS=1 cargo test --test it chart_metrics` and commit
//! it.

use std::collections::BTreeSet;
use std::path::Path;

use redeliver::controller::metrics::{KindLabels, Metrics, ReprocessCall, StateSizes, render};
use redeliver_sim::{Scenario, SimOptions, Simulator};

/// The sample names a scrape can show, from the registry's `# TYPE` lines: a counter's
/// samples carry `_total`, a histogram's `_bucket`, `_sum` and `_count`.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Every `redeliver_...` identifier in `text`.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut at = 0;
    while let Some(i) = text[at..].find("redeliver_").map(|i| i + at) {
        let end = bytes[i..]
            .iter()
            .position(|b| !ident(*b))
            .map_or(bytes.len(), |n| i + n);
        if i == 0 || !ident(bytes[i - 1]) {
            names.insert(text[i..end].to_string());
        }
        at = end;
    }
    names
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    // With a Graph client, as the controller runs: its per-operation families are exported.
    let graph = crate::fault_support::graph_client(&sim).unwrap();
    let (metrics, registry) = Metrics::new(Some(graph));
    // A family is exported once it has a series: give each one, as a running controller does.
    let kind = "AccessPackageAssignment";
    metrics.reconcile_started(kind).finish("ok");
    metrics.reprocess(kind, ReprocessCall::Requested);
    metrics.drift(kind, 1);
    metrics.access_drift_disagreements(kind, 1);
    metrics
        .malformed_objects
        .get_or_create(&KindLabels { kind })
        .inc();
    metrics.is_leader.set(1);
    // The internal maps' sizes are reported once a running controller registers itself.
    struct Sizes;
    impl StateSizes for Sizes {
        fn state_sizes(&self) -> Vec<(&'static str, usize)> {
            vec![("backoff", 0)]
        }
    }
    let sizes: std::sync::Arc<dyn StateSizes> = std::sync::Arc::new(Sizes);
    metrics.watch_state(std::sync::Arc::downgrade(&sizes));
    let names = exported(&render(&registry).unwrap());
    sim.shutdown().await;
    assert!(
        names.contains("redeliver_reconciles_total")
            && names.contains("redeliver_graph_throttled_total")
            && names.contains("redeliver_reconcile_duration_seconds_bucket"),
        "{names:?}"
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list_path = root.join(".ci/exported-metrics.txt");
    let want: String = std::iter::once(String::from(
        "# Every sample name the operator exports (tests/it/chart_metrics.rs keeps it in sync;\n\
         # regenerate with UPDATE_METRICS=1 cargo test --test it chart_metrics).\n",
    ))
    .chain(names.iter().map(|n| format!("{n}\n")))
    .collect();
    if std::env::var_os("UPDATE_METRICS").is_some() {
        std::fs::write(&list_path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&list_path).unwrap_or_default();
    assert_eq!(
        have, want,
        ".ci/exported-metrics.txt is out of date with crates/operator/src/controller/metrics.rs; \
         regenerate with `UPDATE_METRICS=1 cargo test --test it chart_metrics` and commit it"
    );

    for (file, at_least) in [
        ("charts/redeliver/dashboards/redeliver.json", 10),
        ("charts/redeliver/templates/prometheusrule.yaml", 6),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = referenced(&text);
        assert!(
            used.len() >= at_least,
            "{file} references only {used:?}: the scan found too little to mean anything"
        );
        let unknown: Vec<&String> = used.difference(&names).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the operator does not export: {unknown:?} (exported: {names:?})"
        );
    }
}

#[test]
fn the_scan_finds_names_and_the_suffixes_follow_the_types() {
    assert_eq!(
        referenced("rate(redeliver_a_total[5m]) / x_redeliver_b + {{redeliver_c}}"),
        ["redeliver_a_total", "redeliver_c"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let names = exported(
        "# TYPE redeliver_x counter\n# TYPE redeliver_h histogram\n# TYPE redeliver_g gauge\n",
    );
    assert!(names.contains("redeliver_x_total") && !names.contains("redeliver_x"));
    assert!(names.contains("redeliver_h_bucket") && names.contains("redeliver_h_count"));
    assert!(names.contains("redeliver_g"));
}

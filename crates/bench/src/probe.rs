//! Talking to a running controller from outside, for the controller and shards
//! benchmarks: the kubeconfig it is started with, pointing at the in-process API server,
//! and the figures its `/metrics` report.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Writes `dir/kubeconfig` for the API server at `server`, with `namespace` as the default
/// when given.
pub fn kubeconfig(dir: &Path, server: &str, namespace: Option<&str>) -> anyhow::Result<PathBuf> {
    let path = dir.join("kubeconfig");
    let namespace = namespace
        .map(|ns| format!("    namespace: {ns}\n"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: {server}\nusers:\n- name: bench\n  user: {{}}\ncontexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\n{namespace}current-context: bench\n"
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The sum of the controller's `/metrics` series named `series` whose labels contain
/// `label` (for example `kind="AccessPackageAssignment"`).
async fn scrape(
    http: &reqwest::Client,
    metrics_url: &str,
    series: &str,
    label: &str,
) -> Option<u64> {
    let text = http.get(metrics_url).send().await.ok()?.text().await.ok()?;
    let open = format!("{series}{{");
    Some(
        text.lines()
            .filter(|l| l.starts_with(&open) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

/// Reconciles of `AccessPackageAssignment` objects so far.
pub async fn scrape_reconciles(http: &reqwest::Client, metrics_url: &str) -> Option<u64> {
    scrape(
        http,
        metrics_url,
        "redeliver_reconciles_total",
        "kind=\"AccessPackageAssignment\"",
    )
    .await
}

/// Audit-log queries so far, (detection batch, one group or app), from
/// `redeliver_attribution_queries_total{scope}`: a query may take several requests (pages).
pub async fn scrape_attribution(http: &reqwest::Client, metrics_url: &str) -> (u64, u64) {
    let series = "redeliver_attribution_queries_total";
    (
        scrape(http, metrics_url, series, "scope=\"batch\"")
            .await
            .unwrap_or(0),
        scrape(http, metrics_url, series, "scope=\"target\"")
            .await
            .unwrap_or(0),
    )
}

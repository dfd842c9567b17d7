//! The churn soak of the controller benchmark (`cargo bench --bench controller -- --soak
//! 12m`): after the initial convergence, objects and connections come and go in cycles,
//! with outside removals among them, and after each cycle the controller's resident memory
//! and the sizes of its internal maps (`redeliver_state_entries{map}`) are read. A
//! controller whose state is bounded shows both flat after a warm-up; one that keeps
//! something per deleted object or connection grows every cycle.
//!
//! One cycle: a new `GraphConnection` (same simulated tenant, its own Secret) and
//! `--soak-churn` new objects, half of them using it and half the operator's own
//! connection; 1 % of their users removed from a promised group by an outside
//! administrator; a wait until every new object is `Delivered=True` (or the cycle's time is
//! up); then every object of the cycle and its connection deleted, and a few seconds for
//! the deletions to reach the controller before the sample.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redeliver_fake_kube::FakeKube;
use redeliver_sim::{SimHandle, SyntheticResource, SyntheticTenant};
use serde_json::{Value, json};

use super::measure;

/// The soak's settings (the controller benchmark's `--soak*` flags and the controller's
/// intervals, for the report).
#[derive(Debug, Clone)]
pub struct SoakSettings {
    /// How long the soak runs.
    pub duration: Duration,
    /// Objects created and deleted in each cycle.
    pub churn: usize,
    /// The length of one cycle.
    pub cycle: Duration,
    /// Cycles counted as warm-up.
    pub warm_up: usize,
    /// The objects' verify interval and the controller's delta interval.
    pub verify_interval: Duration,
    pub delta_interval: Duration,
}

/// What one cycle left behind.
#[derive(Debug, Clone, Default)]
pub struct SoakCycle {
    /// Since the soak began, when the sample was taken.
    pub at: Duration,
    /// Objects created (and deleted) in the cycle.
    pub objects: usize,
    /// Of them, those seen `Delivered=True` before deletion.
    pub verified: usize,
    /// Users removed from a promised group by an outside administrator in the cycle.
    pub removed: usize,
    /// The controller's resident memory after the cycle's deletions (KiB).
    pub rss_kib: u64,
    /// `redeliver_state_entries` by map after the cycle's deletions.
    pub maps: BTreeMap<String, u64>,
}

/// The soak's figures.
#[derive(Debug, Clone, Default)]
pub struct Soak {
    pub cycles: Vec<SoakCycle>,
    /// Cycles before this one are warm-up (`--soak-warm-up`): caches, pools, the
    /// allocator's arenas and the time-bounded maps fill.
    pub warm_up: usize,
}

impl Soak {
    /// The first cycle after warm-up and the last one, when there are both.
    pub fn compared(&self) -> Option<(&SoakCycle, &SoakCycle)> {
        let first = self.cycles.get(self.warm_up)?;
        let last = self.cycles.last()?;
        (self.cycles.len() > self.warm_up + 1).then_some((first, last))
    }

    /// The last cycle's RSS against the first after warm-up, in percent.
    pub fn rss_change_percent(&self) -> Option<f64> {
        let (first, last) = self.compared()?;
        Some((last.rss_kib as f64 - first.rss_kib as f64) * 100.0 / first.rss_kib.max(1) as f64)
    }

    /// Maps larger after the last cycle than after the first one after warm-up.
    pub fn grown_maps(&self) -> Vec<(String, u64, u64)> {
        let Some((first, last)) = self.compared() else {
            return Vec::new();
        };
        last.maps
            .iter()
            .filter_map(|(map, n)| {
                let before = first.maps.get(map).copied().unwrap_or(0);
                (*n > before).then(|| (map.clone(), before, *n))
            })
            .collect()
    }
}

/// The controller's `redeliver_state_entries` series, by map.
async fn state_entries(
    http: &reqwest::Client,
    metrics_url: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = http
        .get(metrics_url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut maps = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("redeliver_state_entries{") else {
            continue;
        };
        let Some(map) = rest
            .split_once("map=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(m, _)| m.to_string())
        else {
            continue;
        };
        let value = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        *maps.entry(map).or_insert(0) += value as u64;
    }
    anyhow::ensure!(
        !maps.is_empty(),
        "the controller's /metrics has no redeliver_state_entries series"
    );
    Ok(maps)
}

fn connection(name: &str, namespace: &str, sim: &SimHandle, secret: &str) -> Value {
    json!({
        "apiVersion": "redeliver.dev/v1alpha1",
        "kind": "GraphConnection",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "tenantId": sim.tenant_id,
            "clientId": sim.client_id,
            "credential": {"clientSecret": {"name": secret}},
            "authorityHost": sim.authority_host,
            "graphUrl": sim.graph_url,
        },
    })
}

fn secret(name: &str, namespace: &str, value: &str) -> Value {
    use k8s_openapi::ByteString;
    let data = BTreeMap::from([(
        redeliver::api::DEFAULT_SECRET_KEY.to_string(),
        ByteString(value.as_bytes().to_vec()),
    )]);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    })
}

/// A group object `i`'s package promises, for an outside removal.
pub(crate) fn promised_group(tenant: &SyntheticTenant, i: usize) -> Option<String> {
    tenant
        .package_resources(tenant.package_of(i))
        .into_iter()
        .find_map(|r| match r {
            SyntheticResource::Group(g) => Some(SyntheticTenant::group_name(g)),
            SyntheticResource::App(_) => None,
        })
}

/// Everything the soak drives.
pub struct SoakRun<'a> {
    pub settings: SoakSettings,
    /// The namespace and plural the benchmark's objects live in.
    pub namespace: &'a str,
    pub plural: &'a str,
    /// The benchmark's object for assignment `i` (renamed and given a connection here).
    pub object: &'a (dyn Fn(usize) -> anyhow::Result<Value> + Sync),
    pub sim: &'a SimHandle,
    pub kube: &'a FakeKube,
    pub tenant: &'a SyntheticTenant,
    pub http: &'a reqwest::Client,
    pub metrics_url: &'a str,
    pub pid: u32,
}

impl SoakRun<'_> {
    /// Runs cycles until the soak's duration has passed.
    pub async fn run(&self) -> anyhow::Result<Soak> {
        let secret_name = "soak-graph";
        self.kube
            .put(secret(secret_name, self.namespace, &self.sim.client_secret))
            .map_err(anyhow::Error::msg)?;
        let started = Instant::now();
        let mut out = Soak {
            warm_up: self.settings.warm_up,
            ..Soak::default()
        };
        let mut c = 0;
        while started.elapsed() < self.settings.duration {
            let cycle = self.cycle(c, secret_name, started).await?;
            eprintln!(
                "soak cycle {c}: {}/{} verified, {} removed outside, RSS {} MiB, maps {:?}",
                cycle.verified,
                cycle.objects,
                cycle.removed,
                cycle.rss_kib / 1024,
                cycle.maps
            );
            out.cycles.push(cycle);
            c += 1;
        }
        Ok(out)
    }

    async fn cycle(&self, c: usize, secret: &str, started: Instant) -> anyhow::Result<SoakCycle> {
        let n = self.tenant.assignments;
        let churn = self.settings.churn.min(n);
        let deadline = Instant::now() + self.settings.cycle;
        let conn = format!("soak-{c}");
        self.kube
            .put(connection(&conn, self.namespace, self.sim, secret))
            .map_err(anyhow::Error::msg)?;
        // Assignments in turn, so every cycle covers different users (each is then covered
        // by two objects, its own and the soak's, as two declarations of one assignment).
        let picked: Vec<usize> = (0..churn).map(|j| (c * churn + j) % n).collect();
        let mut names = Vec::with_capacity(churn);
        for (j, &i) in picked.iter().enumerate() {
            let mut o = (self.object)(i)?;
            let name = format!("soak-{c}-{j}");
            o["metadata"]["name"] = json!(name);
            if j % 2 == 0 {
                o["spec"]["connectionRef"] = json!({"name": conn});
            }
            self.kube.put(o).map_err(anyhow::Error::msg)?;
            names.push(name);
        }
        // Outside removals among them, so repairs, the ledger and attribution take part.
        let mut removed = 0;
        for (k, &i) in picked.iter().enumerate().filter(|(j, _)| j % 100 == 50) {
            let Some(group) = promised_group(self.tenant, i) else {
                continue;
            };
            let upn = self.tenant.upn(i);
            if self.sim.is_member(&group, &upn) {
                let by = format!("admin{}@{}.com", k % 7, self.tenant.tenant_name);
                self.sim
                    .remove_member_by(&group, &upn, &by)
                    .context("outside removal in the simulator")?;
                removed += 1;
            }
        }
        let mut verified = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            anyhow::ensure!(
                measure::proc_memory(self.pid).is_some(),
                "the controller exited during the soak"
            );
            verified = names
                .iter()
                .filter(|name| {
                    self.kube
                        .object(self.plural, self.namespace, name)
                        .is_some_and(|o| {
                            o["status"]["conditions"].as_array().is_some_and(|cs| {
                                cs.iter()
                                    .any(|c| c["type"] == "Delivered" && c["status"] == "True")
                            })
                        })
                })
                .count();
            if verified == names.len() && removed == 0 {
                break;
            }
            if verified == names.len() && Instant::now() + Duration::from_secs(10) > deadline {
                break;
            }
        }
        for name in &names {
            self.kube.delete(self.plural, self.namespace, name);
        }
        self.kube.delete("graphconnections", self.namespace, &conn);
        // The deletions reach the controller through its watches; give them a moment.
        let settle = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(settle.max(Duration::from_secs(5))).await;
        let rss_kib = measure::proc_memory(self.pid)
            .map(|(rss, _)| rss)
            .context("the controller exited during the soak")?;
        let maps = state_entries(self.http, self.metrics_url).await?;
        Ok(SoakCycle {
            at: started.elapsed(),
            objects: names.len(),
            verified,
            removed,
            rss_kib,
            maps,
        })
    }
}

/// The soak as a Markdown table, with the verdict.
pub fn markdown(settings: &SoakSettings, machine: &str, objects: usize, s: &Soak) -> String {
    let mut out = String::new();
    let args = settings;
    out.push_str(&format!(
        "### Churn soak\n\nCommand: `cargo bench --bench controller -- --objects {objects} --soak {}s --soak-churn {} --soak-cycle {}s --soak-warm-up {} --verify-interval {}s --delta-interval {}s --markdown docs/benchmarks.md`\n\nMachine: {machine}. {objects} objects stay; every cycle adds a `GraphConnection` and {} objects (half on it), removes 1 % of their users from a group outside entitlement management, waits for them to be verified, then deletes them all and the connection. Samples after each cycle's deletions; the first {} cycles are warm-up (the longest time-bounded map, attribution's pending lookups, keeps an entry 20 minutes).\n\n",
        args.duration.as_secs(),
        args.churn,
        args.cycle.as_secs(),
        s.warm_up,
        args.verify_interval.as_secs(),
        args.delta_interval.as_secs(),
        args.churn,
        s.warm_up,
    ));
    let maps: Vec<&String> = s
        .cycles
        .last()
        .map(|c| c.maps.keys().collect())
        .unwrap_or_default();
    out.push_str("| cycle | at | verified | removed outside | RSS (MiB) |");
    for m in &maps {
        out.push_str(&format!(" {m} |"));
    }
    out.push_str("\n|---:|---:|---:|---:|---:|");
    for _ in &maps {
        out.push_str("---:|");
    }
    out.push('\n');
    for (i, c) in s.cycles.iter().enumerate() {
        out.push_str(&format!(
            "| {i}{} | {:.0} s | {}/{} | {} | {:.1} |",
            if i < s.warm_up { " (warm-up)" } else { "" },
            c.at.as_secs_f64(),
            c.verified,
            c.objects,
            c.removed,
            c.rss_kib as f64 / 1024.0
        ));
        for m in &maps {
            out.push_str(&format!(" {} |", c.maps.get(*m).copied().unwrap_or(0)));
        }
        out.push('\n');
    }
    out.push('\n');
    match s.rss_change_percent() {
        Some(p) => out.push_str(&format!(
            "RSS of the last cycle against the first after warm-up: {p:+.1} % (target: within ±5 %).\n"
        )),
        None => out.push_str("Too few cycles to compare after warm-up.\n"),
    }
    let grown = s.grown_maps();
    if grown.is_empty() {
        out.push_str("No internal map is larger after the last cycle than after the first one after warm-up.\n");
    } else {
        for (m, a, b) in grown {
            out.push_str(&format!(
                "Map `{m}` grew from {a} to {b} entries between the first cycle after warm-up and the last.\n"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(rss_mib: u64, ledger: u64) -> SoakCycle {
        SoakCycle {
            rss_kib: rss_mib * 1024,
            maps: BTreeMap::from([("ledger".to_string(), ledger)]),
            ..SoakCycle::default()
        }
    }

    #[test]
    fn the_verdict_compares_the_last_cycle_with_the_first_after_warm_up() {
        let s = Soak {
            cycles: vec![
                cycle(50, 9),
                cycle(80, 7),
                cycle(100, 5),
                cycle(90, 5),
                cycle(104, 6),
            ],
            warm_up: 2,
        };
        let p = s.rss_change_percent().unwrap();
        assert!((p - 4.0).abs() < 1e-9, "{p}");
        assert_eq!(s.grown_maps(), vec![("ledger".to_string(), 5, 6)]);
        // Warm-up alone compares nothing.
        let short = Soak {
            cycles: vec![cycle(50, 1), cycle(60, 1), cycle(70, 1)],
            warm_up: 2,
        };
        assert_eq!(short.rss_change_percent(), None);
        assert!(short.grown_maps().is_empty());
    }
}

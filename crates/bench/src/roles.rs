//! The scale benchmark's role run (`--roles`): packages that promise a group, an Entra role
//! (eligible), an Azure role (active, on a resource group) and an eligible group membership
//! (PIM for Groups), one delivered assignment per user, 1 % of them missing one of their
//! privileged resources. One full verification with `redeliver audit` as its own process;
//! Graph requests, RU and Azure Resource Manager requests counted separately, each against
//! the minimum for the privileged kinds: one paged read per Entra role definition and mode,
//! one per Azure scope and mode, one per PIM group and relationship, whatever the number of
//! assignments. The controller's poll makes these same reads once per delta interval.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use redeliver_sim::{
    AccessPackageSpec, AssignmentSpec, AzureRoleSpec, DirectoryRoleSpec, ResourceSpec, Scenario,
    SimOptions, Simulator, SubscriptionSpec,
};

use super::{cost, measure};

/// Entra role definitions the packages share (built-in role template ids).
const ENTRA_ROLES: [(&str, &str); 2] = [
    ("Global Reader", "f2ef992c-3afb-46b9-b7cf-a126ee74c451"),
    ("Security Reader", "5d6b6bb7-de71-4623-b4af-96380a352509"),
];
/// Azure role definitions (built-in role ids).
const AZURE_ROLES: [(&str, &str); 2] = [
    ("Contributor", "b24988ac-6180-42a0-ab88-20f7382dd24c"),
    ("Reader", "acdd72a7-3385-48ef-bd42-f606fba81ae7"),
];
const SUBSCRIPTION: &str = "5c0f3a8e-0000-4000-8000-0000000000b1";
const RESOURCE_GROUPS: [&str; 2] = ["rg-a", "rg-b"];
/// Groups governed by PIM for Groups; package `p` makes its users eligible members of
/// `PIM_GROUPS[p % 2]`.
const PIM_GROUPS: [&str; 2] = ["rl-pim-a", "rl-pim-b"];
/// Packages; package `p` promises group `rl-g{p}`, Entra role `p % 2`, Azure role `p % 2`
/// on resource group `p % 2` and eligible membership of PIM group `p % 2`.
const PACKAGES: usize = 4;
/// The simulator's page size for role management and ARM collections.
const ROLE_PAGE: usize = 100;

/// What one role run measured.
#[derive(Debug, Clone, Default)]
pub struct RolesResult {
    pub assignments: usize,
    pub drifted: usize,
    pub drift_found: usize,
    /// Graph requests (`/v1.0`), of which role management, and their RU.
    pub graph_requests: u64,
    pub role_requests: u64,
    pub graph_ru: u64,
    /// PIM for Groups requests (`identityGovernance/privilegedAccess/group`) and their RU.
    pub pim_requests: u64,
    pub pim_ru: u64,
    /// Azure Resource Manager requests.
    pub arm_requests: u64,
    /// The fewest role-management, PIM for Groups and ARM requests a verification can make.
    pub min_role_requests: u64,
    pub min_pim_requests: u64,
    pub min_arm_requests: u64,
    pub wall: Duration,
    pub max_rss_kib: u64,
}

fn tenant(n: usize) -> (Scenario, usize) {
    let mut b = Scenario::builder("roles").seed(5).catalog("Roles");
    for (name, id) in ENTRA_ROLES {
        b = b.directory_role(DirectoryRoleSpec {
            name: name.into(),
            id: Some(id.into()),
            ..Default::default()
        });
    }
    for p in 0..PACKAGES {
        b = b.group(&format!("rl-g{p}"), &[]);
    }
    for g in PIM_GROUPS {
        b = b.group(g, &[]);
    }
    for p in 0..PACKAGES {
        b = b.access_package(AccessPackageSpec {
            name: format!("rl-pkg-{p}"),
            catalog: "Roles".into(),
            resources: vec![
                ResourceSpec {
                    group: Some(format!("rl-g{p}")),
                    ..Default::default()
                },
                ResourceSpec {
                    entra_role: Some(ENTRA_ROLES[p % 2].0.into()),
                    role: Some("Eligible".into()),
                    ..Default::default()
                },
                ResourceSpec {
                    azure_role: Some(AZURE_ROLES[p % 2].0.into()),
                    subscription: Some("Roles".into()),
                    resource_group: Some(RESOURCE_GROUPS[p % 2].into()),
                    role: Some("Active".into()),
                    ..Default::default()
                },
                ResourceSpec {
                    group: Some(PIM_GROUPS[p % 2].into()),
                    role: Some("Eligible Member".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
    }
    let mut drifted = 0;
    for i in 0..n {
        let upn = format!("user{i}@roles.com");
        b = b.user(&upn, &format!("User {i}"));
        let p = i % PACKAGES;
        let mut missing = Vec::new();
        if i % 100 == 7 {
            // Rotate which privileged resource is lost, so every reader sees drift.
            missing.push(match lost(i) {
                Lost::Entra => ENTRA_ROLES[p % 2].0.to_string(),
                Lost::Azure => AZURE_ROLES[p % 2].0.to_string(),
                Lost::Pim => PIM_GROUPS[p % 2].to_string(),
            });
            drifted += 1;
        }
        b = b.assignment(AssignmentSpec {
            user: upn,
            package: format!("rl-pkg-{p}"),
            missing,
            ..Default::default()
        });
    }
    let mut scenario = b.build();
    scenario.spec.subscriptions.push(SubscriptionSpec {
        name: "Roles".into(),
        id: Some(SUBSCRIPTION.into()),
        resource_groups: RESOURCE_GROUPS.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
    });
    scenario.spec.azure_roles = AZURE_ROLES
        .iter()
        .map(|(name, id)| AzureRoleSpec {
            name: (*name).into(),
            id: Some((*id).into()),
        })
        .collect();
    (scenario, drifted)
}

/// Which privileged resource a drifted assignment lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    Entra,
    Azure,
    Pim,
}

/// What assignment `i` lost, if it drifted (every hundredth, rotating over the kinds).
fn lost(i: usize) -> Lost {
    match (i / 100) % 3 {
        0 => Lost::Entra,
        1 => Lost::Azure,
        _ => Lost::Pim,
    }
}

/// Holders per Entra role (eligible), per resource group (active) and per PIM group
/// (eligible members), after the drift: the pages one read of each takes.
fn minimum(n: usize) -> (u64, u64, u64) {
    let mut entra: BTreeMap<usize, usize> = BTreeMap::new();
    let mut azure: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pim: BTreeMap<usize, usize> = BTreeMap::new();
    for i in 0..n {
        let p = i % PACKAGES;
        let lost = (i % 100 == 7).then(|| lost(i));
        for (kind, holders) in [
            (Lost::Entra, &mut entra),
            (Lost::Azure, &mut azure),
            (Lost::Pim, &mut pim),
        ] {
            if lost != Some(kind) {
                *holders.entry(p % 2).or_default() += 1;
            }
        }
    }
    let pages = |m: &BTreeMap<usize, usize>| {
        m.values()
            .map(|&holders| cost::pages(holders, ROLE_PAGE))
            .sum::<u64>()
    };
    (pages(&entra), pages(&azure), pages(&pim))
}

/// One role run at `n` assignments.
pub async fn run_roles(bin: &Path, n: usize, concurrency: usize) -> anyhow::Result<RolesResult> {
    let (scenario, drifted) = tenant(n);
    let sim = Simulator::start(scenario, SimOptions::default())
        .await
        .context("the simulator did not start")?;
    let dir = tempfile::tempdir()?;
    let docs: String = (0..PACKAGES)
        .map(|p| {
            format!(
                "apiVersion: redeliver.dev/v1alpha1\nkind: AccessPackageGuard\nmetadata: {{name: rl-{p}, namespace: bench}}\nspec:\n  accessPackage: {{displayName: rl-pkg-{p}}}\n  mode: Enforce\n  interval: 15m\n---\n"
            )
        })
        .collect();
    std::fs::write(dir.path().join("guards.yaml"), docs)?;
    sim.clear_request_log();

    let mut cmd = std::process::Command::new(bin);
    for var in [
        "AZURE_FEDERATED_TOKEN_FILE",
        "REDELIVER_CLIENT_SECRET_FILE",
        "REDELIVER_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(sim.graph_env())
        .env("REDELIVER_GRAPH_CONCURRENCY", concurrency.to_string())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .arg("audit")
        .arg("-f")
        .arg(dir.path())
        .args(["-o", "json", "--no-progress"]);
    let started = Instant::now();
    let run = tokio::task::spawn_blocking(move || measure::run(cmd)).await??;
    let wall = started.elapsed();
    anyhow::ensure!(
        matches!(run.exit, Some(0) | Some(2)),
        "redeliver audit exited with {:?}: {}",
        run.exit,
        run.stderr_tail
    );
    let report: serde_json::Value =
        serde_json::from_str(&run.stdout).context("audit output is not a JSON report")?;
    let drift_found = report["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["verdict"] == "Drifted" && r["target"] != "-")
                .filter(|r| !r["target"].as_str().unwrap_or_default().starts_with('('))
                .count()
        })
        .unwrap_or(0);
    let usage = sim.usage();
    let mut result = RolesResult {
        assignments: n,
        drifted,
        drift_found,
        wall,
        max_rss_kib: run.max_rss_kib,
        ..RolesResult::default()
    };
    for (route, u) in &usage.by_route {
        let path = route.split_once(' ').map(|(_, p)| p).unwrap_or(route);
        if path.starts_with("/arm/") {
            result.arm_requests += u.requests;
        } else if path.starts_with("/v1.0/") && path != "/v1.0/$batch" {
            result.graph_requests += u.requests;
            result.graph_ru += u.ru;
            if path.starts_with("/v1.0/roleManagement/") {
                result.role_requests += u.requests;
            }
            if path.starts_with("/v1.0/identityGovernance/privilegedAccess/") {
                result.pim_requests += u.requests;
                result.pim_ru += u.ru;
            }
        }
    }
    (
        result.min_role_requests,
        result.min_arm_requests,
        result.min_pim_requests,
    ) = minimum(n);
    sim.shutdown().await;
    Ok(result)
}

/// The role runs as a Markdown table.
pub fn table(results: &[RolesResult]) -> String {
    let mut out = String::from(
        "| assignments | drifted / found | Graph requests (RU) | role management requests (minimum) | PIM for Groups requests (minimum), RU | ARM requests (minimum) | privileged reads vs minimum | wall | peak RSS |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in results {
        let made = r.role_requests + r.pim_requests + r.arm_requests;
        let least = r.min_role_requests + r.min_pim_requests + r.min_arm_requests;
        out.push_str(&format!(
            "| {} | {} / {} | {} ({}) | {} ({}) | {} ({}), {} RU | {} ({}) | {:.3} × | {:.2} s | {} MiB |\n",
            r.assignments,
            r.drifted,
            r.drift_found,
            r.graph_requests,
            r.graph_ru,
            r.role_requests,
            r.min_role_requests,
            r.pim_requests,
            r.min_pim_requests,
            r.pim_ru,
            r.arm_requests,
            r.min_arm_requests,
            made as f64 / least.max(1) as f64,
            r.wall.as_secs_f64(),
            r.max_rss_kib / 1024
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_is_pages_per_role_and_scope_not_per_assignment() {
        // 1,000 assignments, 10 of them drifted (4 Entra, 3 Azure, 3 PIM): 500 holders per
        // role or group minus the losses, in pages of 100.
        let (entra, azure, pim) = minimum(1000);
        assert_eq!((entra, azure, pim), (10, 10, 10));
        let (_, drifted) = tenant(1000);
        assert_eq!(drifted, 10);
    }
}

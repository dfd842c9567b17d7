//! The least a full verification can cost for a synthetic tenant.
//!
//! A full verification must read, at least once, every promised group's members, every
//! promised app's role assignments and every package's assignments. Graph pages directory
//! collections at up to 999 items (`$top=999`), and an empty collection is still one page.
//! With `$select`, a members page costs 2 RU (base 3) and an `appRoleAssignedTo` page 1 RU
//! (base 2); entitlement-management reads are not metered in resource units (they are in
//! no published RU table), so they count as requests only.

use redeliver_sim::{SyntheticResource, SyntheticTenant};

/// Largest page Graph returns for directory collections (`$top=999`).
pub const DIRECTORY_PAGE: usize = 999;
/// The simulator's page size for entitlement-management collections (Graph documents no
/// `$top` for them, so clients take the server's pages).
pub const SIM_EM_PAGE: usize = 100;
/// RU of one `GET /groups/{id}/members?$select=id&$top=999` page.
pub const MEMBERS_PAGE_RU: u64 = 2;
/// RU of one `GET /servicePrincipals/{id}/appRoleAssignedTo?$select=...&$top=999` page.
pub const APP_ROLE_PAGE_RU: u64 = 1;

/// Minimum pages and resource units of one full verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinimumCost {
    /// Pages of group members over all promised groups.
    pub member_pages: u64,
    /// Pages of `appRoleAssignedTo` over all promised apps.
    pub app_role_pages: u64,
    /// Pages of assignments over all packages.
    pub assignment_pages: u64,
}

impl MinimumCost {
    /// The minimum for `tenant` (after its drift), with entitlement-management pages of
    /// `em_page` items.
    pub fn for_tenant(tenant: &SyntheticTenant, em_page: usize) -> Self {
        let (groups, apps) = tenant.resource_sizes();
        let promised: std::collections::BTreeSet<SyntheticResource> = (0..tenant.packages)
            .flat_map(|p| tenant.package_resources(p))
            .collect();
        let mut min = MinimumCost::default();
        for r in promised {
            match r {
                SyntheticResource::Group(g) => min.member_pages += pages(groups[g], DIRECTORY_PAGE),
                SyntheticResource::App(a) => min.app_role_pages += pages(apps[a], DIRECTORY_PAGE),
            }
        }
        let packages = tenant.packages.max(1);
        for p in 0..packages {
            let n = (0..tenant.assignments)
                .filter(|i| tenant.package_of(*i) == p)
                .count();
            min.assignment_pages += pages(n, em_page);
        }
        min
    }

    /// Resource units: member pages at 2 RU, app role pages at 1 RU, assignments free.
    pub fn ru(&self) -> u64 {
        self.member_pages * MEMBERS_PAGE_RU + self.app_role_pages * APP_ROLE_PAGE_RU
    }

    /// Requests: every page.
    pub fn requests(&self) -> u64 {
        self.member_pages + self.app_role_pages + self.assignment_pages
    }
}

/// Pages needed for `n` items, at least one (an empty collection is one page).
pub fn pages(n: usize, page: usize) -> u64 {
    u64::try_from(n.div_ceil(page.max(1)).max(1)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_collections_are_one_page_and_999_fit_in_one() {
        assert_eq!(pages(0, 999), 1);
        assert_eq!(pages(999, 999), 1);
        assert_eq!(pages(1000, 999), 2);
    }

    #[test]
    fn benchmark_tenant_promises_every_resource_and_prices_pages() {
        let t = SyntheticTenant::benchmark(1000);
        let min = MinimumCost::for_tenant(&t, SIM_EM_PAGE);
        // 50 groups and 5 apps, all promised, each under 999 members at this scale.
        assert_eq!(min.member_pages, 50);
        assert_eq!(min.app_role_pages, 5);
        assert_eq!(min.ru(), 50 * 2 + 5);
        // 15 packages of 66 or 67 assignments: one page each.
        assert_eq!(min.assignment_pages, 15);
        assert_eq!(t.drifted_count(), 10);
        // Drift falls on apps as well as groups.
        let t = SyntheticTenant::benchmark(10_000);
        let lost: Vec<SyntheticResource> =
            (0..10_000).filter_map(|i| t.drifted_resource(i)).collect();
        assert_eq!(lost.len(), 100);
        assert!(lost.iter().any(|r| matches!(r, SyntheticResource::App(_))));
        assert!(
            lost.iter()
                .any(|r| matches!(r, SyntheticResource::Group(_)))
        );
    }
}

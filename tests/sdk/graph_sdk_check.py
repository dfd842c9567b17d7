"""Fidelity check: Microsoft's own Python SDKs against `redeliver sim`, unchanged.

azure-identity (MSAL underneath) fetches a token from the simulator's token endpoint over
HTTPS, after reading its OpenID discovery document; msgraph-sdk parses the simulator's v1.0
JSON into its generated models. Only the authority host and the Graph base URL point at
the simulator. Run by .ci/sdk-check with the simulator's environment exported.
"""

import asyncio
import os
import sys

from azure.identity.aio import ClientSecretCredential
from msgraph import GraphServiceClient
from msgraph.generated.identity_governance.entitlement_management.assignments.assignments_request_builder import (
    AssignmentsRequestBuilder,
)
from msgraph.generated.identity_governance.entitlement_management.access_packages.item.access_package_item_request_builder import (
    AccessPackageItemRequestBuilder,
)
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.identity_protection.risky_users.risky_users_request_builder import (
    RiskyUsersRequestBuilder,
)
from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder
from msgraph.generated.identity_governance.privileged_access.group.eligibility_schedules.eligibility_schedules_request_builder import (
    EligibilitySchedulesRequestBuilder,
)
from kiota_abstractions.base_request_configuration import RequestConfiguration


async def main() -> int:
    graph = os.environ["REDELIVER_GRAPH_URL"]
    credential = ClientSecretCredential(
        tenant_id=os.environ["AZURE_TENANT_ID"],
        client_id=os.environ["AZURE_CLIENT_ID"],
        client_secret=os.environ["AZURE_CLIENT_SECRET"],
        authority=os.environ["AZURE_AUTHORITY_HOST"],
        # A non-Microsoft authority host: skip instance discovery at login.microsoftonline.com
        # (the same switch Azure Stack and sovereign test environments use).
        disable_instance_discovery=True,
    )
    try:
        return await check(credential, graph)
    finally:
        await credential.close()


async def check(credential, graph: str) -> int:
    client = GraphServiceClient(credentials=credential, scopes=[f"{graph}/.default"])
    client.request_adapter.base_url = f"{graph}/v1.0"

    em = client.identity_governance.entitlement_management
    packages = await em.access_packages.get()
    names = sorted(p.display_name for p in packages.value)
    assert names == [
        "Contractor Portal",
        "Engineering Tools",
        "Finance Admins",
        "Finance Analysts",
        "Security Operations",
    ], names

    query = AssignmentsRequestBuilder.AssignmentsRequestBuilderGetQueryParameters(
        expand=["target", "accessPackage"],
    )
    assignments = await em.assignments.get(
        request_configuration=RequestConfiguration(query_parameters=query)
    )
    by_user = {a.target.principal_name: a for a in assignments.value}
    alice = by_user["alice@contoso.com"]
    assert alice.state.value == "delivered", alice.state
    assert alice.access_package.display_name == "Finance Analysts"

    finance = next(p for p in packages.value if p.display_name == "Finance Analysts")
    pkg_query = AccessPackageItemRequestBuilder.AccessPackageItemRequestBuilderGetQueryParameters(
        expand=["resourceRoleScopes($expand=role,scope)"],
    )
    package = await em.access_packages.by_access_package_id(finance.id).get(
        request_configuration=RequestConfiguration(query_parameters=pkg_query)
    )
    scopes = {s.scope.display_name: s for s in package.resource_role_scopes}
    fin_writers = scopes["fin-writers"]
    assert fin_writers.scope.origin_system == "AadGroup", fin_writers.scope.origin_system
    assert fin_writers.role.origin_id == f"Member_{fin_writers.scope.origin_id}"
    members = await client.groups.by_group_id(fin_writers.scope.origin_id).members.get()
    member_ids = {m.id for m in members.value}
    assert alice.target.object_id not in member_ids, "the demo drift: alice is not in fin-writers"

    # The account state Redeliver confirms before a grant: accountEnabled is not a default
    # property, so it is $selected; Identity Protection lists no risky user in the demo.
    user_query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
        select=["id", "accountEnabled", "userPrincipalName", "displayName"],
    )
    account = await client.users.by_user_id(alice.target.object_id).get(
        request_configuration=RequestConfiguration(query_parameters=user_query)
    )
    assert account.account_enabled is True, account.account_enabled
    assert account.user_principal_name == "alice@contoso.com", account.user_principal_name
    risk_query = RiskyUsersRequestBuilder.RiskyUsersRequestBuilderGetQueryParameters(
        filter=f"id eq '{alice.target.object_id}'",
    )
    risky = await client.identity_protection.risky_users.get(
        request_configuration=RequestConfiguration(query_parameters=risk_query)
    )
    assert risky.value == [], risky.value

    # An Entra role as Redeliver reads it: the role's resource expanded inside the role,
    # in the SDK's own encoding of the nested $expand.
    security = next(p for p in packages.value if p.display_name == "Security Operations")
    role_query = AccessPackageItemRequestBuilder.AccessPackageItemRequestBuilderGetQueryParameters(
        expand=["resourceRoleScopes($expand=role($expand=resource),scope)"],
    )
    package = await em.access_packages.by_access_package_id(security.id).get(
        request_configuration=RequestConfiguration(query_parameters=role_query)
    )
    roles = [s for s in package.resource_role_scopes if s.scope.origin_system == "DirectoryRole"]
    assert roles, "the demo's Security Operations package grants an Entra role"
    assert all(s.role.origin_id in ("Eligible", "Active") for s in roles), roles
    assert all(s.role.resource and s.role.resource.display_name for s in roles), roles

    # A paged group list: $top pages followed through @odata.nextLink, $count with
    # ConsistencyLevel: eventual (the count on the first page), and a $filter by name.
    group_query = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
        top=2, count=True, select=["id", "displayName"],
    )
    config = RequestConfiguration(query_parameters=group_query)
    config.headers.add("ConsistencyLevel", "eventual")
    page = await client.groups.get(request_configuration=config)
    total = page.odata_count
    group_names = [g.display_name for g in page.value]
    pages = 1
    while page.odata_next_link:
        page = await client.groups.with_url(page.odata_next_link).get(
            request_configuration=RequestConfiguration(headers=config.headers)
        )
        assert len(page.value) <= 2, len(page.value)
        group_names += [g.display_name for g in page.value]
        pages += 1
    assert total == len(group_names) and pages == (total + 1) // 2, (total, pages, group_names)
    assert "fin-writers" in group_names, group_names
    by_name = await client.groups.get(
        request_configuration=RequestConfiguration(
            query_parameters=GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
                filter="displayName eq 'fin-writers'",
            )
        )
    )
    assert [g.id for g in by_name.value] == [fin_writers.scope.origin_id], by_name.value

    # PIM for Groups as Redeliver reads it: Finance Admins grants eligible membership of
    # finance-admins (role originId EligibleMember_{group}); the eligibility schedules filtered
    # by group and relationship parse into the SDK's models. erin's was removed in PIM.
    admins_pkg = next(p for p in packages.value if p.display_name == "Finance Admins")
    package = await em.access_packages.by_access_package_id(admins_pkg.id).get(
        request_configuration=RequestConfiguration(query_parameters=pkg_query)
    )
    [admins] = package.resource_role_scopes
    group_id = admins.scope.origin_id
    assert admins.role.origin_id == f"EligibleMember_{group_id}", admins.role.origin_id
    assert admins.role.display_name == "Eligible Member", admins.role.display_name
    pim_query = EligibilitySchedulesRequestBuilder.EligibilitySchedulesRequestBuilderGetQueryParameters(
        filter=f"groupId eq '{group_id}' and accessId eq 'member'",
    )
    schedules = await client.identity_governance.privileged_access.group.eligibility_schedules.get(
        request_configuration=RequestConfiguration(query_parameters=pim_query)
    )
    eligible = {s.principal_id for s in schedules.value}
    assert all(s.access_id.value == "member" and s.group_id == group_id for s in schedules.value)
    assert all(s.schedule_info.expiration.type.value == "noExpiration" for s in schedules.value)
    assert by_user["bob@contoso.com"].target.object_id in eligible, eligible
    erin = next(
        a for a in assignments.value
        if a.target.principal_name == "erin@contoso.com"
        and a.access_package.display_name == "Finance Admins"
    )
    assert erin.target.object_id not in eligible, "the demo drift: erin's eligibility was removed"

    print(
        f"msgraph-sdk against redeliver sim: {len(names)} packages, "
        f"{len(assignments.value)} assignments, fin-writers has {len(member_ids)} member(s), "
        f"{total} groups in {pages} pages, {len(eligible)} eligible member(s) of finance-admins: ok"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

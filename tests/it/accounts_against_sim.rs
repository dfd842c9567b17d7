//! Account-state reads before a grant, over real HTTP against the simulator: the Graph
//! client's batched `user_accounts` / `risky_users`, the `AccountReader` (cache,
//! coalescing, single-flight, remembered 403s), and the simulator's account admin API
//! (disable, delete, flag as risky, take a permission away). The request log proves what
//! went over the wire.

use std::time::Duration;

use redeliver::engine::{AccountState, Risk, TargetAccount};
use redeliver::graph::GraphClient;
use redeliver::observe::accounts::{
    AccountReader, AccountSettings, LACKS_RISKY_USER_READ, LACKS_USER_READ_ALL,
};
use redeliver_sim::{Scenario, ScenarioBuilder, SimHandle, SimOptions, Simulator};
use serde_json::{Value, json};

const BATCH: &str = "/v1.0/$batch";
const USERS: &str = "/v1.0/users/";
const RISKY: &str = "/v1.0/identityProtection/riskyUsers";

fn client_for(h: &SimHandle) -> GraphClient {
    let mut config = crate::fault_support::args_for(h).validate().unwrap();
    config.backoff_base = Duration::from_millis(20);
    config.backoff_cap = Duration::from_millis(100);
    GraphClient::new(config).unwrap()
}

async fn demo() -> (SimHandle, GraphClient) {
    let h = Simulator::start(Scenario::demo(), SimOptions::fast())
        .await
        .unwrap();
    let c = client_for(&h);
    (h, c)
}

fn id(h: &SimHandle, upn: &str) -> String {
    h.user_id(upn).unwrap().to_ascii_lowercase()
}

fn reader(check_risk: bool) -> AccountReader {
    AccountReader::new(AccountSettings {
        check_risk,
        ..AccountSettings::default()
    })
}

/// Graph requests inside `$batch` envelopes whose path starts with `prefix`.
/// GETs under `prefix`, sent alone (one user) or inside a `$batch`.
fn reads(h: &SimHandle, prefix: &str) -> usize {
    h.request_log()
        .iter()
        .filter(|e| e.method == "GET" && e.path.starts_with(prefix))
        .count()
}

async fn admin(h: &SimHandle, method: reqwest::Method, path: &str, body: Option<Value>) -> u16 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", h.admin_url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn user_accounts_tell_enabled_disabled_deleted_and_forbidden_apart() {
    let (h, c) = demo().await;
    let (alice, bob, carol) = (
        id(&h, "alice@contoso.com"),
        id(&h, "bob@contoso.com"),
        id(&h, "carol@contoso.com"),
    );
    h.set_account_enabled("bob@contoso.com", false).unwrap();
    h.delete_user("carol@contoso.com").unwrap();

    let answers = c
        .user_accounts(&[alice.clone(), bob.clone(), carol.clone()])
        .await
        .unwrap();
    let ids: Vec<&str> = answers.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, [alice.as_str(), bob.as_str(), carol.as_str()]);
    let alice_account = answers[0].1.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(alice_account.account_enabled, Some(true));
    assert_eq!(
        alice_account.user_principal_name.as_deref(),
        Some("alice@contoso.com")
    );
    assert_eq!(
        answers[1]
            .1
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap()
            .account_enabled,
        Some(false)
    );
    assert_eq!(
        answers[2].1.as_ref().unwrap(),
        &None,
        "deleted → 404 → None"
    );
    assert_eq!(h.count_requests("POST", BATCH), 1);

    h.set_permission("User.Read.All", false).unwrap();
    let answers = c.user_accounts(std::slice::from_ref(&alice)).await.unwrap();
    let err = answers[0].1.as_ref().unwrap_err();
    assert!(err.is_forbidden(), "{err}");
    assert!(err.to_string().contains("User.Read.All"), "{err}");
}

#[tokio::test]
async fn forty_five_ids_go_out_in_three_batch_envelopes() {
    let mut b = ScenarioBuilder::new("many");
    for i in 0..45 {
        b = b.user(&format!("u{i}@many.example"), &format!("User {i}"));
    }
    let h = Simulator::start(b.build(), SimOptions::fast())
        .await
        .unwrap();
    let c = client_for(&h);
    let ids: Vec<String> = (0..45)
        .map(|i| id(&h, &format!("u{i}@many.example")))
        .collect();

    let accounts = reader(false).accounts(&c, &ids).await;
    assert_eq!(accounts.len(), 45);
    assert!(accounts.values().all(|a| *a == TargetAccount::enabled()));
    assert_eq!(h.count_requests("POST", BATCH), 3);
    assert_eq!(reads(&h, USERS), 45);
    assert!(
        h.request_log()
            .iter()
            .filter(|e| e.path.starts_with(USERS))
            .all(|e| e.path.contains("accountEnabled") && e.ru == Some(1)),
        "every user read selects accountEnabled and costs 1 RU"
    );
}

#[tokio::test]
async fn the_cache_answers_within_the_ttl_and_invalidate_reads_again() {
    let (h, c) = demo().await;
    let alice = id(&h, "alice@contoso.com");
    let r = reader(false);
    let ids = [alice.clone()];

    assert_eq!(
        r.accounts(&c, &ids).await[&alice].state,
        AccountState::Enabled
    );
    assert_eq!(
        r.accounts(&c, &ids).await[&alice].state,
        AccountState::Enabled
    );
    assert_eq!(reads(&h, USERS), 1, "the second answer is cached");
    assert_eq!(
        h.count_requests("POST", BATCH),
        0,
        "one user is a plain GET, no envelope"
    );
    assert_eq!(r.stats(), (1, 1));

    h.set_account_enabled("alice@contoso.com", false).unwrap();
    assert_eq!(
        r.accounts(&c, &ids).await[&alice].state,
        AccountState::Enabled,
        "still within the TTL"
    );
    r.invalidate(&alice.to_ascii_uppercase());
    assert_eq!(
        r.accounts(&c, &ids).await[&alice].state,
        AccountState::Disabled
    );
    assert_eq!(reads(&h, USERS), 2);

    // A short TTL expires by itself.
    let short = AccountReader::new(AccountSettings {
        ttl: Duration::from_millis(100),
        ..AccountSettings::default()
    });
    assert_eq!(
        short.accounts(&c, &ids).await[&alice].state,
        AccountState::Disabled
    );
    h.set_account_enabled("alice@contoso.com", true).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        short.accounts(&c, &ids).await[&alice].state,
        AccountState::Enabled
    );
}

#[tokio::test]
async fn concurrent_callers_share_one_batch() {
    let (h, c) = demo().await;
    let (alice, bob) = (id(&h, "alice@contoso.com"), id(&h, "bob@contoso.com"));
    let r = reader(false);
    let first = [alice.clone(), bob.clone()];
    let second = [bob.clone()];
    let (a, b) = tokio::join!(r.accounts(&c, &first), r.accounts(&c, &second));
    assert_eq!(a.len(), 2);
    assert_eq!(b[&bob].state, AccountState::Enabled);
    assert_eq!(h.count_requests("POST", BATCH), 1, "one coalesced envelope");
    assert_eq!(reads(&h, USERS), 2, "bob is read once for both callers");
}

#[tokio::test]
async fn risky_users_hold_only_high_or_active_risk() {
    let (h, c) = demo().await;
    let upns = [
        "alice@contoso.com",
        "bob@contoso.com",
        "carol@contoso.com",
        "dave@contoso.com",
    ];
    let ids: Vec<String> = upns.iter().map(|u| id(&h, u)).collect();
    h.set_risky_user("alice@contoso.com", "high", "remediated")
        .unwrap();
    h.set_risky_user("bob@contoso.com", "medium", "atRisk")
        .unwrap();
    h.set_risky_user("carol@contoso.com", "low", "remediated")
        .unwrap();

    let found = c.risky_users(&ids).await.unwrap();
    assert_eq!(found.len(), 3, "dave was never assessed: {found:?}");

    let accounts = reader(true).accounts(&c, &ids).await;
    assert_eq!(
        accounts[&ids[0]].risk,
        Risk::AtRisk {
            level: "high".into(),
            state: "remediated".into()
        }
    );
    assert_eq!(
        accounts[&ids[1]].risk,
        Risk::AtRisk {
            level: "medium".into(),
            state: "atRisk".into()
        }
    );
    assert_eq!(accounts[&ids[2]].risk, Risk::None);
    assert_eq!(accounts[&ids[3]].risk, Risk::None);
    assert!(accounts.values().all(|a| a.state == AccountState::Enabled));
    assert_eq!(reads(&h, RISKY), 8, "one filter per id, twice");

    // Not asked: nothing is read from Identity Protection.
    h.clear_request_log();
    let plain = reader(false).accounts(&c, &ids).await;
    assert!(plain.values().all(|a| a.risk == Risk::NotChecked));
    assert_eq!(reads(&h, RISKY), 0);
}

#[tokio::test]
async fn without_identity_risky_user_read_all_risk_is_unavailable_and_holds_nothing() {
    let (h, c) = demo().await;
    let alice = id(&h, "alice@contoso.com");
    h.set_risky_user("alice@contoso.com", "high", "atRisk")
        .unwrap();
    h.set_permission("IdentityRiskyUser.Read.All", false)
        .unwrap();
    let r = AccountReader::new(AccountSettings {
        check_risk: true,
        ttl: Duration::ZERO,
        ..AccountSettings::default()
    });
    let ids = [alice.clone()];
    let unavailable = Risk::Unavailable {
        reason: LACKS_RISKY_USER_READ.into(),
    };
    let first = r.accounts(&c, &ids).await;
    assert_eq!(first[&alice].state, AccountState::Enabled);
    assert_eq!(first[&alice].risk, unavailable);
    let risky_reads = reads(&h, RISKY);
    assert_eq!(risky_reads, 1);

    // Remembered: the next pass reads the account again (TTL 0) but not the risk.
    let second = r.accounts(&c, &ids).await;
    assert_eq!(second[&alice].risk, unavailable);
    assert_eq!(reads(&h, RISKY), risky_reads);
    assert_eq!(reads(&h, USERS), 2);
}

#[tokio::test]
async fn without_user_read_all_accounts_are_unreadable_without_a_request_storm() {
    let (h, c) = demo().await;
    let (alice, bob) = (id(&h, "alice@contoso.com"), id(&h, "bob@contoso.com"));
    h.set_permission("User.Read.All", false).unwrap();
    let r = reader(false);
    let unreadable = AccountState::Unreadable {
        reason: LACKS_USER_READ_ALL.into(),
    };
    let first = r.accounts(&c, std::slice::from_ref(&alice)).await;
    assert_eq!(first[&alice].state, unreadable);
    let second = r.accounts(&c, &[alice.clone(), bob.clone()]).await;
    assert_eq!(second[&bob].state, unreadable);
    assert_eq!(reads(&h, USERS), 1, "the 403 is remembered for every id");

    // A transient failure is not cached: the next call asks again.
    h.set_permission("User.Read.All", true).unwrap();
    let fresh = reader(false);
    h.inject_fault(redeliver_sim::FaultSpec::Error {
        status: 500,
        retry_after: None,
        scope: redeliver_sim::FaultScope {
            path_prefix: Some("/users".into()),
            count: Some(10),
            ..Default::default()
        },
    });
    let failed = fresh.accounts(&c, std::slice::from_ref(&bob)).await;
    assert!(matches!(
        failed[&bob].state,
        AccountState::Unreadable { .. }
    ));
    h.clear_faults();
    let ok = fresh.accounts(&c, std::slice::from_ref(&bob)).await;
    assert_eq!(ok[&bob].state, AccountState::Enabled);
}

#[tokio::test]
async fn the_admin_api_disables_enables_deletes_and_flags_users() {
    let (h, c) = demo().await;
    let bob = id(&h, "bob@contoso.com");
    let r = reader(true);
    let ids = [bob.clone()];
    use reqwest::Method;

    let path = "/users/bob@contoso.com";
    assert_eq!(
        admin(
            &h,
            Method::PATCH,
            path,
            Some(json!({"accountEnabled": false}))
        )
        .await,
        200
    );
    assert_eq!(
        r.accounts(&c, &ids).await[&bob].state,
        AccountState::Disabled
    );
    assert_eq!(
        admin(
            &h,
            Method::PATCH,
            &format!("/users/{bob}"),
            Some(json!({"accountEnabled": true}))
        )
        .await,
        200
    );
    r.invalidate(&bob);
    assert_eq!(
        r.accounts(&c, &ids).await[&bob].state,
        AccountState::Enabled
    );

    let risky = format!("/riskyUsers/{bob}");
    assert_eq!(
        admin(
            &h,
            Method::PUT,
            &risky,
            Some(json!({"riskLevel": "high", "riskState": "atRisk"}))
        )
        .await,
        204
    );
    assert_eq!(
        admin(
            &h,
            Method::PUT,
            &risky,
            Some(json!({"riskLevel": "severe", "riskState": "atRisk"}))
        )
        .await,
        400
    );
    r.invalidate(&bob);
    assert!(matches!(
        r.accounts(&c, &ids).await[&bob].risk,
        Risk::AtRisk { .. }
    ));
    assert_eq!(admin(&h, Method::DELETE, &risky, None).await, 200);
    r.invalidate(&bob);
    assert_eq!(r.accounts(&c, &ids).await[&bob].risk, Risk::None);

    assert_eq!(
        admin(&h, Method::DELETE, "/permissions/Mail.Read", None).await,
        400
    );
    assert_eq!(admin(&h, Method::DELETE, path, None).await, 204);
    assert_eq!(admin(&h, Method::DELETE, path, None).await, 404);
    r.invalidate(&bob);
    assert_eq!(
        r.accounts(&c, &ids).await[&bob].state,
        AccountState::Deleted
    );
}

#[tokio::test]
async fn entitlement_management_still_delivers_to_a_disabled_account() {
    let (h, c) = demo().await;
    let assignment = h
        .assignment_id("bob@contoso.com", "Finance Analysts")
        .unwrap();
    h.set_account_enabled("bob@contoso.com", false).unwrap();
    assert!(h.remove_member("fin-writers", "bob@contoso.com").unwrap());
    c.reprocess_assignment(&assignment).await.unwrap();
    assert!(h.settle(Duration::from_secs(5)).await);
    assert!(
        h.is_member("fin-writers", "bob@contoso.com"),
        "a reprocess re-adds a disabled account, as Entra does"
    );
}

#[tokio::test]
async fn a_deleted_user_leaves_every_graph_read() {
    let (h, c) = demo().await;
    let bob = id(&h, "bob@contoso.com");
    let writers = h.group_id("fin-writers").unwrap();
    assert!(c.list_group_members(&writers).await.unwrap().contains(&bob));
    let assignment = h
        .assignment_id("bob@contoso.com", "Finance Analysts")
        .unwrap();
    h.delete_user("bob@contoso.com").unwrap();

    assert_eq!(c.get_user(&bob).await.unwrap(), None);
    assert_eq!(c.get_user("bob@contoso.com").await.unwrap(), None);
    assert!(!c.list_group_members(&writers).await.unwrap().contains(&bob));
    let kept = c.get_assignment(&assignment).await.unwrap().unwrap();
    assert_eq!(
        kept.target
            .and_then(|t| t.object_id)
            .map(|o| o.to_ascii_lowercase()),
        Some(bob.clone()),
        "entitlement management's assignment keeps naming the deleted target"
    );
    // A reprocess is accepted and restores nothing.
    c.reprocess_assignment(&assignment).await.unwrap();
    assert!(h.settle(Duration::from_secs(5)).await);
    assert!(!c.list_group_members(&writers).await.unwrap().contains(&bob));
}

#[tokio::test]
async fn a_scenario_declares_a_disabled_account() {
    let yaml = r#"
apiVersion: sim.redeliver.dev/v1
kind: SimulatorScenario
spec:
  tenant: {name: leavers}
  users:
    - {upn: leaver@leavers.example, accountEnabled: false}
    - {upn: stayer@leavers.example}
"#;
    let scenario = Scenario::from_yaml_str(yaml).unwrap();
    let h = Simulator::start(scenario, SimOptions::fast())
        .await
        .unwrap();
    let c = client_for(&h);
    let (leaver, stayer) = (
        id(&h, "leaver@leavers.example"),
        id(&h, "stayer@leavers.example"),
    );
    let accounts = reader(false)
        .accounts(&c, &[leaver.clone(), stayer.clone()])
        .await;
    assert_eq!(accounts[&leaver].state, AccountState::Disabled);
    assert_eq!(accounts[&stayer].state, AccountState::Enabled);
}

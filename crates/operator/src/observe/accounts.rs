//! The account facts a grant must confirm ([`TargetAccount`]), read for write candidates
//! only and shared by every reconcile of one connection.
//!
//! - **Cached** per id for [`AccountSettings::ttl`] (30 s by default, below the 60 s delta
//!   interval, so a re-enabled account is seen within one interval).
//! - **Coalesced**: ids asked for within [`AccountSettings::coalesce`] (20 ms) of each other
//!   go out in the same `$batch` envelopes, however many reconciles asked.
//! - **Single-flight**: an id already being read is not read again; its callers wait for
//!   the read in flight. No lock is held across a Graph call: the read runs in a task of
//!   its own, and callers wait on a `watch` channel, so a caller that is cancelled (a
//!   reconcile dropped mid-way) never strands the others.
//! - A `403` is remembered for [`AccountSettings::forbidden_ttl`]: without `User.Read.All`
//!   every account is `Unreadable` without a request; without `IdentityRiskyUser.Read.All`
//!   risk is `Unavailable` (logged once per reader) and nothing is held for it.
//! - Transient failures (throttling, 5xx, transport) answer `Unreadable` / `Unavailable`
//!   and are not cached: the next reconcile asks again.
//!
//! The Graph calls and their permissions are in docs/graph.md, "Account state".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::engine::{AccountState, Risk, TargetAccount, risk_holds};
use crate::graph::GraphClient;
use crate::graph::accounts::AccountRead;
use crate::graph::error::GraphError;
use crate::graph::models::RiskyUser;

/// Why an account is unreadable when the app lacks the permission.
pub const LACKS_USER_READ_ALL: &str = "the app lacks User.Read.All";
/// Why risk is unavailable when the app (or the tenant's licence) does not allow it.
pub const LACKS_RISKY_USER_READ: &str = "the app lacks IdentityRiskyUser.Read.All";

/// How an [`AccountReader`] caches and batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSettings {
    /// How long an account's state (and risk) is trusted. Must stay below the delta
    /// interval so that re-enabling an account lets its repair proceed within one interval.
    pub ttl: Duration,
    /// Whether Identity Protection is asked (`safety.holdRiskyUsers`); off: every account
    /// carries [`Risk::NotChecked`].
    pub check_risk: bool,
    /// How long a read waits for other callers' ids before it goes out.
    pub coalesce: Duration,
    /// How long a `403` is believed before Graph is asked again (the permission may be
    /// granted meanwhile).
    pub forbidden_ttl: Duration,
}

impl Default for AccountSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            check_risk: false,
            coalesce: Duration::from_millis(20),
            forbidden_ttl: Duration::from_secs(300),
        }
    }
}

/// The result of one coalesced read, shared with every caller waiting on one of its ids.
type Answers = Arc<HashMap<String, TargetAccount>>;

#[derive(Default)]
struct State {
    accounts: HashMap<String, (Instant, AccountState)>,
    risks: HashMap<String, (Instant, Risk)>,
    /// Ids being read (or waiting for the coalescing window) → the read's answer.
    pending: HashMap<String, watch::Receiver<Option<Answers>>>,
    /// The read still gathering ids, if any.
    open: Option<OpenRead>,
    users_forbidden_until: Option<Instant>,
    risk_forbidden_until: Option<Instant>,
}

struct OpenRead {
    ids: Vec<String>,
    done: watch::Sender<Option<Answers>>,
}

struct Inner {
    settings: AccountSettings,
    state: Mutex<State>,
    hits: AtomicU64,
    reads: AtomicU64,
    risk_noted: AtomicBool,
}

/// Reads whether write targets still exist, are enabled and are not at risk; one per
/// connection (tenant), shared by every reconcile. Cheap to clone.
#[derive(Clone)]
pub struct AccountReader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AccountReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountReader")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl AccountReader {
    /// A reader with an empty cache.
    pub fn new(settings: AccountSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::new(State::default()),
                hits: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                risk_noted: AtomicBool::new(false),
            }),
        }
    }

    /// The account facts of each id (keys are the lower-cased ids; every id asked for has
    /// an entry). Fresh cached answers cost nothing; the rest are read in one coalesced
    /// batch shared with concurrent callers. Never fails: what cannot be read is
    /// [`AccountState::Unreadable`], which holds the grant.
    pub async fn accounts(
        &self,
        graph: &GraphClient,
        ids: &[String],
    ) -> BTreeMap<String, TargetAccount> {
        let wanted: BTreeSet<String> = ids.iter().map(|i| i.to_ascii_lowercase()).collect();
        let mut out = BTreeMap::new();
        let mut waits: Vec<(String, watch::Receiver<Option<Answers>>)> = Vec::new();
        {
            let now = Instant::now();
            let mut state = self.inner.lock();
            for id in wanted {
                if let Some(account) = self.inner.cached(&state, &id, now) {
                    self.inner.hits.fetch_add(1, Ordering::Relaxed);
                    out.insert(id, account);
                    continue;
                }
                let rx = match state.pending.get(&id) {
                    Some(rx) => rx.clone(),
                    None => self.join_open_read(&mut state, graph, &id),
                };
                waits.push((id, rx));
            }
        }
        for (id, mut rx) in waits {
            let answer = match rx.wait_for(Option::is_some).await {
                Ok(answers) => answers.as_ref().and_then(|a| a.get(&id).cloned()),
                Err(_) => None,
            };
            let account = answer.unwrap_or_else(|| TargetAccount {
                state: AccountState::Unreadable {
                    reason: "the account read was interrupted; it is retried on the next pass"
                        .into(),
                },
                risk: self.unchecked_risk(),
            });
            out.insert(id, account);
        }
        out
    }

    /// Forgets what is known about `id`, so the next call reads it again (for example
    /// after someone says the account was re-enabled).
    pub fn invalidate(&self, id: &str) {
        let id = id.to_ascii_lowercase();
        let mut state = self.inner.lock();
        state.accounts.remove(&id);
        state.risks.remove(&id);
    }

    /// `(answered from the cache, read from Graph)` since the reader was made, per id.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.inner.hits.load(Ordering::Relaxed),
            self.inner.reads.load(Ordering::Relaxed),
        )
    }

    fn unchecked_risk(&self) -> Risk {
        if self.inner.settings.check_risk {
            Risk::Unavailable {
                reason: "the risk read was interrupted".into(),
            }
        } else {
            Risk::NotChecked
        }
    }

    /// Adds `id` to the read gathering ids, opening one (and the task that sends it after
    /// the coalescing window) when none is open.
    fn join_open_read(
        &self,
        state: &mut State,
        graph: &GraphClient,
        id: &str,
    ) -> watch::Receiver<Option<Answers>> {
        let rx = match &mut state.open {
            Some(open) => {
                open.ids.push(id.to_string());
                open.done.subscribe()
            }
            None => {
                let (done, rx) = watch::channel(None);
                state.open = Some(OpenRead {
                    ids: vec![id.to_string()],
                    done,
                });
                let inner = self.inner.clone();
                let graph = graph.clone();
                tokio::spawn(async move { inner.run_open_read(&graph).await });
                rx
            }
        };
        state.pending.insert(id.to_string(), rx.clone());
        rx
    }
}

impl Inner {
    /// Locks the state. A poisoned lock only means a caller panicked between two map
    /// updates; every entry is still a valid answer.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The full answer for `id` when both its state and (if asked) its risk are known.
    fn cached(&self, state: &State, id: &str, now: Instant) -> Option<TargetAccount> {
        let ttl = self.settings.ttl;
        let account = fresh(
            &state.accounts,
            id,
            now,
            ttl,
            state.users_forbidden_until,
            || AccountState::Unreadable {
                reason: LACKS_USER_READ_ALL.into(),
            },
        )?;
        let risk = if self.settings.check_risk {
            fresh(
                &state.risks,
                id,
                now,
                ttl,
                state.risk_forbidden_until,
                || Risk::Unavailable {
                    reason: LACKS_RISKY_USER_READ.into(),
                },
            )?
        } else {
            Risk::NotChecked
        };
        Some(TargetAccount {
            state: account,
            risk,
        })
    }

    /// Waits out the coalescing window, then reads every id gathered meanwhile and
    /// publishes the answers.
    async fn run_open_read(self: Arc<Self>, graph: &GraphClient) {
        tokio::time::sleep(self.settings.coalesce).await;
        let Some(open) = self.lock().open.take() else {
            return;
        };
        let answers = self.read(graph, &open.ids).await;
        {
            let mut state = self.lock();
            for id in &open.ids {
                state.pending.remove(id);
            }
        }
        // Nobody waiting is fine: the answers are in the cache.
        let _ = open.done.send(Some(Arc::new(answers)));
    }

    /// Reads accounts (and risk, when asked) of `ids` from Graph, caching what may be
    /// cached.
    async fn read(&self, graph: &GraphClient, ids: &[String]) -> HashMap<String, TargetAccount> {
        let refused = self.refused(Instant::now());
        // Object ids only: anything else cannot name a user, and must not reach a URL.
        let (valid, invalid): (Vec<String>, Vec<String>) = ids
            .iter()
            .cloned()
            .partition(|id| uuid::Uuid::parse_str(id).is_ok());
        let read_users = async {
            if refused.users || valid.is_empty() {
                return Ok(Vec::new());
            }
            self.reads.fetch_add(valid.len() as u64, Ordering::Relaxed);
            graph.user_accounts(&valid).await
        };
        let read_risk = async {
            if !self.settings.check_risk || refused.risk || valid.is_empty() {
                return None;
            }
            Some(graph.risky_users(&valid).await)
        };
        let (users, risky) = tokio::join!(read_users, read_risk);
        let accounts = AccountReads::new(users, &invalid);
        let risks = self.risk_reads(risky, refused.risk);
        self.publish(ids, accounts, risks, refused.users)
    }

    /// Which reads a remembered `403` still answers at `now`, without asking Graph.
    fn refused(&self, now: Instant) -> Refused {
        let state = self.lock();
        let active = |until: Option<Instant>| until.is_some_and(|u| now < u);
        Refused {
            users: active(state.users_forbidden_until),
            risk: active(state.risk_forbidden_until),
        }
    }

    /// Sorts Identity Protection's answer (`None`: not asked) into risks, whether they may
    /// be cached, and what an id gets when risk could not be read.
    fn risk_reads(
        &self,
        risky: Option<Result<Vec<RiskyUser>, GraphError>>,
        already_forbidden: bool,
    ) -> RiskReads {
        let (by_id, cache, newly_forbidden) = match risky {
            None => (None, false, false),
            Some(Ok(found)) => (Some(risk_by_id(found)), true, false),
            Some(Err(e)) if e.is_forbidden() => {
                if !self.risk_noted.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "Identity Protection cannot be read: risky users are not held (grant IdentityRiskyUser.Read.All, with an Entra ID P2 licence, to hold them)");
                }
                (None, false, true)
            }
            Some(Err(e)) => {
                tracing::info!(error = %e, "Identity Protection could not be read; risk is unavailable for this pass");
                (None, false, false)
            }
        };
        let failure = if newly_forbidden || already_forbidden {
            Risk::Unavailable {
                reason: LACKS_RISKY_USER_READ.into(),
            }
        } else {
            Risk::Unavailable {
                reason:
                    "Identity Protection could not be read (it is asked again on the next pass)"
                        .into(),
            }
        };
        RiskReads {
            by_id,
            cache,
            newly_forbidden,
            failure,
        }
    }

    /// Remembers new refusals, caches what may be cached, and answers every id asked for.
    fn publish(
        &self,
        ids: &[String],
        mut accounts: AccountReads,
        risks: RiskReads,
        users_forbidden: bool,
    ) -> HashMap<String, TargetAccount> {
        let mut state = self.lock();
        let now = Instant::now();
        if accounts.newly_forbidden {
            state.users_forbidden_until = Some(now + self.settings.forbidden_ttl);
        }
        if risks.newly_forbidden {
            state.risk_forbidden_until = Some(now + self.settings.forbidden_ttl);
        }
        let mut out = HashMap::with_capacity(ids.len());
        for id in ids {
            let account = match accounts.states.remove(id) {
                Some((account, cache)) => {
                    if cache {
                        state.accounts.insert(id.clone(), (now, account.clone()));
                    }
                    account
                }
                None if users_forbidden || accounts.newly_forbidden => AccountState::Unreadable {
                    reason: LACKS_USER_READ_ALL.into(),
                },
                None => AccountState::Unreadable {
                    reason: "the account could not be read".into(),
                },
            };
            let risk = if !self.settings.check_risk {
                Risk::NotChecked
            } else {
                match &risks.by_id {
                    Some(by_id) => {
                        let risk = by_id.get(id).cloned().unwrap_or(Risk::None);
                        if risks.cache {
                            state.risks.insert(id.clone(), (now, risk.clone()));
                        }
                        risk
                    }
                    None => risks.failure.clone(),
                }
            };
            out.insert(
                id.clone(),
                TargetAccount {
                    state: account,
                    risk,
                },
            );
        }
        out
    }
}

/// The reads a remembered `403` answers for now.
struct Refused {
    users: bool,
    risk: bool,
}

/// What one user read learned, before it is cached.
struct AccountReads {
    /// Account state by id, and whether it may be cached.
    states: HashMap<String, (AccountState, bool)>,
    /// Graph refused the read for lack of User.Read.All (remembered for all ids).
    newly_forbidden: bool,
}

impl AccountReads {
    /// The answers of `users`, plus `invalid` ids (not object ids, never sent) as
    /// unreadable.
    fn new(users: Result<Vec<(String, AccountRead)>, GraphError>, invalid: &[String]) -> Self {
        let mut states: HashMap<String, (AccountState, bool)> = HashMap::new();
        let mut newly_forbidden = false;
        match users {
            Ok(answers) => {
                for (id, answer) in answers {
                    let (account, cache) = account_state(answer);
                    newly_forbidden |= matches!(
                        &account,
                        AccountState::Unreadable { reason } if reason == LACKS_USER_READ_ALL
                    ) && !cache;
                    states.insert(id, (account, cache));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "account ids could not be put in a request");
            }
        }
        for id in invalid {
            let reason = format!("{id:?} is not a directory object id");
            states.insert(id.clone(), (AccountState::Unreadable { reason }, true));
        }
        Self {
            states,
            newly_forbidden,
        }
    }
}

/// What one Identity Protection read learned, before it is cached.
struct RiskReads {
    /// Risk by id; `None` when it was not asked or could not be read.
    by_id: Option<HashMap<String, Risk>>,
    /// Whether `by_id` may be cached.
    cache: bool,
    /// Graph refused the read (no permission or no licence).
    newly_forbidden: bool,
    /// What every id gets when `by_id` is `None`.
    failure: Risk,
}

/// What `cache` knows about `id` at `now`: the remembered refusal while `forbidden_until`
/// holds, else the entry while younger than `ttl`.
fn fresh<T: Clone>(
    cache: &HashMap<String, (Instant, T)>,
    id: &str,
    now: Instant,
    ttl: Duration,
    forbidden_until: Option<Instant>,
    forbidden: impl FnOnce() -> T,
) -> Option<T> {
    if forbidden_until.is_some_and(|until| now < until) {
        return Some(forbidden());
    }
    let (at, value) = cache.get(id)?;
    (now.duration_since(*at) < ttl).then(|| value.clone())
}

/// Maps one user read to an account state and whether it may be cached. A `403` is
/// returned uncached: the reader remembers it for all ids instead.
fn account_state(
    answer: Result<Option<crate::graph::models::UserAccount>, GraphError>,
) -> (AccountState, bool) {
    match answer {
        Ok(None) => (AccountState::Deleted, true),
        Ok(Some(user)) => match user.account_enabled {
            Some(true) => (AccountState::Enabled, true),
            Some(false) => (AccountState::Disabled, true),
            None => (
                AccountState::Unreadable {
                    reason: "Graph did not return accountEnabled (the app needs User.Read.All)"
                        .into(),
                },
                true,
            ),
        },
        Err(e) if e.is_forbidden() => (
            AccountState::Unreadable {
                reason: LACKS_USER_READ_ALL.into(),
            },
            false,
        ),
        Err(e) if e.is_transient() => (
            AccountState::Unreadable {
                reason: format!(
                    "the account could not be read ({}); it is read again on the next pass",
                    e.kind()
                ),
            },
            false,
        ),
        Err(e) => (
            AccountState::Unreadable {
                reason: format!("the account could not be read ({})", e.kind()),
            },
            true,
        ),
    }
}

/// Identity Protection's answers by lower-cased user id; only a risk that
/// [`risk_holds`] becomes [`Risk::AtRisk`].
fn risk_by_id(found: Vec<RiskyUser>) -> HashMap<String, Risk> {
    found
        .into_iter()
        .map(|r| {
            let level = r.risk_level.unwrap_or_default();
            let state = r.risk_state.unwrap_or_default();
            let risk = if risk_holds(&level, &state) {
                Risk::AtRisk { level, state }
            } else {
                Risk::None
            };
            (r.id.to_ascii_lowercase(), risk)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_holding_risk_is_at_risk() {
        let user = |id: &str, level: &str, state: &str| RiskyUser {
            id: id.into(),
            risk_level: Some(level.into()),
            risk_state: Some(state.into()),
            ..Default::default()
        };
        let by_id = risk_by_id(vec![
            user("A", "high", "atRisk"),
            user("b", "medium", "remediated"),
        ]);
        assert_eq!(
            by_id["a"],
            Risk::AtRisk {
                level: "high".into(),
                state: "atRisk".into()
            }
        );
        assert_eq!(by_id["b"], Risk::None);
    }

    #[test]
    fn a_missing_account_enabled_is_not_enabled() {
        let user = crate::graph::models::UserAccount {
            id: "a".into(),
            ..Default::default()
        };
        let (state, _) = account_state(Ok(Some(user)));
        assert!(matches!(state, AccountState::Unreadable { .. }));
    }

    #[test]
    fn the_ttl_stays_below_the_delta_interval() {
        assert!(AccountSettings::default().ttl < Duration::from_secs(60));
    }
}

//! Is the target still someone who should hold access? The account facts the engine asks
//! for before any write that grants access (an assignment's or a request's reprocess, an
//! `adminAdd`). The drivers read them (`observe::accounts`) only for write candidates and
//! hand them over in the [`super::Snapshot`]; the engine never grants to an account it has
//! not confirmed.

/// Whether the account exists and may sign in, as `GET /users/{id}?$select=accountEnabled`
/// answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountState {
    /// The account exists and `accountEnabled` is true.
    Enabled,
    /// `accountEnabled` is false (a leaver workflow, an incident responder).
    Disabled,
    /// Graph answers 404: the user was deleted.
    Deleted,
    /// The account could not be read (for example 403 without `User.Read.All`): nothing is
    /// granted to an account that cannot be confirmed.
    Unreadable {
        /// Why, for users: "the app lacks User.Read.All".
        reason: String,
    },
}

/// What Identity Protection says about the account, when the connection asks
/// (`safety.holdRiskyUsers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Risk {
    /// Not asked (the connection does not hold risky users), so nothing is known.
    NotChecked,
    /// Identity Protection lists no risk that holds a repair.
    None,
    /// `riskLevel` is `high`, or `riskState` is `atRisk` / `confirmedCompromised`.
    AtRisk {
        /// `riskLevel` as Graph spells it (`low`, `medium`, `high`, ...).
        level: String,
        /// `riskState` as Graph spells it (`atRisk`, `confirmedCompromised`, ...).
        state: String,
    },
    /// The risk could not be read (for example 403 without `IdentityRiskyUser.Read.All`):
    /// one note, and no hold on that account.
    Unavailable {
        /// Why, for users.
        reason: String,
    },
}

/// The account facts for one user object id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAccount {
    pub state: AccountState,
    pub risk: Risk,
}

impl TargetAccount {
    /// An enabled account with no risk checked.
    pub fn enabled() -> Self {
        Self {
            state: AccountState::Enabled,
            risk: Risk::NotChecked,
        }
    }
}

/// Whether Identity Protection's answer holds a grant: a `high` risk level, or a risk state
/// of `atRisk` or `confirmedCompromised`. `remediated`, `dismissed` and lower levels do not.
pub fn risk_holds(level: &str, state: &str) -> bool {
    level.eq_ignore_ascii_case("high")
        || state.eq_ignore_ascii_case("atRisk")
        || state.eq_ignore_ascii_case("confirmedCompromised")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_high_or_active_risk_holds() {
        assert!(risk_holds("high", "remediated"));
        assert!(risk_holds("medium", "atRisk"));
        assert!(risk_holds("low", "confirmedCompromised"));
        assert!(!risk_holds("medium", "remediated"));
        assert!(!risk_holds("none", "dismissed"));
        assert!(!risk_holds("low", "none"));
    }
}

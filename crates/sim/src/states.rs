//! The state vocabularies of entitlement management objects, as the simulator models them:
//! one enum each, with Graph's wire literal (camelCase, read case-insensitively from scenarios
//! and the admin API) and the capitalised free-text `status` Graph pairs with it.

use serde::Serialize;

/// `accessPackageAssignment.state`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase", ascii_case_insensitive)]
pub enum AssignmentState {
    Delivering,
    PartiallyDelivered,
    Delivered,
    Expired,
    DeliveryFailed,
}

/// `accessPackageAssignmentRequest.state`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase", ascii_case_insensitive)]
pub enum RequestState {
    Submitted,
    PendingApproval,
    Delivering,
    Delivered,
    DeliveryFailed,
    Denied,
    Scheduled,
    Canceled,
    PartiallyDelivered,
}

/// `accessPackageAssignmentRequest.requestType`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[serde(rename_all = "camelCase")]
#[strum(serialize_all = "camelCase", ascii_case_insensitive)]
pub enum RequestType {
    NotSpecified,
    UserAdd,
    UserUpdate,
    UserRemove,
    AdminAdd,
    AdminUpdate,
    AdminRemove,
    SystemAdd,
    SystemUpdate,
    SystemRemove,
}

impl AssignmentState {
    /// The wire literal.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The free-text `status` Graph pairs with the state.
    pub fn status(self) -> &'static str {
        match self {
            Self::Delivering => "Delivering",
            Self::PartiallyDelivered => "PartiallyDelivered",
            Self::Delivered => "Delivered",
            Self::Expired => "Expired",
            Self::DeliveryFailed => "DeliveryFailed",
        }
    }

    /// Whether the assignment still promises its resources (so another assignment's removal
    /// must not take them away).
    pub fn promises_resources(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::PartiallyDelivered | Self::Delivering
        )
    }
}

impl RequestState {
    /// The wire literal.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The free-text `status` Graph pairs with the state.
    pub fn status(self) -> &'static str {
        match self {
            Self::Submitted => "Accepted",
            Self::PendingApproval => "PendingApproval",
            Self::Delivering => "Delivering",
            Self::Delivered => "Delivered",
            Self::DeliveryFailed => "DeliveryFailed",
            Self::Denied => "Denied",
            Self::Scheduled => "Scheduled",
            Self::Canceled => "Canceled",
            Self::PartiallyDelivered => "PartiallyDelivered",
        }
    }

    /// Still being worked on: not completed, so no `completedDateTime`, and a second
    /// request for the same user and package is refused.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Self::Submitted | Self::PendingApproval | Self::Delivering | Self::Scheduled
        )
    }

    /// A failed delivery, which `reprocess` may retry.
    pub fn is_failed(self) -> bool {
        matches!(self, Self::DeliveryFailed | Self::PartiallyDelivered)
    }

    /// The request state that goes with an assignment state (the request that created an
    /// assignment that later expired was delivered).
    pub fn creating(assignment: AssignmentState) -> Self {
        match assignment {
            AssignmentState::Delivering => Self::Delivering,
            AssignmentState::PartiallyDelivered => Self::PartiallyDelivered,
            AssignmentState::Delivered | AssignmentState::Expired => Self::Delivered,
            AssignmentState::DeliveryFailed => Self::DeliveryFailed,
        }
    }
}

impl RequestType {
    /// The wire literal.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// A request that creates an assignment.
    pub fn adds(self) -> bool {
        matches!(self, Self::AdminAdd | Self::UserAdd | Self::SystemAdd)
    }
}

/// `a, b, c`: the accepted values, for error messages.
pub fn one_of(names: &[&str]) -> String {
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantNames;

    #[test]
    fn wire_literals_round_trip_case_insensitively() {
        for name in AssignmentState::VARIANTS {
            let s: AssignmentState = name.to_uppercase().parse().unwrap();
            assert_eq!(s.as_str(), *name);
            assert_eq!(serde_json::to_value(s).unwrap(), *name);
        }
        for name in RequestState::VARIANTS {
            let s: RequestState = name.parse().unwrap();
            assert_eq!(s.as_str(), *name);
        }
        assert_eq!(
            "partiallydelivered".parse::<AssignmentState>().unwrap(),
            AssignmentState::PartiallyDelivered
        );
        assert_eq!(RequestType::AdminAdd.as_str(), "adminAdd");
        assert!("sometimes".parse::<RequestState>().is_err());
        assert_eq!(RequestState::Submitted.status(), "Accepted");
    }
}

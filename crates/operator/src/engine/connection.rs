//! The conditions of a connection, and of an object whose connection cannot be used.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::conditions::{
    ConditionType, Desired, Reason, Status, build_conditions, sort_conditions,
};

/// A connection's conditions: `Ready=True (Connected)`, or `Ready=False` and `Stalled=True`
/// with the problem's reason and message.
pub fn connection_conditions(
    previous: &[Condition],
    problem: Option<(Reason, &str)>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let desired = match problem {
        None => vec![Desired::new(
            ConditionType::Ready,
            Status::True,
            Reason::Connected,
            "A token was obtained and access packages could be read.",
        )],
        Some((reason, message)) => vec![
            Desired::new(ConditionType::Ready, Status::False, reason, message),
            Desired::new(ConditionType::Stalled, Status::True, reason, message),
        ],
    };
    build_conditions(previous, desired, generation, now)
}

/// The conditions of an object whose connection (`connection`, as named in messages)
/// cannot be used, `why`: `Ready=False` and `Stalled=True (ConnectionNotReady)`, with
/// what was last verified (`Delivered`) kept and saying it is not being verified now.
pub fn not_ready_conditions(
    previous: &[Condition],
    connection: &str,
    why: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let message = format!(
        "{}. Nothing is read or changed in Entra ID until then.",
        why.trim_end_matches('.')
    );
    let suffix = format!(" Not verified while {connection} cannot be used.");
    let mut keep: Vec<Condition> = previous
        .iter()
        .filter(|c| c.type_ == ConditionType::Delivered)
        .cloned()
        .map(|mut c| {
            if !c.message.ends_with(&suffix) {
                c.message = format!("{}{suffix}", c.message.trim_end());
            }
            c
        })
        .collect();
    let mut conditions = build_conditions(
        previous,
        vec![
            Desired::new(
                ConditionType::Ready,
                Status::False,
                Reason::ConnectionNotReady,
                message.clone(),
            ),
            Desired::new(
                ConditionType::Stalled,
                Status::True,
                Reason::ConnectionNotReady,
                message,
            ),
        ],
        generation,
        now,
    );
    conditions.append(&mut keep);
    sort_conditions(&mut conditions);
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conditions::find;

    #[test]
    fn an_object_keeps_what_was_verified_and_says_why_it_is_not_now() {
        let t: Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        let delivered = build_conditions(
            &[],
            vec![Desired::new(
                ConditionType::Delivered,
                Status::True,
                Reason::Delivered,
                "All 2 promised resources are present.",
            )],
            Some(1),
            t,
        );
        let c = not_ready_conditions(
            &delivered,
            "team-a/default",
            "Secret graph is missing.",
            Some(1),
            t,
        );
        let d = find(&c, ConditionType::Delivered).unwrap();
        assert_eq!(
            d.message,
            "All 2 promised resources are present. Not verified while team-a/default cannot be used."
        );
        let again =
            not_ready_conditions(&c, "team-a/default", "Secret graph is missing.", Some(1), t);
        assert_eq!(again, c, "said once, however often");
        let stalled = find(&c, ConditionType::Stalled).unwrap();
        assert_eq!(stalled.reason, Reason::ConnectionNotReady.as_str());
        assert!(
            stalled
                .message
                .ends_with("Nothing is read or changed in Entra ID until then.")
        );
        let ready = connection_conditions(&[], None, Some(1), t);
        assert_eq!(find(&ready, ConditionType::Ready).unwrap().status, "True");
    }
}

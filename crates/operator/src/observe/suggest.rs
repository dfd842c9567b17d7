//! "Did you mean": the names closest to one that matched nothing.
//!
//! The sentence lands in status conditions (the controller shares these messages), so it
//! depends only on the candidates, never on the order Graph listed them in.

/// Candidates at least this similar (normalised Damerau-Levenshtein, case-insensitive) are
/// suggested: one or two typos in a short name, a few more in a long one.
const MIN_SIMILARITY: f64 = 0.7;

/// At most this many suggestions: more is a list, not a hint.
const MAX_SUGGESTIONS: usize = 3;

/// The characters of a name that the suggestion read filters on (`startswith`): two, so a
/// typo from the third character on (`alcie` for `alice`) still finds the name, and the
/// one page read stays narrow in a large tenant. A typo in the first two finds no hint.
pub const PREFIX_CHARS: usize = 2;

/// The first [`PREFIX_CHARS`] characters of `name`, for a `startswith` read of candidates;
/// `None` when the name is too short for a narrow read.
pub fn prefix(name: &str) -> Option<String> {
    let prefix: String = name.trim().chars().take(PREFIX_CHARS).collect();
    (prefix.chars().count() == PREFIX_CHARS).then_some(prefix)
}

/// The candidates closest to `wanted`, best first (ties by name), each once, excluding
/// `wanted` itself.
pub fn closest<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let wanted_lower = wanted.to_lowercase();
    let mut scored: Vec<(f64, &str)> = candidates
        .into_iter()
        .filter(|c| *c != wanted)
        .filter_map(|c| {
            let score = similarity(&wanted_lower, &c.to_lowercase());
            (score >= MIN_SIMILARITY).then_some((score, c))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut out: Vec<&str> = Vec::new();
    for (_, c) in scored {
        if !out.contains(&c) {
            out.push(c);
        }
        if out.len() == MAX_SUGGESTIONS {
            break;
        }
    }
    out
}

/// How alike two lower-cased names are, 0 to 1. Two user principal names of one domain
/// are compared by their local parts: the shared `@contoso.com` would otherwise make
/// every user of the tenant look close to every other.
fn similarity(a: &str, b: &str) -> f64 {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((a_local, a_domain)), Some((b_local, b_domain))) if a_domain == b_domain => {
            strsim::normalized_damerau_levenshtein(a_local, b_local)
        }
        _ => strsim::normalized_damerau_levenshtein(a, b),
    }
}

/// `; did you mean 'a', 'b' or 'c'?`, or nothing when there is no close candidate.
pub fn did_you_mean<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let close = closest(wanted, candidates);
    let quoted: Vec<String> = close.iter().map(|c| format!("'{c}'")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        [init @ .., last] => format!("; did you mean {} or {last}?", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_letter_is_suggested() {
        assert_eq!(
            did_you_mean(
                "Finance Analyst",
                ["Finance Analysts", "Engineering Tools", "Sales"]
            ),
            "; did you mean 'Finance Analysts'?"
        );
    }

    #[test]
    fn case_and_transpositions_count_as_close() {
        assert_eq!(
            closest(
                "alcie@contoso.com",
                ["ALICE@contoso.com", "bob@contoso.com"]
            ),
            ["ALICE@contoso.com"]
        );
    }

    #[test]
    fn unrelated_names_give_no_hint() {
        assert_eq!(
            did_you_mean("Payroll", ["Finance Analysts", "Engineering"]),
            ""
        );
        assert_eq!(did_you_mean("Payroll", std::iter::empty()), "");
    }

    #[test]
    fn several_are_listed_best_first_whatever_the_input_order() {
        let a = did_you_mean("Finance", ["Finances", "Finance 2", "Finanse", "Finance A"]);
        let b = did_you_mean("Finance", ["Finance A", "Finanse", "Finance 2", "Finances"]);
        assert_eq!(a, b, "stable: it lands in status");
        assert_eq!(a, "; did you mean 'Finances', 'Finanse' or 'Finance 2'?");
    }

    #[test]
    fn duplicates_and_the_name_itself_are_dropped() {
        assert_eq!(closest("Sales", ["Sales", "Sale", "Sale"]), ["Sale"]);
    }

    #[test]
    fn the_prefix_is_two_characters() {
        assert_eq!(prefix(" Finance").as_deref(), Some("Fi"));
        assert_eq!(prefix("Éça").as_deref(), Some("Éç"));
        assert_eq!(prefix("a"), None);
    }
}

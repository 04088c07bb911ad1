//! Confidence resolution: which contribution wins an attribute.
//!
//! Order: highest confidence; then the most recent observation; then the connector name
//! (ascending), so the same inputs give the same mesh whatever the order of runs. A
//! contribution whose value is empty (NULL, JSON null, "" or []) takes part only when its
//! rule says an empty value means "clear it"; otherwise the next best wins.
//! The engine's SQL (`compile::resolution_sql`, `mesh.resolve_agg`) follows this order; the
//! in-database tests check the two agree on every object.

use serde_json::Value;
use std::cmp::Ordering;

/// True for the values that mean "no value": absent, JSON null, empty string, empty array.
pub fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

#[derive(Clone, Debug)]
pub struct Contribution<'a> {
    pub value: Option<&'a Value>,
    pub confidence: i32,
    /// Observation time, in microseconds since any fixed epoch.
    pub observed_at: i64,
    pub connector: &'a str,
    pub empty_is_value: bool,
}

impl Contribution<'_> {
    pub fn counts(&self) -> bool {
        self.empty_is_value || !is_empty(self.value)
    }
}

/// Orders two counting contributions: `Less` means `a` beats `b`.
pub fn precedence(a: &Contribution, b: &Contribution) -> Ordering {
    b.confidence
        .cmp(&a.confidence)
        .then(b.observed_at.cmp(&a.observed_at))
        .then(a.connector.cmp(b.connector))
}

/// The index of the winning contribution, if any counts.
pub fn winner(contributions: &[Contribution]) -> Option<usize> {
    contributions
        .iter()
        .enumerate()
        .filter(|(_, c)| c.counts())
        .min_by(|(_, a), (_, b)| precedence(a, b))
        .map(|(i, _)| i)
}

/// The resolved value: the winner's value, or None (attribute absent) when nothing counts
/// or the winner clears it.
pub fn resolve<'a>(contributions: &[Contribution<'a>]) -> Option<&'a Value> {
    winner(contributions)
        .and_then(|i| contributions[i].value)
        .filter(|v| !is_empty(Some(v)))
}

/// Why the winner won, in words for `mesh.explain`.
pub fn reason(winner: &Contribution, runner_up: Option<&Contribution>) -> String {
    match runner_up {
        None => "only contribution".to_string(),
        Some(r) if winner.confidence != r.confidence => {
            format!(
                "highest confidence ({} over {})",
                winner.confidence, r.confidence
            )
        }
        Some(r) if winner.observed_at != r.observed_at => {
            format!(
                "confidence tied at {}; most recently observed",
                winner.confidence
            )
        }
        Some(r) => format!(
            "confidence and observation time tied; connector name '{}' sorts before '{}'",
            winner.connector, r.connector
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c<'a>(
        v: Option<&'a Value>,
        conf: i32,
        t: i64,
        name: &'a str,
        empty_is_value: bool,
    ) -> Contribution<'a> {
        Contribution {
            value: v,
            confidence: conf,
            observed_at: t,
            connector: name,
            empty_is_value,
        }
    }

    #[test]
    fn highest_confidence_wins() {
        let hr = json!("Engineer");
        let pb = json!("Developer");
        let cs = [
            c(Some(&pb), 50, 10, "Phonebook", false),
            c(Some(&hr), 90, 1, "HR", false),
        ];
        assert_eq!(resolve(&cs), Some(&hr));
        assert_eq!(
            reason(&cs[1], Some(&cs[0])),
            "highest confidence (90 over 50)"
        );
    }

    #[test]
    fn empty_value_is_no_contribution_unless_rule_says_clear() {
        let pb = json!("Developer");
        let empty = json!("");
        let cs = [
            c(Some(&empty), 90, 1, "HR", false),
            c(Some(&pb), 50, 1, "Phonebook", false),
        ];
        assert_eq!(resolve(&cs), Some(&pb), "next best wins when HR is empty");
        let cs = [
            c(Some(&empty), 90, 1, "HR", true),
            c(Some(&pb), 50, 1, "Phonebook", false),
        ];
        assert_eq!(
            resolve(&cs),
            None,
            "an empty value that counts clears the attribute"
        );
        assert_eq!(winner(&cs), Some(0));
    }

    #[test]
    fn ties_break_by_time_then_name_whatever_the_input_order() {
        let a = json!("a");
        let b = json!("b");
        let x = [
            c(Some(&a), 50, 5, "Alpha", false),
            c(Some(&b), 50, 9, "Beta", false),
        ];
        let y = [x[1].clone(), x[0].clone()];
        assert_eq!(resolve(&x), Some(&b));
        assert_eq!(resolve(&y), Some(&b));
        let x = [
            c(Some(&a), 50, 5, "Zed", false),
            c(Some(&b), 50, 5, "Ann", false),
        ];
        assert_eq!(resolve(&x), Some(&b));
        assert!(reason(&x[1], Some(&x[0])).contains("'Ann' sorts before 'Zed'"));
    }

    #[test]
    fn emptiness() {
        assert!(is_empty(None));
        assert!(is_empty(Some(&json!(null))));
        assert!(is_empty(Some(&json!(""))));
        assert!(is_empty(Some(&json!([]))));
        assert!(!is_empty(Some(&json!(0))));
        assert!(!is_empty(Some(&json!(false))));
        assert!(!is_empty(Some(&json!(" "))));
    }

    #[test]
    fn nothing_counts_nothing_wins() {
        assert_eq!(winner(&[]), None);
        let n = json!(null);
        assert_eq!(resolve(&[c(Some(&n), 10, 0, "A", false)]), None);
    }
}

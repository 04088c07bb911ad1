//! What a flow rule's source means, and the SQL that evaluates it over one object.
//!
//! A source is either a plain attribute name (`title`, `employeeID`), read as the object's
//! JSON value untouched (arrays and numbers stay what they are), or an SQL expression over
//! the object's attributes (`lower(givenName) || '.' || sn`), where each attribute is
//! a `text` column. Expressions run in a subquery of their own, so names used by several
//! connectors or by the engine's tables never clash.

use crate::sql::{ident, is_attribute_name, literal, used_names, UsedName};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Attribute(String),
    Expression { text: String, names: Vec<UsedName> },
}

impl Source {
    pub fn parse(text: &str) -> Source {
        let t = text.trim();
        if is_attribute_name(t) {
            Source::Attribute(t.to_string())
        } else {
            Source::Expression {
                text: t.to_string(),
                names: used_names(t),
            }
        }
    }

    pub fn is_expression(&self) -> bool {
        matches!(self, Source::Expression { .. })
    }

    /// The attribute names this source reads.
    pub fn reads(&self) -> Vec<String> {
        match self {
            Source::Attribute(a) => vec![a.clone()],
            Source::Expression { names, .. } => names.iter().map(|n| n.key.clone()).collect(),
        }
    }

    /// The value as jsonb. `obj` is the alias of the row holding `attrs`; `cols` the alias
    /// of the expression subquery of that row (see [`expression_scope`]).
    pub fn jsonb(&self, obj: &str, cols: &str, slot: &str) -> String {
        match self {
            Source::Attribute(a) => format!("{obj}.attrs->{}", literal(a)),
            Source::Expression { .. } => format!("{cols}.{slot}"),
        }
    }

    /// The value as text (for joins and references).
    pub fn text(&self, obj: &str, cols: &str, slot: &str) -> String {
        match self {
            Source::Attribute(a) => format!("{obj}.attrs->>{}", literal(a)),
            Source::Expression { .. } => format!("({cols}.{slot} #>> '{{}}')"),
        }
    }
}

/// Builds `LEFT JOIN LATERAL (SELECT to_jsonb((expr)) AS slot, ... FROM (SELECT obj.attrs->>'k' AS "k", ...) s) cols ON true`
/// for the expression sources of one object; None when every source is a plain attribute.
/// `sources` pairs each slot name with its source.
pub fn expression_scope(obj: &str, cols: &str, sources: &[(String, &Source)]) -> Option<String> {
    let exprs: Vec<(&String, &String, &Vec<UsedName>)> = sources
        .iter()
        .filter_map(|(slot, s)| match s {
            Source::Expression { text, names } => Some((slot, text, names)),
            _ => None,
        })
        .collect();
    if exprs.is_empty() {
        return None;
    }
    let mut columns: Vec<&UsedName> = Vec::new();
    for (_, _, names) in &exprs {
        for n in names.iter() {
            if !columns.iter().any(|c| c.column == n.column) {
                columns.push(n);
            }
        }
    }
    let inner = if columns.is_empty() {
        "SELECT".to_string() // constant expressions: a row with no columns
    } else {
        let cols_sql: Vec<String> = columns
            .iter()
            .map(|n| format!("{obj}.attrs->>{} AS {}", literal(&n.key), ident(&n.column)))
            .collect();
        format!("SELECT {}", cols_sql.join(", "))
    };
    let values: Vec<String> = exprs
        .iter()
        .map(|(slot, text, _)| format!("to_jsonb(({text})) AS {slot}"))
        .collect();
    Some(format!(
        "LEFT JOIN LATERAL (SELECT {} FROM ({inner}) s) {cols} ON true",
        values.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_attribute_reads_json_value() {
        let s = Source::parse(" title ");
        assert_eq!(s, Source::Attribute("title".into()));
        assert_eq!(s.jsonb("c1", "x1", "v1"), "c1.attrs->'title'");
        assert_eq!(s.text("c1", "x1", "v1"), "c1.attrs->>'title'");
    }

    #[test]
    fn expression_gets_its_own_scope() {
        let s = Source::parse("lower(givenName) || '.' || sn");
        assert!(s.is_expression());
        assert_eq!(s.reads(), vec!["givenName", "sn"]);
        let scope = expression_scope("c1", "x1", &[("v7".into(), &s)]).unwrap();
        assert_eq!(
            scope,
            "LEFT JOIN LATERAL (SELECT to_jsonb((lower(givenName) || '.' || sn)) AS v7 FROM \
             (SELECT c1.attrs->>'givenName' AS \"givenname\", c1.attrs->>'sn' AS \"sn\") s) x1 ON true"
        );
        assert_eq!(s.jsonb("c1", "x1", "v7"), "x1.v7");
    }

    #[test]
    fn no_scope_without_expressions() {
        let a = Source::parse("mail");
        assert!(expression_scope("c1", "x1", &[("v1".into(), &a)]).is_none());
    }

    #[test]
    fn constant_expression_has_a_row() {
        let s = Source::parse("'Staff'");
        let scope = expression_scope("m", "x", &[("v1".into(), &s)]).unwrap();
        assert!(scope.contains("FROM (SELECT) s"), "{scope}");
    }
}

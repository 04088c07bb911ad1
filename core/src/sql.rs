//! SQL text helpers: quoting, and a scanner for the identifiers an expression uses.

/// Quotes an identifier the way PostgreSQL's `quote_ident` does, always.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal (standard_conforming_strings = on; E'' is never produced).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A name usable as a mesh attribute or a plain source attribute: letters, digits, `_`,
/// and for directory attributes `-` (msDS-...). Starts with a letter or `_`.
pub fn is_attribute_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    name.len() <= 63 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A mesh attribute name: like [`is_attribute_name`] without `-`, so it is also a column name.
pub fn is_mesh_attribute_name(name: &str) -> bool {
    is_attribute_name(name) && !name.contains('-')
}

/// One identifier an expression refers to: as written (the key in the object's attributes)
/// and as PostgreSQL will see it (unquoted identifiers fold to lower case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsedName {
    pub key: String,
    pub column: String,
}

/// Words that are never attribute references in an expression.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "null",
    "true",
    "false",
    "is",
    "in",
    "like",
    "ilike",
    "similar",
    "between",
    "case",
    "when",
    "then",
    "else",
    "end",
    "as",
    "distinct",
    "from",
    "coalesce",
    "nullif",
    "cast",
    "array",
    "any",
    "all",
    "some",
    "select",
    "where",
    "exists",
    "collate",
    "at",
    "time",
    "zone",
    "interval",
    "escape",
    "isnull",
    "notnull",
    "unknown",
    "both",
    "leading",
    "trailing",
    "for",
    "position",
    "substring",
    "overlay",
    "placing",
    "extract",
    "greatest",
    "least",
    "row",
    "asc",
    "desc",
];

/// Finds the identifiers an SQL expression refers to as columns: not inside string
/// literals, dollar quotes or comments; not function names (followed by `(`), not type names
/// (after `::`), not keywords. Quoted identifiers are kept as written.
pub fn used_names(expr: &str) -> Vec<UsedName> {
    let b = expr.as_bytes();
    let mut out: Vec<UsedName> = Vec::new();
    let mut push = |key: String, column: String| {
        if !out.iter().any(|u| u.column == column) {
            out.push(UsedName { key, column });
        }
    };
    let mut i = 0;
    let mut after_cast = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\''
            || ((c == b'e' || c == b'E') && b.get(i + 1) == Some(&b'\'') && !prev_is_ident(b, i))
        {
            let escapes = c != b'\'';
            i += if escapes { 2 } else { 1 };
            while i < b.len() {
                if escapes && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            after_cast = false;
        } else if c == b'$' && !prev_is_ident(b, i) {
            // Dollar quote: $tag$ ... $tag$
            let start = i;
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j < b.len() && b[j] == b'$' {
                let tag = &expr[start..=j];
                match expr[j + 1..].find(tag) {
                    Some(end) => i = j + 1 + end + tag.len(),
                    None => i = b.len(),
                }
            } else {
                i = j; // positional parameter like $1
            }
            after_cast = false;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            match expr[i + 2..].find("*/") {
                Some(end) => i = i + 2 + end + 2,
                None => i = b.len(),
            }
        } else if c == b':' && b.get(i + 1) == Some(&b':') {
            after_cast = true;
            i += 2;
        } else if c == b'"' {
            let mut j = i + 1;
            let mut name = String::new();
            while j < b.len() {
                if b[j] == b'"' {
                    if b.get(j + 1) == Some(&b'"') {
                        name.push('"');
                        j += 2;
                        continue;
                    }
                    break;
                }
                let ch = expr[j..].chars().next().unwrap();
                name.push(ch);
                j += ch.len_utf8();
            }
            i = j + 1;
            if !after_cast && !followed_by_paren(b, i) && !name.is_empty() {
                push(name.clone(), name);
            }
            after_cast = false;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            let word = &expr[start..i];
            let lower = word.to_ascii_lowercase();
            let qualified = start > 0 && b[start - 1] == b'.';
            if !after_cast
                && !qualified
                && !followed_by_paren(b, i)
                && !KEYWORDS.contains(&lower.as_str())
            {
                push(word.to_string(), lower);
            }
            after_cast = false;
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            after_cast = false;
        } else {
            if !c.is_ascii_whitespace() {
                after_cast = false;
            }
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

fn followed_by_paren(b: &[u8], mut i: usize) -> bool {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    b.get(i) == Some(&b'(')
}

/// The query that stages rows arriving as JSON object texts, given as three arrays: each
/// row's jsonb built by the engine (`$1`, NULL where it left the row to the server), its
/// hash (`$2`) and the texts the server parses itself (`$3`). For each row its anchor (the anchor columns' texts, joined by U+001F when there are several;
/// NULL when one is missing), name, soft-delete flag and the row itself as `attrs`. The
/// texts are what `->>` gives, so an anchor reads the same as from the in-database kind.
/// The change-detection hash is the md5 of the text as it came: the source renders a row
/// the same way every time, and rendering the parsed value again for the hash cost more
/// than the parse.
pub fn json_rows_select(
    anchor: &[String],
    name_column: Option<&str>,
    soft_delete_column: Option<&str>,
) -> String {
    let field = |c: &str| format!("r->>{}", literal(c));
    let anchor_sql = if anchor.len() == 1 {
        field(&anchor[0])
    } else {
        let missing: Vec<String> = anchor
            .iter()
            .map(|a| format!("{} IS NULL", field(a)))
            .collect();
        let parts: Vec<String> = anchor.iter().map(|a| field(a)).collect();
        format!(
            "CASE WHEN {} THEN NULL ELSE concat_ws(E'\\x1f', {}) END",
            missing.join(" OR "),
            parts.join(", ")
        )
    };
    let name = match name_column {
        Some(n) => format!("coalesce({}, {anchor_sql})", field(n)),
        None => anchor_sql.clone(),
    };
    // true / false for a boolean column; any other value set means deleted.
    let deleted = match soft_delete_column {
        Some(c) => {
            let v = format!("r->{}", literal(c));
            format!(
                "coalesce(CASE jsonb_typeof({v}) WHEN 'boolean' THEN ({v})::boolean WHEN 'null' THEN false ELSE true END, false)"
            )
        }
        None => "false".to_string(),
    };
    format!(
        "SELECT {anchor_sql} AS anchor, {name} AS name, {deleted} AS deleted, r AS attrs, hash \
         FROM (SELECT coalesce(u.j, u.t::jsonb) AS r, u.h AS hash \
               FROM unnest($1::jsonb[], $2::text[], $3::text[]) AS u(j, h, t)) j"
    )
}

/// The anchor in the detail of a primary-key violation of the connector space:
/// `Key (connector_id, anchor)=(3, 42) already exists.` gives `42` (an anchor may itself
/// hold ", " or parentheses: only the connector id is split off).
pub fn repeated_anchor(detail: &str) -> Option<&str> {
    let values = detail.strip_prefix("Key (connector_id, anchor)=(")?;
    let values = values.strip_suffix(") already exists.")?;
    let (_, anchor) = values.split_once(", ")?;
    Some(anchor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(e: &str) -> Vec<String> {
        used_names(e).into_iter().map(|u| u.key).collect()
    }

    #[test]
    fn repeated_anchor_is_read_from_the_key_detail() {
        assert_eq!(
            repeated_anchor("Key (connector_id, anchor)=(3, 42) already exists."),
            Some("42")
        );
        assert_eq!(
            repeated_anchor("Key (connector_id, anchor)=(12, a, (b)) already exists."),
            Some("a, (b)")
        );
        assert_eq!(
            repeated_anchor("Key (connector_id, mesh_id)=(3, 9) already exists."),
            None
        );
        assert_eq!(repeated_anchor("something else"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("O'Brien"), "'O''Brien'");
    }

    #[test]
    fn attribute_names() {
        assert!(is_attribute_name("employeeID"));
        assert!(is_attribute_name("msDS-UserPasswordExpiryTimeComputed"));
        assert!(!is_attribute_name("1abc"));
        assert!(!is_attribute_name("lower(mail)"));
        assert!(!is_attribute_name(""));
        assert!(is_mesh_attribute_name("display_name"));
        assert!(!is_mesh_attribute_name("msDS-x"));
    }

    #[test]
    fn finds_columns_not_functions_types_keywords_or_literals() {
        assert_eq!(
            keys("lower(givenName) || ' ' || sn"),
            vec!["givenName", "sn"]
        );
        assert_eq!(keys("employee_id::int + 1"), vec!["employee_id"]);
        assert_eq!(
            keys("CASE WHEN dept IS NULL THEN 'none' ELSE dept END"),
            vec!["dept"]
        );
        assert_eq!(keys("'it''s title' || title"), vec!["title"]);
        assert_eq!(keys("$$sn$$ || \"givenName\""), vec!["givenName"]);
        assert_eq!(keys("a -- b\n + /* c */ d"), vec!["a", "d"]);
        assert_eq!(keys("E'x\\'y' || z"), vec!["z"]);
        assert_eq!(keys("coalesce(mobile, phone)"), vec!["mobile", "phone"]);
    }

    #[test]
    fn folds_unquoted_names_and_dedupes() {
        let u = used_names("givenName || GIVENNAME");
        assert_eq!(
            u,
            vec![UsedName {
                key: "givenName".into(),
                column: "givenname".into()
            }]
        );
    }

    #[test]
    fn json_rows_select_reads_anchor_name_and_soft_delete_from_the_row() {
        let one = json_rows_select(&["id".into()], None, None);
        assert!(one.starts_with(
            "SELECT r->>'id' AS anchor, r->>'id' AS name, false AS deleted, r AS attrs, hash"
        ));
        assert!(one.contains("unnest($1::jsonb[], $2::text[], $3::text[])"));
        assert!(one.contains("coalesce(u.j, u.t::jsonb) AS r"));
        let two = json_rows_select(&["org".into(), "emp".into()], Some("login"), Some("gone"));
        assert!(two.contains("CASE WHEN r->>'org' IS NULL OR r->>'emp' IS NULL THEN NULL ELSE concat_ws(E'\\x1f', r->>'org', r->>'emp') END AS anchor"));
        assert!(two.contains("coalesce(r->>'login', CASE"));
        assert!(two.contains("jsonb_typeof(r->'gone') WHEN 'boolean' THEN (r->'gone')::boolean"));
        // a column name is a literal key, never SQL
        let odd = json_rows_select(&["a'); DROP TABLE x; --".into()], None, None);
        assert!(odd.starts_with("SELECT r->>'a''); DROP TABLE x; --' AS anchor"));
    }
}

//! SQL text helpers: quoting, and a scanner for the identifiers an expression uses.

/// Quotes an identifier the way PostgreSQL's `quote_ident` does, always.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a dotted name part by part (`hr.people` is `"hr"."people"`).
pub fn qualified_ident(name: &str) -> String {
    name.split('.').map(ident).collect::<Vec<_>>().join(".")
}

/// Quotes a string literal (standard_conforming_strings = on; E'' is never produced).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The settings that change how PostgreSQL writes a value as text (and so as JSON): the
/// engine's own runs and every session a postgres connector opens use these, so a value
/// reads the same whoever runs the sync, from whatever client, and whatever the source's
/// login or database sets (`TimeZone` moves a timestamp's offset, `extra_float_digits` below
/// 1 rounds doubles, the others change spellings). The engine works in UTC, writes money
/// in the C locale, and reads dates written as text month first (`DateStyle` ISO, MDY,
/// PostgreSQL's own default: an expression's `'03/04/2026'::date` must not depend on the
/// caller either); 3 float digits are exact on PostgreSQL 11 and older too (12 and later
/// write the shortest exact form for any value above 0).
pub const RENDERING_SETTINGS: &[(&str, &str)] = &[
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
];

/// [`RENDERING_SETTINGS`] as `SET` commands, one string for a simple-query batch.
pub fn rendering_set_commands() -> String {
    RENDERING_SETTINGS
        .iter()
        .map(|(name, value)| format!("SET {name} = {};", literal(value)))
        .collect::<Vec<_>>()
        .join(" ")
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

/// The anchor of the texts `parts` (SQL expressions) as `idmesh_sdk::encode_anchor` writes
/// it: one is itself; several are joined by U+001F, each with `\` doubled and a U+001F of
/// its own written `\_`, and NULL when any is.
pub fn anchor_concat(parts: &[String]) -> String {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let missing: Vec<String> = parts.iter().map(|p| format!("{p} IS NULL")).collect();
    let escaped: Vec<String> = parts
        .iter()
        .map(|p| format!("replace(replace({p}, E'\\\\', E'\\\\\\\\'), E'\\x1f', E'\\\\_')"))
        .collect();
    format!(
        "CASE WHEN {} THEN NULL ELSE concat_ws(E'\\x1f', {}) END",
        missing.join(" OR "),
        escaped.join(", ")
    )
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
    let parts: Vec<String> = anchor.iter().map(|a| field(a)).collect();
    let anchor_sql = anchor_concat(&parts);
    let name = match name_column {
        Some(n) => format!("coalesce({}, {anchor_sql})", field(n)),
        None => anchor_sql.clone(),
    };
    // true / false for a boolean column, not 0 for a number (0/1 flags); any other value set
    // means deleted; a row without the column is not deleted (the connector checks the
    // query has it).
    let deleted = match soft_delete_column {
        Some(c) => {
            let v = format!("r->{}", literal(c));
            format!(
                "CASE WHEN {v} IS NULL THEN false WHEN jsonb_typeof({v}) = 'boolean' THEN ({v})::boolean \
                 WHEN jsonb_typeof({v}) = 'number' THEN ({v})::numeric <> 0 \
                 WHEN jsonb_typeof({v}) = 'null' THEN false ELSE true END"
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

/// A libpq connection string (`key=value ...`) without its `sslmode` and `sslrootcert`
/// settings, and their values: the connector makes the TLS link itself (the client library
/// knows neither `verify-ca` nor `verify-full`). A URL (`postgresql://...`) passes as it is.
pub fn split_tls_settings(dsn: &str) -> Result<(String, Option<String>, Option<String>), String> {
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        return Ok((dsn.to_string(), None, None));
    }
    let chars: Vec<char> = dsn.chars().collect();
    let (mut rest, mut mode, mut root) = (Vec::new(), None, None);
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if chars.get(i) != Some(&'=') {
            return Err(format!("\"{key}\" has no value"));
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if chars.get(i) == Some(&'\'') {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("the value of \"{key}\" has no closing quote")),
                    Some('\\') => {
                        value.extend(chars.get(i + 1));
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                value.push(chars[i]);
                i += 1;
            }
        }
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => rest.push(chars[start..i].iter().collect::<String>()),
        }
    }
    Ok((rest.join(" "), mode, root))
}

/// A decimal from its unscaled digits and scale, as SQL writes it: `-0.5`, `42`, `1.50`.
pub fn decimal_text(value: i128, scale: u8) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let digits = value.unsigned_abs().to_string();
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

/// Which quoting rules a statement follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    /// SQL Server: `[quoted]` identifiers, no dollar quotes or E'' strings.
    TSql,
}

/// A statement cut at its placeholders: text as written, and the names placeholders give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// The name, and the placeholder as written (`@"Balance"`).
    Placeholder(String, String),
}

/// Splits `sql` at placeholders: `sigil` then a name (letters, digits, `_`; or a quoted
/// `"name"`), found only where SQL code is: never inside string literals, quoted
/// identifiers, comments or dollar quotes. A sigil right after a letter, digit, `_` or
/// another sigil is not one (`x::int` is a cast, `a[1:n]` a slice, `@@rowcount` a T-SQL
/// variable), and a longer name is another placeholder (`@watermark2`).
pub fn placeholders(sql: &str, dialect: Dialect, sigil: char) -> Vec<Piece> {
    let chars: Vec<char> = sql.chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let skip_to = match c {
            '\'' => {
                let escapes = dialect == Dialect::Postgres
                    && i > 0
                    && matches!(chars[i - 1], 'e' | 'E')
                    && !(i > 1 && word(chars[i - 2]));
                Some(quoted_end(&chars, i + 1, '\'', escapes))
            }
            '"' => Some(quoted_end(&chars, i + 1, '"', false)),
            '[' if dialect == Dialect::TSql => Some(quoted_end(&chars, i + 1, ']', false)),
            '-' if next == Some('-') => Some(
                (i..chars.len())
                    .find(|&j| chars[j] == '\n')
                    .unwrap_or(chars.len()),
            ),
            '/' if next == Some('*') => Some(block_comment_end(&chars, i)),
            '$' if dialect == Dialect::Postgres && !(i > 0 && (word(chars[i - 1]) || chars[i - 1] == '$')) => {
                dollar_quote_end(&chars, i)
            }
            _ => None,
        };
        if let Some(end) = skip_to {
            text.extend(&chars[i..end]);
            i = end;
            continue;
        }
        if c == sigil && !(i > 0 && (word(chars[i - 1]) || chars[i - 1] == sigil)) {
            if let Some((name, end)) = placeholder_name(&chars, i + 1, sigil == ':') {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Placeholder(name, chars[i..end].iter().collect()));
                i = end;
                continue;
            }
        }
        text.push(c);
        i += 1;
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

/// A user's export statement cut at its `:name` parameters (see `placeholders`), and the
/// names in the order first used. `:"name"` names an attribute that is not a plain word.
pub fn named_parameters(sql: &str, dialect: Dialect) -> (Vec<Piece>, Vec<String>) {
    let pieces = placeholders(sql, dialect, ':');
    let mut names: Vec<String> = Vec::new();
    for p in &pieces {
        if let Piece::Placeholder(n, _) = p {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    (pieces, names)
}

/// The pieces with each named parameter numbered by its first use: `$1` (PostgreSQL) or
/// `@P1` (SQL Server).
pub fn numbered(pieces: &[Piece], names: &[String], dialect: Dialect) -> String {
    render(pieces, |n| {
        let i = names.iter().position(|x| x == n).unwrap_or(0) + 1;
        match dialect {
            Dialect::Postgres => format!("${i}"),
            Dialect::TSql => format!("@P{i}"),
        }
    })
}

/// The text a JSON value is bound as, as an nvarchar parameter of a user's T-SQL statement
/// (None: NULL): a string as it is, a number as its digits, a boolean as `1`/`0` (which a
/// bit, any integer, a decimal and a varchar all take), an array or object as its JSON.
/// SQL Server converts it to the type where it stands; a typed parameter would convert
/// the column instead (a bigint against a varchar column fails on its first row that is
/// not a number, and no index is used).
pub fn tsql_parameter_text(value: Option<&serde_json::Value>) -> Option<String> {
    use serde_json::Value;
    match value? {
        Value::Null => None,
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A user's T-SQL statement followed by the count of rows it changed itself, as one more
/// result (`@@ROWCOUNT`: a trigger's statements, which the server's own row counts add in,
/// do not change it; a trigger that fires for an UPDATE of no row would otherwise hide it).
pub fn tsql_with_row_count(sql: &str) -> String {
    format!("{sql}\n;SELECT CAST(@@ROWCOUNT AS bigint) AS idmesh_rows")
}

/// Whether a statement's result says how many rows it changed (a `CALL`, `DO` or `EXEC`
/// says nothing of them).
pub fn counts_rows(sql: &str) -> bool {
    let first: String = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == ';')
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(first.as_str(), "update" | "insert" | "delete" | "merge" | "with")
}

/// The pieces written out again, each placeholder as `with` gives it.
pub fn render(pieces: &[Piece], mut with: impl FnMut(&str) -> String) -> String {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Placeholder(n, _) => out.push_str(&with(n)),
        }
    }
    out
}

/// `sql` with the placeholder `sigil name` replaced by `with`; other placeholders stay as
/// they were written.
pub fn replace_placeholder(sql: &str, dialect: Dialect, sigil: char, name: &str, with: &str) -> String {
    let mut out = String::new();
    for p in placeholders(sql, dialect, sigil) {
        match p {
            Piece::Placeholder(n, _) if n == name => out.push_str(with),
            Piece::Text(t) | Piece::Placeholder(_, t) => out.push_str(&t),
        }
    }
    out
}

/// Whether `sql` uses the placeholder `sigil name` where SQL code is.
pub fn has_placeholder(sql: &str, dialect: Dialect, sigil: char, name: &str) -> bool {
    placeholders(sql, dialect, sigil)
        .iter()
        .any(|p| matches!(p, Piece::Placeholder(n, _) if n == name))
}

/// Where a quoted stretch opened before `from` ends (after its closing quote; a doubled
/// quote is one quote, and with `escapes` a backslash escapes the next character).
fn quoted_end(chars: &[char], mut from: usize, quote: char, escapes: bool) -> usize {
    while from < chars.len() {
        if escapes && chars[from] == '\\' {
            from += 2;
            continue;
        }
        if chars[from] == quote {
            if chars.get(from + 1) == Some(&quote) {
                from += 2;
                continue;
            }
            return from + 1;
        }
        from += 1;
    }
    chars.len()
}

/// The end of a block comment starting at `start` (comments nest).
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let (mut depth, mut i) = (0, start);
    while i + 1 < chars.len() {
        if chars[i] == '/' && chars[i + 1] == '*' {
            depth += 1;
            i += 2;
        } else if chars[i] == '*' && chars[i + 1] == '/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    chars.len()
}

/// The end of a dollar-quoted string (`$$...$$`, `$tag$...$tag$`) opening at `start`; None
/// when the `$` opens none (a positional parameter `$1`, say).
fn dollar_quote_end(chars: &[char], start: usize) -> Option<usize> {
    let mut j = start + 1;
    while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
        j += 1;
    }
    if chars.get(j) != Some(&'$') || chars.get(start + 1).is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    let tag: Vec<char> = chars[start..=j].to_vec();
    let mut k = j + 1;
    while k + tag.len() <= chars.len() {
        if chars[k..k + tag.len()] == tag[..] {
            return Some(k + tag.len());
        }
        k += 1;
    }
    Some(chars.len())
}

/// A placeholder's name starting at `from`, and where it ends; `quoted`: a `"name"` is one
/// (`:"odd name"`; after `@` it is PostgreSQL's absolute value of a quoted column).
fn placeholder_name(chars: &[char], from: usize, quoted: bool) -> Option<(String, usize)> {
    match chars.get(from) {
        Some('"') if quoted => {
            let end = quoted_end(chars, from + 1, '"', false);
            if end > chars.len() || chars.get(end - 1) != Some(&'"') || end == from + 2 {
                return None;
            }
            let inner: String = chars[from + 1..end - 1].iter().collect();
            Some((inner.replace("\"\"", "\""), end))
        }
        Some(c) if c.is_alphabetic() || *c == '_' => {
            let mut end = from;
            while end < chars.len() && (chars[end].is_alphanumeric() || chars[end] == '_') {
                end += 1;
            }
            Some((chars[from..end].iter().collect(), end))
        }
        _ => None,
    }
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

    fn names(sql: &str, dialect: Dialect, sigil: char) -> Vec<String> {
        placeholders(sql, dialect, sigil)
            .into_iter()
            .filter_map(|p| match p {
                Piece::Placeholder(n, _) => Some(n),
                Piece::Text(_) => None,
            })
            .collect()
    }

    #[test]
    fn tls_settings_are_taken_out_of_a_connection_string() {
        let (rest, mode, root) = split_tls_settings(
            "host=db.corp port=5432 sslmode=verify-full dbname='h r' sslrootcert = '/etc/a b.crt' user=mesh",
        )
        .unwrap();
        assert_eq!(rest, "host=db.corp port=5432 dbname='h r' user=mesh");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/a b.crt"));
        assert_eq!(split_tls_settings("host=x").unwrap(), ("host=x".to_string(), None, None));
        assert!(split_tls_settings("host").is_err());
        assert!(split_tls_settings("host='x").is_err());
    }

    #[test]
    fn decimals_are_written_from_digits_and_scale() {
        assert_eq!(decimal_text(-15, 1), "-1.5");
        assert_eq!(decimal_text(-5, 1), "-0.5");
        assert_eq!(decimal_text(42, 0), "42");
        assert_eq!(decimal_text(150, 2), "1.50");
        assert_eq!(decimal_text(7, 3), "0.007");
        assert_eq!(decimal_text(-7, 3), "-0.007");
        assert_eq!(decimal_text(i128::MIN, 0), "-170141183460469231731687303715884105728");
    }

    #[test]
    fn placeholders_are_found_only_in_code() {
        let sql = "SELECT ':no', E'it\\'s :no', \"a:no\", $$ :no $$, $t$ :no $t$ -- it's :no\n\
                   /* :no /* nested :no */ :no */ x::int, a[1:n], :yes, :\"quoted name\", :two_2-1";
        assert_eq!(names(sql, Dialect::Postgres, ':'), vec!["yes", "quoted name", "two_2"]);
        // T-SQL: [identifiers], no E'' strings or dollar quotes; @@ is a system variable.
        let tsql = "SELECT '@no', [a@no], @@rowcount, x FROM t -- employee's @no\n WHERE d > @watermark AND e = @watermark_utc";
        assert_eq!(names(tsql, Dialect::TSql, '@'), vec!["watermark", "watermark_utc"]);
    }

    #[test]
    fn a_placeholder_is_replaced_and_the_rest_kept_as_written() {
        let sql = "SELECT * FROM emp -- the employee's changes\nWHERE m > @watermark AND n <> '@watermark' AND o = @watermark2";
        assert_eq!(
            replace_placeholder(sql, Dialect::Postgres, '@', "watermark", "$1"),
            "SELECT * FROM emp -- the employee's changes\nWHERE m > $1 AND n <> '@watermark' AND o = @watermark2"
        );
        assert!(has_placeholder(sql, Dialect::Postgres, '@', "watermark"));
        assert!(!has_placeholder("SELECT '@watermark'", Dialect::Postgres, '@', "watermark"));
        assert!(!has_placeholder("SELECT @\"watermark\" FROM t", Dialect::Postgres, '@', "watermark"));
        // `@"Balance"` (PostgreSQL's absolute value of a quoted column) stays as written.
        assert_eq!(
            replace_placeholder("SELECT @\"Balance\" FROM t WHERE m > @watermark", Dialect::Postgres, '@', "watermark", "$1"),
            "SELECT @\"Balance\" FROM t WHERE m > $1"
        );
        // Text the scanner passes keeps every character, quotes and all.
        let odd = "SELECT $1, 'a''b', \"c\"\"d\", $q$ x $q$, /* ü */ 'é'";
        assert_eq!(render(&placeholders(odd, Dialect::Postgres, ':'), |_| unreachable!()), odd);
    }

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
        assert!(two.contains("CASE WHEN r->>'org' IS NULL OR r->>'emp' IS NULL THEN NULL ELSE concat_ws(E'\\x1f', \
        replace(replace(r->>'org', E'\\\\', E'\\\\\\\\'), E'\\x1f', E'\\\\_'), \
        replace(replace(r->>'emp', E'\\\\', E'\\\\\\\\'), E'\\x1f', E'\\\\_')) END AS anchor"), "{two}");
        assert!(two.contains("coalesce(r->>'login', CASE"));
        assert!(two.contains("CASE WHEN r->'gone' IS NULL THEN false WHEN jsonb_typeof(r->'gone') = 'boolean' THEN (r->'gone')::boolean"));
        assert!(two.contains("WHEN jsonb_typeof(r->'gone') = 'number' THEN (r->'gone')::numeric <> 0"));
        // a column name is a literal key, never SQL
        let odd = json_rows_select(&["a'); DROP TABLE x; --".into()], None, None);
        assert!(odd.starts_with("SELECT r->>'a''); DROP TABLE x; --' AS anchor"));
    }

    #[test]
    fn named_parameters_number_once_and_skip_literals_casts_and_comments() {
        let (pieces, names) = named_parameters(
            "INSERT INTO t (a, b, c, d) VALUES (:login, ':not $1', :display::text || :login, :lvl-1) -- :not",
            Dialect::Postgres,
        );
        assert_eq!(names, vec!["login", "display", "lvl"]);
        assert_eq!(
            numbered(&pieces, &names, Dialect::Postgres),
            "INSERT INTO t (a, b, c, d) VALUES ($1, ':not $1', $2::text || $1, $3-1) -- :not"
        );
        // SQL Server: `[quoted :names]` and `@@ROWCOUNT` are left alone, `@P1` numbers.
        let (pieces, names) = named_parameters(
            "UPDATE [dbo].[a :b] SET [Display Name] = :display, n = @@ROWCOUNT WHERE id = :\"Employee Id\" AND x = ':no'",
            Dialect::TSql,
        );
        assert_eq!(names, vec!["display", "Employee Id"]);
        assert_eq!(
            numbered(&pieces, &names, Dialect::TSql),
            "UPDATE [dbo].[a :b] SET [Display Name] = @P1, n = @@ROWCOUNT WHERE id = @P2 AND x = ':no'"
        );
    }

    #[test]
    fn only_data_changing_statements_count_rows() {
        assert!(counts_rows("  update t set a = 1"));
        assert!(counts_rows("WITH x AS (SELECT 1) UPDATE t SET a = 1"));
        assert!(counts_rows("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE"));
        assert!(counts_rows(";WITH x AS (SELECT 1 AS id) UPDATE t SET a = 1 FROM x"));
        // NOCOUNT makes every count 0: never read as "changed no row".
        assert!(!counts_rows("SET NOCOUNT ON; UPDATE t SET a = 1"));
        assert!(!counts_rows("CALL set_badge(:id)"));
        assert!(!counts_rows("EXEC dbo.set_badge @id = :id"));
        assert!(!counts_rows("SELECT 1"));
    }

    #[test]
    fn tsql_parameters_are_texts_sql_server_converts() {
        use serde_json::json;
        let decimal: serde_json::Value = serde_json::from_str("12.50").unwrap();
        assert_eq!(tsql_parameter_text(Some(&decimal)).as_deref(), Some("12.50"));
        assert_eq!(tsql_parameter_text(Some(&json!(-7))).as_deref(), Some("-7"));
        assert_eq!(tsql_parameter_text(Some(&json!(true))).as_deref(), Some("1"));
        assert_eq!(tsql_parameter_text(Some(&json!(false))).as_deref(), Some("0"));
        assert_eq!(tsql_parameter_text(Some(&json!("O'Brien; --"))).as_deref(), Some("O'Brien; --"));
        assert_eq!(tsql_parameter_text(Some(&json!(["a", 1]))).as_deref(), Some("[\"a\",1]"));
        assert_eq!(tsql_parameter_text(Some(&json!(null))), None);
        assert_eq!(tsql_parameter_text(None), None);
    }

    #[test]
    fn a_counted_tsql_statement_reads_its_own_row_count_last() {
        // After a closing comment too: the count starts on a line of its own.
        assert_eq!(
            tsql_with_row_count("UPDATE t SET a = @P1 -- the badge"),
            "UPDATE t SET a = @P1 -- the badge\n;SELECT CAST(@@ROWCOUNT AS bigint) AS idmesh_rows"
        );
    }

    #[test]
    fn dotted_names_are_quoted_part_by_part() {
        assert_eq!(qualified_ident("hr.people"), "\"hr\".\"people\"");
        assert_eq!(qualified_ident("we\"ird"), "\"we\"\"ird\"");
    }
}

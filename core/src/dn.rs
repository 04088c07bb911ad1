//! Distinguished names (RFC 4514). Directories spell one DN several ways (Samba returns `;`
//! and `=` inside values as `\3B` / `\3D`, others send them bare; attribute types differ in
//! case), so DNs are parsed and re-written in one canonical spelling before they are stored
//! or compared: types upper-case, values unescaped and escaped again minimally.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// One attribute type and value of an RDN (`CN=Ada Lovelace`), value unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ava {
    pub attr: String,
    pub value: String,
}

/// A relative distinguished name: usually one AVA, several when joined with `+`.
pub type Rdn = Vec<Ava>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnError(pub String);

impl fmt::Display for DnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed DN, most specific RDN first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dn(pub Vec<Rdn>);

impl Dn {
    pub fn parse(text: &str) -> Result<Dn, DnError> {
        parse(text)
    }

    /// The DN without its first RDN (the container it lives in).
    pub fn parent(&self) -> Dn {
        Dn(self.0.iter().skip(1).cloned().collect())
    }

    pub fn rdn(&self) -> Option<&Rdn> {
        self.0.first()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Canonical spelling: `CN=Semi;Colon` becomes `CN=Semi\;Colon`, `cn=x` becomes `CN=x`.
    pub fn canonical(&self) -> String {
        self.0
            .iter()
            .map(|rdn| rdn_string(rdn))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Comparison key: directories compare DNs case-insensitively.
    pub fn key(&self) -> String {
        self.canonical().to_lowercase()
    }

    /// Whether `self` is `other` or lies below it.
    pub fn is_within(&self, other: &Dn) -> bool {
        let n = other.0.len();
        self.0.len() >= n && {
            let tail = Dn(self.0[self.0.len() - n..].to_vec());
            tail.key() == other.key()
        }
    }

    /// This DN under a new parent, keeping the RDN.
    pub fn child_of(rdn: &Rdn, parent: &Dn) -> Dn {
        let mut v = vec![rdn.clone()];
        v.extend(parent.0.iter().cloned());
        Dn(v)
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// The RDN as text (`CN=Ada`), for a rename request.
pub fn rdn_string(rdn: &Rdn) -> String {
    rdn.iter()
        .map(|a| format!("{}={}", a.attr, escape_value(&a.value)))
        .collect::<Vec<_>>()
        .join("+")
}

/// Canonical form of a DN given as text; text that does not parse is kept trimmed (a
/// directory never returns one, and a reference to it then matches nothing).
pub fn canonical(text: &str) -> String {
    parse(text)
        .map(|d| d.canonical())
        .unwrap_or_else(|_| text.trim().to_string())
}

/// Escapes an attribute value for a DN (RFC 4514 section 2.4).
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    let last = value.chars().count().saturating_sub(1);
    for (i, ch) in value.chars().enumerate() {
        match ch {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(ch);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn parse(text: &str) -> Result<Dn, DnError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Dn(Vec::new()));
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut rdns: Vec<Rdn> = Vec::new();
    let mut rdn: Rdn = Vec::new();
    let bad = |msg: &str| DnError(format!("\"{text}\" is not a valid DN: {msg}"));
    loop {
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b',' && bytes[i] != b'+' {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            return Err(bad("an RDN needs type=value"));
        }
        let attr = text[start..i].trim();
        if attr.is_empty()
            || !attr
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(bad(&format!("\"{attr}\" is not an attribute type")));
        }
        i += 1;
        // The value: quoted (RFC 2253 legacy) or escaped characters up to an unescaped , or +.
        let mut raw: Vec<u8> = Vec::new();
        // Bytes that came from escapes are kept even when they are spaces at the end.
        let mut kept = 0usize;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                raw.push(bytes[i]);
                i += 1;
            }
            if i >= bytes.len() {
                return Err(bad("unterminated quoted value"));
            }
            i += 1;
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
        } else {
            while i < bytes.len() && bytes[i] != b',' && bytes[i] != b'+' && bytes[i] != b';' {
                if bytes[i] == b'\\' {
                    let hex = |b: u8| (b as char).to_digit(16);
                    let pair = (i + 2 < bytes.len())
                        .then(|| hex(bytes[i + 1]).zip(hex(bytes[i + 2])))
                        .flatten();
                    if let Some((hi, lo)) = pair {
                        raw.push((hi * 16 + lo) as u8);
                        i += 3;
                    } else if i + 1 < bytes.len() {
                        raw.push(bytes[i + 1]);
                        i += 2;
                    } else {
                        return Err(bad("a value ends with a lone backslash"));
                    }
                    kept = raw.len();
                } else {
                    raw.push(bytes[i]);
                    i += 1;
                }
            }
            // Unescaped trailing spaces are not part of the value.
            while raw.len() > kept && raw.last() == Some(&b' ') {
                raw.pop();
            }
        }
        let value = String::from_utf8(raw).map_err(|_| bad("a value is not UTF-8"))?;
        rdn.push(Ava {
            attr: attr.to_ascii_uppercase(),
            value,
        });
        if i >= bytes.len() {
            rdns.push(std::mem::take(&mut rdn));
            break;
        }
        match bytes[i] {
            b'+' => {}
            _ => rdns.push(std::mem::take(&mut rdn)),
        }
        i += 1;
    }
    Ok(Dn(rdns))
}

/// Fills a DN template such as `CN={cn},OU={department},OU=People,DC=corp,DC=local`: each
/// `{name}` is replaced by that value, DN-escaped, so a value can never add an RDN.
/// Fails on a placeholder without a value (the object cannot be placed).
pub fn expand_template(
    template: &str,
    value_of: impl Fn(&str) -> Option<String>,
) -> Result<Dn, DnError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            return Err(DnError(format!(
                "dn_template \"{template}\": a {{ is not closed"
            )));
        };
        let name = rest[open + 1..open + close].trim();
        match value_of(name) {
            Some(v) if !v.trim().is_empty() => out.push_str(&escape_value(v.trim())),
            _ => {
                return Err(DnError(format!(
                    "dn_template needs a value for {{{name}}}, and this object has none"
                )))
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    parse(&out)
}

/// The placeholder names of a template, to check them when the connector is configured.
pub fn template_names(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        match rest[open..].find('}') {
            Some(close) => {
                names.push(rest[open + 1..open + close].trim().to_string());
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    names
}

/// Where a run's own writes put objects: moved or renamed (old DN -> new DN) and deleted.
/// Other objects' references (a group's members, a manager) come from the connector space,
/// which names an object by the DN it had at the last import. The directory carries a
/// reference along on a move and drops it on a delete, and refuses the old DN afterwards:
/// DN values written later in the run name the object where it is now, and leave out the
/// ones deleted.
#[derive(Default, Debug)]
pub struct Placements {
    moved: HashMap<String, String>,
    deleted: HashSet<String>,
}

impl Placements {
    pub fn moved(&mut self, from: &Dn, to: &Dn) {
        self.moved.insert(from.key(), to.canonical());
    }

    pub fn deleted(&mut self, dn: &str) {
        self.deleted.insert(canonical(dn).to_lowercase());
    }

    /// DN values in canonical spelling, as they are after this run's writes.
    pub fn rewrite(&self, values: Vec<String>) -> Vec<String> {
        values
            .into_iter()
            .filter_map(|v| {
                let v = canonical(&v);
                let key = v.to_lowercase();
                if self.deleted.contains(&key) {
                    return None;
                }
                Some(self.moved.get(&key).cloned().unwrap_or(v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_moves_and_deletes_rewrite_later_dn_values() {
        let mut p = Placements::default();
        let old = parse("CN=Alan Turing,OU=Engineering,DC=corp,DC=local").unwrap();
        let new = parse("CN=Alan Turing,OU=Sales,DC=corp,DC=local").unwrap();
        p.moved(&old, &new);
        p.deleted("cn=Joan Clarke, ou=Sales, dc=corp, dc=local");
        let values = vec![
            "cn=alan turing,ou=engineering,dc=corp,dc=local".to_string(),
            "CN=Joan Clarke,OU=Sales,DC=corp,DC=local".to_string(),
            "CN=Ada Lovelace, OU=Engineering,DC=corp,DC=local".to_string(),
        ];
        assert_eq!(
            p.rewrite(values),
            vec![
                "CN=Alan Turing,OU=Sales,DC=corp,DC=local".to_string(),
                "CN=Ada Lovelace,OU=Engineering,DC=corp,DC=local".to_string(),
            ]
        );
        // Nothing written in the run: values only take the canonical spelling.
        assert_eq!(
            Placements::default().rewrite(vec!["cn=x,dc=corp".to_string()]),
            vec!["CN=x,DC=corp".to_string()]
        );
    }

    #[test]
    fn samba_hex_escapes_and_bare_characters_give_one_spelling() {
        let a = canonical("CN=Semi\\3BColon,OU=People,DC=corp,DC=local");
        let b = canonical("cn=Semi\\;Colon, ou=People, dc=corp, dc=local");
        assert_eq!(a, "CN=Semi\\;Colon,OU=People,DC=corp,DC=local");
        assert_eq!(a, b);
        assert_eq!(canonical("CN=a\\3Db,DC=x"), canonical("CN=a\\=b,DC=x"));
    }

    #[test]
    fn commas_quotes_leading_hash_and_spaces_survive_a_round_trip() {
        for v in [
            "Doe, Jane",
            "\"Quoted\"",
            "#hash",
            " lead",
            "trail ",
            "a+b",
            "x<y>z",
            "back\\slash",
            "Zoë Ørsted",
        ] {
            let dn = format!("CN={},OU=People,DC=corp,DC=local", escape_value(v));
            let parsed = Dn::parse(&dn).unwrap();
            assert_eq!(parsed.0[0][0].value, v, "value {v:?} via {dn}");
            assert_eq!(Dn::parse(&parsed.canonical()).unwrap(), parsed);
        }
    }

    #[test]
    fn hex_escaped_utf8_is_decoded() {
        let d = Dn::parse("CN=Zo\\C3\\AB,DC=x").unwrap();
        assert_eq!(d.0[0][0].value, "Zoë");
    }

    #[test]
    fn keys_ignore_case_and_multi_valued_rdns_parse() {
        let d = Dn::parse("cn=Ada+uid=ada,OU=People,DC=Corp,DC=Local").unwrap();
        assert_eq!(d.0[0].len(), 2);
        assert_eq!(d.key(), "cn=ada+uid=ada,ou=people,dc=corp,dc=local");
        assert_eq!(d.parent().canonical(), "OU=People,DC=Corp,DC=Local");
        assert!(d.is_within(&Dn::parse("dc=corp,dc=local").unwrap()));
        assert!(!d.is_within(&Dn::parse("OU=Other,DC=corp,DC=local").unwrap()));
    }

    #[test]
    fn invalid_dns_are_refused() {
        assert!(Dn::parse("no equals sign").is_err());
        assert!(Dn::parse("CN=x,,DC=y").is_err());
        assert!(Dn::parse("CN=\"open").is_err());
        assert!(Dn::parse("CN=x\\").is_err());
    }

    #[test]
    fn templates_escape_values_so_they_cannot_add_rdns() {
        let dn = expand_template(
            "CN={cn},OU={department},OU=People,DC=corp,DC=local",
            |n| match n {
                "cn" => Some("Doe, Jane".into()),
                "department" => Some("R+D".into()),
                _ => None,
            },
        )
        .unwrap();
        assert_eq!(dn.0.len(), 5);
        assert_eq!(
            dn.canonical(),
            "CN=Doe\\, Jane,OU=R\\+D,OU=People,DC=corp,DC=local"
        );
        let missing = expand_template("CN={cn},OU={department},DC=x", |n| {
            (n == "cn").then(|| "a".to_string())
        });
        assert!(missing.unwrap_err().0.contains("{department}"));
        assert_eq!(
            template_names("CN={cn},OU={ department }"),
            vec!["cn", "department"]
        );
    }
}

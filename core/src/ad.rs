//! Active Directory specifics that need no network: binary values in their readable forms,
//! range retrieval, userAccountControl bits, the uSN watermark and search filters.

use serde_json::{json, Value};

/// objectGUID as AD prints it: the first three fields little-endian (`{..}` without braces).
pub fn guid_string(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 16 {
        return None;
    }
    let b = bytes;
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    ))
}

/// objectSid as `S-1-5-21-...`.
pub fn sid_string(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 8 {
        return None;
    }
    let count = bytes[1] as usize;
    if bytes.len() != 8 + 4 * count {
        return None;
    }
    let authority = bytes[2..8]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | *b as u64);
    let mut s = format!("S-{}-{}", bytes[0], authority);
    for i in 0..count {
        let at = 8 + 4 * i;
        let sub = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        s.push_str(&format!("-{sub}"));
    }
    Some(s)
}

/// An attribute returned in ranges (`member;range=0-1499`): its name, the first value's
/// index and the last one's (None for `*`: this is the last range).
#[derive(Debug, PartialEq, Eq)]
pub struct RangePart {
    pub attr: String,
    pub start: u64,
    pub end: Option<u64>,
}

pub fn parse_range(returned: &str) -> Option<RangePart> {
    let (attr, opts) = returned.split_once(';')?;
    let range = opts.split(';').find_map(|o| {
        o.strip_prefix("range=")
            .or_else(|| o.strip_prefix("Range="))
    })?;
    let (start, end) = range.split_once('-')?;
    Some(RangePart {
        attr: attr.to_string(),
        start: start.parse().ok()?,
        end: if end == "*" {
            None
        } else {
            Some(end.parse().ok()?)
        },
    })
}

/// What to ask for next after a range part: `member;range=1500-*` (let the server size it)
/// or, with an explicit step, `member;range=1500-1999`.
pub fn next_range(part: &RangePart, step: Option<u64>) -> Option<String> {
    let end = part.end?;
    let start = end + 1;
    Some(match step {
        Some(s) => format!("{};range={}-{}", part.attr, start, start + s - 1),
        None => format!("{};range={}-*", part.attr, start),
    })
}

pub const UF_ACCOUNTDISABLE: u32 = 0x2;
pub const UF_NORMAL_ACCOUNT: u32 = 0x200;

/// Sets or clears the disabled bit, keeping every other bit as the directory has it.
pub fn with_disabled(uac: u32, disabled: bool) -> u32 {
    if disabled {
        uac | UF_ACCOUNTDISABLE
    } else {
        uac & !UF_ACCOUNTDISABLE
    }
}

/// Where a delta import reads from, decided from the saved watermark and the DC as it is now.
#[derive(Debug, PartialEq, Eq)]
pub enum DeltaStart {
    /// Changes with uSNChanged above this.
    From(u64),
    /// Read everything, and why.
    Full(String),
}

/// The DC's identity and position, read from the rootDSE before a search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcPosition {
    pub host: String,
    pub invocation_id: String,
    pub usn: u64,
}

impl DcPosition {
    pub fn to_json(&self) -> Value {
        json!({"dc": self.host, "invocation_id": self.invocation_id, "usn": self.usn})
    }
}

/// uSN values are per DC and per database instance: a watermark from another DC, or from
/// this DC after a restore (new invocationId), says nothing about what changed since.
pub fn delta_start(saved: &Value, now: &DcPosition) -> DeltaStart {
    let (Some(dc), Some(inv), Some(usn)) = (
        saved.get("dc").and_then(Value::as_str),
        saved.get("invocation_id").and_then(Value::as_str),
        saved.get("usn").and_then(Value::as_u64),
    ) else {
        return DeltaStart::Full("no usable watermark: full import".into());
    };
    if !dc.eq_ignore_ascii_case(&now.host) {
        return DeltaStart::Full(format!(
            "the watermark is from DC {dc}, this is {}: full import",
            now.host
        ));
    }
    if !inv.eq_ignore_ascii_case(&now.invocation_id) {
        return DeltaStart::Full(format!(
            "DC {} has a new invocationId ({} , watermark has {inv}; restored from backup?): full import",
            now.host, now.invocation_id
        ));
    }
    if usn > now.usn {
        return DeltaStart::Full(format!(
            "the watermark's uSN {usn} is ahead of the DC's {}: full import",
            now.usn
        ));
    }
    DeltaStart::From(usn)
}

/// The LDAP filter of an object type: users are person-category users (not computers),
/// contacts and groups by class. Tombstones keep objectClass but lose objectCategory.
pub fn type_filter(object_type: &str, tombstone: bool) -> Option<&'static str> {
    Some(match (object_type, tombstone) {
        ("person", false) => "(&(objectCategory=person)(objectClass=user))",
        ("person", true) => "(&(objectClass=user)(!(objectClass=computer)))",
        ("group", _) => "(objectClass=group)",
        ("contact", _) => "(objectClass=contact)",
        _ => return None,
    })
}

/// The mesh type of an entry from its objectClass values (None: not a type we import).
pub fn type_of(object_classes: &[String]) -> Option<&'static str> {
    let has = |c: &str| object_classes.iter().any(|x| x.eq_ignore_ascii_case(c));
    if has("computer") {
        None
    } else if has("user") {
        Some("person")
    } else if has("group") {
        Some("group")
    } else if has("contact") {
        Some("contact")
    } else {
        None
    }
}

/// objectClass values to create an object of a mesh type with.
pub fn object_classes(object_type: &str) -> Option<&'static [&'static str]> {
    Some(match object_type {
        "person" => &["top", "person", "organizationalPerson", "user"],
        "group" => &["top", "group"],
        "contact" => &["top", "person", "organizationalPerson", "contact"],
        _ => return None,
    })
}

/// Attributes whose values are DNs of other objects (written canonically, compared by key).
pub const DN_ATTRIBUTES: &[&str] = &[
    "manager",
    "member",
    "memberOf",
    "directReports",
    "managedBy",
    "managedObjects",
    "lastKnownParent",
    "secretary",
    "assistant",
    "seeAlso",
];

/// Attributes AD defines as multi-valued among those commonly synchronized; always arrays,
/// even with one value, so a group with one member looks like one with many.
pub const MULTI_VALUED: &[&str] = &[
    "member",
    "memberOf",
    "directReports",
    "managedObjects",
    "objectClass",
    "proxyAddresses",
    "otherTelephone",
    "otherMobile",
    "otherHomePhone",
    "otherIpPhone",
    "otherFacsimileTelephoneNumber",
    "url",
    "servicePrincipalName",
    "seeAlso",
    "secretary",
    "userCertificate",
    "postOfficeBox",
];

/// Attributes holding GUIDs and SIDs, shown in their readable forms.
pub const GUID_ATTRIBUTES: &[&str] = &["objectGUID", "invocationId"];
pub const SID_ATTRIBUTES: &[&str] = &["objectSid", "sIDHistory"];

pub fn is_in(list: &[&str], attr: &str) -> bool {
    list.iter().any(|a| a.eq_ignore_ascii_case(attr))
}

/// The one-character LDAP filter escape (RFC 4515) for a value.
pub fn filter_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// A random initial password that meets AD's default complexity rules (three of four
/// character classes, at least 7 characters): 20 characters with each class present.
pub fn random_password(mut random: impl FnMut(usize) -> usize) -> String {
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const DIGIT: &[u8] = b"23456789";
    const SYMBOL: &[u8] = b"!#%+-=?@_";
    let classes = [UPPER, LOWER, DIGIT, SYMBOL];
    (0..20)
        .map(|i| {
            let class = if i < 4 {
                classes[i]
            } else {
                classes[random(4)]
            };
            class[random(class.len())] as char
        })
        .collect()
}

/// unicodePwd's value: the password in double quotes, UTF-16LE.
pub fn unicode_pwd(password: &str) -> Vec<u8> {
    format!("\"{password}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

/// The name of an attributeSyntax OID, as AD's schema documentation calls it.
pub fn syntax_name(oid: &str) -> &'static str {
    match oid {
        "2.5.5.1" => "DN",
        "2.5.5.2" => "OID",
        "2.5.5.3" => "Case-Sensitive String",
        "2.5.5.4" => "Case-Insensitive String",
        "2.5.5.5" => "IA5 String",
        "2.5.5.6" => "Numeric String",
        "2.5.5.7" => "DN-Binary",
        "2.5.5.8" => "Boolean",
        "2.5.5.9" => "Integer",
        "2.5.5.10" => "Octet String",
        "2.5.5.11" => "Generalized Time",
        "2.5.5.12" => "Unicode String",
        "2.5.5.13" => "Presentation Address",
        "2.5.5.14" => "DN-String",
        "2.5.5.15" => "NT Security Descriptor",
        "2.5.5.16" => "Large Integer",
        "2.5.5.17" => "SID",
        _ => "unknown",
    }
}

/// One classSchema entry: its superclass, auxiliary classes and attributes.
#[derive(Clone, Debug, Default)]
pub struct ClassDef {
    pub sub_class_of: Option<String>,
    pub auxiliary: Vec<String>,
    pub attributes: Vec<String>,
}

/// Every attribute an object of `class` may hold: its own, its superclasses' (up to `top`)
/// and those of every auxiliary class on the way, sorted and without duplicates.
pub fn class_attributes(
    classes: &std::collections::HashMap<String, ClassDef>,
    class: &str,
) -> Vec<String> {
    let mut seen_classes = std::collections::HashSet::new();
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![class.to_string()];
    while let Some(c) = todo.pop() {
        if !seen_classes.insert(c.to_lowercase()) {
            continue;
        }
        let Some(def) = classes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&c))
            .map(|(_, v)| v)
        else {
            continue;
        };
        out.extend(def.attributes.iter().cloned());
        todo.extend(def.auxiliary.iter().cloned());
        if let Some(sup) = &def.sub_class_of {
            todo.push(sup.clone());
        }
    }
    out.into_iter().collect()
}

/// The AD class behind a mesh object type.
pub fn class_of(object_type: &str) -> Option<&'static str> {
    Some(match object_type {
        "person" => "user",
        "group" => "group",
        "contact" => "contact",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_and_sid_in_readable_form() {
        let guid = [
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        assert_eq!(
            guid_string(&guid).unwrap(),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert!(guid_string(&guid[..15]).is_none());
        // S-1-5-21-1-2-3-500
        let mut sid = vec![1u8, 5, 0, 0, 0, 0, 0, 5];
        for sub in [21u32, 1, 2, 3, 500] {
            sid.extend(sub.to_le_bytes());
        }
        assert_eq!(sid_string(&sid).unwrap(), "S-1-5-21-1-2-3-500");
        assert!(sid_string(&sid[..10]).is_none());
    }

    #[test]
    fn ranges_parse_and_continue() {
        let p = parse_range("member;range=0-1499").unwrap();
        assert_eq!(
            p,
            RangePart {
                attr: "member".into(),
                start: 0,
                end: Some(1499)
            }
        );
        assert_eq!(next_range(&p, None).unwrap(), "member;range=1500-*");
        assert_eq!(next_range(&p, Some(500)).unwrap(), "member;range=1500-1999");
        let last = parse_range("member;range=3000-*").unwrap();
        assert_eq!(last.end, None);
        assert!(next_range(&last, None).is_none());
        assert!(parse_range("member").is_none());
        assert!(parse_range("member;binary").is_none());
    }

    #[test]
    fn disabled_bit_keeps_other_bits() {
        let uac = UF_NORMAL_ACCOUNT | 0x10000; // DONT_EXPIRE_PASSWORD
        assert_eq!(with_disabled(uac, true), uac | 2);
        assert_eq!(with_disabled(uac | 2, false), uac);
        assert_eq!(with_disabled(uac, false), uac);
    }

    #[test]
    fn delta_needs_same_dc_and_invocation() {
        let now = DcPosition {
            host: "dc1.corp.local".into(),
            invocation_id: "abc".into(),
            usn: 100,
        };
        let saved = now.to_json();
        assert_eq!(delta_start(&saved, &now), DeltaStart::From(100));
        let other = DcPosition {
            invocation_id: "def".into(),
            ..now.clone()
        };
        assert!(
            matches!(delta_start(&saved, &other), DeltaStart::Full(m) if m.contains("invocationId"))
        );
        let moved = DcPosition {
            host: "dc2.corp.local".into(),
            ..now.clone()
        };
        assert!(matches!(delta_start(&saved, &moved), DeltaStart::Full(m) if m.contains("dc2")));
        assert!(matches!(
            delta_start(&json!(null), &now),
            DeltaStart::Full(_)
        ));
        let behind = DcPosition {
            usn: 50,
            ..now.clone()
        };
        assert!(matches!(delta_start(&saved, &behind), DeltaStart::Full(_)));
    }

    #[test]
    fn types_from_classes() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            type_of(&c(&["top", "person", "organizationalPerson", "user"])),
            Some("person")
        );
        assert_eq!(
            type_of(&c(&[
                "top",
                "person",
                "organizationalPerson",
                "user",
                "computer"
            ])),
            None
        );
        assert_eq!(type_of(&c(&["top", "group"])), Some("group"));
        assert_eq!(
            type_of(&c(&["top", "person", "organizationalPerson", "contact"])),
            Some("contact")
        );
    }

    #[test]
    fn passwords_meet_complexity_and_encode_as_ad_wants() {
        let mut n = 0usize;
        let p = random_password(|m| {
            n = n.wrapping_mul(31).wrapping_add(7);
            n % m
        });
        assert_eq!(p.len(), 20);
        assert!(p.chars().any(|c| c.is_ascii_uppercase()));
        assert!(p.chars().any(|c| c.is_ascii_lowercase()));
        assert!(p.chars().any(|c| c.is_ascii_digit()));
        assert_eq!(unicode_pwd("ab"), vec![b'"', 0, b'a', 0, b'b', 0, b'"', 0]);
        assert_eq!(filter_escape("a*(b)\\"), "a\\2a\\28b\\29\\5c");
    }

    #[test]
    fn class_attributes_follow_superclasses_and_auxiliary_classes() {
        use std::collections::HashMap;
        let mut classes = HashMap::new();
        let def = |sup: &str, aux: &[&str], attrs: &[&str]| ClassDef {
            sub_class_of: Some(sup.to_string()),
            auxiliary: aux.iter().map(|s| s.to_string()).collect(),
            attributes: attrs.iter().map(|s| s.to_string()).collect(),
        };
        classes.insert("top".to_string(), def("top", &[], &["objectClass", "cn"]));
        classes.insert(
            "person".to_string(),
            def("top", &[], &["sn", "telephoneNumber"]),
        );
        classes.insert(
            "organizationalPerson".to_string(),
            def("person", &[], &["manager", "title"]),
        );
        classes.insert(
            "user".to_string(),
            def(
                "organizationalPerson",
                &["securityPrincipal"],
                &["sAMAccountName"],
            ),
        );
        classes.insert(
            "securityPrincipal".to_string(),
            def("top", &[], &["objectSid"]),
        );
        let a = class_attributes(&classes, "user");
        for want in [
            "sAMAccountName",
            "manager",
            "title",
            "sn",
            "cn",
            "objectSid",
            "objectClass",
        ] {
            assert!(a.contains(&want.to_string()), "{want} in {a:?}");
        }
        assert_eq!(a.iter().filter(|x| *x == "cn").count(), 1);
        assert_eq!(syntax_name("2.5.5.1"), "DN");
        assert_eq!(class_of("person"), Some("user"));
    }
}

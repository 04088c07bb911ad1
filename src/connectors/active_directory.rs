//! The `active_directory` connector kind: Active Directory over LDAP (crate ldap3), on the
//! backend thread's current-thread runtime.
//!
//! Imports are paged searches (objectGUID is the anchor, the canonical DN the name); deltas
//! read `uSNChanged` above the watermark (DC host, invocationId and highestCommittedUSN
//! read before the search) plus tombstones through the Show Deleted control. Exports add,
//! modify value by value, rename and move by modrdn, disable through userAccountControl's
//! bit (read-modify-write) and delete. DNs are parsed and written canonically
//! (`idmesh_core::dn`), so references match however the DC spells them.

use crate::error::invalid;
use idmesh_core::ad::{self, DcPosition, DeltaStart};
use idmesh_core::dn::{self, Dn};
use idmesh_sdk::*;
use ldap3::controls::{Control, ControlType, PagedResults, RawControl};
use ldap3::{
    Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Mod, Scope, SearchEntry,
};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";
const KIND: &str = "active_directory";

/// How the connector logs in.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Simple bind with the connector's secret as the password.
    Simple { bind_dn: String },
    /// Kerberos (GSSAPI) from a keytab: no password anywhere.
    Kerberos {
        keytab: String,
        krb5_config: Option<String>,
        /// The DC's real host name, for its `ldap/` service principal.
        server_fqdn: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TlsVerify {
    /// Chain and host name (the default).
    Full,
    /// Chain only: for a DC reached by an address its certificate does not name.
    CaOnly,
    /// Nothing: self-signed test DCs only.
    None,
}

#[derive(Clone, Debug)]
pub struct AdConfig {
    pub url: String,
    pub starttls: bool,
    pub tls_verify: TlsVerify,
    pub ca_file: Option<String>,
    pub auth: Auth,
    pub allow_plain_bind: bool,
    pub base_dn: Dn,
    pub include_ous: Vec<Dn>,
    pub exclude_ous: Vec<Dn>,
    pub object_types: Vec<String>,
    /// Attributes to read, per mesh type.
    pub attributes: HashMap<String, Vec<String>>,
    pub page_size: i32,
    /// Ask for multi-valued attributes in ranges of this many values (AD sizes ranges itself).
    pub range_step: Option<u64>,
    pub dn_template: HashMap<String, String>,
    pub create_ous: bool,
    pub disabled_ou: Option<Dn>,
    pub random_initial_password: bool,
    pub must_change_password: bool,
    pub multi_valued: Vec<String>,
    /// An extra LDAP filter every import search must match, e.g. `(employeeType=staff)`.
    pub filter: Option<String>,
}

/// The settings that say where the secret is sent and how it is protected on the way:
/// changing one needs the secret given again (`connectors::secret_destination`).
pub const SECRET_DESTINATION: &[&str] = &[
    "url",
    "starttls",
    "tls_verify",
    "ca_file",
    "bind",
    "bind_dn",
    "server_fqdn",
    "allow_plain_bind",
];

/// The other settings.
const KNOWN: &[&str] = &[
    "keytab",
    "krb5_config",
    "base_dn",
    "include_ous",
    "exclude_ous",
    "object_types",
    "attributes",
    "page_size",
    "range_step",
    "dn_template",
    "create_ous",
    "disabled_ou",
    "initial_password",
    "must_change_password",
    "multi_valued",
    "filter",
];

const DEFAULT_PERSON: &[&str] = &[
    "sAMAccountName",
    "userPrincipalName",
    "cn",
    "givenName",
    "sn",
    "displayName",
    "mail",
    "title",
    "department",
    "company",
    "telephoneNumber",
    "mobile",
    "employeeID",
    "manager",
    "userAccountControl",
    "memberOf",
];
const DEFAULT_GROUP: &[&str] = &[
    "sAMAccountName",
    "cn",
    "description",
    "mail",
    "member",
    "managedBy",
    "groupType",
];
const DEFAULT_CONTACT: &[&str] = &[
    "cn",
    "givenName",
    "sn",
    "displayName",
    "mail",
    "telephoneNumber",
    "company",
];

fn text(config: &Value, key: &str) -> Option<String> {
    super::string_setting(config, KIND, key).map(str::to_string)
}

fn flag(config: &Value, key: &str, default: bool) -> bool {
    match config.get(key) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(_) => invalid(
            format!("{KIND} connector: \"{key}\" must be true or false"),
            "",
        ),
    }
}

fn dn_setting(key: &str, value: &str) -> Dn {
    match Dn::parse(value) {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => invalid(format!("{KIND} connector: \"{key}\" is empty"), ""),
        Err(e) => invalid(
            format!("{KIND} connector: \"{key}\": {e}"),
            "e.g. OU=People,DC=corp,DC=local",
        ),
    }
}

fn dn_list(config: &Value, key: &str) -> Vec<Dn> {
    match config.get(key) {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v.as_str() {
                Some(s) => dn_setting(key, s),
                None => invalid(
                    format!("{KIND} connector: \"{key}\" must be an array of DNs"),
                    "",
                ),
            })
            .collect(),
        Some(_) => invalid(
            format!("{KIND} connector: \"{key}\" must be an array of DNs"),
            "",
        ),
    }
}

fn string_list(v: &Value, what: &str) -> Vec<String> {
    match v.as_array() {
        Some(a) => a
            .iter()
            .map(|x| match x.as_str() {
                Some(s) if !s.trim().is_empty() => s.trim().to_string(),
                _ => invalid(
                    format!("{KIND} connector: \"{what}\" must be an array of names"),
                    "",
                ),
            })
            .collect(),
        None => invalid(
            format!("{KIND} connector: \"{what}\" must be an array of names"),
            "",
        ),
    }
}

impl AdConfig {
    pub fn parse(config: &Value) -> AdConfig {
        super::known_settings(config, KIND, &[SECRET_DESTINATION, KNOWN]);
        let url = text(config, "url").unwrap_or_else(|| {
            invalid(
                format!("{KIND} connector: \"url\" is required"),
                "e.g. ldaps://dc1.corp.local, or ldap://dc1.corp.local with \"starttls\": true",
            )
        });
        if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
            invalid(
                format!("{KIND} connector: url must start with ldap:// or ldaps://"),
                "",
            );
        }
        let starttls = flag(config, "starttls", false);
        if starttls && url.starts_with("ldaps://") {
            invalid(
                format!(
                    "{KIND} connector: starttls is for ldap:// URLs; ldaps:// is encrypted already"
                ),
                "",
            );
        }
        let tls_verify = match text(config, "tls_verify").as_deref().unwrap_or("full") {
            "full" => TlsVerify::Full,
            "ca_only" => TlsVerify::CaOnly,
            "none" => TlsVerify::None,
            other => invalid(
                format!("{KIND} connector: unknown tls_verify \"{other}\""),
                "full (default), ca_only (the certificate's chain but not its host name) or none (self-signed test DCs only).",
            ),
        };
        let ca_file = text(config, "ca_file");
        if let Some(f) = &ca_file {
            if !std::path::Path::new(f).is_file() {
                invalid(format!("{KIND} connector: ca_file {f} does not exist"), "");
            }
        }
        let auth = match text(config, "bind").as_deref().unwrap_or("simple") {
            "simple" => Auth::Simple {
                bind_dn: text(config, "bind_dn").unwrap_or_else(|| {
                    invalid(
                        format!("{KIND} connector: a simple bind needs \"bind_dn\""),
                        "The DN or user principal name of the service account, e.g. svc-idmesh@corp.local; its password is the connector's secret.",
                    )
                }),
            },
            "kerberos" => {
                let keytab = text(config, "keytab").unwrap_or_else(|| {
                    invalid(format!("{KIND} connector: a kerberos bind needs \"keytab\""), "")
                });
                let server_fqdn = text(config, "server_fqdn").unwrap_or_else(|| {
                    invalid(
                        format!("{KIND} connector: a kerberos bind needs \"server_fqdn\""),
                        "The DC's real host name (dc1.corp.local), whose ldap/ service principal the ticket is for.",
                    )
                });
                Auth::Kerberos {
                    keytab,
                    krb5_config: text(config, "krb5_config"),
                    server_fqdn,
                }
            }
            other => invalid(format!("{KIND} connector: unknown bind \"{other}\""), "simple or kerberos."),
        };
        let base_dn = dn_setting(
            "base_dn",
            &text(config, "base_dn").unwrap_or_else(|| {
                invalid(
                    format!("{KIND} connector: \"base_dn\" is required"),
                    "e.g. DC=corp,DC=local",
                )
            }),
        );
        let include_ous = dn_list(config, "include_ous");
        let exclude_ous = dn_list(config, "exclude_ous");
        for ou in include_ous.iter().chain(&exclude_ous) {
            if !ou.is_within(&base_dn) {
                invalid(
                    format!("{KIND} connector: {ou} is not under base_dn {base_dn}"),
                    "",
                );
            }
        }
        let object_types = match config.get("object_types") {
            None | Some(Value::Null) => vec!["person".to_string(), "group".to_string()],
            Some(v) => string_list(v, "object_types"),
        };
        for t in &object_types {
            if ad::type_filter(t, false).is_none() {
                invalid(
                    format!("{KIND} connector: object type \"{t}\" is not one AD holds"),
                    "person (users), group, contact.",
                );
            }
        }
        let defaults = |t: &str| -> Vec<String> {
            match t {
                "person" => DEFAULT_PERSON,
                "group" => DEFAULT_GROUP,
                _ => DEFAULT_CONTACT,
            }
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let attributes: HashMap<String, Vec<String>> = object_types
            .iter()
            .map(|t| {
                let list = match config.get("attributes") {
                    None | Some(Value::Null) => defaults(t),
                    Some(Value::Array(_)) => string_list(&config["attributes"], "attributes"),
                    Some(Value::Object(o)) => match o.get(t) {
                        Some(v) => string_list(v, "attributes"),
                        None => defaults(t),
                    },
                    Some(_) => invalid(format!("{KIND} connector: \"attributes\" must be an array or an object per type"), ""),
                };
                (t.clone(), list)
            })
            .collect();
        let page_size = match config.get("page_size") {
            None | Some(Value::Null) => 1000,
            Some(v) => match v.as_i64() {
                Some(n) if (1..=100_000).contains(&n) => n as i32,
                _ => invalid(
                    format!("{KIND} connector: page_size must be between 1 and 100000"),
                    "",
                ),
            },
        };
        let range_step = match config.get("range_step") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Some(n),
                _ => invalid(
                    format!("{KIND} connector: range_step must be a positive number"),
                    "",
                ),
            },
        };
        let dn_template: HashMap<String, String> = match config.get("dn_template") {
            None | Some(Value::Null) => HashMap::new(),
            Some(Value::Object(o)) => o
                .iter()
                .map(|(t, v)| {
                    let s = v.as_str().unwrap_or_else(|| {
                        invalid(format!("{KIND} connector: dn_template.{t} must be a DN with {{attribute}} placeholders"), "")
                    });
                    // A template with sample values must give a DN under base_dn.
                    match dn::expand_template(s, |_| Some("x".into())) {
                        Ok(d) if d.is_within(&base_dn) && d.0.len() > base_dn.0.len() => {}
                        Ok(_) => invalid(format!("{KIND} connector: dn_template.{t} does not place objects under base_dn {base_dn}"), ""),
                        Err(e) => invalid(format!("{KIND} connector: dn_template.{t}: {e}"), ""),
                    }
                    (t.clone(), s.to_string())
                })
                .collect(),
            Some(_) => invalid(
                format!("{KIND} connector: \"dn_template\" must be an object per type"),
                "e.g. {\"person\": \"CN={cn},OU={department},OU=People,DC=corp,DC=local\"}",
            ),
        };
        let initial_password = text(config, "initial_password");
        let random_initial_password = match initial_password.as_deref().unwrap_or("random") {
            "random" => true,
            "none" => false,
            other => invalid(
                format!("{KIND} connector: unknown initial_password \"{other}\""),
                "random (a strong random password the user must change at first logon) or none (accounts are created disabled).",
            ),
        };
        let filter = text(config, "filter").map(|f| {
            let f = if f.starts_with('(') {
                f
            } else {
                format!("({f})")
            };
            if ldap3::parse_filter(&f).is_err() {
                invalid(
                    format!("{KIND} connector: filter {f} is not an LDAP filter"),
                    "e.g. (employeeType=staff)",
                );
            }
            f
        });
        AdConfig {
            filter,
            url,
            starttls,
            tls_verify,
            ca_file,
            auth,
            allow_plain_bind: flag(config, "allow_plain_bind", false),
            base_dn,
            include_ous,
            exclude_ous,
            object_types,
            attributes,
            page_size,
            range_step,
            dn_template,
            create_ous: flag(config, "create_ous", false),
            disabled_ou: text(config, "disabled_ou").map(|s| dn_setting("disabled_ou", &s)),
            random_initial_password,
            must_change_password: flag(config, "must_change_password", true),
            multi_valued: match config.get("multi_valued") {
                None | Some(Value::Null) => vec![],
                Some(v) => string_list(v, "multi_valued"),
            },
        }
    }

    /// Reads these attributes too (those the connector's flows and join rules name), so a
    /// flow on an attribute missing from `attributes` still gets its values.
    pub fn read_also(&mut self, object_type: &str, names: impl IntoIterator<Item = String>) {
        let Some(list) = self.attributes.get_mut(object_type) else {
            return;
        };
        for n in names {
            if n != "accountDisabled" && !list.iter().any(|a| a.eq_ignore_ascii_case(&n)) {
                list.push(n);
            }
        }
    }

    /// The connection is encrypted (TLS from the start or after StartTLS; Kerberos seals
    /// it too, but passwords are only ever sent over TLS).
    pub fn tls(&self) -> bool {
        self.url.starts_with("ldaps://") || self.starttls
    }

    fn in_scope(&self, dn: &Dn) -> bool {
        (self.include_ous.is_empty() || self.include_ous.iter().any(|ou| dn.is_within(ou)))
            && !self.exclude_ous.iter().any(|ou| dn.is_within(ou))
            && dn.is_within(&self.base_dn)
    }

    fn is_multi(&self, attr: &str) -> bool {
        ad::is_in(ad::MULTI_VALUED, attr)
            || self
                .multi_valued
                .iter()
                .any(|m| m.eq_ignore_ascii_case(attr))
    }

    /// Every attribute a search asks for (all types), with what each entry always needs.
    fn requested(&self) -> Vec<String> {
        let mut out: Vec<String> = vec!["objectGUID".into(), "objectClass".into()];
        if self.object_types.iter().any(|t| t == "person") {
            out.push("userAccountControl".into());
        }
        for list in self.attributes.values() {
            for a in list {
                let a = match (self.range_step, self.is_multi(a)) {
                    (Some(step), true) => format!("{a};range=0-{}", step - 1),
                    _ => a.clone(),
                };
                if !out.iter().any(|o| o.eq_ignore_ascii_case(&a)) {
                    out.push(a);
                }
            }
        }
        out
    }

    fn filter(&self, tombstone: bool, from_usn: Option<u64>) -> String {
        let types: Vec<&str> = self
            .object_types
            .iter()
            .filter_map(|t| ad::type_filter(t, tombstone))
            .collect();
        // One type: its filter as it is (a one-branch OR can keep the DC from its indexes).
        let mut f = match types.as_slice() {
            [one] => one.to_string(),
            many => format!("(|{})", many.concat()),
        };
        if let (Some(extra), false) = (&self.filter, tombstone) {
            f = format!("(&{f}{extra})");
        }
        if let Some(u) = from_usn {
            f = format!("(&{f}(uSNChanged>={}))", u + 1);
        }
        if tombstone {
            f = format!("(&(isDeleted=TRUE){f})");
        }
        f
    }

    /// Where full imports search: each included OU, else the base DN.
    fn roots(&self) -> Vec<Dn> {
        if self.include_ous.is_empty() {
            vec![self.base_dn.clone()]
        } else {
            self.include_ous.clone()
        }
    }
}

pub fn validate(config: &Value, has_secret: bool) {
    let c = AdConfig::parse(config);
    match &c.auth {
        Auth::Simple { .. } if !has_secret => invalid(
            format!("{KIND} connector: a simple bind needs the service account's password as the secret"),
            "mesh.create_connector(name, 'active_directory', config, secret => $1)",
        ),
        Auth::Simple { .. } if !c.tls() && !c.allow_plain_bind => invalid(
            format!("{KIND} connector: a simple bind over unencrypted ldap:// would send the password in clear"),
            "Use ldaps://, or \"starttls\": true, or Kerberos (\"bind\": \"kerberos\"). \"allow_plain_bind\": true exists for isolated test DCs only.",
        ),
        Auth::Kerberos { keytab, .. } if !std::path::Path::new(keytab).is_file() => {
            invalid(format!("{KIND} connector: keytab {keytab} does not exist"), "")
        }
        _ => {}
    }
}

/// An LDAP error as the run reports it: the result code and the server's text, never a
/// credential (ldap3 errors carry no request data).
fn ldap_error(what: &str, e: LdapError) -> ConnectorError {
    match e {
        LdapError::LdapResult { result } => {
            ConnectorError::connection(format!("{what}: {}", describe(&result)))
        }
        other => ConnectorError::connection(format!("{what}: {other}")),
    }
}

fn rc_name(rc: u32) -> &'static str {
    match rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        10 => "referral",
        13 => "confidentialityRequired",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        80 => "other",
        _ => "error",
    }
}

fn describe(r: &LdapResult) -> String {
    let mut s = format!("LDAP {} {}", r.rc, rc_name(r.rc));
    if !r.text.is_empty() {
        s.push_str(": ");
        s.push_str(r.text.trim_end_matches('\0').trim());
    }
    s
}

/// The outcome of one LDAP write: Ok, or a per-object error with its result code.
type Step = Result<(), (String, String)>;

fn step(r: Result<LdapResult, LdapError>, what: &str) -> Result<Step, ConnectorError> {
    match r {
        Ok(res) if res.rc == 0 => Ok(Ok(())),
        Ok(res) => Ok(Err((
            res.rc.to_string(),
            format!("{what}: {}", describe(&res)),
        ))),
        // A lost connection is not one object's problem: the run stops.
        Err(e) => Err(ldap_error(what, e)),
    }
}

pub struct AdConnector {
    name: String,
    config: AdConfig,
    password: Option<String>,
    ldap: Option<Ldap>,
    /// The domain's naming context (rootDSE defaultNamingContext): deltas and tombstones are
    /// searched from there, so objects moved out of base_dn and deleted ones are seen.
    naming_context: Option<Dn>,
    /// Objects this run moved, renamed or deleted: DN values written later name them where
    /// they are now (see `dn::Placements`).
    placements: dn::Placements,
}

/// Values of one attribute of an entry as raw bytes (ldap3 splits text and binary values).
fn raw_values(e: &SearchEntry, attr: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (k, vs) in &e.attrs {
        if k.eq_ignore_ascii_case(attr) {
            out.extend(vs.iter().map(|v| v.as_bytes().to_vec()));
        }
    }
    for (k, vs) in &e.bin_attrs {
        if k.eq_ignore_ascii_case(attr) {
            out.extend(vs.iter().cloned());
        }
    }
    out
}

fn text_values(e: &SearchEntry, attr: &str) -> Vec<String> {
    e.attrs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(attr))
        .flat_map(|(_, v)| v.iter().cloned())
        .collect()
}

impl AdConnector {
    pub fn new(name: &str, config: AdConfig, password: Option<String>) -> Self {
        AdConnector {
            name: name.to_string(),
            config,
            password,
            ldap: None,
            naming_context: None,
            placements: dn::Placements::default(),
        }
    }

    async fn ldap(&mut self) -> Result<Ldap, ConnectorError> {
        if let Some(l) = &self.ldap {
            return Ok(l.clone());
        }
        let c = &self.config;
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_secs(30))
            .set_starttls(c.starttls);
        if c.tls() {
            let mut builder = native_tls::TlsConnector::builder();
            if let Some(f) = &c.ca_file {
                // The named CA only: stricter, and loading the system store costs ~40 ms a run.
                builder.disable_built_in_roots(true);
                let pem = std::fs::read(f)
                    .map_err(|e| ConnectorError::config(format!("cannot read ca_file {f}: {e}")))?;
                let cert = native_tls::Certificate::from_pem(&pem).map_err(|e| {
                    ConnectorError::config(format!("ca_file {f} is not a PEM certificate: {e}"))
                })?;
                builder.add_root_certificate(cert);
            }
            match c.tls_verify {
                TlsVerify::Full => {}
                TlsVerify::CaOnly => {
                    builder.danger_accept_invalid_hostnames(true);
                }
                TlsVerify::None => {
                    builder.danger_accept_invalid_certs(true);
                    builder.danger_accept_invalid_hostnames(true);
                }
            }
            let tls = builder
                .build()
                .map_err(|e| ConnectorError::config(format!("TLS setup: {e}")))?;
            settings = settings.set_connector(tls);
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &c.url)
            .await
            .map_err(|e| ldap_error(&format!("cannot connect to {}", c.url), e))?;
        ldap3::drive!(conn);
        match &c.auth {
            Auth::Simple { bind_dn } => {
                if !c.tls() && !c.allow_plain_bind {
                    return Err(ConnectorError::config(format!(
                        "\"{}\": refusing a simple bind over unencrypted {}: use ldaps://, starttls or Kerberos",
                        self.name, c.url
                    )));
                }
                let pw = self.password.as_deref().ok_or_else(|| {
                    ConnectorError::config(format!("\"{}\" has no secret to bind with", self.name))
                })?;
                let res = ldap
                    .simple_bind(bind_dn, pw)
                    .await
                    .map_err(|e| ldap_error(&format!("bind as {bind_dn}"), e))?;
                if res.rc != 0 {
                    return Err(ConnectorError::connection(format!(
                        "bind as {bind_dn} refused: {}",
                        describe(&res)
                    )));
                }
            }
            Auth::Kerberos {
                keytab,
                krb5_config,
                server_fqdn,
            } => {
                // The Kerberos library reads these from the environment; the backend is
                // single-threaded and the values are the same for every connector.
                if let Some(k) = krb5_config {
                    std::env::set_var("KRB5_CONFIG", k);
                }
                std::env::set_var("KRB5_CLIENT_KTNAME", keytab);
                std::env::set_var("KRB5CCNAME", "MEMORY:idmesh");
                let res = ldap
                    .sasl_gssapi_bind(server_fqdn)
                    .await
                    .map_err(|e| ldap_error(&format!("Kerberos bind to ldap/{server_fqdn}"), e))?;
                if res.rc != 0 {
                    return Err(ConnectorError::connection(format!(
                        "Kerberos bind to ldap/{server_fqdn} refused: {}",
                        describe(&res)
                    )));
                }
            }
        }
        self.ldap = Some(ldap.clone());
        Ok(ldap)
    }

    /// One entry by a base search: the LDAP result and the entry, when there is one.
    async fn read_entry(
        &mut self,
        dn: &str,
        attrs: Vec<String>,
        what: &str,
    ) -> Result<(LdapResult, Option<SearchEntry>), ConnectorError> {
        let mut ldap = self.ldap().await?;
        let ldap3::SearchResult(entries, res) = ldap
            .search(dn, Scope::Base, "(objectClass=*)", attrs)
            .await
            .map_err(|e| ldap_error(what, e))?;
        Ok((res, entries.into_iter().next().map(SearchEntry::construct)))
    }

    /// The same, where any result but success fails the call (the rootDSE, the schema).
    async fn must_read_entry(
        &mut self,
        dn: &str,
        attrs: &[&str],
        what: &str,
    ) -> Result<Option<SearchEntry>, ConnectorError> {
        let attrs = attrs.iter().map(|a| a.to_string()).collect();
        let (res, entry) = self.read_entry(dn, attrs, what).await?;
        if res.rc != 0 {
            return Err(ldap_error(what, LdapError::LdapResult { result: res }));
        }
        Ok(entry)
    }

    /// The DC's host, invocationId and highestCommittedUSN, read before a search so that
    /// nothing committed during the search is skipped by the next delta.
    async fn position(&mut self) -> Result<DcPosition, ConnectorError> {
        let root = self
            .must_read_entry(
                "",
                &[
                    "dnsHostName",
                    "highestCommittedUSN",
                    "dsServiceName",
                    "defaultNamingContext",
                ],
                "reading the rootDSE",
            )
            .await?
            .ok_or_else(|| ConnectorError::connection("the DC returned no rootDSE"))?;
        let first = |a: &str| text_values(&root, a).into_iter().next().unwrap_or_default();
        let usn: u64 = first("highestCommittedUSN").parse().map_err(|_| {
            ConnectorError::data(
                "the rootDSE has no highestCommittedUSN: is this Active Directory?",
            )
        })?;
        let service = first("dsServiceName");
        self.naming_context = Dn::parse(&first("defaultNamingContext"))
            .ok()
            .filter(|d| !d.is_empty());
        let invocation_id = self
            .must_read_entry(&service, &["invocationId"], "reading the DC's invocationId")
            .await?
            .and_then(|e| raw_values(&e, "invocationId").into_iter().next())
            .and_then(|b| ad::guid_string(&b))
            .ok_or_else(|| {
                ConnectorError::data("the DC's NTDS Settings object has no invocationId")
            })?;
        Ok(DcPosition {
            host: first("dnsHostName"),
            invocation_id,
            usn,
        })
    }

    /// One entry as a connector object (None: not a type this connector imports).
    fn object(&self, e: &SearchEntry) -> Option<SourceObject> {
        let anchor = ad::guid_string(raw_values(e, "objectGUID").first()?)?;
        let classes = text_values(e, "objectClass");
        let object_type = ad::type_of(&classes)?;
        if !self.config.object_types.iter().any(|t| t == object_type) {
            return None;
        }
        let dn = Dn::parse(&e.dn).ok()?;
        let mut attrs = Map::new();
        for attr in self
            .config
            .attributes
            .get(object_type)
            .into_iter()
            .flatten()
        {
            if let Some(v) = self.value(e, attr) {
                attrs.insert(attr.clone(), v);
            }
        }
        if object_type == "person" {
            if let Some(uac) = text_values(e, "userAccountControl")
                .first()
                .and_then(|v| v.parse::<u32>().ok())
            {
                attrs.insert(
                    "accountDisabled".into(),
                    Value::Bool(uac & ad::UF_ACCOUNTDISABLE != 0),
                );
            }
        }
        Some(SourceObject {
            anchor,
            name: Some(dn.canonical()),
            object_type: object_type.to_string(),
            attributes: attrs,
            deleted: false,
        })
    }

    /// One attribute as JSON: DNs canonical, GUIDs and SIDs readable, other binary values
    /// base64, multi-valued attributes as arrays sorted (their order means nothing).
    fn value(&self, e: &SearchEntry, attr: &str) -> Option<Value> {
        use base64::Engine;
        let mut values: Vec<String> = if ad::is_in(ad::GUID_ATTRIBUTES, attr) {
            raw_values(e, attr)
                .iter()
                .filter_map(|b| ad::guid_string(b))
                .collect()
        } else if ad::is_in(ad::SID_ATTRIBUTES, attr) {
            raw_values(e, attr)
                .iter()
                .filter_map(|b| ad::sid_string(b))
                .collect()
        } else {
            let mut v = text_values(e, attr);
            // Range parts collected by `complete_ranges` are stored under the plain name.
            for (k, vs) in &e.bin_attrs {
                if k.eq_ignore_ascii_case(attr) {
                    v.extend(
                        vs.iter()
                            .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
                    );
                }
            }
            v
        };
        if values.is_empty() {
            return None;
        }
        let is_dn = ad::is_in(ad::DN_ATTRIBUTES, attr);
        if is_dn {
            for v in values.iter_mut() {
                *v = dn::canonical(v);
            }
        }
        if values.len() == 1 && !self.config.is_multi(attr) {
            return Some(Value::String(values.pop().unwrap()));
        }
        if is_dn {
            values.sort_by_cached_key(|v| v.to_lowercase());
        } else {
            values.sort();
        }
        Some(Value::Array(
            values.into_iter().map(Value::String).collect(),
        ))
    }

    /// AD returns large multi-valued attributes in ranges (`member;range=0-1499`): reads the
    /// rest of each with base searches and stores the whole set under the plain name
    /// (nothing to do for an entry without range parts).
    async fn complete_ranges(&mut self, e: &mut SearchEntry) -> Result<(), ConnectorError> {
        let ranged: Vec<String> = e
            .attrs
            .keys()
            .filter(|k| ad::parse_range(k).is_some())
            .cloned()
            .collect();
        for key in ranged {
            let mut values = e.attrs.remove(&key).unwrap_or_default();
            let mut part = ad::parse_range(&key).expect("range");
            let attr = part.attr.clone();
            while let Some(next) = ad::next_range(&part, self.config.range_step) {
                let what = format!("reading {next} of {}", e.dn);
                let Some(entry) = self.must_read_entry(&e.dn, &[next.as_str()], &what).await?
                else {
                    break;
                };
                let Some((k, vs)) = entry
                    .attrs
                    .into_iter()
                    .find(|(k, _)| ad::parse_range(k).is_some())
                else {
                    break;
                };
                values.extend(vs);
                part = ad::parse_range(&k).expect("range");
            }
            e.attrs.entry(attr).or_default().extend(values);
        }
        Ok(())
    }

    /// A paged search, page by page: the request for the next page goes out before the
    /// current page is staged, so the DC works while the engine writes.
    async fn paged(
        &mut self,
        base: &Dn,
        filter: &str,
        controls: Vec<RawControl>,
        attrs: &[String],
        mut each: impl FnMut(&mut Self, Vec<SearchEntry>) -> Result<(), ConnectorError>,
    ) -> Result<(), ConnectorError> {
        let mut cookie: Vec<u8> = Vec::new();
        let mut pending: Option<Vec<SearchEntry>> = None;
        let base_text = base.canonical();
        loop {
            let mut ldap = self.ldap().await?;
            let mut ctrls = controls.clone();
            ctrls.push(
                PagedResults {
                    size: self.config.page_size,
                    cookie: std::mem::take(&mut cookie),
                }
                .into(),
            );
            let mut stream = ldap
                .with_controls(ctrls)
                .streaming_search(&base_text, Scope::Subtree, filter, attrs.to_vec())
                .await
                .map_err(|e| ldap_error(&format!("searching {base_text}"), e))?;
            if let Some(page) = pending.take() {
                // Let the connection task send the request, then stage the previous page.
                tokio::task::yield_now().await;
                each(self, page)?;
            }
            let mut page = Vec::new();
            while let Some(entry) = stream
                .next()
                .await
                .map_err(|e| ldap_error(&format!("searching {base_text}"), e))?
            {
                if entry.is_ref() || entry.is_intermediate() {
                    continue; // referrals to other partitions are not ours
                }
                let mut e = SearchEntry::construct(entry);
                self.complete_ranges(&mut e).await?;
                page.push(e);
            }
            let res = stream.finish().await;
            if res.rc != 0 && res.rc != 10 {
                return Err(ConnectorError::connection(format!(
                    "searching {base_text}: {}",
                    describe(&res)
                )));
            }
            pending = Some(page);
            for c in &res.ctrls {
                if let Control(Some(ControlType::PagedResults), raw) = c {
                    let pr: PagedResults = raw.parse();
                    cookie = pr.cookie;
                }
            }
            if cookie.is_empty() {
                break;
            }
        }
        if let Some(page) = pending {
            each(self, page)?;
        }
        Ok(())
    }

    /// Reads what is in scope (`from_usn`: only what changed since), ending with the
    /// watermark `position`, which the caller read before any search. `forced_because`:
    /// why a delta became this full import.
    async fn import(
        &mut self,
        position: DcPosition,
        from_usn: Option<u64>,
        forced_because: Option<String>,
        sink: &mut dyn ImportSink,
    ) -> Result<ImportEnd, ConnectorError> {
        let attrs = self.config.requested();
        let roots = match from_usn {
            // Deltas search the whole domain so objects moved out of scope are seen leaving.
            Some(_) => vec![self.domain_root()],
            None => self.config.roots(),
        };
        let filter = self.config.filter(false, from_usn);
        // Overlapping include_ous would return an object twice.
        let mut seen: Option<HashSet<String>> = (roots.len() > 1).then(HashSet::new);
        for root in roots {
            self.paged(&root, &filter, vec![], &attrs, |me, page| {
                let mut batch = Vec::with_capacity(page.len());
                for e in &page {
                    let Some(mut obj) = me.object(e) else {
                        continue;
                    };
                    if let Some(s) = seen.as_mut() {
                        if !s.insert(obj.anchor.clone()) {
                            continue;
                        }
                    }
                    let in_scope = Dn::parse(&e.dn)
                        .map(|d| me.config.in_scope(&d))
                        .unwrap_or(false);
                    if !in_scope {
                        if from_usn.is_none() {
                            continue;
                        }
                        // Moved out of scope: gone for this connector.
                        obj.deleted = true;
                        obj.attributes = Map::new();
                    }
                    batch.push(obj);
                }
                if batch.is_empty() {
                    Ok(())
                } else {
                    sink.accept(batch)
                }
            })
            .await?;
        }
        if let Some(usn) = from_usn {
            // Tombstones: objects deleted since the watermark.
            let show_deleted = RawControl {
                ctype: SHOW_DELETED_OID.to_string(),
                crit: true,
                val: None,
            };
            let filter = self.config.filter(true, Some(usn));
            let base = self.domain_root();
            let tomb_attrs = vec![
                "objectGUID".to_string(),
                "objectClass".to_string(),
                "lastKnownParent".to_string(),
            ];
            self.paged(
                &base,
                &filter,
                vec![show_deleted],
                &tomb_attrs,
                |me, page| {
                    let batch: Vec<SourceObject> = page
                        .iter()
                        .filter_map(|e| {
                            let anchor = ad::guid_string(raw_values(e, "objectGUID").first()?)?;
                            let object_type = ad::type_of(&text_values(e, "objectClass"))?;
                            if !me.config.object_types.iter().any(|t| t == object_type) {
                                return None;
                            }
                            Some(SourceObject {
                                anchor,
                                name: Some(dn::canonical(&e.dn)),
                                object_type: object_type.to_string(),
                                attributes: Map::new(),
                                deleted: true,
                            })
                        })
                        .collect();
                    if batch.is_empty() {
                        Ok(())
                    } else {
                        sink.accept(batch)
                    }
                },
            )
            .await?;
        }
        Ok(ImportEnd {
            watermark: Some(Watermark(position.to_json())),
            forced_full: forced_because.is_some(),
            note: forced_because,
        })
    }

    fn domain_root(&self) -> Dn {
        self.naming_context
            .clone()
            .unwrap_or_else(|| self.config.base_dn.clone())
    }

    /// Reads one object back by its DN, as an import would see it.
    async fn read_back(&mut self, dn: &str) -> Result<Option<SourceObject>, ConnectorError> {
        let attrs: Vec<String> = self
            .config
            .requested()
            .into_iter()
            .map(|a| a.split(';').next().unwrap_or_default().to_string())
            .collect();
        let (res, entry) = self
            .read_entry(dn, attrs, &format!("reading back {dn}"))
            .await?;
        let Some(mut e) = entry.filter(|_| res.rc == 0) else {
            return Ok(None);
        };
        self.complete_ranges(&mut e).await?;
        Ok(self.object(&e))
    }

    /// Creates the OUs of `parent` that do not exist yet, top down (only with create_ous).
    async fn ensure_ous(&mut self, parent: &Dn) -> Result<Step, ConnectorError> {
        let base_len = self.config.base_dn.0.len();
        for depth in (0..parent.0.len().saturating_sub(base_len)).rev() {
            let ou = Dn(parent.0[depth..].to_vec());
            let Some(rdn) = ou.rdn() else { continue };
            if !rdn.iter().all(|a| a.attr == "OU") {
                continue;
            }
            let mut ldap = self.ldap().await?;
            let attrs = vec![
                (
                    "objectClass".to_string(),
                    HashSet::from(["top".to_string(), "organizationalUnit".to_string()]),
                ),
                ("ou".to_string(), HashSet::from([rdn[0].value.clone()])),
            ];
            match ldap.add(&ou.canonical(), attrs).await {
                Ok(r) if r.rc == 0 || r.rc == 68 => {}
                other => {
                    let s = step(other, &format!("creating OU {ou}"))?;
                    if s.is_err() {
                        return Ok(s);
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    fn missing_parent(&self, parent: &Dn) -> (String, String) {
        (
            "32".into(),
            format!(
                "the container {parent} does not exist (LDAP 32 noSuchObject); create it, or set \"create_ous\": true on the connector"
            ),
        )
    }

    /// The DN an object should have now, from the template and its values (changes over current).
    fn wanted_dn(&self, change: &ExportChange) -> Option<Result<Dn, String>> {
        let template = self.config.dn_template.get(&change.object_type)?;
        let value_of = |name: &str| -> Option<String> {
            let v = change
                .attributes
                .iter()
                .chain(change.current.iter())
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)?;
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                Value::Array(a) => a.first().and_then(|x| x.as_str()).map(str::to_string),
                other => Some(other.to_string()),
            }
        };
        Some(dn::expand_template(template, value_of).map_err(|e| e.0))
    }

    /// Attribute values as LDAP strings (empty: the attribute is cleared); DN values as they
    /// are after this run's moves and deletes (`dn::Placements`).
    fn ldap_values(&self, attr: &str, v: &Value) -> Vec<String> {
        let one = |x: &Value| match x {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            Value::Bool(b) => Some(if *b { "TRUE" } else { "FALSE" }.to_string()),
            other => Some(other.to_string()),
        };
        let mut vals: Vec<String> = match v {
            Value::Array(a) => a.iter().filter_map(one).collect(),
            other => one(other).into_iter().collect(),
        };
        vals.retain(|s| !s.is_empty());
        if ad::is_in(ad::DN_ATTRIBUTES, attr) {
            vals = self.placements.rewrite(vals);
        }
        vals
    }

    async fn add(&mut self, change: &ExportChange) -> Result<Step, ConnectorError> {
        let dn = match self.wanted_dn(change) {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Ok(Err(("".into(), e))),
            None => {
                return Ok(Err((
                    "".into(),
                    format!(
                    "no dn_template for {} in the connector's config: cannot place a new object",
                    change.object_type
                ),
                )))
            }
        };
        let Some(classes) = ad::object_classes(&change.object_type) else {
            return Ok(Err((
                "".into(),
                format!("cannot create objects of type {}", change.object_type),
            )));
        };
        let rdn_attrs: Vec<String> = dn
            .rdn()
            .map(|r| r.iter().map(|a| a.attr.to_lowercase()).collect())
            .unwrap_or_default();
        let mut attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = vec![(
            b"objectClass".to_vec(),
            classes.iter().map(|c| c.as_bytes().to_vec()).collect(),
        )];
        let mut disabled = false;
        for (k, v) in &change.attributes {
            if k == "accountDisabled" {
                disabled = v.as_bool().unwrap_or(false) || v.as_str() == Some("true");
                continue;
            }
            if k.eq_ignore_ascii_case("userAccountControl") || k.eq_ignore_ascii_case("unicodePwd")
            {
                continue;
            }
            if rdn_attrs.contains(&k.to_lowercase()) {
                continue; // the RDN's value comes from the DN
            }
            let vals = self.ldap_values(k, v);
            if !vals.is_empty() {
                attrs.push((
                    k.as_bytes().to_vec(),
                    vals.into_iter().map(String::into_bytes).collect(),
                ));
            }
        }
        if change.object_type == "person" {
            let enable = !disabled && self.config.random_initial_password;
            if enable {
                if !self.config.tls() {
                    return Ok(Err((
                        "13".into(),
                        "refusing to send an initial password over an unencrypted connection: use ldaps:// or starttls".into(),
                    )));
                }
                let mut rng = rand_index();
                let pw = ad::random_password(&mut rng);
                attrs.push((
                    b"unicodePwd".to_vec(),
                    HashSet::from([ad::unicode_pwd(&pw)]),
                ));
                if self.config.must_change_password {
                    attrs.push((b"pwdLastSet".to_vec(), HashSet::from([b"0".to_vec()])));
                }
            }
            let uac = if enable {
                ad::UF_NORMAL_ACCOUNT
            } else {
                ad::UF_NORMAL_ACCOUNT | ad::UF_ACCOUNTDISABLE
            };
            attrs.push((
                b"userAccountControl".to_vec(),
                HashSet::from([uac.to_string().into_bytes()]),
            ));
        }
        let dn_text = dn.canonical();
        for attempt in 0..2 {
            let mut ldap = self.ldap().await?;
            let r = ldap.add(&dn_text, attrs.clone()).await;
            match r {
                Ok(res) if res.rc == 32 && attempt == 0 => {
                    if !self.config.create_ous {
                        return Ok(Err(self.missing_parent(&dn.parent())));
                    }
                    let made = self.ensure_ous(&dn.parent()).await?;
                    if made.is_err() {
                        return Ok(made);
                    }
                }
                other => return step(other, &format!("adding {dn_text}")),
            }
        }
        Ok(Ok(()))
    }

    /// Renames and moves (modrdn with deleteOldRdn and newSuperior) when the template gives
    /// another DN. Returns the DN the object has afterwards.
    async fn place(
        &mut self,
        current: &Dn,
        wanted: &Dn,
    ) -> Result<Result<Dn, (String, String)>, ConnectorError> {
        if current.key() == wanted.key() {
            return Ok(Ok(current.clone()));
        }
        let rdn = dn::rdn_string(wanted.rdn().expect("rdn"));
        let parent = wanted.parent();
        let new_sup = (parent.key() != current.parent().key()).then(|| parent.canonical());
        for attempt in 0..2 {
            let mut ldap = self.ldap().await?;
            let r = ldap
                .modifydn(&current.canonical(), &rdn, true, new_sup.as_deref())
                .await;
            match r {
                Ok(res) if res.rc == 32 && attempt == 0 && new_sup.is_some() => {
                    if !self.config.create_ous {
                        return Ok(Err(self.missing_parent(&parent)));
                    }
                    if let Err(e) = self.ensure_ous(&parent).await? {
                        return Ok(Err(e));
                    }
                }
                other => {
                    let placed = step(other, &format!("moving {current} to {wanted}"))?;
                    if placed.is_ok() {
                        self.placements.moved(current, wanted);
                    }
                    return Ok(placed.map(|_| wanted.clone()));
                }
            }
        }
        Ok(Ok(wanted.clone()))
    }

    async fn update(
        &mut self,
        change: &ExportChange,
    ) -> Result<Result<Dn, (String, String)>, ConnectorError> {
        let Some(name) = &change.name else {
            return Ok(Err((
                "".into(),
                "the object's DN is not known; run an import first".into(),
            )));
        };
        let mut current = match Dn::parse(name) {
            Ok(d) => d,
            Err(e) => return Ok(Err(("34".into(), e.0))),
        };
        // Disabling may move the object to the disabled OU; otherwise the template places it.
        let wanted = if change.operation == ExportOperation::Disable {
            self.config
                .disabled_ou
                .as_ref()
                .map(|ou| Ok(Dn::child_of(current.rdn().expect("rdn"), ou)))
        } else {
            self.wanted_dn(change)
        };
        if let Some(w) = wanted {
            let w = match w {
                Ok(w) => w,
                Err(e) => return Ok(Err(("".into(), e))),
            };
            match self.place(&current, &w).await? {
                Ok(d) => current = d,
                Err(e) => return Ok(Err(e)),
            }
        }
        let rdn_attrs: Vec<String> = current
            .rdn()
            .map(|r| r.iter().map(|a| a.attr.to_lowercase()).collect())
            .unwrap_or_default();
        let mut mods: Vec<Mod<Vec<u8>>> = Vec::new();
        for (k, v) in &change.attributes {
            if k == "accountDisabled" {
                let disable = v.as_bool().unwrap_or(false) || v.as_str() == Some("true");
                match self.set_disabled(&current, disable).await? {
                    Ok(Some(m)) => mods.push(m),
                    Ok(None) => {}
                    Err(e) => return Ok(Err(e)),
                }
                continue;
            }
            if rdn_attrs.contains(&k.to_lowercase()) || k.eq_ignore_ascii_case("unicodePwd") {
                continue; // renames happen through the template; passwords only on add
            }
            let new = self.ldap_values(k, v);
            if self.config.is_multi(k) {
                // Value by value, so a large group is not rewritten for one member.
                let old = change
                    .current
                    .get(k)
                    .map(|o| self.ldap_values(k, o))
                    .unwrap_or_default();
                // DN values come from `ldap_values` in canonical spelling already.
                let key = |s: &String| {
                    if ad::is_in(ad::DN_ATTRIBUTES, k) {
                        s.to_lowercase()
                    } else {
                        s.clone()
                    }
                };
                let old_keys: HashSet<String> = old.iter().map(key).collect();
                let new_keys: HashSet<String> = new.iter().map(key).collect();
                let add: HashSet<Vec<u8>> = new
                    .iter()
                    .filter(|s| !old_keys.contains(&key(s)))
                    .map(|s| s.clone().into_bytes())
                    .collect();
                let del: HashSet<Vec<u8>> = old
                    .iter()
                    .filter(|s| !new_keys.contains(&key(s)))
                    .map(|s| s.clone().into_bytes())
                    .collect();
                if !del.is_empty() {
                    mods.push(Mod::Delete(k.as_bytes().to_vec(), del));
                }
                if !add.is_empty() {
                    mods.push(Mod::Add(k.as_bytes().to_vec(), add));
                }
            } else {
                mods.push(Mod::Replace(
                    k.as_bytes().to_vec(),
                    new.into_iter().map(String::into_bytes).collect(),
                ));
            }
        }
        if !mods.is_empty() {
            let mut ldap = self.ldap().await?;
            let r = ldap.modify(&current.canonical(), mods).await;
            if let Err(e) = step(r, &format!("modifying {current}"))? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(current))
    }

    /// userAccountControl with the disabled bit set or cleared, from the value the DC has
    /// now (read-modify-write: other bits stay as they are). None: already so.
    async fn set_disabled(
        &mut self,
        dn: &Dn,
        disable: bool,
    ) -> Result<Result<Option<Mod<Vec<u8>>>, (String, String)>, ConnectorError> {
        let what = format!("reading userAccountControl of {dn}");
        let (res, entry) = self
            .read_entry(&dn.canonical(), vec!["userAccountControl".into()], &what)
            .await?;
        if res.rc != 0 {
            return Ok(Err((
                res.rc.to_string(),
                format!("reading userAccountControl of {dn}: {}", describe(&res)),
            )));
        }
        let uac = entry
            .and_then(|e| {
                text_values(&e, "userAccountControl")
                    .first()
                    .and_then(|v| v.parse::<u32>().ok())
            })
            .unwrap_or(ad::UF_NORMAL_ACCOUNT);
        let new = ad::with_disabled(uac, disable);
        if new == uac {
            return Ok(Ok(None));
        }
        Ok(Ok(Some(Mod::Replace(
            b"userAccountControl".to_vec(),
            HashSet::from([new.to_string().into_bytes()]),
        ))))
    }

    async fn delete(&mut self, change: &ExportChange) -> Result<Step, ConnectorError> {
        let Some(name) = &change.name else {
            return Ok(Ok(()));
        };
        let mut ldap = self.ldap().await?;
        let done = match ldap.delete(name).await {
            Ok(r) if r.rc == 32 => Ok(()), // already gone
            other => step(other, &format!("deleting {name}"))?,
        };
        if done.is_ok() {
            self.placements.deleted(name);
        }
        Ok(done)
    }

    async fn apply(&mut self, change: &ExportChange) -> Result<ExportResult, ConnectorError> {
        let failed = |(code, msg): (String, String)| {
            if code.is_empty() {
                ExportResult::failed(change.mesh_id, msg)
            } else {
                ExportResult::failed_with_code(change.mesh_id, code, msg)
            }
        };
        let dn = match change.operation {
            ExportOperation::Add => match self.add(change).await? {
                Ok(()) => match self.wanted_dn(change) {
                    Some(Ok(d)) => d,
                    _ => return Ok(ExportResult::ok(change.mesh_id, None)),
                },
                Err(e) => return Ok(failed(e)),
            },
            ExportOperation::Update | ExportOperation::Disable => {
                match self.update(change).await? {
                    Ok(d) => d,
                    Err(e) => return Ok(failed(e)),
                }
            }
            ExportOperation::Delete => {
                return Ok(match self.delete(change).await? {
                    Ok(()) => ExportResult::ok(change.mesh_id, None),
                    Err(e) => failed(e),
                })
            }
        };
        let back = self.read_back(&dn.canonical()).await?;
        Ok(ExportResult::ok(change.mesh_id, back))
    }

    /// The schema partition's classes and attributes for the connector's object types.
    async fn schema(&mut self) -> Result<Schema, ConnectorError> {
        let schema_nc = self
            .must_read_entry("", &["schemaNamingContext"], "reading the rootDSE")
            .await?
            .and_then(|e| text_values(&e, "schemaNamingContext").into_iter().next())
            .and_then(|s| Dn::parse(&s).ok())
            .ok_or_else(|| ConnectorError::data("the rootDSE names no schemaNamingContext"))?;
        let mut classes: HashMap<String, ad::ClassDef> = HashMap::new();
        let class_attrs: Vec<String> = [
            "lDAPDisplayName",
            "subClassOf",
            "auxiliaryClass",
            "systemAuxiliaryClass",
            "mustContain",
            "mayContain",
            "systemMustContain",
            "systemMayContain",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.paged(
            &schema_nc,
            "(objectClass=classSchema)",
            vec![],
            &class_attrs,
            |_, page| {
                for e in page {
                    let Some(name) = text_values(&e, "lDAPDisplayName").into_iter().next() else {
                        continue;
                    };
                    let many = |names: &[&str]| {
                        names
                            .iter()
                            .flat_map(|n| text_values(&e, n))
                            .collect::<Vec<_>>()
                    };
                    classes.insert(
                        name,
                        ad::ClassDef {
                            sub_class_of: text_values(&e, "subClassOf").into_iter().next(),
                            auxiliary: many(&["auxiliaryClass", "systemAuxiliaryClass"]),
                            attributes: many(&[
                                "mustContain",
                                "mayContain",
                                "systemMustContain",
                                "systemMayContain",
                            ]),
                        },
                    );
                }
                Ok(())
            },
        )
        .await?;
        let mut syntax: HashMap<String, (String, bool)> = HashMap::new();
        let attr_attrs: Vec<String> = ["lDAPDisplayName", "attributeSyntax", "isSingleValued"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        self.paged(
            &schema_nc,
            "(objectClass=attributeSchema)",
            vec![],
            &attr_attrs,
            |_, page| {
                for e in page {
                    let first = |n: &str| text_values(&e, n).into_iter().next().unwrap_or_default();
                    let name = first("lDAPDisplayName");
                    if !name.is_empty() {
                        syntax.insert(
                            name.to_lowercase(),
                            (first("attributeSyntax"), first("isSingleValued") == "TRUE"),
                        );
                    }
                }
                Ok(())
            },
        )
        .await?;
        let mut out = Vec::new();
        for t in &self.config.object_types {
            let Some(class) = ad::class_of(t) else {
                continue;
            };
            let mut attributes: Vec<SchemaAttribute> = ad::class_attributes(&classes, class)
                .into_iter()
                .map(|name| {
                    let (oid, single) = syntax
                        .get(&name.to_lowercase())
                        .cloned()
                        .unwrap_or_default();
                    SchemaAttribute {
                        syntax: ad::syntax_name(&oid).to_string(),
                        multi_valued: !single,
                        reference: oid == "2.5.5.1",
                        name,
                    }
                })
                .collect();
            if t == "person" {
                // The connector's own view of userAccountControl's disabled bit.
                attributes.push(SchemaAttribute {
                    name: "accountDisabled".into(),
                    syntax: "Boolean".into(),
                    multi_valued: false,
                    reference: false,
                });
            }
            out.push(SchemaClass {
                object_type: t.clone(),
                source_class: class.to_string(),
                attributes,
            });
        }
        Ok(Schema { classes: out })
    }

    /// Reachability, login and a one-entry search, for `mesh.test_connection`.
    pub async fn check(&mut self) -> Vec<(String, bool, String)> {
        let mut out = Vec::new();
        match self.ldap().await {
            Ok(_) => out.push((
                "connect".to_string(),
                true,
                format!(
                    "bound to {} ({})",
                    self.config.url,
                    if self.config.tls() {
                        "TLS"
                    } else {
                        "not encrypted"
                    }
                ),
            )),
            Err(e) => {
                out.push(("connect".to_string(), false, e.message));
                return out;
            }
        }
        match self.position().await {
            Ok(p) => out.push((
                "rootDSE".to_string(),
                true,
                format!(
                    "DC {} invocationId {} highestCommittedUSN {}",
                    p.host, p.invocation_id, p.usn
                ),
            )),
            Err(e) => out.push(("rootDSE".to_string(), false, e.message)),
        }
        let base = self.config.base_dn.canonical();
        let filter = self.config.filter(false, None);
        let mut ldap = match self.ldap().await {
            Ok(l) => l,
            Err(e) => {
                out.push(("search".to_string(), false, e.message));
                return out;
            }
        };
        let r = ldap
            .with_search_options(ldap3::SearchOptions::new().sizelimit(1))
            .search(&base, Scope::Subtree, &filter, vec!["objectGUID"])
            .await;
        match r {
            Ok(res) if res.1.rc == 0 || res.1.rc == 4 => out.push((
                "search".to_string(),
                true,
                format!("{base} can be searched"),
            )),
            Ok(res) => out.push(("search".to_string(), false, describe(&res.1))),
            Err(e) => out.push(("search".to_string(), false, e.to_string())),
        }
        out
    }
}

/// A uniform index below `n` from the operating system's random source.
fn rand_index() -> impl FnMut(usize) -> usize {
    use aes_gcm::aead::rand_core::RngCore;
    |n| (aes_gcm::aead::OsRng.next_u64() % n as u64) as usize
}

impl IdentityConnector for AdConnector {
    fn kind(&self) -> &str {
        KIND
    }

    fn full_import<'a>(
        &'a mut self,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
        Box::pin(async move {
            let position = self.position().await?;
            self.import(position, None, None, sink).await
        })
    }

    fn delta_import<'a>(
        &'a mut self,
        from: &'a Watermark,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
        Box::pin(async move {
            let now = self.position().await?;
            match ad::delta_start(&from.0, &now) {
                DeltaStart::From(usn) => self.import(now, Some(usn), None, sink).await,
                // A full import in place of the delta: forced, and the run says why.
                DeltaStart::Full(reason) => self.import(now, None, Some(reason), sink).await,
            }
        })
    }

    fn discover_schema<'a>(&'a mut self) -> BoxFuture<'a, Result<Schema, ConnectorError>> {
        Box::pin(self.schema())
    }

    fn export<'a>(
        &'a mut self,
        changes: &'a [ExportChange],
    ) -> BoxFuture<'a, Result<Vec<ExportResult>, ConnectorError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(changes.len());
            for c in changes {
                out.push(self.apply(c).await?);
            }
            Ok(out)
        })
    }
}

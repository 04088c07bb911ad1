//! The active_directory connector against a real Samba AD domain controller started by
//! `scripts/samba.sh start` (the Makefile starts it). Test data lives under
//! OU=IdmeshTest,DC=corp,DC=local; each test resets its own OU. The directory is changed and
//! checked with the OpenLDAP command-line tools, as an administrator would.

use base64::Engine;
use idmesh_integration_tests::*;
use postgres::Client;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

fn env(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}
fn admin_dn() -> String {
    env(
        "IDMESH_AD_ADMIN_DN",
        "CN=Administrator,CN=Users,DC=corp,DC=local",
    )
}
fn admin_pw() -> String {
    env("IDMESH_AD_ADMIN_PASSWORD", "Idmesh-Admin-1!")
}
fn svc_dn() -> String {
    env(
        "IDMESH_AD_SVC_DN",
        "CN=svc-idmesh,CN=Users,DC=corp,DC=local",
    )
}
fn svc_pw() -> String {
    env("IDMESH_AD_SVC_PASSWORD", "Idmesh-Svc-1!")
}
fn samba_dir() -> String {
    env("IDMESH_SAMBA_DIR", "/var/tmp/idmesh-samba")
}
fn ca() -> String {
    env("IDMESH_AD_CA", &format!("{}/ca.pem", samba_dir()))
}
const TOP: &str = "OU=IdmeshTest,DC=corp,DC=local";

/// Runs an OpenLDAP tool as the domain administrator with `input` as LDIF.
fn ldap_tool(tool: &str, args: &[&str], input: &str) -> (bool, String) {
    let (dn, pw) = (admin_dn(), admin_pw());
    let mut cmd = Command::new(tool);
    cmd.args(["-x", "-H", "ldap://127.0.0.1", "-D", &dn, "-w", &pw])
        .args(args);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e} (install ldap-utils: scripts/samba.sh install)"));
    // Written from another thread: the tool's output could fill its pipe meanwhile.
    let mut stdin = child.stdin.take().unwrap();
    let input_owned = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input_owned.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn ldif(tool: &str, input: &str) {
    let (ok, text) = ldap_tool(tool, &[], input);
    assert!(
        ok,
        "{tool} failed: {text}\n--- input:\n{}",
        &input[..input.len().min(2000)]
    );
}

/// Entries of a paged ldapsearch: (dn, attribute, value) lines, values decoded.
fn ldapsearch(base: &str, filter: &str, attrs: &[&str]) -> Vec<(String, Vec<(String, String)>)> {
    let mut args = vec![
        "-LLL",
        "-o",
        "ldif-wrap=no",
        "-E",
        "pr=1000/noprompt",
        "-b",
        base,
        filter,
    ];
    args.extend_from_slice(attrs);
    let (ok, text) = ldap_tool("ldapsearch", &args, "");
    assert!(
        ok || text.contains("No such object"),
        "ldapsearch failed: {text}"
    );
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = if let Some(b) = v.strip_prefix(": ") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .unwrap_or_default();
            (
                k,
                String::from_utf8(bytes.clone())
                    .unwrap_or_else(|_| bytes.iter().map(|b| format!("{b:02x}")).collect()),
            )
        } else {
            (k, v.trim_start().to_string())
        };
        if k == "dn" {
            out.push((v, Vec::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push((k.to_string(), v));
        }
    }
    out
}

fn exists(dn: &str) -> bool {
    let (ok, _) = ldap_tool(
        "ldapsearch",
        &["-LLL", "-s", "base", "-b", dn, "(objectClass=*)", "1.1"],
        "",
    );
    ok
}

/// Removes `dn` and everything below it, then creates it (and the top OU) again.
fn reset_ou(dn: &str) {
    if !exists(TOP) {
        ldif(
            "ldapadd",
            &format!("dn: {TOP}\nobjectClass: organizationalUnit\n"),
        );
    }
    if exists(dn) {
        let (ok, text) = ldap_tool("ldapdelete", &["-r", dn], "");
        assert!(ok, "ldapdelete -r {dn}: {text}");
    }
    ldif(
        "ldapadd",
        &format!("dn: {dn}\nobjectClass: organizationalUnit\n"),
    );
}

fn add_ou(dn: &str) {
    ldif(
        "ldapadd",
        &format!("dn: {dn}\nobjectClass: organizationalUnit\n"),
    );
}

fn user_ldif(cn: &str, parent: &str, extra: &str) -> String {
    let sam: String = cn
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(20)
        .collect();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("{}\n", extra.trim_end())
    };
    format!(
        "dn: CN={},{parent}\nobjectClass: user\nsAMAccountName: {sam}\ngivenName: {cn}\nsn: Test\ndisplayName: {cn}\n{extra}\n",
        idmesh_dn_escape(cn)
    )
}

fn idmesh_dn_escape(v: &str) -> String {
    v.chars()
        .flat_map(|c| match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

fn ad_config(base: &str, extra: Value) -> Value {
    let mut cfg = json!({
        "url": "ldaps://127.0.0.1", "ca_file": ca(),
        "bind_dn": svc_dn(), "base_dn": base,
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    cfg
}

fn create_ad(c: &mut Client, name: &str, config: Value) {
    c.execute(
        "SELECT mesh.create_connector($1, 'active_directory', $2, secret => $3)",
        &[&name, &config, &svc_pw()],
    )
    .unwrap();
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn objects(c: &mut Client, connector: &str) -> Vec<Value> {
    let v: Value = c
        .query_one(
            "SELECT coalesce(jsonb_agg(jsonb_build_object('anchor', o.anchor, 'name', o.name, 'type', o.object_type, \
                 'attrs', o.attrs, 'deleted', o.deleted, 'mesh_id', o.mesh_id) ORDER BY o.name), '[]') \
             FROM mesh.connector_object o JOIN mesh.connector k ON k.id = o.connector_id WHERE k.name = $1",
            &[&connector],
        )
        .unwrap()
        .get(0);
    v.as_array().unwrap().clone()
}

fn guid_of(dn: &str) -> String {
    let e = ldapsearch(dn, "(objectClass=*)", &["objectGUID"]);
    let hex = &e[0]
        .1
        .iter()
        .find(|(k, _)| k == "objectGUID")
        .expect("objectGUID")
        .1;
    let b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

// 1. Full import of a few hundred users and groups, one group over 1,500 members read by ranges.
#[test]
fn full_import_matches_ldapsearch_and_reads_big_groups_by_ranges() {
    let ou = format!("OU=Import,{TOP}");
    let people = format!("OU=People,{ou}");
    let groups = format!("OU=Groups,{ou}");
    const USERS: usize = 1600;
    // The data is expensive to write (Samba adds about 130 objects/s): reuse it when complete.
    let have = ldapsearch(&people, "(objectClass=user)", &["1.1"]).len();
    if have != USERS + 1 || ldapsearch(&groups, "(objectClass=group)", &["1.1"]).len() != 4 {
        reset_ou(&ou);
        add_ou(&people);
        add_ou(&groups);
        let mut l = String::new();
        l.push_str(&user_ldif("Semi;Colon", &people, "title: Escapes"));
        for i in 1..=USERS {
            let mgr = if i > 1 {
                format!("manager: CN=User {:04},{people}\n", (i - 1) / 10 + 1)
            } else {
                String::new()
            };
            l.push_str(&user_ldif(
                &format!("User {i:04}"),
                &people,
                &format!(
                    "title: Engineer {}\ntelephoneNumber: +1 555 {i:04}\n{mgr}employeeID: {i}",
                    i % 7
                ),
            ));
        }
        ldif("ldapadd", &l);
        let mut g = String::new();
        for name in ["Small", "Medium", "Empty"] {
            g.push_str(&format!(
                "dn: CN={name},{groups}\nobjectClass: group\nsAMAccountName: it-{name}\n\n"
            ));
        }
        g.push_str(&format!(
            "dn: CN=Big,{groups}\nobjectClass: group\nsAMAccountName: it-Big\n"
        ));
        for i in 1..=USERS {
            g.push_str(&format!("member: CN=User {i:04},{people}\n"));
        }
        g.push('\n');
        ldif("ldapadd", &g);
        ldif(
            "ldapmodify",
            &format!(
                "dn: CN=Small,{groups}\nchangetype: modify\nadd: member\nmember: CN=User 0001,{people}\nmember: CN=Semi\\3BColon,{people}\n\n\
                 dn: CN=Medium,{groups}\nchangetype: modify\nadd: member\n{}\n\
                 dn: CN=User 0002,{people}\nchangetype: modify\nreplace: manager\nmanager: CN=Semi\\;Colon,{people}\n",
                (1..=40).map(|i| format!("member: CN=User {i:04},{people}\n")).collect::<String>()
            ),
        );
    }
    let want_users = ldapsearch(
        &ou,
        "(&(objectCategory=person)(objectClass=user))",
        &["1.1"],
    )
    .len();
    let want_groups = ldapsearch(&ou, "(objectClass=group)", &["1.1"]).len();
    assert_eq!((want_users, want_groups), (USERS + 1, 4));

    let mut c = fresh_database_with_own_key("idmesh_it_ad_import");
    // Ranges of 500 values asked for explicitly (Samba, unlike Windows, never cuts them).
    create_ad(
        &mut c,
        "AD",
        ad_config(&ou, json!({"range_step": 500, "page_size": 200})),
    );
    let checks: Vec<(String, bool)> = c
        .query("SELECT step, ok FROM mesh.test_connection('AD')", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(checks.iter().all(|(_, ok)| *ok), "{checks:?}");
    let r = run(&mut c, "AD", "full_import");
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(
        r["added"].as_i64().unwrap() as usize,
        want_users + want_groups
    );
    // Pages of a directory are staged and merged as they come, even into an empty space.
    assert_eq!(r["details"].get("landed"), None, "{r}");
    let objs = objects(&mut c, "AD");
    assert_eq!(
        objs.iter().filter(|o| o["type"] == "person").count(),
        want_users
    );
    assert_eq!(
        objs.iter().filter(|o| o["type"] == "group").count(),
        want_groups
    );

    let by_name = |n: &str| {
        objs.iter()
            .find(|o| o["name"].as_str().unwrap().eq_ignore_ascii_case(n))
            .cloned()
            .unwrap_or_else(|| panic!("{n} not imported"))
    };
    let big = by_name(&format!("CN=Big,{groups}"));
    let members = big["attrs"]["member"].as_array().unwrap();
    assert_eq!(
        members.len(),
        USERS,
        "every member of Big, read in ranges of 500"
    );
    assert_eq!(
        by_name(&format!("CN=Small,{groups}"))["attrs"]["member"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(by_name(&format!("CN=Empty,{groups}"))["attrs"]
        .get("member")
        .is_none());
    // objectGUID is the anchor, in AD's own format.
    let u1 = by_name(&format!("CN=User 0001,{people}"));
    assert_eq!(u1["anchor"], guid_of(&format!("CN=User 0001,{people}")));
    assert!(u1["attrs"]["memberOf"].as_array().unwrap().len() >= 3);
    assert_eq!(u1["attrs"]["accountDisabled"], true); // created without a password
                                                      // `;` comes back from Samba as \3B: the name and the reference to it have one spelling.
    let semi = by_name(&format!("CN=Semi\\;Colon,{people}"));
    let u2 = by_name(&format!("CN=User 0002,{people}"));
    assert_eq!(u2["attrs"]["manager"], semi["name"]);

    // References resolve to mesh objects: project people and groups, then compare.
    c.batch_execute(
        "SELECT mesh.set_projection('AD', 'person', true);
         SELECT mesh.set_projection('AD', 'group', true);
         SELECT mesh.add_import_flow('AD', 'person', 'cn', 'name', 50);
         SELECT mesh.add_import_flow('AD', 'person', 'manager', 'manager', 50, reference => true);
         SELECT mesh.add_import_flow('AD', 'group', 'cn', 'name', 50);
         SELECT mesh.add_import_flow('AD', 'group', 'member', 'member', 50, reference => true);
         SELECT mesh.sync(full => true);",
    )
    .unwrap();
    let n = count(
        &mut c,
        "SELECT jsonb_array_length(attrs->'member')::bigint FROM mesh.objects WHERE object_type = 'group' AND attrs->>'name' = 'Big'",
    );
    assert_eq!(n as usize, USERS);
    let mgr: String = c
        .query_one(
            "SELECT m.attrs->>'name' FROM mesh.objects p JOIN mesh.objects m ON m.id = (p.attrs->>'manager')::bigint \
             WHERE p.attrs->>'name' = 'User 0002'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(mgr, "Semi;Colon");
    // Without explicit ranges the same members arrive (AD would cut them at 1,500 itself).
    c.execute(
        "SELECT mesh.alter_connector('AD', config => $1)",
        &[&ad_config(&ou, json!({}))],
    )
    .unwrap();
    let r = run(&mut c, "AD", "full_import");
    assert_eq!(r["added"], 0, "{r}");
    assert_eq!(r["updated"], 0, "same values however they were read: {r}");
    assert_eq!(r["deleted"], 0, "{r}");
}

// 2. Delta after modify, rename, move and delete; a tombstone removes the contributions.
#[test]
fn delta_import_sees_exactly_the_changes() {
    let ou = format!("OU=Delta,{TOP}");
    reset_ou(&ou);
    for sub in ["A", "B", "Outside"] {
        add_ou(&format!("OU={sub},{ou}"));
    }
    let a = format!("OU=A,{ou}");
    let mut l = String::new();
    for i in 1..=10 {
        l.push_str(&user_ldif(
            &format!("Delta {i:02}"),
            &a,
            &format!("title: T{i}\ndescription: Desc {i}"),
        ));
    }
    ldif("ldapadd", &l);
    let mut c = fresh_database_with_own_key("idmesh_it_ad_delta");
    create_ad(
        &mut c,
        "AD",
        ad_config(
            &ou,
            json!({"exclude_ous": [format!("OU=Outside,{ou}")], "object_types": ["person"]}),
        ),
    );
    c.batch_execute(
        "SELECT mesh.set_projection('AD', 'person', true);
         SELECT mesh.add_import_flow('AD', 'person', 'title', 'title', 50);
         -- not in the connector's default attributes: read because a flow names it
         SELECT mesh.add_import_flow('AD', 'person', 'description', 'note', 50);",
    )
    .unwrap();
    let r = run(&mut c, "AD", "full_import");
    assert_eq!(r["added"], 10, "{r}");
    c.batch_execute("SELECT mesh.sync()").unwrap();
    let notes = count(
        &mut c,
        "SELECT count(*) FROM mesh.objects WHERE attrs->>'note' LIKE 'Desc %'",
    );
    assert_eq!(notes, 10, "description read for the flow that names it");
    let gone_anchor = guid_of(&format!("CN=Delta 04,{a}"));
    let renamed_anchor = guid_of(&format!("CN=Delta 02,{a}"));
    // Nothing changed: a delta reads nothing.
    let r = run(&mut c, "AD", "delta_import");
    assert_eq!(
        (
            r["added"].as_i64(),
            r["updated"].as_i64(),
            r["deleted"].as_i64()
        ),
        (Some(0), Some(0), Some(0)),
        "{r}"
    );

    ldif(
        "ldapmodify",
        &format!(
            "dn: CN=Delta 01,{a}\nchangetype: modify\nreplace: title\ntitle: Changed\n\n\
             dn: CN=Delta 02,{a}\nchangetype: modrdn\nnewrdn: CN=Delta 02 Renamed\ndeleteoldrdn: 1\n\n\
             dn: CN=Delta 03,{a}\nchangetype: modrdn\nnewrdn: CN=Delta 03\ndeleteoldrdn: 1\nnewsuperior: OU=B,{ou}\n\n\
             dn: CN=Delta 05,{a}\nchangetype: modrdn\nnewrdn: CN=Delta 05\ndeleteoldrdn: 1\nnewsuperior: OU=Outside,{ou}\n"
        ),
    );
    let (ok, text) = ldap_tool("ldapdelete", &[&format!("CN=Delta 04,{a}")], "");
    assert!(ok, "{text}");
    let r = run(&mut c, "AD", "delta_import");
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["updated"], 2, "title of Delta 01, cn of Delta 02: {r}");
    assert_eq!(r["renamed"], 2, "Delta 02 renamed, Delta 03 moved: {r}");
    assert_eq!(
        r["deleted"], 2,
        "Delta 04 deleted, Delta 05 moved out of scope: {r}"
    );
    assert_eq!(r["added"], 0, "{r}");
    // Exactly these: nothing else counted (other changes in the domain, outside the
    // connector's scope, may be read and are ignored).
    assert_eq!(r["unchanged"], 0, "{r}");
    assert!(r["details"]["seen"].as_i64().unwrap() >= 5, "{r}");
    let objs = objects(&mut c, "AD");
    let renamed = objs
        .iter()
        .find(|o| o["anchor"] == renamed_anchor.as_str())
        .unwrap();
    assert_eq!(renamed["name"], format!("CN=Delta 02 Renamed,{a}"));
    assert_eq!(renamed["deleted"], false);
    let gone = objs
        .iter()
        .find(|o| o["anchor"] == gone_anchor.as_str())
        .unwrap();
    assert_eq!(gone["deleted"], true);
    c.batch_execute("SELECT mesh.sync()").unwrap();
    let n = count(
        &mut c,
        &format!("SELECT count(*) FROM mesh.contributions WHERE anchor = '{gone_anchor}'"),
    );
    assert_eq!(
        n, 0,
        "the tombstone removed the deleted user's contributions"
    );
    let title: String = c
        .query_one(
            "SELECT o.attrs->>'title' FROM mesh.objects o JOIN mesh.connector_object co ON co.mesh_id = o.id \
             WHERE co.name = $1",
            &[&format!("CN=Delta 01,{a}")],
        )
        .unwrap()
        .get(0);
    assert_eq!(title, "Changed");
    // And again: nothing more.
    let r = run(&mut c, "AD", "delta_import");
    for k in ["added", "updated", "renamed", "deleted", "unchanged"] {
        assert_eq!(r[k], 0, "{k}: {r}");
    }
}

// 5. A watermark from another invocation of the DC forces a full import, and says so.
#[test]
fn changed_invocation_id_forces_a_full_import() {
    let ou = format!("OU=Invocation,{TOP}");
    reset_ou(&ou);
    ldif(
        "ldapadd",
        &(1..=3)
            .map(|i| user_ldif(&format!("Inv {i}"), &ou, ""))
            .collect::<String>(),
    );
    let mut c = fresh_database_with_own_key("idmesh_it_ad_invocation");
    create_ad(
        &mut c,
        "AD",
        ad_config(&ou, json!({"object_types": ["person"]})),
    );
    let r = run(&mut c, "AD", "full_import");
    assert_eq!(r["added"], 3);
    let w: Value = c
        .query_one("SELECT value FROM mesh.watermark", &[])
        .unwrap()
        .get(0);
    assert!(
        w["usn"].as_u64().unwrap() > 0 && w["dc"].as_str().unwrap().contains("dc1"),
        "{w}"
    );
    c.batch_execute(
        "UPDATE mesh.watermark SET value = jsonb_set(value, '{invocation_id}', '\"00000000-0000-0000-0000-000000000000\"')",
    )
    .unwrap();
    // One user deleted meanwhile: only a full import notices it without a tombstone search.
    let (ok, text) = ldap_tool("ldapdelete", &[&format!("CN=Inv 3,{ou}")], "");
    assert!(ok, "{text}");
    let r = run(&mut c, "AD", "delta_import");
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["details"]["forced_full"], true, "{r}");
    assert!(
        r["message"].as_str().unwrap_or("").contains("invocationId"),
        "{r}"
    );
    assert_eq!(r["deleted"], 1, "{r}");
    let w: Value = c
        .query_one("SELECT value FROM mesh.watermark", &[])
        .unwrap()
        .get(0);
    assert_ne!(w["invocation_id"], "00000000-0000-0000-0000-000000000000");
}

// 6. No password over plain LDAP: refused at configuration, and by the connector itself.
#[test]
fn passwords_never_go_over_plain_ldap() {
    let ou = format!("OU=Plain,{TOP}");
    reset_ou(&ou);
    let mut c = fresh_database_with_own_key("idmesh_it_ad_plain");
    let plain = json!({"url": "ldap://127.0.0.1", "bind_dn": svc_dn(), "base_dn": ou, "object_types": ["person"],
                       "dn_template": {"person": format!("CN={{cn}},{ou}")}});
    let err = c
        .execute(
            "SELECT mesh.create_connector('AD', 'active_directory', $1, secret => $2)",
            &[&plain, &svc_pw()],
        )
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023", "{err}");
    assert!(!err.to_string().contains(&svc_pw()));
    // A test DC may allow a plain bind; the password for a new account is still refused.
    let mut allowed = plain.clone();
    allowed["allow_plain_bind"] = json!(true);
    create_ad(&mut c, "AD", allowed);
    c.batch_execute(
        "CREATE TABLE people (id int PRIMARY KEY, name text);
         INSERT INTO people VALUES (1, 'Plain Person');
         SELECT mesh.create_connector('HR', 'table', '{\"source\": \"people\", \"anchor\": \"id\"}');
         SELECT mesh.set_projection('HR', 'person', true);
         SELECT mesh.add_import_flow('HR', 'person', 'name', 'name', 90);
         SELECT mesh.add_export_flow('AD', 'person', 'name', 'cn');
         SELECT mesh.add_export_flow('AD', 'person', $$'plain' || name$$, 'sAMAccountName');
         SELECT mesh.set_provisioning('AD', 'person', NULL, '{}');
         SELECT * FROM mesh.cycle();",
    )
    .unwrap();
    let (code, msg) = error_row(
        c.query_one(
            "SELECT sqlstate, message FROM mesh.errors WHERE connector = 'AD'",
            &[],
        )
        .unwrap(),
    );
    assert_eq!(code.as_deref(), Some("13"));
    assert!(
        msg.contains("refusing to send an initial password"),
        "{msg}"
    );
    assert!(
        ldapsearch(&ou, "(objectClass=user)", &["1.1"]).is_empty(),
        "no account was created"
    );
}

/// The SQLSTATE column and the message of a mesh.errors row.
fn error_row(r: postgres::Row) -> (Option<String>, String) {
    (r.get(0), r.get(1))
}

/// The HR source, its department groups and the AD target of tests 3 and 4.
fn provisioning_setup(c: &mut Client, ou: &str, prefix: &str) {
    reset_ou(ou);
    for sub in ["People", "Groups", "Disabled"] {
        add_ou(&format!("OU={sub},{ou}"));
    }
    for dept in ["Engineering", "Sales"] {
        add_ou(&format!("OU={dept},OU=People,{ou}"));
    }
    c.batch_execute(
        "CREATE TABLE hr_employees (id int PRIMARY KEY, first_name text, last_name text, title text, department text,
             manager_id int, status text NOT NULL DEFAULT 'active', phone text);
         INSERT INTO hr_employees VALUES
             (1, 'Ada', 'Lovelace', 'CTO', 'Engineering', NULL, 'active', NULL),
             (2, 'Grace', 'Hopper', 'Engineer', 'Engineering', 1, 'active', NULL),
             (3, 'Alan', 'Turing', 'Engineer', 'Engineering', 1, 'active', NULL),
             (4, 'Joan', 'Clarke', 'Account Manager', 'Sales', 1, 'active', NULL),
             (5, 'Doe, Jane', 'Smith', 'Researcher', 'Research', 1, 'active', NULL);
         -- A department's group: its active members, by employee id.
         CREATE VIEW hr_department_groups AS
             SELECT department AS name, array_agg(id ORDER BY id) FILTER (WHERE status = 'active') AS members
             FROM hr_employees GROUP BY department;",
    )
    .unwrap();
    c.batch_execute(
        "SELECT mesh.create_connector('HR', 'table', '{\"source\": \"hr_employees\", \"anchor\": \"id\",
             \"export_table\": \"hr_employees\", \"export_mode\": \"update\"}');
         SELECT mesh.create_connector('HR Groups', 'table', '{\"source\": \"hr_department_groups\", \"anchor\": \"name\",
             \"object_type\": \"group\"}');",
    )
    .unwrap();
    let people = format!("OU=People,{ou}");
    create_ad(
        c,
        "AD",
        ad_config(
            ou,
            json!({
                "dn_template": {"person": format!("CN={{cn}},OU={{department}},{people}"),
                                "group": format!("CN={{cn}},OU=Groups,{ou}")},
                "disabled_ou": format!("OU=Disabled,{ou}"),
            }),
        ),
    );
    c.batch_execute(
        &"SELECT mesh.set_projection('HR', 'person', true);
         SELECT mesh.add_import_flow('HR', 'person', 'id', 'employee_id', 100);
         SELECT mesh.add_import_flow('HR', 'person', 'first_name', 'first_name', 90);
         SELECT mesh.add_import_flow('HR', 'person', 'last_name', 'last_name', 90);
         SELECT mesh.add_import_flow('HR', 'person', $$first_name || ' ' || last_name$$, 'display_name', 90);
         SELECT mesh.add_import_flow('HR', 'person', 'title', 'title', 90);
         SELECT mesh.add_import_flow('HR', 'person', 'department', 'department', 90);
         SELECT mesh.add_import_flow('HR', 'person', 'status', 'status', 90);
         SELECT mesh.add_import_flow('HR', 'person', 'manager_id', 'manager', 90, reference => true);
         SELECT mesh.add_import_flow('HR', 'person', 'phone', 'phone', 50);
         SELECT mesh.set_projection('HR Groups', 'group', true);
         SELECT mesh.add_import_flow('HR Groups', 'group', 'name', 'name', 100);
         SELECT mesh.add_import_flow('HR Groups', 'group', 'members', 'member', 100, reference => true, reference_to => 'HR');
         -- AD joins the people it already has on employeeID, groups on their name.
         SELECT mesh.add_join_rule('AD', 'person', 'employeeID', 'employee_id');
         SELECT mesh.add_join_rule('AD', 'group', 'cn', 'name');
         SELECT mesh.add_import_flow('AD', 'person', 'telephoneNumber', 'phone', 80);
         SELECT mesh.add_export_flow('AD', 'person', 'display_name', 'cn');
         SELECT mesh.add_export_flow('AD', 'person', $$'PREFIX' || employee_id$$, 'sAMAccountName');
         SELECT mesh.add_export_flow('AD', 'person', 'first_name', 'givenName');
         SELECT mesh.add_export_flow('AD', 'person', 'last_name', 'sn');
         SELECT mesh.add_export_flow('AD', 'person', 'title', 'title');
         SELECT mesh.add_export_flow('AD', 'person', 'department', 'department');
         SELECT mesh.add_export_flow('AD', 'person', 'employee_id', 'employeeID');
         SELECT mesh.add_export_flow('AD', 'person', 'manager', 'manager', reference => true);
         SELECT mesh.set_provisioning('AD', 'person', $$status = 'active'$$,
             '{\"deprovision\": \"disable\", \"disable\": {\"accountDisabled\": true}}');
         SELECT mesh.add_export_flow('AD', 'group', 'name', 'cn');
         SELECT mesh.add_export_flow('AD', 'group', $$'PREFIX-' || name$$, 'sAMAccountName');
         SELECT mesh.add_export_flow('AD', 'group', 'member', 'member', reference => true);
         SELECT mesh.set_provisioning('AD', 'group', NULL, '{}');
         SELECT mesh.add_export_flow('HR', 'person', 'phone', 'phone');"
            .replace("PREFIX", prefix),
    )
    .unwrap();
}

/// Cycles until nothing is left to export (references to objects created in the same cycle
/// are written by the next one); returns the last cycle's steps.
fn settle(c: &mut Client) -> Vec<Value> {
    let mut steps = Vec::new();
    for _ in 0..4 {
        let v: Value = c
            .query_one("SELECT jsonb_agg(to_jsonb(s)) FROM mesh.cycle() s", &[])
            .unwrap()
            .get(0);
        steps = v.as_array().unwrap().clone();
        let pending = count(
            c,
            "SELECT count(*) FROM mesh.pending_export WHERE status IN ('pending', 'applied')",
        );
        if pending == 0 {
            break;
        }
    }
    steps
}

fn entry(dn_base: &str, filter: &str, attrs: &[&str]) -> Option<(String, Vec<(String, String)>)> {
    ldapsearch(dn_base, filter, attrs).into_iter().next()
}

fn attr<'a>(e: &'a (String, Vec<(String, String)>), name: &str) -> Vec<&'a str> {
    e.1.iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

// 3. Provisioning from HR: OUs, enabled with a password over ldaps, manager, department
// groups; title change is a modify, department change a move, termination disables and moves.
#[test]
fn provisioning_from_hr_into_ad() {
    let ou = format!("OU=Prov,{TOP}");
    let mut c = fresh_database_with_own_key("idmesh_it_ad_prov");
    provisioning_setup(&mut c, &ou, "p");
    let people = format!("OU=People,{ou}");
    settle(&mut c);
    let ada = entry(
        &ou,
        "(employeeID=1)",
        &["userAccountControl", "pwdLastSet", "sAMAccountName"],
    )
    .expect("Ada created");
    assert_eq!(ada.0, format!("CN=Ada Lovelace,OU=Engineering,{people}"));
    assert_eq!(
        attr(&ada, "userAccountControl"),
        vec!["512"],
        "enabled: it has a password"
    );
    assert_eq!(
        attr(&ada, "pwdLastSet"),
        vec!["0"],
        "must change the password at first logon"
    );
    assert_eq!(attr(&ada, "sAMAccountName"), vec!["p1"]);
    let grace = entry(&ou, "(employeeID=2)", &["manager", "title"]).expect("Grace created");
    assert_eq!(attr(&grace, "manager"), vec![ada.0.as_str()]);
    let joan = entry(&ou, "(employeeID=4)", &["1.1"]).expect("Joan created");
    assert_eq!(joan.0, format!("CN=Joan Clarke,OU=Sales,{people}"));
    // No OU for Research: a clear error on that person, nothing created silently.
    assert!(entry(&ou, "(employeeID=5)", &["1.1"]).is_none());
    assert!(!exists(&format!("OU=Research,{people}")));
    let (code, msg) = error_row(
        c.query_one("SELECT sqlstate, message FROM mesh.errors WHERE connector = 'AD' AND operation = 'add'", &[])
            .unwrap(),
    );
    assert_eq!(code.as_deref(), Some("32"), "{msg}");
    assert!(
        msg.contains("OU=Research") && msg.contains("create_ous"),
        "{msg}"
    );
    // Department groups, members as DNs.
    let eng = entry(&ou, "(&(objectClass=group)(cn=Engineering))", &["member"]).expect("group");
    let mut members = attr(&eng, "member");
    members.sort();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.contains(&grace.0.as_str()));

    // The options allow OUs to be created: Research appears, with Jane (a comma in her name).
    let mut cfg: Value = c
        .query_one("SELECT config FROM mesh.connector WHERE name = 'AD'", &[])
        .unwrap()
        .get(0);
    cfg["create_ous"] = json!(true);
    c.execute("SELECT mesh.alter_connector('AD', config => $1)", &[&cfg])
        .unwrap();
    c.batch_execute("SELECT mesh.retry('AD')").unwrap();
    settle(&mut c);
    let jane =
        entry(&ou, "(employeeID=5)", &["1.1"]).expect("Jane created once OUs may be created");
    assert_eq!(jane.0, format!("CN=Doe\\, Jane Smith,OU=Research,{people}"));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM mesh.errors WHERE connector = 'AD'"
        ),
        0
    );

    // A title change in HR is one modify.
    c.batch_execute("UPDATE hr_employees SET title = 'Principal Engineer' WHERE id = 2")
        .unwrap();
    let steps = settle(&mut c);
    let grace = entry(&ou, "(employeeID=2)", &["title"]).unwrap();
    assert_eq!(attr(&grace, "title"), vec!["Principal Engineer"]);
    let _ = steps;
    // A department change moves the user to the new OU and between department groups. The
    // export writes the user first (queue order is mesh object order), and the groups'
    // member changes still name the DN the connector space knows: the connector writes them
    // as the DN the user has now.
    c.batch_execute("UPDATE hr_employees SET department = 'Sales' WHERE id = 3")
        .unwrap();
    settle(&mut c);
    let alan = entry(&ou, "(employeeID=3)", &["department", "memberOf"]).unwrap();
    assert_eq!(alan.0, format!("CN=Alan Turing,OU=Sales,{people}"));
    let groups: Vec<&str> = attr(&alan, "memberOf");
    assert_eq!(groups, vec![format!("CN=Sales,OU=Groups,{ou}").as_str()]);
    // Termination: out of scope, disabled (other bits kept) and moved per policy.
    c.batch_execute("UPDATE hr_employees SET status = 'terminated' WHERE id = 4")
        .unwrap();
    settle(&mut c);
    let joan = entry(&ou, "(employeeID=4)", &["userAccountControl"]).unwrap();
    assert_eq!(joan.0, format!("CN=Joan Clarke,OU=Disabled,{ou}"));
    assert_eq!(attr(&joan, "userAccountControl"), vec!["514"]);
    let sales = entry(&ou, "(&(objectClass=group)(cn=Sales))", &["member"]).unwrap();
    assert_eq!(
        attr(&sales, "member"),
        vec![format!("CN=Alan Turing,OU=Sales,{people}").as_str()]
    );
}

// A person deleted by deprovisioning leaves their group in the same run. The delete comes
// first (queue order is mesh object order, people before the groups built from them), and
// the group's change names the member by the DN the connector space knows: AD already
// dropped that link, so the connector leaves the value out instead of failing the modify.
#[test]
fn a_deleted_member_leaves_their_group_in_the_same_run() {
    let ou = format!("OU=Leavers,{TOP}");
    let mut c = fresh_database_with_own_key("idmesh_it_ad_leavers");
    provisioning_setup(&mut c, &ou, "l");
    c.batch_execute(
        "DELETE FROM hr_employees WHERE id = 5;
         SELECT mesh.set_provisioning('AD', 'person', $$status = 'active'$$, '{\"deprovision\": \"delete\"}');",
    )
    .unwrap();
    settle(&mut c);
    let alan = entry(&ou, "(employeeID=3)", &["1.1"]).expect("Alan created");
    let members = |ou: &str| -> Vec<String> {
        let eng = entry(ou, "(&(objectClass=group)(cn=Engineering))", &["member"]).unwrap();
        let mut m: Vec<String> = attr(&eng, "member")
            .into_iter()
            .map(str::to_string)
            .collect();
        m.sort();
        m
    };
    assert!(members(&ou).contains(&alan.0));
    c.batch_execute("UPDATE hr_employees SET status = 'terminated' WHERE id = 3")
        .unwrap();
    let steps: Value = c
        .query_one("SELECT jsonb_agg(to_jsonb(s)) FROM mesh.cycle() s", &[])
        .unwrap()
        .get(0);
    let export = steps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["connector"] == "AD" && s["profile"] == "export")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            export["deleted"].as_i64(),
            export["updated"].as_i64(),
            export["errors"].as_i64()
        ),
        (Some(1), Some(1), Some(0)),
        "one run deletes Alan and updates Engineering: {steps}"
    );
    assert!(
        entry(&ou, "(employeeID=3)", &["1.1"]).is_none(),
        "Alan deleted"
    );
    let left = members(&ou);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&alan.0), "{left:?}");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM mesh.errors WHERE connector = 'AD'"
        ),
        0
    );
}

// 4. Round trip: a phone number changed in AD reaches HR, and does not come back.
#[test]
fn phone_changed_in_ad_flows_to_hr_once() {
    let ou = format!("OU=RoundTrip,{TOP}");
    let mut c = fresh_database_with_own_key("idmesh_it_ad_roundtrip");
    provisioning_setup(&mut c, &ou, "r");
    c.batch_execute("DELETE FROM hr_employees WHERE id = 5")
        .unwrap();
    settle(&mut c);
    let grace = entry(&ou, "(employeeID=2)", &["1.1"]).unwrap();
    ldif("ldapmodify", &format!("dn: {}\nchangetype: modify\nreplace: telephoneNumber\ntelephoneNumber: +44 20 7946 0002\n", grace.0));
    let steps: Value = c
        .query_one("SELECT jsonb_agg(to_jsonb(s)) FROM mesh.cycle() s", &[])
        .unwrap()
        .get(0);
    let phone: Option<String> = c
        .query_one("SELECT phone FROM hr_employees WHERE id = 2", &[])
        .unwrap()
        .get(0);
    assert_eq!(phone.as_deref(), Some("+44 20 7946 0002"), "{steps}");
    // The next cycles move nothing: no echo of the value back into AD or HR.
    for _ in 0..2 {
        let steps: Value = c
            .query_one("SELECT jsonb_agg(to_jsonb(s)) FROM mesh.cycle() s", &[])
            .unwrap()
            .get(0);
        for s in steps.as_array().unwrap() {
            if s["profile"] == "export" || s["connector"] == "AD" {
                let moved = s["added"].as_i64().unwrap_or(0)
                    + s["updated"].as_i64().unwrap_or(0)
                    + s["deleted"].as_i64().unwrap_or(0);
                assert_eq!(moved, 0, "nothing moves: {steps}");
            }
        }
    }
    let pending = count(&mut c, "SELECT count(*) FROM mesh.pending_export");
    assert_eq!(pending, 0);
}

// Kerberos (GSSAPI) from a keytab against the DC's own KDC: no password anywhere.
#[test]
fn kerberos_bind_from_a_keytab() {
    let ou = format!("OU=Kerberos,{TOP}");
    reset_ou(&ou);
    ldif(
        "ldapadd",
        &(1..=2)
            .map(|i| user_ldif(&format!("Krb {i}"), &ou, ""))
            .collect::<String>(),
    );
    let mut c = fresh_database_with_own_key("idmesh_it_ad_kerberos");
    let cfg = json!({
        "url": "ldap://127.0.0.1", "bind": "kerberos",
        "keytab": env("IDMESH_AD_KEYTAB", &format!("{}/svc-idmesh.postgres.keytab", samba_dir())),
        "krb5_config": env("IDMESH_KRB5_CONFIG", &format!("{}/krb5.conf", samba_dir())),
        "server_fqdn": env("IDMESH_AD_FQDN", "dc1.corp.local"),
        "base_dn": ou, "object_types": ["person"],
    });
    c.execute(
        "SELECT mesh.create_connector('AD', 'active_directory', $1)",
        &[&cfg],
    )
    .unwrap();
    let checks: Vec<(String, bool, String)> = c
        .query(
            "SELECT step, ok, detail FROM mesh.test_connection('AD')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(checks.iter().all(|(_, ok, _)| *ok), "{checks:?}");
    let r = run(&mut c, "AD", "full_import");
    assert_eq!(r["added"], 2, "{r}");
    // A keytab that is not there is refused when configured.
    let mut bad = cfg.clone();
    bad["keytab"] = json!("/nonexistent.keytab");
    let err = c
        .execute("SELECT mesh.alter_connector('AD', config => $1)", &[&bad])
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22023");
}

// Issue 8, 1: a grace period keeps a mesh object (and its AD account) while its source row
// is gone; re-created in time, nothing downstream is touched; not re-created, the object is
// deleted after the period and the account deprovisioned per policy.
#[test]
fn grace_period_protects_ad_accounts_until_it_ends() {
    let ou = format!("OU=Grace,{TOP}");
    let mut c = fresh_database_with_own_key("idmesh_it_ad_grace");
    provisioning_setup(&mut c, &ou, "g");
    c.batch_execute("DELETE FROM hr_employees WHERE id = 5")
        .unwrap();
    settle(&mut c);
    let before = entry(
        &ou,
        "(employeeID=3)",
        &["userAccountControl", "whenChanged", "uSNChanged"],
    )
    .expect("Alan created");
    c.batch_execute(
        "SELECT mesh.set_deletion_rule('person', 'authoritative', interval '3 seconds')",
    )
    .unwrap();

    // Deleted and re-created within the period: marked, then unmarked; AD untouched.
    let row: (i32, String, String, String, String, Option<i32>) = {
        let r = c.query_one("SELECT id, first_name, last_name, title, department, manager_id FROM hr_employees WHERE id = 3", &[]).unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
    };
    c.batch_execute("DELETE FROM hr_employees WHERE id = 3")
        .unwrap();
    let steps: Value = c
        .query_one("SELECT jsonb_agg(to_jsonb(s)) FROM mesh.cycle() s", &[])
        .unwrap()
        .get(0);
    let marked: Vec<(i64, Option<String>)> = c
        .query("SELECT id, reason FROM mesh.pending_deletions", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(marked.len(), 1, "{steps}");
    assert_eq!(marked[0].1.as_deref(), Some("grace"));
    assert!(
        entry(
            &ou,
            "(employeeID=3)",
            &["userAccountControl", "whenChanged", "uSNChanged"]
        )
        .unwrap()
            == before,
        "{steps}"
    );
    c.execute(
        "INSERT INTO hr_employees (id, first_name, last_name, title, department, manager_id) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&row.0, &row.1, &row.2, &row.3, &row.4, &row.5],
    )
    .unwrap();
    let steps: Value = c
        .query_one("SELECT jsonb_agg(to_jsonb(s)) FROM mesh.cycle() s", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM mesh.pending_deletions"),
        0,
        "rejoined: {steps}"
    );
    let same: i64 = c
        .query_one(
            "SELECT count(*) FROM mesh.objects WHERE id = $1 AND NOT deleted",
            &[&marked[0].0],
        )
        .unwrap()
        .get(0);
    assert_eq!(same, 1, "the same mesh object, not a new one");
    let after = entry(
        &ou,
        "(employeeID=3)",
        &["userAccountControl", "whenChanged", "uSNChanged"],
    )
    .unwrap();
    assert_eq!(after, before, "the AD account was not touched");

    // Deleted for good: after the period the object goes and the account is disabled and moved.
    c.batch_execute("DELETE FROM hr_employees WHERE id = 3")
        .unwrap();
    c.batch_execute("SELECT * FROM mesh.cycle()").unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM mesh.pending_deletions"),
        1
    );
    assert_eq!(
        attr(
            &entry(&ou, "(employeeID=3)", &["userAccountControl"]).unwrap(),
            "userAccountControl"
        ),
        vec!["512"]
    );
    std::thread::sleep(std::time::Duration::from_millis(3500));
    settle(&mut c);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM mesh.pending_deletions"),
        0
    );
    let gone: bool = c
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM mesh.objects WHERE id = $1 AND NOT deleted)",
            &[&marked[0].0],
        )
        .unwrap()
        .get(0);
    assert!(gone);
    let alan = entry(&ou, "(employeeID=3)", &["userAccountControl"]).unwrap();
    assert_eq!(alan.0, format!("CN=Alan Turing,OU=Disabled,{ou}"));
    assert_eq!(attr(&alan, "userAccountControl"), vec!["514"]);
}

// Issue 8, 3: schema discovery against the DC; flows are checked against it.
#[test]
fn schema_discovery_lists_classes_and_checks_flows() {
    let ou = format!("OU=Schema,{TOP}");
    reset_ou(&ou);
    let mut c = fresh_database_with_own_key("idmesh_it_ad_schema");
    create_ad(&mut c, "AD", ad_config(&ou, json!({})));
    let rows: Vec<(String, String, String, bool, bool)> = c
        .query("SELECT object_type, attribute, syntax, multi_valued, reference FROM mesh.discover_schema('AD')", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let find = |t: &str, a: &str| {
        rows.iter()
            .find(|r| r.0 == t && r.1 == a)
            .cloned()
            .unwrap_or_else(|| panic!("{t}.{a} not discovered"))
    };
    let manager = find("person", "manager");
    assert_eq!(
        (manager.2.as_str(), manager.3, manager.4),
        ("DN", false, true),
        "manager: a single DN reference"
    );
    let member = find("group", "member");
    assert!(member.3 && member.4, "member: multi-valued DN reference");
    assert_eq!(find("person", "telephoneNumber").2, "Unicode String");
    assert!(
        rows.iter().filter(|r| r.0 == "person").count() > 100,
        "user has hundreds of attributes"
    );
    let source_class: String = c
        .query_one("SELECT source_class FROM mesh.schema WHERE connector = 'AD' AND object_type = 'person' LIMIT 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(source_class, "user");
    // A misspelled attribute is refused, naming the right one; the view shows which flows use what.
    let err = c
        .batch_execute("SELECT mesh.add_import_flow('AD', 'person', 'telephonNumber', 'phone', 80)")
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42703");
    assert!(
        db.hint().unwrap_or("").contains("telephoneNumber"),
        "{db:?}"
    );
    let err = c
        .batch_execute("SELECT mesh.add_export_flow('AD', 'person', 'title', 'titel')")
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .hint()
            .unwrap_or("")
            .contains("title"),
        "{err}"
    );
    c.batch_execute("SELECT mesh.add_import_flow('AD', 'person', 'telephoneNumber', 'phone', 80)")
        .unwrap();
    let used: Option<Vec<String>> = c
        .query_one("SELECT used_by FROM mesh.schema WHERE connector = 'AD' AND object_type = 'person' AND attribute = 'telephoneNumber'", &[])
        .unwrap()
        .get(0);
    assert_eq!(used.unwrap().len(), 1);
}

/// Starts the DC again when dropped, so a failing assertion cannot leave it stopped.
struct RestartDc;
impl Drop for RestartDc {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/samba.sh");
        let _ = Command::new("bash").args([script, "start"]).status();
    }
}

// A lost connection fails the run and leaves the watermark where it was.
#[test]
fn lost_connection_fails_the_run_and_keeps_the_watermark() {
    let ou = format!("OU=Lost,{TOP}");
    reset_ou(&ou);
    ldif("ldapadd", &user_ldif("Lost 1", &ou, ""));
    let mut c = fresh_database_with_own_key("idmesh_it_ad_lost");
    create_ad(
        &mut c,
        "AD",
        ad_config(&ou, json!({"object_types": ["person"]})),
    );
    run(&mut c, "AD", "full_import");
    let before: Value = c
        .query_one("SELECT value FROM mesh.watermark", &[])
        .unwrap()
        .get(0);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/samba.sh");
    let _restart = RestartDc;
    assert!(Command::new("bash")
        .args([script, "stop"])
        .status()
        .unwrap()
        .success());
    let err = c
        .batch_execute("SELECT mesh.run('AD', 'delta_import')")
        .unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(!db.message().contains(&svc_pw()));
    let after: Value = c
        .query_one("SELECT value FROM mesh.watermark", &[])
        .unwrap()
        .get(0);
    assert_eq!(after, before);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM mesh.connector_object WHERE NOT deleted"
        ),
        1
    );
}

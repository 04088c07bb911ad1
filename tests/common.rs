//! Helpers for the integration tests: each test gets a fresh database with the extension
//! created in it, on the cluster `scripts/cluster.sh start` runs (the Makefile starts it).

use postgres::{Client, NoTls};

pub fn host() -> String {
    std::env::var("IDMESH_RUN").unwrap_or_else(|_| "/tmp/idmesh-run".into()) + "/sock"
}

pub fn port() -> u16 {
    std::env::var("IDMESH_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5499)
}

pub fn connect(db: &str) -> Client {
    Client::connect(&format!("host={} port={} user=postgres dbname={db}", host(), port()), NoTls)
        .unwrap_or_else(|e| panic!("cannot reach the project's cluster ({e}); run `make integration` or scripts/cluster.sh start"))
}

/// A new, empty database; dropped first if a previous run left it.
fn empty_database(name: &str) -> Client {
    let mut admin = connect("postgres");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    connect(name)
}

/// A new, empty database with idmesh installed; dropped first if a previous run left it.
pub fn fresh_database(name: &str) -> Client {
    let mut c = empty_database(name);
    c.batch_execute("CREATE EXTENSION idmesh").unwrap();
    c
}

/// A new, empty database (without idmesh) and a login `role` with `password`: a source or
/// target the network connectors reach over TCP, where the cluster asks for a password.
pub fn database_with_login(name: &str, role: &str, password: &str) -> Client {
    let c = empty_database(name);
    connect("postgres")
        .batch_execute(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF;
             END $$;
             ALTER ROLE {role} PASSWORD '{password}';"
        ))
        .unwrap();
    c
}

/// A fresh database whose connector secrets use a key file of its own, so rotating or
/// breaking it touches no other test.
pub fn fresh_database_with_own_key(name: &str) -> Client {
    let mut c = fresh_database(name);
    c.batch_execute(&format!(
        "SET idmesh.secret_key_file = '/tmp/idmesh-run/{name}.key'"
    ))
    .unwrap();
    for file in ["", ".idmesh-next", ".idmesh-previous"] {
        let _ = std::fs::remove_file(format!("/tmp/idmesh-run/{name}.key{file}"));
    }
    c
}

/// `mesh.run(connector, profile)`, its run_history row as JSON.
pub fn run(c: &mut Client, connector: &str, profile: &str) -> serde_json::Value {
    c.query_one(
        "SELECT to_jsonb(r) FROM mesh.run($1, $2) r",
        &[&connector, &profile],
    )
    .unwrap()
    .get(0)
}

/// The SQLSTATE a statement fails with (panics if it succeeds).
pub fn sqlstate_of(c: &mut Client, sql: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => e
            .code()
            .map(|s| s.code().to_string())
            .unwrap_or_else(|| panic!("no SQLSTATE: {e}")),
    }
}

/// Every row of `sql` as the pair of its first two columns.
pub fn pairs<A, B>(c: &mut Client, sql: &str) -> Vec<(A, B)>
where
    A: for<'a> postgres::types::FromSql<'a>,
    B: for<'a> postgres::types::FromSql<'a>,
{
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The count a `SELECT count(*) ...` gives.
pub fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// The first column of every row `sql` gives.
pub fn column<T>(c: &mut Client, sql: &str) -> Vec<T>
where
    T: for<'a> postgres::types::FromSql<'a>,
{
    c.query(sql, &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

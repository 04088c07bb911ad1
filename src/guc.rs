//! Every idmesh GUC, in one place.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Directory holding the connector programs the `process` kind may start (superuser only):
/// a connector names a program in it, and nothing outside it is ever started.
pub static CONNECTOR_DIRECTORY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// Seconds a connector program may stay silent before its run fails and it is killed.
pub static CONNECTOR_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(60);

/// The database the launcher serves (background runs, pg_cron's mesh.enqueue).
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// How many background runs may run at once (several connectors in parallel).
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);

/// How often the launcher looks at the queue, in milliseconds.
pub static LAUNCHER_NAPTIME: GucSetting<i32> = GucSetting::<i32>::new(500);

/// Memory for each sort or hash of the engine's set-based statements (sync, merge), in kB
/// (hash tables get no more: `hash_mem_multiplier` is 1 while the engine runs),
/// whatever the session's `work_mem`: the engine's memory stays bounded however many
/// objects a run handles (see `mesh._memory_budget`).
pub static WORK_MEM: GucSetting<i32> = GucSetting::<i32>::new(8 * 1024);

/// The file holding the key that encrypts connection secrets (outside the database).
pub static SECRET_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn init() {
    GucRegistry::define_string_guc(
        c"idmesh.secret_key_file",
        c"File holding the key that encrypts connector secrets (AES-256-GCM).",
        c"An absolute path outside the data directory, one file per database; created with owner-only permissions on first use. Superusers only.",
        &SECRET_KEY_FILE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"idmesh.database",
        c"Database the idmesh launcher serves.",
        c"Background runs (mesh.enqueue) run in this database; the launcher reads it when it starts, so a change needs a server restart.",
        &DATABASE,
        // Sighup, not Postmaster: the library also loads lazily, where postmaster GUCs cannot be defined.
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"idmesh.max_workers",
        c"Background runs that may run at once.",
        c"Each takes a background worker slot (max_worker_processes).",
        &MAX_WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"idmesh.launcher_naptime",
        c"How often the idmesh launcher looks at the run queue.",
        c"",
        &LAUNCHER_NAPTIME,
        10,
        60000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"idmesh.connector_directory",
        c"Directory of the connector programs the process connector kind may start.",
        c"Only programs directly in this directory can be started; unset, no program can.",
        &CONNECTOR_DIRECTORY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"idmesh.connector_timeout",
        c"Seconds a connector program may stay silent before its run fails.",
        c"A program that writes nothing for this long is killed and its run fails.",
        &CONNECTOR_TIMEOUT,
        1,
        86400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"idmesh.work_mem",
        c"Memory for each sort or hash of a sync or an import merge.",
        c"Used instead of work_mem while the engine runs, so its memory stays bounded however many objects it handles; more is faster on large directories.",
        &WORK_MEM,
        1024,
        1024 * 1024,
        GucContext::Userset,
        GucFlags::UNIT_KB,
    );
}

//! Every idmesh GUC, in one place.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Directory holding the connector programs the `process` kind may start (superuser only):
/// a connector names a program in it, and nothing outside it is ever started.
pub static CONNECTOR_DIRECTORY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// Seconds a connector program may stay silent before its run fails and it is killed.
pub static CONNECTOR_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(60);

pub fn init() {
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
}

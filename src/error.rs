//! Raising errors with a SQLSTATE, a message that says what is wrong, and a hint that says
//! what to do. Messages never carry a connector secret.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// The error report a caught error carries, whichever way it was raised.
pub fn report_of(e: &pg_sys::panic::CaughtError) -> &pg_sys::panic::ErrorReportWithLevel {
    match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r)
        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r,
    }
}

pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: &str) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "idmesh");
    if !hint.is_empty() {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn undefined(what: &str, name: &str, hint: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("{what} \"{name}\" does not exist"),
        hint,
    )
}

pub fn invalid(message: impl Into<String>, hint: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        hint,
    )
}

/// The five-character SQLSTATE of an error code.
pub fn sqlstate(code: PgSqlErrorCode) -> String {
    let v = code as i32;
    (0..5)
        .map(|i| (((v >> (6 * i)) & 0x3F) as u8 + b'0') as char)
        .collect()
}

//! C-level value helpers for the sync's hot paths, called by the compiled statements for
//! every attribute of every object (SQL in `sql/schema.sql` declares them).

use pgrx::prelude::*;

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_idmesh_is_empty() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `mesh.is_empty(jsonb)`: NULL, JSON null, "" and [] mean "no value". Reads the jsonb
/// header in place (see `idmesh_core::jsonb`) instead of comparing with four constants.
///
/// # Safety
/// Called by PostgreSQL's function manager with one jsonb argument.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn idmesh_is_empty(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let arg = &*(*fcinfo).args.as_ptr();
        if arg.isnull {
            return pg_sys::Datum::from(true);
        }
        let value = pg_sys::pg_detoast_datum_packed(arg.value.cast_mut_ptr());
        let data = std::slice::from_raw_parts(
            pgrx::varlena::vardata_any(value) as *const u8,
            pgrx::varlena::varsize_any_exhdr(value),
        );
        pg_sys::Datum::from(idmesh_core::jsonb::is_empty_value(data))
    }
}

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
        pg_sys::Datum::from(idmesh_core::jsonb::is_empty_value(varlena_bytes(arg.value)))
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_idmesh_strip_null_attributes() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `mesh.strip_null_attributes(jsonb)`: an object without its null members, at the top
/// level only. The resolved attributes of an object name every attribute, null where
/// nothing contributes; `jsonb_strip_nulls` would also take the null members out of the
/// values themselves (a jsonb column's `{"z": null}`). An object without a null member
/// (the usual case) comes back as it is, without a copy.
///
/// # Safety
/// Called by PostgreSQL's function manager with one jsonb argument.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn idmesh_strip_null_attributes(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    use pg_sys::JsonbIteratorToken::*;
    unsafe {
        let arg = &*(*fcinfo).args.as_ptr();
        if arg.isnull {
            (*fcinfo).isnull = true;
            return pg_sys::Datum::from(0);
        }
        let jsonb = pg_sys::pg_detoast_datum(arg.value.cast_mut_ptr()) as *mut pg_sys::Jsonb;
        let root = &mut (*jsonb).root as *mut pg_sys::JsonbContainer;
        let mut is_object = false;
        let mut has_null = false;
        top_level_tokens(root, |token, value| match token {
            WJB_BEGIN_OBJECT => is_object = true,
            WJB_VALUE if value.type_ == pg_sys::jbvType::jbvNull => has_null = true,
            _ => {}
        });
        if !is_object || !has_null {
            return pg_sys::Datum::from(jsonb);
        }
        let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
        let mut built: *mut pg_sys::JsonbValue = std::ptr::null_mut();
        let mut key: pg_sys::JsonbValue = std::mem::zeroed();
        top_level_tokens(root, |token, value| match token {
            WJB_KEY => key = *value,
            WJB_VALUE if value.type_ == pg_sys::jbvType::jbvNull => {}
            WJB_VALUE => {
                pg_sys::pushJsonbValue(&mut state, WJB_KEY, &mut key);
                pg_sys::pushJsonbValue(&mut state, WJB_VALUE, value);
            }
            _ => built = pg_sys::pushJsonbValue(&mut state, token, std::ptr::null_mut()),
        });
        pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(built))
    }
}

/// Each token of a jsonb container's top level, nested containers as single values.
///
/// # Safety
/// `root` is a detoasted jsonb container that outlives the call.
unsafe fn top_level_tokens(
    root: *mut pg_sys::JsonbContainer,
    mut each: impl FnMut(pg_sys::JsonbIteratorToken::Type, &mut pg_sys::JsonbValue),
) {
    unsafe {
        let mut it = pg_sys::JsonbIteratorInit(root);
        let mut value: pg_sys::JsonbValue = std::mem::zeroed();
        loop {
            let token = pg_sys::JsonbIteratorNext(&mut it, &mut value, true);
            if token == pg_sys::JsonbIteratorToken::WJB_DONE {
                break;
            }
            each(token, &mut value);
        }
    }
}

/// The data of a varlena datum (after its header), detoasted in the current memory context.
///
/// # Safety
/// `datum` is a non-null varlena datum; the bytes live as long as it and that context.
pub unsafe fn varlena_bytes<'a>(datum: pg_sys::Datum) -> &'a [u8] {
    unsafe {
        let value = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        std::slice::from_raw_parts(
            pgrx::varlena::vardata_any(value) as *const u8,
            pgrx::varlena::varsize_any_exhdr(value),
        )
    }
}

/// A batch of rows read as JSON texts, as the three arrays the staging statement takes
/// (`idmesh_core::sql::json_rows_select`): each row's jsonb built here (NULL where
/// `idmesh_core::jsonb_build` leaves the row to the server), its change hash (md5 of the
/// text, as `md5(text)` gives it), and the text of each row left to the server.
pub fn json_rows<'a>(rows: &[String]) -> Vec<pgrx::datum::DatumWithOid<'a>> {
    // Strings are built as UTF-8; another server encoding leaves every row to the server.
    let utf8 = unsafe { pg_sys::GetDatabaseEncoding() } == pg_sys::pg_enc::PG_UTF8 as i32;
    let mut datums: Vec<pg_sys::Datum> = Vec::with_capacity(rows.len());
    let mut nulls: Vec<bool> = Vec::with_capacity(rows.len());
    let mut hashes: Vec<String> = Vec::with_capacity(rows.len());
    let mut left: Vec<Option<&str>> = Vec::with_capacity(rows.len());
    for row in rows {
        hashes.push(md5_hex(row));
        let built = if utf8 { jsonb_of(row) } else { None };
        match built {
            Some(value) => {
                datums.push(varlena(&value));
                nulls.push(false);
                left.push(None);
            }
            None => {
                datums.push(pg_sys::Datum::from(0));
                nulls.push(true);
                left.push(Some(row));
            }
        }
    }
    let mut dims = [rows.len() as i32];
    let mut lower = [1];
    // SAFETY: one dimension of `rows.len()` jsonb datums (varlena, 4-byte aligned) and as
    // many null flags; the array is built in the current (batch) memory context.
    let array = unsafe {
        pg_sys::construct_md_array(
            datums.as_mut_ptr(),
            nulls.as_mut_ptr(),
            1,
            dims.as_mut_ptr(),
            lower.as_mut_ptr(),
            pg_sys::JSONBOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        )
    };
    // The array holds copies: each value's own allocation can go now.
    for (d, null) in datums.iter().zip(&nulls) {
        if !null {
            // SAFETY: palloc'd by `varlena` above and no longer referenced.
            unsafe { pg_sys::pfree(d.cast_mut_ptr()) };
        }
    }
    vec![
        // SAFETY: a jsonb[] datum built just above.
        unsafe {
            pgrx::datum::DatumWithOid::new(pg_sys::Datum::from(array), pg_sys::JSONBARRAYOID)
        },
        hashes.into(),
        left.into(),
    ]
}

/// The jsonb value (after its varlena header) of a JSON text, as `jsonb_in` makes it; None
/// where `idmesh_core::jsonb_build` leaves the text to the server.
pub fn jsonb_of(text: &str) -> Option<Vec<u8>> {
    idmesh_core::jsonb_build::from_text(text, &mut |number| {
        idmesh_core::jsonb_build::numeric_of(number).or_else(|| numeric_in(number))
    })
}

/// The md5 of a text in lowercase hex, as PostgreSQL's `md5(text)` gives it.
fn md5_hex(text: &str) -> String {
    use md5::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = md5::Md5::digest(text.as_bytes());
    let mut hex = String::with_capacity(32);
    for b in digest.iter() {
        hex.push(HEX[(b >> 4) as usize] as char);
        hex.push(HEX[(b & 15) as usize] as char);
    }
    hex
}

/// A palloc'd varlena holding `data`.
fn varlena(data: &[u8]) -> pg_sys::Datum {
    // SAFETY: allocates header and data in the current memory context and fills both.
    unsafe {
        let len = 4 + data.len();
        let ptr = pg_sys::palloc(len) as *mut u8;
        std::ptr::copy_nonoverlapping(
            idmesh_core::jsonb_build::varlena_header(len).as_ptr(),
            ptr,
            4,
        );
        std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.add(4), data.len());
        pg_sys::Datum::from(ptr)
    }
}

/// The numeric datum `numeric_in` makes of a JSON number (the forms `numeric_of` leaves,
/// such as exponents); it raises the server's own error for a number out of range.
fn numeric_in(text: &str) -> Option<Vec<u8>> {
    let text = std::ffi::CString::new(text).ok()?;
    // SAFETY: numeric_in takes a C string, a type oid and a typmod; its result is a
    // palloc'd numeric varlena, copied out and freed.
    unsafe {
        let datum = pgrx::fcinfo::direct_function_call_as_datum(
            pg_sys::numeric_in,
            &[
                Some(pg_sys::Datum::from(text.as_ptr())),
                Some(pg_sys::Datum::from(pg_sys::InvalidOid)),
                Some(pg_sys::Datum::from(-1i32)),
            ],
        )?;
        let ptr = datum.cast_mut_ptr::<pg_sys::varlena>();
        let bytes =
            std::slice::from_raw_parts(ptr as *const u8, pgrx::varlena::varsize_any(ptr)).to_vec();
        pg_sys::pfree(ptr.cast());
        Some(bytes)
    }
}

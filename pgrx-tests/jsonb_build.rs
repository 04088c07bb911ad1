// The engine builds the jsonb of rows imported as JSON texts itself (idmesh_core::jsonb_build);
// it must equal the server's own, byte for byte, or leave the row to the server.

/// The server's jsonb of `text` (after the varlena header), from `jsonb_in`.
fn server_jsonb(text: &str) -> Vec<u8> {
    let c = std::ffi::CString::new(text).unwrap();
    unsafe {
        let datum = pgrx::fcinfo::direct_function_call_as_datum(
            pg_sys::jsonb_in,
            &[Some(pg_sys::Datum::from(c.as_ptr()))],
        )
        .unwrap();
        crate::values::varlena_bytes(datum).to_vec()
    }
}

/// Rows as a PostgreSQL source renders them: every common column type, NULLs, escapes,
/// non-ASCII text, nested arrays and objects, numbers of every scale and sign, floats in
/// exponent form (left to numeric_in), and objects of more than 32 keys.
fn source_rows() -> Vec<String> {
    Spi::connect(|c| {
        c.select(
            r#"SELECT to_json(x)::text FROM (
                 SELECT g AS id, 'Person ' || g AS name, g::numeric / 7 AS ratio, (g * 1000.5)::numeric(20, 4) AS pay,
                        -g AS neg, (g - 50)::numeric * 10000 AS wide, (g * 0.00001)::numeric AS tiny,
                        g % 2 = 0 AS even, timestamptz '2026-01-02 03:04:05.678+02' + g * interval '1 day' AS at,
                        date '2000-01-01' + g AS day, ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd3' || lpad(g::text, 5, '0'))::uuid AS badge,
                        CASE WHEN g % 3 = 0 THEN NULL ELSE 'x' END AS maybe, E'quote " back \\ slash\n tab\t é 😀 \u0001' AS odd,
                        ARRAY[g, g + 1] AS pair,
                        jsonb_build_object('deep', jsonb_build_array(g, 'v', NULL, jsonb_build_object('k', g % 2 = 0))) AS nested, g * 1.5e300::float8 AS huge,
                        g::float8 / 3 AS third, ''::text AS empty, '{}'::jsonb AS none, '[]'::json AS nothing,
                        (SELECT jsonb_object_agg('k' || k, k) FROM generate_series(1, 40 + g % 5) k) AS many,
                        (SELECT jsonb_object_agg(repeat('z', k % 4), k) FROM generate_series(1, 6) k) AS dup
                   FROM generate_series(0, 120) g) x"#,
            None,
            &[],
        )
        .unwrap()
        .map(|r| r.get::<String>(1).unwrap().unwrap())
        .collect::<Vec<_>>()
    })
}

/// Texts beyond the rows: duplicate keys, spacing, scalars, escapes, exponents, and numbers
/// beyond the short numeric form (a weight or scale over 63).
fn odd_texts() -> Vec<String> {
    let long_integer = format!("-{}", "7".repeat(300));
    let long_fraction = format!("0.{}1", "0".repeat(70));
    let long_forms = format!("[{long_integer}, {long_fraction}, \"{}\\n\"]", "s".repeat(5000));
    [
        r#"{"b": 1, "a": 2, "b": 3}"#,
        r#"[1, "two", [3, [4.50, {"five": -0.0}]], null, true, false]"#,
        r#"  {"a" : [ ] , "b":{}}  "#,
        r#""just a string""#,
        "12.5",
        "null",
        r#"["\u00e9\ud83d\ude00\/"]"#,
        "[1E2, -1e-5, 0.1e+3, 123456789012345678901234567890, 0.000000000000000000000000000001]",
        "1e3",
        r#"{"é": 1, "\u00e9": 2}"#,
        long_forms.as_str(),
    ]
    .iter()
    .map(|t| t.to_string())
    .collect()
}

#[pg_test]
fn jsonb_built_by_the_engine_is_the_servers_byte_for_byte() {
    let rows = source_rows();
    assert_eq!(rows.len(), 121);
    for text in rows.iter().chain(&odd_texts()) {
        let text = text.as_str();
        let ours = crate::values::jsonb_of(text).unwrap_or_else(|| panic!("built: {text}"));
        assert_eq!(ours, server_jsonb(text), "{text}");
    }
    // Those numbers took the other path: numeric_in made them (and the bytes matched).
    let long_integer = format!("-{}", "7".repeat(300));
    let long_fraction = format!("0.{}1", "0".repeat(70));
    for number in ["1.5e+300", "1e3", long_integer.as_str(), long_fraction.as_str()] {
        assert!(idmesh_core::jsonb_build::numeric_of(number).is_none(), "{number}");
    }
    // What it declines the server parses (or rejects with its own error).
    for declined in [r#"["\u0000"]"#, "[01]", "[1,]", r#"{"a": tru}"#] {
        assert!(crate::values::jsonb_of(declined).is_none(), "{declined}");
    }
}

/// An export reads pending changes from jsonb's binary form (idmesh_core::jsonb::to_value):
/// each value must read as what the server writes for it as text (`jsonb_out`), numbers
/// digit for digit, long numeric forms included.
#[pg_test]
fn jsonb_read_by_the_engine_is_what_the_server_writes() {
    let texts: Vec<String> = source_rows().into_iter().chain(odd_texts()).collect();
    let written: Vec<String> = Spi::connect(|c| {
        c.select("SELECT t::jsonb::text FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n", None, &[texts.clone().into()])
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect()
    });
    assert_eq!(written.len(), texts.len());
    for (text, out) in texts.iter().zip(&written) {
        let ours = idmesh_core::jsonb::to_value(&server_jsonb(text)).unwrap_or_else(|| panic!("read: {text}"));
        let theirs: serde_json::Value = serde_json::from_str(out).unwrap();
        assert_eq!(ours, theirs, "{text}");
        // Numbers keep the server's digits exactly (no float on the way).
        assert_eq!(ours.to_string(), theirs.to_string(), "{text}");
    }
}

#[pg_test]
fn a_row_the_engine_leaves_to_the_server_is_staged_the_same() {
    // Through the staging statement: rows built here and a row left to the server
    // (nesting deeper than the engine builds) land with the same values and hashes as
    // the server's own parse and md5.
    let deep = format!("{{\"id\": 3, \"deep\": {}1{}}}", "[".repeat(250), "]".repeat(250));
    let rows = vec![r#"{"id": 1, "n": 1.50}"#.to_string(), r#"{"id": 2, "s": "é"}"#.to_string(), deep];
    assert!(crate::values::jsonb_of(&rows[2]).is_none());
    let select = idmesh_core::sql::json_rows_select(&["id".to_string()], None, None);
    let args = crate::values::json_rows(&rows);
    let same: bool = Spi::connect(|c| {
        let mut args = args;
        args.push(rows.clone().into());
        c.select(
            &format!(
                "SELECT bool_and(q.attrs = t::jsonb AND q.hash = md5(t) AND q.anchor = (t::jsonb->>'id')) AND count(*) = 3
                   FROM ({select}) q JOIN unnest($4::text[]) t ON q.anchor = t::jsonb->>'id'"
            ),
            None,
            &args,
        )
        .unwrap()
        .first()
        .get::<bool>(1)
        .unwrap()
        .unwrap()
    });
    assert!(same);
}

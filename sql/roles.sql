-- idmesh roles and privileges. Runs last, when every function exists.
--
--   mesh_reader    sees the views (dashboard, history, errors, pending exports, conflicts,
--                  objects, contributions, audit) and mesh.explain
--   mesh_operator  + runs, syncs, cycles, previews, approves held exports, retries
--   mesh_admin     + configures connectors, secrets and rules
--
-- Nobody reads the tables directly (secrets live there); the functions run as the
-- extension's owner (SECURITY DEFINER) with a fixed search_path. Flow expressions, scopes
-- and table sources are SQL the engine runs with those rights: grant mesh_admin only to
-- people you would trust with the database itself.

-- The statements a delta sync runs now, for reading and EXPLAIN.
CREATE VIEW mesh.compiled_sql AS
SELECT s.step, c.name AS connector, x.object_type, x.sql
FROM unnest(ARRAY['join', 'prejoin', 'lifecycle', 'resolve', 'unresolved', 'referrers', 'plan']) WITH ORDINALITY s(step, n)
CROSS JOIN LATERAL mesh._compile(s.step, false) x
LEFT JOIN mesh.connector c ON c.id = x.connector_id
ORDER BY s.n;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mesh_reader') THEN
        CREATE ROLE mesh_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mesh_operator') THEN
        CREATE ROLE mesh_operator NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mesh_admin') THEN
        CREATE ROLE mesh_admin NOLOGIN;
    END IF;
    IF NOT pg_has_role('mesh_operator', 'mesh_reader', 'MEMBER') THEN
        GRANT mesh_reader TO mesh_operator;
    END IF;
    IF NOT pg_has_role('mesh_admin', 'mesh_operator', 'MEMBER') THEN
        GRANT mesh_operator TO mesh_admin;
    END IF;
END $$;

REVOKE ALL ON ALL TABLES IN SCHEMA mesh FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA mesh FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA mesh FROM PUBLIC;
GRANT USAGE ON SCHEMA mesh TO mesh_reader;

GRANT SELECT ON mesh.dashboard, mesh.run_history, mesh.errors, mesh.pending_exports, mesh.conflicts,
                mesh.objects, mesh.contributions, mesh.compiled_sql, mesh.audit_log, mesh.running,
                mesh.pending_deletions, mesh.schema, mesh.rules
   TO mesh_reader;

-- Pure helpers the views and the resolution SQL use (they read nothing secret).
GRANT EXECUTE ON FUNCTION mesh.is_empty(jsonb), mesh.strip_null_attributes(jsonb), mesh.nullif_empty(jsonb), mesh.name_key(text),
                          mesh.ref_values(jsonb), mesh.ref(integer, jsonb), mesh.ref_name(integer, jsonb),
                          mesh.beats(mesh.contribution, mesh.contribution),
                          mesh.resolve_step(mesh.contribution, jsonb, integer, timestamptz, text, boolean),
                          mesh.resolve_final(mesh.contribution), mesh.resolve(mesh.contribution[]),
                          mesh.reflects(jsonb, jsonb), mesh.diff(jsonb, jsonb, text[]), mesh.set_text(jsonb),
                          mesh.same_value(jsonb, jsonb), mesh.contradicted(jsonb, jsonb),
                          mesh._compile(text, boolean), mesh.explain(bigint, text), mesh._rendering_settings()
   TO mesh_reader;
GRANT EXECUTE ON FUNCTION mesh.resolve_agg(jsonb, integer, timestamptz, text, boolean) TO mesh_reader;

GRANT EXECUTE ON FUNCTION mesh.run(text, text), mesh.sync(boolean), mesh.cycle(), mesh.preview(text),
                          mesh.preview_cycle(), mesh.approve(text), mesh.retry(text),
                          mesh.enqueue(text, text), mesh.enqueue_cycle(), mesh.cancel(bigint)
   TO mesh_operator;

GRANT EXECUTE ON FUNCTION mesh.create_connector(text, text, jsonb, text),
                          mesh.alter_connector(text, jsonb, text, boolean), mesh.drop_connector(text),
                          mesh.create_object_type(text),
                          mesh.add_import_flow(text, text, text, text, integer, boolean, boolean, text),
                          mesh.add_export_flow(text, text, text, text, boolean, boolean),
                          mesh.remove_flow(integer), mesh.add_join_rule(text, text, text, text),
                          mesh.remove_join_rule(integer), mesh.remove_provisioning(text, text),
                          mesh.set_projection(text, text, boolean), mesh.set_provisioning(text, text, text, jsonb),
                          mesh.set_safety(text, integer, numeric, boolean), mesh.test_connection(text),
                          mesh.rotate_secret_key(), mesh.discover_schema(text),
                          mesh.set_deletion_rule(text, text, interval), mesh.delete_object(bigint)
   TO mesh_admin;

-- Reference lookups read the connector space for whoever reads mesh.contributions; their
-- bodies were bound at creation (BEGIN ATOMIC), so no search_path can redirect them.
ALTER FUNCTION mesh.ref(integer, jsonb) SECURITY DEFINER;
ALTER FUNCTION mesh.ref_name(integer, jsonb) SECURITY DEFINER;

-- The SQL surface runs as the extension owner, with a search_path nobody can plant objects in.
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'mesh'::regnamespace
                AND p.proname IN ('create_connector', 'alter_connector', 'drop_connector', 'create_object_type',
                                  'add_import_flow', 'add_export_flow', 'remove_flow', 'add_join_rule', 'remove_join_rule',
                                  'remove_provisioning',
                                  'set_projection', 'set_provisioning', 'set_safety', 'run', 'sync', 'cycle',
                                  'explain', 'preview', 'preview_cycle', 'approve', 'retry',
                                  'enqueue', 'enqueue_cycle', 'cancel', 'test_connection', 'rotate_secret_key',
                                  'discover_schema', 'set_deletion_rule', 'delete_object')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, mesh, public, pg_temp', f);
    END LOOP;
END $$;

-- The functions that run the engine work under fixed settings for how values are written
-- as text (time zone UTC, full float digits, standard interval and bytea spellings: see
-- mesh._rendering_settings): an object read from a client whose session sets another
-- TimeZone (JDBC sets the JVM's) must not look changed to the next run from psql or a
-- background worker. The caller's own settings come back when the function returns.
DO $$
DECLARE
    f regprocedure;
    settings text := (SELECT string_agg(format('SET %s = %L', name, value), ' ') FROM mesh._rendering_settings());
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'mesh'::regnamespace
                AND p.proname IN ('run', 'sync', 'cycle', 'preview', 'preview_cycle', 'approve', 'retry',
                                  'test_connection', 'delete_object', 'explain')
    LOOP
        EXECUTE format('ALTER FUNCTION %s %s', f, settings);
    END LOOP;
END $$;

-- idmesh: the set-based engine and the SQL surface.
-- Runs after the Rust functions are declared. Each sync step is one statement (or one per
-- connector and object type, compiled from the rules by mesh._compile), never a query per
-- object. Read mesh.compiled_sql to see exactly what a sync runs.

CREATE INDEX connector_object_deleted_idx ON mesh.connector_object (connector_id) WHERE deleted;

-- Every call that changes configuration or runs something takes this lock first and holds
-- it to the end of its transaction: engine work in one database is serialized, so two
-- sessions never interleave a sync with each other's imports (and never deadlock).
CREATE FUNCTION mesh._lock() RETURNS void
LANGUAGE sql AS $$ SELECT pg_advisory_xact_lock(7236828734091060) $$;

-- The engine's memory budget for each sort or hash (idmesh.work_mem, 8MB unless set; hash
-- tables get no more than sorts), whatever the session's work_mem, so memory stays
-- bounded however many objects a sync or a merge handles. Called first by functions that
-- carry a work_mem SET clause: the session's own value comes back when they return.
-- Those functions also turn JIT off:
-- compiling took more memory than any sort (about 30 MB) and saved no time, and a
-- delta's row estimates could make it compile for most of a second to touch a few rows.
CREATE FUNCTION mesh._memory_budget() RETURNS void
LANGUAGE sql AS $$ SELECT set_config('work_mem', coalesce(current_setting('idmesh.work_mem', true), '8MB'), true) $$;

-- Adds an object type to the mesh (person, group and contact are built in).
CREATE FUNCTION mesh.create_object_type(name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mesh._lock();
    INSERT INTO mesh.object_type VALUES (name);
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'object type "%" already exists', name USING ERRCODE = 'duplicate_object';
    WHEN check_violation THEN
        RAISE EXCEPTION '"%" is not a valid object type name', name
            USING ERRCODE = 'invalid_name', HINT = 'Lower-case letters, digits and underscores, starting with a letter.';
END $$;

-- Statistics move with the data: a run that changes many rows analyzes what it changed, so
-- the next statements of the same transaction get plans for the real sizes. Only the
-- columns plans depend on (jsonb attribute columns are costly to analyze and not needed),
-- from a small sample: plans need sizes, distinct counts and the few common values of
-- columns like connector_id, which 3,000 rows show as well as 30,000 (a tenth of the time).
CREATE FUNCTION mesh._analyze_if(tbl regclass, changed bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE target text := current_setting('default_statistics_target');
BEGIN
    IF changed > 2000 THEN
        -- An autovacuum working on the same table is cancelled when a lock request waits
        -- longer than deadlock_timeout (1 s by default: it held runs for a second); a
        -- short timeout for this transaction makes that 20 ms.
        BEGIN
            PERFORM set_config('deadlock_timeout', '20ms', true);
        EXCEPTION WHEN insufficient_privilege THEN NULL;
        END;
        PERFORM set_config('default_statistics_target', '10', true);
        EXECUTE format('ANALYZE %s (%s)', tbl,
            (SELECT string_agg(quote_ident(a.attname), ', ')
               FROM pg_attribute a
              WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid <> 'jsonb'::regtype));
        PERFORM set_config('default_statistics_target', target, true);
    END IF;
END $$;

-- Raised by the staging statement for a source row without its anchor.
CREATE FUNCTION mesh._missing_anchor(object_type text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a source row of type % has no anchor (its anchor column is NULL or empty)', object_type
        USING ERRCODE = 'not_null_violation',
              HINT = 'Every row needs its anchor column(s) set. Nothing was imported and the watermark did not move.';
END $$;

-- Raised for rows of an object type the mesh does not know (by the merge, and for rows an
-- import put straight into an empty connector space).
CREATE FUNCTION mesh._unknown_object_type(object_type text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the source returned object type "%", which the mesh does not know', object_type
        USING ERRCODE = 'undefined_object', HINT = 'Add it with mesh.create_object_type(name). Nothing was imported.';
END $$;

-- ---------------------------------------------------------------------------------------
-- Import merge: staging -> connector space, classified in one pass.

-- Merges staged rows into the connector space and classifies them: the rows of one batch
-- (p_batch), or all rows of the run (NULL). A run in a session merges each batch as it
-- arrives, while the source prepares the next one (its transaction still makes the run
-- all or nothing); a background worker commits between batches, so it merges once at the
-- end, and a cancelled run merges nothing.
CREATE FUNCTION mesh._merge_rows(p_run bigint, p_connector integer, p_batch integer,
    OUT added integer, OUT updated integer, OUT renamed integer, OUT deleted integer,
    OUT unchanged integer)
LANGUAGE plpgsql SET work_mem = '8MB' SET hash_mem_multiplier = 1 SET jit = off AS $$
#variable_conflict use_column
DECLARE
    rows text := CASE WHEN p_batch IS NULL THEN '' ELSE 'AND st.batch = $3' END;
    -- A batch looks its rows up one by one (OFFSET 0 keeps the lookup a nested loop over
    -- the primary key); a whole run joins the connector space in one pass.
    lookup text := CASE WHEN p_batch IS NULL
        THEN 'LEFT JOIN mesh.connector_object c ON c.connector_id = $2 AND c.anchor = s.anchor'
        ELSE 'LEFT JOIN LATERAL (SELECT c.*, c.ctid FROM mesh.connector_object c
                                  WHERE c.connector_id = $2 AND c.anchor = s.anchor OFFSET 0) c ON true' END;
    bad text;
BEGIN
    PERFORM mesh._memory_budget();
    PERFORM mesh._check_anchors(p_run, p_batch);
    EXECUTE format('SELECT d.object_type FROM (SELECT DISTINCT st.object_type FROM mesh.staging st WHERE st.run_id = $1 %s) d
                     WHERE NOT EXISTS (SELECT 1 FROM mesh.object_type t WHERE t.name = d.object_type) LIMIT 1', rows)
       INTO bad USING p_run, p_connector, p_batch;
    IF bad IS NOT NULL THEN
        PERFORM mesh._unknown_object_type(bad);
    END IF;

    EXECUTE format($q$
    WITH s AS (
        SELECT st.* FROM mesh.staging st WHERE st.run_id = $1 %s
    ), cls AS (
        SELECT s.*, c.anchor IS NOT NULL AS known, c.deleted AS was_deleted, c.hash AS old_hash, c.name AS old_name,
               c.mesh_id AS old_mesh_id, c.ctid AS row_id
        FROM s %s
    ), ins AS (
        INSERT INTO mesh.connector_object AS c (connector_id, anchor, object_type, name, name_key, attrs, hash, deleted,
                                                mesh_id, observed_at, change_seq)
        SELECT $2, cls.anchor, cls.object_type, cls.name, cls.name_key, cls.attrs, cls.hash, false,
               cls.mesh_id, statement_timestamp(), nextval('mesh.change_seq')
        FROM cls WHERE NOT cls.known AND NOT cls.deleted
        RETURNING 1
    ), upd AS (
        UPDATE mesh.connector_object c
           SET attrs = cls.attrs, hash = cls.hash, name = cls.name, name_key = cls.name_key,
               object_type = cls.object_type, deleted = cls.deleted, mesh_id = coalesce(c.mesh_id, cls.mesh_id),
               disconnected = c.disconnected AND cls.mesh_id IS NULL,
               observed_at = statement_timestamp(), change_seq = nextval('mesh.change_seq')
          FROM cls
         WHERE c.ctid = cls.row_id AND cls.known
           AND (cls.hash <> cls.old_hash OR cls.deleted <> cls.was_deleted OR cls.name <> cls.old_name
                -- an add's read-back that took over an unjoined row with the same values
                OR (cls.old_mesh_id IS NULL AND cls.mesh_id IS NOT NULL))
        RETURNING cls.deleted AND NOT cls.was_deleted AS gone, cls.hash <> cls.old_hash AS changed,
                  cls.name <> cls.old_name AS moved
    )
    SELECT (SELECT count(*) FROM ins),
           (SELECT count(*) FILTER (WHERE changed AND NOT gone) FROM upd),
           (SELECT count(*) FILTER (WHERE moved AND NOT gone) FROM upd),
           (SELECT count(*) FILTER (WHERE gone) FROM upd),
           (SELECT count(*) FROM cls) - (SELECT count(*) FROM ins)
             - (SELECT count(*) FROM upd WHERE changed OR moved OR gone)
             - (SELECT count(*) FROM cls WHERE NOT cls.known AND cls.deleted)
    $q$, rows, lookup) INTO added, updated, renamed, deleted, unchanged USING p_run, p_connector, p_batch;
END $$;

-- An anchor staged twice, in one batch (p_batch) or anywhere in the run (NULL), fails it.
CREATE FUNCTION mesh._check_anchors(p_run bigint, p_batch integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE bad text;
BEGIN
    EXECUTE format('SELECT st.anchor FROM mesh.staging st WHERE st.run_id = $1 %s GROUP BY st.anchor HAVING count(*) > 1 LIMIT 1',
                   CASE WHEN p_batch IS NULL THEN '' ELSE 'AND st.batch = $2' END)
       INTO bad USING p_run, p_batch;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'the source returned anchor "%" more than once', bad
            USING ERRCODE = 'unique_violation',
                  HINT = 'An anchor must identify one object; fix the source or the connector''s anchor setting. Nothing was imported.';
    END IF;
END $$;

-- The end of an import: merges what is not merged yet (p_merged: every batch was), marks
-- what a full import no longer found as deleted, confirms exports, clears the staging.
CREATE FUNCTION mesh._merge_import(p_run bigint, p_connector integer, p_full boolean, p_merged boolean DEFAULT false,
    p_saw_all boolean DEFAULT false,
    OUT added integer, OUT updated integer, OUT renamed integer, OUT deleted integer,
    OUT unchanged integer, OUT confirmed integer)
LANGUAGE plpgsql SET work_mem = '8MB' SET hash_mem_multiplier = 1 SET jit = off AS $$
#variable_conflict use_column
DECLARE
    n integer;
    -- an export written after this import started cannot show in it
    run_started timestamptz := (SELECT r.started_at FROM mesh.run r WHERE r.id = p_run);
BEGIN
    PERFORM mesh._memory_budget();
    -- Statistics first: the checks below then scan the run once instead of probing it.
    PERFORM mesh._analyze_if('mesh.staging', (SELECT count(*) FROM mesh.staging s WHERE s.run_id = p_run));
    IF p_merged THEN
        -- Each batch was checked on its own; an anchor may still repeat across batches.
        PERFORM mesh._check_anchors(p_run, NULL);
        added := 0; updated := 0; renamed := 0; deleted := 0; unchanged := 0;
        n := (SELECT count(*) FROM mesh.staging s WHERE s.run_id = p_run);
    ELSE
        SELECT * INTO added, updated, renamed, deleted, unchanged FROM mesh._merge_rows(p_run, p_connector, NULL);
        n := added + updated + deleted;
    END IF;
    -- Plan what follows (the full import's difference, the next sync) for the new size.
    PERFORM mesh._analyze_if('mesh.connector_object', n);

    IF p_full THEN
        -- Everything the source no longer returns is gone.
        UPDATE mesh.connector_object c
           SET deleted = true, observed_at = statement_timestamp(), change_seq = nextval('mesh.change_seq')
         WHERE c.connector_id = p_connector AND NOT c.deleted
           AND NOT EXISTS (SELECT 1 FROM mesh.staging s WHERE s.run_id = p_run AND s.anchor = c.anchor);
        GET DIAGNOSTICS n = ROW_COUNT;
        deleted := deleted + n;
        PERFORM mesh._analyze_if('mesh.connector_object', n);
    END IF;

    -- A row an add wrote joins the object it was written for, found by the anchor the add
    -- gave it: a target without join rules would otherwise never learn whose row it is
    -- (and an upsert that took over an unjoined row makes that row the object's, a row
    -- left behind by a "leave" or "disable" policy too: the object is back in scope, and
    -- the engine wrote the row for it). Only an anchor one applied add claims: two adds
    -- that wrote the same key (the second over the first) leave the row unjoined, never
    -- joined to a guess.
    -- Driven by the applied adds (few), each row looked up by its key (OFFSET 0): a join
    -- of the two tables read the whole connector space on every import.
    UPDATE mesh.connector_object c
       SET mesh_id = a.mesh_id, disconnected = false, change_seq = nextval('mesh.change_seq')
      FROM (SELECT pe.mesh_id, x.ctid AS row_id
              FROM (SELECT min(pe.mesh_id) AS mesh_id, pe.anchor, min(pe.object_type) AS object_type
                      FROM mesh.pending_export pe
                     WHERE pe.connector_id = p_connector AND pe.status = 'applied' AND pe.operation = 'add'
                       AND pe.anchor IS NOT NULL
                     GROUP BY pe.anchor HAVING count(*) = 1) pe
              CROSS JOIN LATERAL (SELECT o.ctid FROM mesh.connector_object o
                                   WHERE o.connector_id = p_connector AND o.anchor = pe.anchor AND o.mesh_id IS NULL
                                     AND o.object_type = pe.object_type AND NOT o.deleted
                                     AND NOT EXISTS (SELECT 1 FROM mesh.connector_object j
                                                      WHERE j.connector_id = p_connector AND j.mesh_id = pe.mesh_id
                                                        AND NOT j.deleted)
                                   OFFSET 0) x) a
     WHERE c.ctid = a.row_id;

    -- Exports this import shows as done are confirmed.
    DELETE FROM mesh.pending_export pe
     USING mesh.connector_object c
     WHERE pe.connector_id = p_connector AND pe.status = 'applied'
       AND c.connector_id = p_connector AND c.mesh_id = pe.mesh_id
       AND ((pe.operation = 'delete' AND c.deleted)
            OR (pe.operation <> 'delete' AND NOT c.deleted AND mesh.reflects(c.attrs, pe.changes)));
    GET DIAGNOSTICS confirmed = ROW_COUNT;

    -- Exports this import shows undone: the object, read by this import after the write,
    -- has another value for an attribute the export wrote (changed back there, a trigger
    -- that keeps the old value, a column that stores another form of it), or is still
    -- there after its delete; or an add's row, an import that read everything (p_saw_all)
    -- did not find under the anchor the add wrote nor joined to its object, is gone. Written
    -- again; the third time, a failed export, retried as those are, with an error that says
    -- so. (Left as applied, the same change would never be written again.)
    WITH undone AS (
        SELECT pe.mesh_id, CASE WHEN pe.operation = 'delete' THEN 'the object still there'
                                ELSE 'another value for ' || mesh.contradicted(c.attrs, pe.changes) END AS showed
          FROM mesh.pending_export pe
          JOIN mesh.connector_object c ON c.connector_id = p_connector AND c.mesh_id = pe.mesh_id AND NOT c.deleted
         WHERE pe.connector_id = p_connector AND pe.status = 'applied'
           AND pe.applied_at < run_started
           AND EXISTS (SELECT 1 FROM mesh.staging s WHERE s.run_id = p_run AND s.anchor = c.anchor)
           AND (pe.operation = 'delete' OR mesh.contradicted(c.attrs, pe.changes) IS NOT NULL)
        UNION ALL
        SELECT pe.mesh_id, format('no row %s', pe.anchor)
          FROM mesh.pending_export pe
         WHERE p_saw_all AND pe.connector_id = p_connector AND pe.status = 'applied' AND pe.operation = 'add'
           AND pe.anchor IS NOT NULL
           AND pe.applied_at < run_started
           AND NOT EXISTS (SELECT 1 FROM mesh.connector_object c
                            WHERE c.connector_id = p_connector AND c.anchor = pe.anchor AND NOT c.deleted)
           AND NOT EXISTS (SELECT 1 FROM mesh.connector_object j
                            WHERE j.connector_id = p_connector AND j.mesh_id = pe.mesh_id AND NOT j.deleted)
    ), back AS (
        UPDATE mesh.pending_export pe
           SET undone = pe.undone + 1,
               status = CASE WHEN pe.undone >= 2 THEN 'failed' ELSE 'pending' END,
               error = CASE WHEN pe.undone >= 2 THEN format(
                   'written %s times, and each time the next import showed %s: something there '
                   'changes or removes it (a trigger, another tool, a person, a column that keeps '
                   'another form of the value, an import_query that does not return the row); fix '
                   'that, make the flow write what the target keeps, or stop exporting it. Retried '
                   'from retry_at on (mesh.retry retries now).', pe.undone + 1, u.showed) END,
               retry_at = CASE WHEN pe.undone >= 2 THEN
                   clock_timestamp() + least(interval '1 hour', interval '30 seconds' * 2 ^ least(pe.attempts, 10)) END
          FROM undone u
         WHERE pe.connector_id = p_connector AND pe.mesh_id = u.mesh_id
        -- (an add's error has no anchor, as when its export fails: one error row per add)
        RETURNING pe.mesh_id, CASE WHEN pe.operation = 'add' THEN NULL ELSE pe.anchor END AS anchor,
                  pe.operation, pe.status, pe.error
    )
    INSERT INTO mesh.run_error (run_id, connector_id, anchor, mesh_id, operation, message)
    SELECT p_run, p_connector, b.anchor, b.mesh_id, b.operation, b.error FROM back b WHERE b.status = 'failed'
    ON CONFLICT (connector_id, coalesce(anchor, ''), coalesce(mesh_id, 0), operation)
    DO UPDATE SET attempts = mesh.run_error.attempts + 1, last_seen = now(), message = EXCLUDED.message,
                  sqlstate = NULL, run_id = EXCLUDED.run_id;

    DELETE FROM mesh.staging s WHERE s.run_id = p_run;
END $$;

-- A multi-valued attribute's values as one text, order-insensitive (a directory returns a
-- group's members in any order; one member compares equal to the same single value).
CREATE FUNCTION mesh.set_text(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (SELECT string_agg(x, E'\x1f' ORDER BY x COLLATE "C") FROM jsonb_array_elements_text(v) x);

-- Whether a value as read is the value wanted (compared as text: 5 and "5" agree; an empty
-- wanted value is none; two arrays with the same values in another order are the same set).
CREATE FUNCTION mesh.same_value(current jsonb, wanted jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN current #>> '{}' IS NOT DISTINCT FROM mesh.nullif_empty(wanted) #>> '{}'
       OR coalesce(jsonb_typeof(wanted) = 'array' AND jsonb_typeof(current) = 'array'
                   AND mesh.set_text(current) = mesh.set_text(wanted), false);

-- Whether an object's attributes show every change.
CREATE FUNCTION mesh.reflects(attrs jsonb, changes jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce(bool_and(mesh.same_value(attrs -> e.key, e.value)), true)
    FROM jsonb_each(changes) e;
END;

-- The changed attributes an object shows with another value, NULL when there are none.
-- An attribute it does not show at all (an import that does not read it) says nothing;
-- empty is empty on both sides, and numbers compare as numbers (5 and 5.00 agree).
CREATE FUNCTION mesh.contradicted(attrs jsonb, changes jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT string_agg(e.key, ', ' ORDER BY e.key)
    FROM jsonb_each(changes) e
    WHERE attrs ? e.key AND NOT mesh.same_value(attrs -> e.key, e.value)
      AND mesh.nullif_empty(attrs -> e.key) IS DISTINCT FROM mesh.nullif_empty(e.value);
END;



-- Attribute-level difference: the wanted values that differ from the current ones.
-- Empty wanted values count only for attributes listed in nullable (they clear).
CREATE FUNCTION mesh.diff(current jsonb, want jsonb, nullable text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce(jsonb_object_agg(e.key, mesh.nullif_empty(e.value)), '{}')
    FROM jsonb_each(coalesce(want, '{}')) e
    WHERE (NOT mesh.is_empty(e.value) OR e.key = ANY (nullable))
      AND NOT mesh.same_value(current -> e.key, e.value);
END;

-- Export results: applied, confirmed (read back), or failed with the system's message.
-- One array per field, an element per object: read as they are, nothing to parse.
-- p_planned_by: each pending export's run_id as the export read it. A background export
-- commits between batches, and a sync in between may have planned another change for the
-- object: the outcome of what was sent then is not that change's (it stays to be sent).
CREATE FUNCTION mesh._record_export_outcomes(p_run bigint, p_connector integer, p_mesh_ids bigint[],
    p_statuses text[], p_errors text[], p_codes text[], p_operations text[], p_anchors text[],
    p_planned_by bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF 'confirmed' = ANY (p_statuses) THEN
        DELETE FROM mesh.pending_export pe
         USING unnest(p_mesh_ids, p_statuses, p_planned_by) AS o(mesh_id, status, planned_by)
         WHERE pe.connector_id = p_connector AND pe.mesh_id = o.mesh_id AND o.status = 'confirmed'
           AND pe.run_id IS NOT DISTINCT FROM o.planned_by;
    END IF;
    UPDATE mesh.pending_export pe
       SET status = o.status, attempts = pe.attempts + 1, error = o.error, run_id = p_run,
           -- the time of the write (an import that started before it cannot show it)
           applied_at = CASE WHEN o.status = 'applied' THEN clock_timestamp() END,
           -- back off: 30 s, 1 min, 2 min, ... at most an hour (mesh.retry() retries now)
           retry_at = CASE WHEN o.status = 'failed'
                           THEN clock_timestamp() + least(interval '1 hour', interval '30 seconds' * 2 ^ least(pe.attempts, 10)) END,
           -- an add's row, by the anchor it was written with (the next import joins it)
           anchor = CASE WHEN o.status = 'applied' AND pe.operation = 'add' THEN coalesce(o.anchor, pe.anchor)
                         ELSE pe.anchor END
      FROM unnest(p_mesh_ids, p_statuses, p_errors, p_planned_by, p_anchors) AS o(mesh_id, status, error, planned_by, anchor)
     WHERE pe.connector_id = p_connector AND pe.mesh_id = o.mesh_id AND o.status IN ('applied', 'failed')
       AND pe.run_id IS NOT DISTINCT FROM o.planned_by;
    -- Errors of earlier attempts go once their object is written.
    IF EXISTS (SELECT 1 FROM mesh.run_error e WHERE e.connector_id = p_connector) THEN
        DELETE FROM mesh.run_error e
         USING unnest(p_mesh_ids, p_statuses) AS o(mesh_id, status)
         WHERE e.connector_id = p_connector AND e.mesh_id = o.mesh_id AND o.status <> 'failed'
           AND e.operation IN ('add', 'update', 'disable', 'delete');
    END IF;
    IF 'failed' = ANY (p_statuses) THEN
        INSERT INTO mesh.run_error (run_id, connector_id, anchor, mesh_id, operation, message, sqlstate)
        SELECT p_run, p_connector, o.anchor, o.mesh_id, o.operation, o.error, o.code
          FROM unnest(p_mesh_ids, p_statuses, p_errors, p_codes, p_operations, p_anchors)
               AS o(mesh_id, status, error, code, operation, anchor)
         WHERE o.status = 'failed'
           -- recorded above: not a change planned since
           AND EXISTS (SELECT 1 FROM mesh.pending_export pe
                        WHERE pe.connector_id = p_connector AND pe.mesh_id = o.mesh_id AND pe.run_id = p_run)
        ON CONFLICT (connector_id, coalesce(anchor, ''), coalesce(mesh_id, 0), operation)
        DO UPDATE SET attempts = mesh.run_error.attempts + 1, last_seen = now(), message = EXCLUDED.message,
                      sqlstate = EXCLUDED.sqlstate, run_id = EXCLUDED.run_id;
    END IF;
END $$;

-- ---------------------------------------------------------------------------------------
-- Sync: join, project, lifecycle, resolve, plan exports, for what changed since the last
-- sync (everything when full, or when the rules changed).

CREATE FUNCTION mesh._sync(p_full boolean DEFAULT false, p_parent bigint DEFAULT NULL, p_existing bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET client_min_messages = warning SET work_mem = '8MB' SET hash_mem_multiplier = 1 SET jit = off AS $$
DECLARE
    st mesh.sync_state;
    full_sync boolean;
    whole boolean;
    fence bigint;
    run_id bigint;
    stmt record;
    n bigint;
    joined bigint := 0;
    projected bigint := 0;
    resolved bigint := 0;
    removed bigint := 0;
    planned bigint := 0;
    errs bigint := 0;
    affected bigint := 0;
    seq_mark bigint;
BEGIN
    -- One sync at a time, and no import writes while it runs: what it saw is what it marks done.
    PERFORM mesh._lock();
    PERFORM mesh._memory_budget();
    SELECT * INTO st FROM mesh.sync_state FOR UPDATE;
    full_sync := p_full OR st.rules_changed;
    fence := CASE WHEN full_sync THEN NULL ELSE st.last_seq END;
    IF p_existing IS NULL THEN
        INSERT INTO mesh.run (parent_id, profile) VALUES (p_parent, CASE WHEN full_sync THEN 'full_sync' ELSE 'sync' END)
        RETURNING id INTO run_id;
    ELSE
        run_id := p_existing;  -- a queued sync run a background worker executes
        UPDATE mesh.run SET status = 'running', phase = 'syncing' WHERE id = run_id;
    END IF;
    IF st.rules_changed THEN
        PERFORM mesh._rebuild_views();
    END IF;

    CREATE TEMP TABLE IF NOT EXISTS _mesh_affected (id bigint PRIMARY KEY);
    CREATE TEMP TABLE IF NOT EXISTS _mesh_projected (id bigint PRIMARY KEY, object_type text, projected_by integer);
    CREATE TEMP TABLE IF NOT EXISTS _mesh_join (
        connector_id integer, anchor text, position integer, candidates bigint, mesh_ids bigint[],
        PRIMARY KEY (connector_id, anchor));
    CREATE TEMP TABLE IF NOT EXISTS _mesh_plan (
        connector_id integer, mesh_id bigint, object_type text, anchor text, name text,
        mesh_deleted boolean, op text, changes jsonb, previous jsonb);
    TRUNCATE _mesh_affected, _mesh_projected, _mesh_join, _mesh_plan;

    -- 1. Join objects not joined yet, rule by rule; then project the rest where allowed.
    FOR stmt IN SELECT * FROM mesh._compile('join', full_sync) LOOP
        EXECUTE stmt.sql USING fence;
    END LOOP;
    PERFORM mesh._analyze_if('_mesh_join', (SELECT count(*) FROM _mesh_join));
    SELECT j, e INTO joined, errs FROM mesh._link_joins(run_id) AS l(j, e);
    projected := mesh._project(fence);
    PERFORM mesh._analyze_if('mesh.mesh_object', projected);

    -- Objects that found no match may match what was just projected (created with the
    -- attributes joins compare): join again.
    IF projected > 0 THEN
        TRUNCATE _mesh_join;
        FOR stmt IN SELECT * FROM mesh._compile('join', full_sync) LOOP
            EXECUTE stmt.sql USING NULL::bigint;
        END LOOP;
        PERFORM mesh._analyze_if('_mesh_join', (SELECT count(*) FROM _mesh_join));
        SELECT j, e INTO n, errs FROM mesh._link_joins(run_id) AS l(j, e);
        joined := joined + n;
    END IF;
    PERFORM mesh._analyze_if('mesh.connector_object', projected + joined);

    -- 2. What changed: mesh objects of changed connector objects (joined and projected
    --    ones included), and objects whose references can resolve now.
    IF NOT full_sync THEN
        INSERT INTO _mesh_affected
        SELECT DISTINCT c.mesh_id FROM mesh.connector_object c WHERE c.change_seq > st.last_seq AND c.mesh_id IS NOT NULL
        ON CONFLICT DO NOTHING;
        -- Marked objects whose time has come.
        INSERT INTO _mesh_affected
        SELECT o.id FROM mesh.mesh_object o WHERE o.delete_at <= now() AND NOT o.deleted
        ON CONFLICT DO NOTHING;
        INSERT INTO _mesh_affected
        SELECT DISTINCT u.mesh_id FROM mesh.unresolved_reference u
          JOIN mesh.connector_object c ON c.connector_id = u.connector_id AND c.name_key = u.name_key
                                      AND NOT c.deleted AND c.mesh_id IS NOT NULL
        ON CONFLICT DO NOTHING;
        SELECT count(*) INTO affected FROM _mesh_affected;
        ANALYZE _mesh_affected;  -- small or not, the plans below depend on its size
    END IF;
    -- A delta looks its objects up one by one; when more than a tenth of the objects changed
    -- (an export's read-back, a bulk change at a source), one pass over all of them costs
    -- less: the statements of a full sync, which give the same result. Counting stops at
    -- ten times the changes, so a small delta does not count the whole mesh.
    whole := full_sync OR (SELECT count(*) FROM (SELECT FROM mesh.mesh_object LIMIT 10 * affected) m) < 10 * affected;

    -- 3. Lifecycle: a mesh object goes when its authoritative objects are gone.
    FOR stmt IN SELECT * FROM mesh._compile('lifecycle', whole) LOOP
        EXECUTE stmt.sql INTO removed;
    END LOOP;

    -- 4. Resolve attributes by confidence (one statement per object type).
    FOR stmt IN SELECT * FROM mesh._compile('resolve', whole) LOOP
        EXECUTE stmt.sql;
        GET DIAGNOSTICS n = ROW_COUNT;
        resolved := resolved + n;
    END LOOP;

    IF whole THEN
        DELETE FROM mesh.unresolved_reference;
    ELSE
        DELETE FROM mesh.unresolved_reference u USING _mesh_affected a WHERE u.mesh_id = a.id;
    END IF;
    FOR stmt IN SELECT * FROM mesh._compile('unresolved', whole) LOOP
        EXECUTE stmt.sql;
    END LOOP;

    -- 6. Plan exports: objects referring to changed ones may need new identifiers too.
    IF NOT whole THEN
        FOR stmt IN SELECT * FROM mesh._compile('referrers', false) LOOP
            EXECUTE stmt.sql;
        END LOOP;
        SELECT count(*) INTO affected FROM _mesh_affected;
    ELSE
        SELECT count(*) INTO affected FROM mesh.mesh_object;
    END IF;
    FOR stmt IN SELECT * FROM mesh._compile('plan', whole) LOOP
        EXECUTE stmt.sql;
    END LOOP;
    PERFORM mesh._analyze_if('_mesh_plan', (SELECT count(*) FROM _mesh_plan));
    planned := mesh._apply_plan(run_id);

    -- Objects of connectors that do not export, joined to deleted mesh objects: disconnect.
    UPDATE mesh.connector_object c SET mesh_id = NULL, change_seq = nextval('mesh.change_seq')
      FROM mesh.mesh_object o
     WHERE o.deleted AND c.mesh_id = o.id AND NOT c.deleted
       AND NOT EXISTS (SELECT 1 FROM mesh.pending_export pe WHERE pe.connector_id = c.connector_id AND pe.mesh_id = o.id);

    -- 7. Done with: connector objects deleted at their source, and deleted mesh objects
    --    nothing points at any more.
    --    A deleted object of a mesh object marked for deletion stays (still linked) until
    --    the mesh object goes: if it comes back (same anchor), it rejoins the same object.
    DELETE FROM mesh.connector_object c WHERE c.deleted
       AND NOT EXISTS (SELECT 1 FROM mesh.mesh_object o WHERE o.id = c.mesh_id AND NOT o.deleted AND o.delete_at IS NOT NULL);
    DELETE FROM mesh.run_error e
     WHERE e.operation = 'join'
       AND NOT EXISTS (SELECT 1 FROM mesh.connector_object c
                        WHERE c.connector_id = e.connector_id AND c.anchor = e.anchor AND c.mesh_id IS NULL);
    DELETE FROM mesh.mesh_object o
     WHERE o.deleted
       AND NOT EXISTS (SELECT 1 FROM mesh.connector_object c WHERE c.mesh_id = o.id AND NOT c.deleted)
       AND NOT EXISTS (SELECT 1 FROM mesh.pending_export pe WHERE pe.mesh_id = o.id);

    UPDATE mesh.sync_state SET last_seq = (SELECT last_value FROM mesh.change_seq), rules_changed = false;
    UPDATE mesh.run
       SET status = CASE WHEN errs > 0 THEN 'warning' ELSE 'success' END, finished_at = clock_timestamp(),
           added = projected, updated = resolved, deleted = removed, errors = errs,
           details = jsonb_build_object('joined', joined, 'projected', projected, 'exports_planned', planned,
                                        'objects_considered', affected)
     WHERE id = run_id;
    RETURN run_id;
END $$;

-- Links the join candidates found in _mesh_join; ambiguous and contested ones become errors.
CREATE FUNCTION mesh._link_joins(p_run bigint, OUT joined bigint, OUT errors bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    WITH j AS (
        SELECT j.*, count(*) OVER (PARTITION BY j.connector_id, j.mesh_ids[1]) AS claims
        FROM _mesh_join j WHERE j.candidates = 1
    ), ok AS (
        SELECT j.* FROM j
        WHERE j.claims = 1
          AND NOT EXISTS (SELECT 1 FROM mesh.connector_object o
                           WHERE o.connector_id = j.connector_id AND o.mesh_id = j.mesh_ids[1] AND NOT o.deleted)
    )
    UPDATE mesh.connector_object c SET mesh_id = ok.mesh_ids[1], change_seq = nextval('mesh.change_seq')
      FROM ok WHERE c.connector_id = ok.connector_id AND c.anchor = ok.anchor;
    GET DIAGNOSTICS joined = ROW_COUNT;

    INSERT INTO mesh.run_error (run_id, connector_id, anchor, operation, message, sqlstate)
    SELECT p_run, j.connector_id, j.anchor, 'join',
           CASE WHEN j.candidates > 1
                THEN format('join rule %s matches %s mesh objects (%s): not joined; a join never guesses',
                            j.position, j.candidates, array_to_string(j.mesh_ids[1:10], ', '))
                ELSE format('join rule %s matches mesh object %s, which another object of this connector joins or claims',
                            j.position, j.mesh_ids[1]) END,
           '21000'
      FROM _mesh_join j
      JOIN mesh.connector_object c ON c.connector_id = j.connector_id AND c.anchor = j.anchor
     WHERE c.mesh_id IS NULL
    ON CONFLICT (connector_id, coalesce(anchor, ''), coalesce(mesh_id, 0), operation)
    DO UPDATE SET attempts = mesh.run_error.attempts + 1, last_seen = now(), message = EXCLUDED.message,
                  run_id = EXCLUDED.run_id;
    GET DIAGNOSTICS errors = ROW_COUNT;
END $$;

-- Creates mesh objects for unjoined objects of projecting connectors. A new object starts
-- with the attributes join rules compare (compiled per type), so objects of other
-- connectors can join it in this sync; the resolution fills in the rest.
CREATE FUNCTION mesh._project(fence bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    stmt record;
    with_attributes text[] := '{}';
BEGIN
    WITH p AS (
        SELECT c.connector_id, c.anchor, c.object_type, nextval('mesh.mesh_object_id_seq') AS id
          FROM mesh.connector_object c
          JOIN mesh.projection pr ON pr.connector_id = c.connector_id AND pr.object_type = c.object_type AND pr.enabled
         WHERE c.mesh_id IS NULL AND NOT c.deleted AND NOT c.disconnected AND (fence IS NULL OR c.change_seq > fence)
           AND NOT EXISTS (SELECT 1 FROM _mesh_join j WHERE j.connector_id = c.connector_id AND j.anchor = c.anchor)
    ), noted AS (
        INSERT INTO _mesh_projected (id, object_type, projected_by) SELECT p.id, p.object_type, p.connector_id FROM p
    )
    UPDATE mesh.connector_object c SET mesh_id = p.id, change_seq = nextval('mesh.change_seq')
      FROM p WHERE c.connector_id = p.connector_id AND c.anchor = p.anchor;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM mesh._analyze_if('_mesh_projected', n);
        FOR stmt IN SELECT * FROM mesh._compile('prejoin', true) LOOP
            EXECUTE stmt.sql;
            with_attributes := with_attributes || stmt.object_type;
        END LOOP;
        INSERT INTO mesh.mesh_object (id, object_type, projected_by)
        SELECT p.id, p.object_type, p.projected_by FROM _mesh_projected p WHERE p.object_type <> ALL (with_attributes);
    END IF;
    RETURN n;
END $$;

-- Turns _mesh_plan into pending exports (add / update / disable / delete), disconnects what
-- the policy leaves alone, and drops pending exports no longer needed.
CREATE FUNCTION mesh._apply_plan(p_run bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    -- Nothing to do (any more) for these.
    DELETE FROM mesh.pending_export pe USING _mesh_plan p
     WHERE pe.connector_id = p.connector_id AND pe.mesh_id = p.mesh_id
       AND (p.op IS NULL OR p.op = 'disconnect' OR (p.op IN ('update', 'disable') AND p.changes = '{}'));
    -- Deprovisioned by "leave", or already disabled: stop managing the object.
    UPDATE mesh.connector_object c SET mesh_id = NULL, disconnected = NOT p.mesh_deleted,
           change_seq = nextval('mesh.change_seq')
      FROM _mesh_plan p
     WHERE c.connector_id = p.connector_id AND c.anchor = p.anchor
       AND (p.op = 'disconnect' OR (p.op = 'disable' AND p.changes = '{}'));
    -- Objects deleted from the mesh before their add was exported.
    DELETE FROM mesh.pending_export pe USING mesh.mesh_object o
     WHERE o.id = pe.mesh_id AND o.deleted AND pe.operation = 'add';

    INSERT INTO mesh.pending_export AS pe (connector_id, mesh_id, object_type, operation, anchor, name, changes,
                                           previous, status, planned_at, run_id)
    SELECT p.connector_id, p.mesh_id, p.object_type, p.op, p.anchor, p.name, p.changes,
           p.previous,
           'pending', now(), p_run
      FROM _mesh_plan p
     WHERE p.op IN ('add', 'delete') OR (p.op IN ('update', 'disable') AND p.changes <> '{}')
    ON CONFLICT (connector_id, mesh_id) DO UPDATE
       SET operation = EXCLUDED.operation, name = EXCLUDED.name,
           -- an applied add keeps the anchor it was written with (its row joins by it)
           anchor = CASE WHEN pe.operation = EXCLUDED.operation AND pe.changes = EXCLUDED.changes
                         THEN coalesce(EXCLUDED.anchor, pe.anchor) ELSE EXCLUDED.anchor END,
           changes = EXCLUDED.changes, previous = EXCLUDED.previous, planned_at = now(),
           -- an export running meanwhile records its outcome only where run_id is as it read it
           run_id = CASE WHEN pe.operation = EXCLUDED.operation AND pe.changes = EXCLUDED.changes
                         THEN pe.run_id ELSE EXCLUDED.run_id END,
           -- the same change keeps its state (applied and waiting for confirmation, failed and
           -- backing off, held, approved); a different change starts over
           status = CASE WHEN pe.operation = EXCLUDED.operation AND pe.changes = EXCLUDED.changes
                         THEN pe.status ELSE 'pending' END,
           retry_at = CASE WHEN pe.operation = EXCLUDED.operation AND pe.changes = EXCLUDED.changes
                           THEN pe.retry_at END,
           attempts = CASE WHEN pe.operation = EXCLUDED.operation AND pe.changes = EXCLUDED.changes THEN pe.attempts ELSE 0 END,
           undone = CASE WHEN pe.operation = EXCLUDED.operation AND pe.changes = EXCLUDED.changes THEN pe.undone ELSE 0 END;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM mesh._analyze_if('mesh.pending_export', n);
    -- An export error goes with its export: withdrawn (nothing to do any more) or its object
    -- gone, it is no longer the state of anything (and would keep the dashboard at warning).
    IF EXISTS (SELECT 1 FROM mesh.run_error e WHERE e.mesh_id IS NOT NULL) THEN
        DELETE FROM mesh.run_error e
         WHERE e.mesh_id IS NOT NULL AND e.operation IN ('add', 'update', 'disable', 'delete')
           AND NOT EXISTS (SELECT 1 FROM mesh.pending_export pe
                            WHERE pe.connector_id = e.connector_id AND pe.mesh_id = e.mesh_id);
    END IF;
    RETURN n;
END $$;

-- ---------------------------------------------------------------------------------------
-- Views: what an operator looks at.

CREATE VIEW mesh.run_history AS
SELECT r.id AS run_id, r.parent_id, r.connector_name AS connector, r.profile, r.status,
       r.started_at, r.finished_at, r.finished_at - r.started_at AS duration,
       r.added, r.updated, r.renamed, r.deleted, r.unchanged, r.confirmed, r.errors,
       r.details, r.watermark_before, r.watermark_after, r.message
FROM mesh.run r;

CREATE VIEW mesh.errors AS
SELECT e.id, c.name AS connector, e.operation, e.anchor, e.mesh_id, e.message, e.sqlstate, e.attempts,
       e.first_seen, e.last_seen, e.run_id
FROM mesh.run_error e LEFT JOIN mesh.connector c ON c.id = e.connector_id;

CREATE VIEW mesh.pending_exports AS
SELECT pe.id, c.name AS connector, pe.mesh_id, pe.object_type, pe.operation, pe.anchor, pe.name,
       pe.changes, pe.previous, pe.status, pe.attempts, pe.undone, pe.error, pe.planned_at, pe.applied_at
FROM mesh.pending_export pe JOIN mesh.connector c ON c.id = pe.connector_id;

CREATE VIEW mesh.objects AS
SELECT o.id, o.object_type, o.attrs, o.deleted, pc.name AS projected_by, o.created_at, o.updated_at,
       (SELECT jsonb_object_agg(c.name, co.anchor ORDER BY c.name)
          FROM mesh.connector_object co JOIN mesh.connector c ON c.id = co.connector_id
         WHERE co.mesh_id = o.id AND NOT co.deleted) AS connectors,
       o.delete_at
FROM mesh.mesh_object o LEFT JOIN mesh.connector pc ON pc.id = o.projected_by;

-- Mesh objects marked for deletion and when they go (unless a source object joins them again).
CREATE VIEW mesh.pending_deletions AS
SELECT o.id, o.object_type, o.attrs, o.delete_reason AS reason, o.delete_at,
       greatest(o.delete_at - now(), interval '0') AS remaining
FROM mesh.mesh_object o WHERE o.delete_at IS NOT NULL AND NOT o.deleted;

-- Every rule, one row each: flows, join rules, projection and provisioning, with the id
-- mesh.remove_flow and mesh.remove_join_rule take (confidence: an import flow's, the higher
-- wins; position: a join rule's, the lower is tried first).
CREATE VIEW mesh.rules AS
SELECT f.direction || ' flow' AS rule, f.id, c.name AS connector, f.object_type, f.source, f.target,
       f.confidence, NULL::integer AS position,
       jsonb_strip_nulls(jsonb_build_object('empty_is_value', f.empty_is_value, 'reference', f.reference,
                                            'reference_to', (SELECT r.name FROM mesh.connector r
                                                              WHERE r.id = f.references_connector))) AS options
FROM mesh.flow_rule f JOIN mesh.connector c ON c.id = f.connector_id
UNION ALL
SELECT 'join rule', j.id, c.name, j.object_type, j.source, j.mesh_attribute, NULL, j.position, '{}'::jsonb
FROM mesh.join_rule j JOIN mesh.connector c ON c.id = j.connector_id
UNION ALL
SELECT 'projection', NULL, c.name, p.object_type, NULL, NULL, NULL, NULL, jsonb_build_object('enabled', p.enabled)
FROM mesh.projection p JOIN mesh.connector c ON c.id = p.connector_id
UNION ALL
SELECT 'provisioning', NULL, c.name, p.object_type, p.scope, NULL, NULL, NULL, p.options
FROM mesh.provisioning p JOIN mesh.connector c ON c.id = p.connector_id;

-- Each connector's discovered schema, and the flows that use each attribute.
CREATE VIEW mesh.schema AS
SELECT c.name AS connector, s.object_type, s.source_class, s.attribute, s.syntax, s.multi_valued, s.reference,
       (SELECT array_agg(format('%s #%s %s %s', f.direction, f.id, CASE f.direction WHEN 'import' THEN '->' ELSE '<-' END,
                                CASE f.direction WHEN 'import' THEN f.target ELSE f.source END) ORDER BY f.id)
          FROM mesh.flow_rule f
         WHERE f.connector_id = s.connector_id AND f.object_type = s.object_type
           AND ((f.direction = 'export' AND f.target = s.attribute)
                OR (f.direction = 'import' AND (f.source = s.attribute OR f.source ~ ('(^|[^A-Za-z0-9_"])' || s.attribute || '($|[^A-Za-z0-9_"])'))))
       ) AS used_by,
       s.discovered_at
FROM mesh.connector_schema s JOIN mesh.connector c ON c.id = s.connector_id;

-- When mesh objects of a type go (see mesh.object_type) and after which grace period.
CREATE FUNCTION mesh.set_deletion_rule(object_type text, rule text, grace interval DEFAULT '0')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mesh._lock();
    IF rule IS NULL OR rule NOT IN ('authoritative', 'last_connector', 'manual') THEN
        RAISE EXCEPTION 'unknown deletion rule "%"', rule USING ERRCODE = 'invalid_parameter_value',
            HINT = 'authoritative (its last object of a projecting connector is gone), last_connector (its last connector object is gone) or manual (mesh.delete_object only).';
    END IF;
    IF grace IS NULL OR grace < interval '0' THEN
        RAISE EXCEPTION 'a grace period must be zero or more, not %', grace USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE mesh.object_type t SET deletion = rule, grace = set_deletion_rule.grace WHERE t.name = object_type;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'object type "%" does not exist', object_type USING ERRCODE = 'undefined_object',
            HINT = 'Object types are listed in mesh.object_type; add one with mesh.create_object_type(name).';
    END IF;
END $$;

-- Deletes a mesh object by hand: the next sync deletes it and deprovisions it per policy.
CREATE FUNCTION mesh.delete_object(object_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mesh._lock();
    UPDATE mesh.mesh_object o SET delete_at = now(), delete_reason = 'manual', updated_at = now()
     WHERE o.id = object_id AND NOT o.deleted;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'mesh object % does not exist', object_id USING ERRCODE = 'undefined_object',
            HINT = 'Mesh objects are listed in mesh.objects.';
    END IF;
END $$;

-- Every contribution of every connector object: one row per import flow. Rebuilt from the
-- flows by mesh._rebuild_views(); this first version is empty.
CREATE VIEW mesh.contributions AS
SELECT NULL::bigint AS mesh_id, NULL::text AS attribute, NULL::jsonb AS value, NULL::integer AS confidence,
       NULL::timestamptz AS observed_at, NULL::text AS connector, NULL::integer AS rule_id, NULL::text AS source,
       NULL::text COLLATE "C" AS anchor, NULL::boolean AS empty_is_value
WHERE false;

-- Attributes where sources disagree, with the value that won.
CREATE VIEW mesh.conflicts AS
SELECT k.mesh_id, o.object_type, k.attribute, o.attrs -> k.attribute AS resolved_value,
       jsonb_object_agg(k.connector, jsonb_build_object('value', k.value, 'confidence', k.confidence)) AS contributions,
       count(DISTINCT k.value #>> '{}') AS distinct_values
FROM mesh.contributions k JOIN mesh.mesh_object o ON o.id = k.mesh_id
WHERE NOT mesh.is_empty(k.value)
GROUP BY k.mesh_id, o.object_type, k.attribute, o.attrs
HAVING count(DISTINCT k.value #>> '{}') > 1;

-- Health per connector and direction. Status rules:
--   Disabled  the connector is disabled
--   Running   a run of it is running now
--   Error     its last run in this direction failed
--   Staging   exports to it are computed but never written (staging mode)
--   Blocked   an export to it is held by a deletion threshold (mesh.approve releases it)
--   Warning   its last run ended with object errors, or objects of it have errors now,
--             or exports to it are failing
--   Never run no run in this direction yet
--   Healthy   otherwise
CREATE VIEW mesh.dashboard AS
WITH dir AS (
    SELECT c.id, c.name, c.kind, c.enabled, c.staging, d.direction
    FROM mesh.connector c
    CROSS JOIN LATERAL (VALUES ('import'), ('export')) d(direction)
    WHERE d.direction = 'import'
       OR EXISTS (SELECT 1 FROM mesh.flow_rule f WHERE f.connector_id = c.id AND f.direction = 'export')
       OR EXISTS (SELECT 1 FROM mesh.provisioning p WHERE p.connector_id = c.id)
), last AS (
    SELECT DISTINCT ON (r.connector_id, dir)
           r.connector_id, CASE WHEN r.profile = 'export' THEN 'export' ELSE 'import' END AS dir,
           r.status, r.started_at, r.finished_at, r.added + r.updated + r.deleted + r.unchanged AS processed, r.message
    FROM mesh.run r WHERE r.connector_id IS NOT NULL AND r.profile IN ('full_import', 'delta_import', 'export')
    ORDER BY r.connector_id, dir, r.id DESC
), objects AS (
    SELECT co.connector_id, count(*) FILTER (WHERE NOT co.deleted) AS imported,
           count(*) FILTER (WHERE NOT co.deleted AND co.mesh_id IS NOT NULL) AS joined
    FROM mesh.connector_object co GROUP BY co.connector_id
), pending AS (
    SELECT pe.connector_id, count(*) AS pending,
           count(*) FILTER (WHERE pe.status = 'failed') AS troubled,
           count(*) FILTER (WHERE pe.status = 'blocked') AS held
    FROM mesh.pending_export pe GROUP BY pe.connector_id
), errs AS (
    SELECT e.connector_id, count(*) AS errors, (array_agg(e.message ORDER BY e.last_seen DESC))[1] AS last_error
    FROM mesh.run_error e GROUP BY e.connector_id
), running AS (
    SELECT DISTINCT r.connector_id FROM mesh.run r WHERE r.status = 'running' AND r.finished_at IS NULL
)
SELECT d.name AS connector, d.kind, d.direction,
       CASE d.direction WHEN 'import' THEN d.name || ' -> Mesh' ELSE 'Mesh -> ' || d.name END AS flow,
       CASE
           WHEN NOT d.enabled THEN 'Disabled'
           WHEN EXISTS (SELECT 1 FROM running x WHERE x.connector_id = d.id) THEN 'Running'
           WHEN l.status = 'failed' THEN 'Error'
           WHEN d.direction = 'export' AND d.staging THEN 'Staging'
           WHEN d.direction = 'export' AND coalesce(p.held, 0) > 0 THEN 'Blocked'
           WHEN l.status = 'warning' OR coalesce(e.errors, 0) > 0
                OR (d.direction = 'export' AND coalesce(p.troubled, 0) > 0) THEN 'Warning'
           WHEN l.status IS NULL THEN 'Never run'
           ELSE 'Healthy'
       END AS status,
       CASE d.direction WHEN 'import' THEN coalesce(o.imported, 0) ELSE coalesce(o.joined, 0) END AS objects,
       CASE d.direction WHEN 'import' THEN format('%s objects imported', to_char(coalesce(o.imported, 0), 'FM999,999,999,990'))
                        ELSE format('%s objects exported', to_char(coalesce(o.joined, 0), 'FM999,999,999,990')) END AS summary,
       CASE WHEN d.direction = 'export' THEN coalesce(p.pending, 0) END AS pending_exports,
       coalesce(e.errors, 0) AS errors,
       l.finished_at AS last_run_at,
       CASE WHEN l.finished_at IS NULL THEN 'never'
            WHEN now() - l.finished_at < interval '1 minute' THEN 'just now'
            WHEN now() - l.finished_at < interval '1 hour' THEN format('%s min ago', extract(minute FROM now() - l.finished_at)::int)
            WHEN now() - l.finished_at < interval '1 day' THEN format('%s h ago', floor(extract(epoch FROM now() - l.finished_at) / 3600)::int)
            ELSE format('%s days ago', extract(day FROM now() - l.finished_at)::int) END AS last_run,
       round(l.processed / greatest(extract(epoch FROM l.finished_at - l.started_at), 0.001))::bigint AS objects_per_second,
       -- the last object's error, else why the last run failed
       coalesce(e.last_error, CASE WHEN l.status = 'failed' THEN l.message END) AS last_error
FROM dir d
LEFT JOIN last l ON l.connector_id = d.id AND l.dir = d.direction
LEFT JOIN objects o ON o.connector_id = d.id
LEFT JOIN pending p ON p.connector_id = d.id
LEFT JOIN errs e ON e.connector_id = d.id
ORDER BY d.name, d.direction DESC;

-- ---------------------------------------------------------------------------------------
-- The SQL surface for runs.

-- Runs full_import, delta_import or export of one connector now; one summary row.
CREATE FUNCTION mesh.run(connector text, profile text) RETURNS SETOF mesh.run_history
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE rid bigint;
BEGIN
    rid := mesh._run(connector, profile);
    RETURN QUERY SELECT * FROM mesh.run_history h WHERE h.run_id = rid;
END $$;

-- Joins, projects, resolves and plans exports for what changed (everything when full).
CREATE FUNCTION mesh.sync(full boolean DEFAULT false) RETURNS SETOF mesh.run_history
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE rid bigint;
BEGIN
    rid := mesh._sync($1);
    RETURN QUERY SELECT * FROM mesh.run_history h WHERE h.run_id = rid;
END $$;

-- Delta import of every enabled connector, sync, then export to every connector with
-- export flows or provisioning: one summary row per step.
CREATE FUNCTION mesh.cycle() RETURNS SETOF mesh.run_history
LANGUAGE plpgsql AS $$
DECLARE cyc bigint;
BEGIN
    INSERT INTO mesh.run (profile) VALUES ('cycle') RETURNING id INTO cyc;
    PERFORM mesh._cycle(cyc);
    RETURN QUERY SELECT * FROM mesh.run_history h WHERE h.parent_id = cyc ORDER BY h.run_id;
END $$;

-- Every contribution to one attribute of one mesh object, which won, and why.
CREATE FUNCTION mesh.explain(object_id bigint, attribute text)
RETURNS TABLE (connector text, source text, value jsonb, confidence integer, observed_at timestamptz,
               counts boolean, winner boolean, reason text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (SELECT 1 FROM mesh.mesh_object o WHERE o.id = explain.object_id) THEN
        RAISE EXCEPTION 'mesh object % does not exist', explain.object_id
            USING ERRCODE = 'undefined_object', HINT = 'Mesh objects are listed in mesh.objects.';
    END IF;
    RETURN QUERY
    WITH k AS (
        SELECT k.*, (k.empty_is_value OR NOT mesh.is_empty(k.value)) AS counts
        FROM mesh.contributions k WHERE k.mesh_id = explain.object_id AND k.attribute = explain.attribute
    ), r AS (
        SELECT k.*, CASE WHEN k.counts THEN row_number() OVER (PARTITION BY k.counts
                         ORDER BY k.confidence DESC, k.observed_at DESC, k.connector) END AS rank
        FROM k
    ), w AS (SELECT * FROM r WHERE r.rank = 1), ru AS (SELECT * FROM r WHERE r.rank = 2)
    SELECT r.connector, r.source, r.value, r.confidence, r.observed_at, r.counts, coalesce(r.rank = 1, false),
           CASE
               WHEN NOT r.counts THEN 'empty value: no contribution (the rule does not clear)'
               WHEN r.rank = 1 THEN
                   CASE WHEN ru.connector IS NULL THEN 'only contribution'
                        WHEN r.confidence > ru.confidence THEN format('highest confidence (%s over %s)', r.confidence, ru.confidence)
                        WHEN r.observed_at > ru.observed_at THEN format('confidence tied at %s; most recently observed', r.confidence)
                        ELSE format('confidence and observation time tied; connector name %L sorts first', r.connector) END
               WHEN r.confidence < w.confidence THEN format('lower confidence (%s < %s)', r.confidence, w.confidence)
               WHEN r.observed_at < w.observed_at THEN 'confidence tied; observed earlier'
               ELSE 'confidence and observation time tied; connector name sorts later'
           END
    FROM r LEFT JOIN w ON true LEFT JOIN ru ON true
    ORDER BY r.rank NULLS LAST, r.connector;
END $$;

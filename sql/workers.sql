-- idmesh background runs: a queue in mesh.run (status 'queued'), a launcher background
-- worker that starts one dynamic worker per run, cancellation, crash recovery, progress.
-- Needs shared_preload_libraries = 'idmesh' (and idmesh.database naming this database).

-- Queues a run; returns its id at once. Profiles: full_import, delta_import, export for a
-- connector; sync, full_sync and cycle with connector NULL (or use mesh.enqueue_cycle()).
CREATE FUNCTION mesh.enqueue(connector text, profile text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    cid integer;
    rid bigint;
BEGIN
    IF NOT (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ',') @> ARRAY['idmesh']) THEN
        RAISE EXCEPTION 'background runs need idmesh in shared_preload_libraries'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Add idmesh to shared_preload_libraries, set idmesh.database to this database, and restart; '
                         'mesh.run() and mesh.cycle() work without it, in your session.';
    END IF;
    IF current_database() <> current_setting('idmesh.database') THEN
        RAISE EXCEPTION 'the idmesh launcher serves database "%", not "%"', current_setting('idmesh.database'), current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Set idmesh.database and restart the server.';
    END IF;
    IF profile IN ('full_import', 'delta_import', 'export') THEN
        SELECT c.id INTO cid FROM mesh.connector c WHERE c.name = enqueue.connector;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'connector "%" does not exist', enqueue.connector USING ERRCODE = 'undefined_object';
        END IF;
    ELSIF profile IN ('sync', 'full_sync', 'cycle') THEN
        IF enqueue.connector IS NOT NULL THEN
            RAISE EXCEPTION '% runs for every connector: pass NULL as the connector', profile
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown run profile "%"', profile
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Profiles: full_import, delta_import, export, sync, full_sync, cycle.';
    END IF;
    INSERT INTO mesh.run (connector_id, connector_name, profile, status)
    VALUES (cid, enqueue.connector, profile, 'queued') RETURNING id INTO rid;
    RETURN rid;
END $$;

-- Queues a whole cycle: delta imports of every enabled connector, sync, exports, in order.
CREATE FUNCTION mesh.enqueue_cycle() RETURNS bigint
LANGUAGE sql AS $$ SELECT mesh.enqueue(NULL, 'cycle') $$;

-- Cancels a queued run at once, or a running one at its next batch boundary.
CREATE FUNCTION mesh.cancel(run_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE st text;
BEGIN
    SELECT r.status INTO st FROM mesh.run r WHERE r.id = cancel.run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', cancel.run_id USING ERRCODE = 'undefined_object';
    END IF;
    IF st = 'queued' THEN
        UPDATE mesh.run r SET status = 'cancelled', finished_at = clock_timestamp(), message = 'cancelled before it started'
         WHERE r.id = cancel.run_id;
        RETURN 'cancelled';
    ELSIF st = 'running' THEN
        UPDATE mesh.run r SET cancel_requested = true WHERE r.id = cancel.run_id;
        RETURN 'cancelling';
    END IF;
    RAISE EXCEPTION 'run % has already ended (%)', cancel.run_id, st USING ERRCODE = 'object_not_in_prerequisite_state';
END $$;

-- Runs cut short by a crash, a terminated worker or a restart: failed, their staged rows
-- dropped. Their watermark never moved (it moves only with a finished import).
CREATE FUNCTION mesh._reap_runs() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE n integer;
BEGIN
    WITH dead AS (
        UPDATE mesh.run r
           SET status = CASE WHEN r.cancel_requested THEN 'cancelled' ELSE 'failed' END,
               finished_at = clock_timestamp(), phase = NULL,
               message = CASE WHEN r.cancel_requested THEN 'cancelled'
                              ELSE 'cut short: its worker ended (crash, termination or restart); the watermark did not move' END
         WHERE r.status = 'running' AND r.launched_at IS NOT NULL
           AND ((r.worker_pid IS NULL AND r.launched_at < clock_timestamp() - interval '60 seconds')
                OR (r.worker_pid IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.worker_pid)))
        RETURNING r.id
    ), children AS (
        UPDATE mesh.run k SET status = 'failed', finished_at = clock_timestamp(), message = 'cut short with its cycle'
          FROM dead WHERE k.parent_id = dead.id AND k.status = 'running'
        RETURNING k.id
    )
    DELETE FROM mesh.staging s
     WHERE s.run_id IN (SELECT id FROM dead UNION ALL SELECT id FROM children);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- The queued runs the launcher may start now, marked launched: in queue order, at most
-- one run per connector, a cycle or sync alone, and no more than max_workers at once.
CREATE FUNCTION mesh._next_runs(max_workers integer) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    q record;
    busy integer;
    exclusive boolean;
BEGIN
    PERFORM mesh._reap_runs();
    SELECT count(*), coalesce(bool_or(r.connector_id IS NULL), false) INTO busy, exclusive
      FROM mesh.run r WHERE r.status = 'running' AND r.launched_at IS NOT NULL;
    FOR q IN SELECT r.id, r.connector_id FROM mesh.run r WHERE r.status = 'queued' ORDER BY r.id LOOP
        EXIT WHEN busy >= max_workers OR exclusive;
        IF q.connector_id IS NULL THEN
            -- a cycle or a sync touches every connector: it waits for the others, and they for it
            EXIT WHEN busy > 0;
            exclusive := true;
        ELSIF EXISTS (SELECT 1 FROM mesh.run r WHERE r.status = 'running' AND r.launched_at IS NOT NULL
                         AND r.connector_id = q.connector_id) THEN
            CONTINUE;
        END IF;
        UPDATE mesh.run r SET status = 'running', launched_at = clock_timestamp(), started_at = clock_timestamp()
         WHERE r.id = q.id;
        busy := busy + 1;
        RETURN NEXT q.id;
    END LOOP;
END $$;

-- Runs in progress, with their progress.
CREATE VIEW mesh.running AS
SELECT r.id AS run_id, r.connector_name AS connector, r.profile, r.phase, r.seen, r.total,
       CASE WHEN r.seen > 0 THEN round(r.seen / greatest(extract(epoch FROM coalesce(r.progress_at, clock_timestamp()) - r.started_at), 0.001))::bigint END
           AS objects_per_second,
       clock_timestamp() - r.started_at AS elapsed, r.worker_pid, r.cancel_requested, r.parent_id
FROM mesh.run r
WHERE r.status = 'running';

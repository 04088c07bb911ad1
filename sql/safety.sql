-- idmesh safety: deletion thresholds, approval, staging, preview, retries, audit.

-- Deletion threshold and staging mode of one connector (NULL keeps the current value).
-- An export whose deletes and disables exceed delete_threshold objects, or
-- delete_threshold_percent of the connector's objects (for connectors of 20 objects or
-- more), is held with nothing written until mesh.approve(connector).
CREATE FUNCTION mesh.set_safety(connector text, delete_threshold integer DEFAULT NULL,
                                delete_threshold_percent numeric DEFAULT NULL, staging boolean DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mesh._lock();
    UPDATE mesh.connector c
       SET delete_threshold = coalesce(set_safety.delete_threshold, c.delete_threshold),
           delete_threshold_percent = coalesce(set_safety.delete_threshold_percent, c.delete_threshold_percent),
           staging = coalesce(set_safety.staging, c.staging),
           updated_at = now()
     WHERE c.name = set_safety.connector;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'connector "%" does not exist', set_safety.connector USING ERRCODE = 'undefined_object';
    END IF;
EXCEPTION WHEN check_violation THEN
    RAISE EXCEPTION 'delete_threshold must be 0 or more and delete_threshold_percent between 0 and 100'
        USING ERRCODE = 'invalid_parameter_value';
END $$;

-- Decides, at the start of an export run, whether it may write: 'go', 'staging', or
-- 'blocked' (then every waiting change of the connector is held).
CREATE FUNCTION mesh._export_gate(p_connector integer, OUT verdict text, OUT message text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    c mesh.connector;
    waiting bigint;
    removals bigint;
    total bigint;
BEGIN
    SELECT * INTO c FROM mesh.connector WHERE id = p_connector;
    SELECT count(*) INTO waiting FROM mesh.pending_export pe
     WHERE pe.connector_id = p_connector AND pe.status IN ('pending', 'failed', 'blocked', 'approved');
    IF c.staging THEN
        verdict := 'staging';
        message := format('staging mode: %s changes computed, nothing written; see mesh.preview(%L)', waiting, c.name);
        RETURN;
    END IF;
    SELECT count(*) INTO removals FROM mesh.pending_export pe
     WHERE pe.connector_id = p_connector AND pe.status IN ('pending', 'failed', 'blocked')
       AND pe.operation IN ('delete', 'disable');
    IF removals = 0 THEN
        verdict := 'go';
        RETURN;
    END IF;
    SELECT count(*) INTO total FROM mesh.connector_object co WHERE co.connector_id = p_connector AND NOT co.deleted;
    IF removals > c.delete_threshold
       OR (total >= 20 AND removals * 100 > c.delete_threshold_percent * total) THEN
        UPDATE mesh.pending_export pe SET status = 'blocked'
         WHERE pe.connector_id = p_connector AND pe.status IN ('pending', 'failed');
        verdict := 'blocked';
        message := format('held: %s deletes and disables of %s objects cross the threshold (more than %s, or %s%%); '
                          'nothing was written. Review mesh.preview(%L), then release with mesh.approve(%L)',
                          removals, total, c.delete_threshold, c.delete_threshold_percent, c.name, c.name);
        RETURN;
    END IF;
    verdict := 'go';
END $$;

-- Releases the export held for a connector: exactly the changes held now. Returns how many.
CREATE FUNCTION mesh.approve(connector text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    cid integer;
    n bigint;
    summary jsonb;
BEGIN
    PERFORM mesh._lock();
    SELECT c.id INTO cid FROM mesh.connector c WHERE c.name = approve.connector;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'connector "%" does not exist', approve.connector USING ERRCODE = 'undefined_object';
    END IF;
    SELECT jsonb_object_agg(op, k) INTO summary
      FROM (SELECT pe.operation AS op, count(*) AS k FROM mesh.pending_export pe
             WHERE pe.connector_id = cid AND pe.status = 'blocked' GROUP BY pe.operation) x;
    UPDATE mesh.pending_export pe SET status = 'approved' WHERE pe.connector_id = cid AND pe.status = 'blocked';
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RAISE EXCEPTION 'no export is held for connector "%"', approve.connector
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Held exports show as Blocked in mesh.dashboard.';
    END IF;
    INSERT INTO mesh.audit (action, object, connector, detail)
    VALUES ('approve', 'export', approve.connector, jsonb_build_object('changes', n, 'operations', summary));
    RETURN n;
END $$;

-- Retries a connector's failed exports at its next export run, without waiting for the backoff.
CREATE FUNCTION mesh.retry(connector text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    PERFORM mesh._lock();
    UPDATE mesh.pending_export pe SET retry_at = NULL
      FROM mesh.connector c
     WHERE c.name = retry.connector AND pe.connector_id = c.id AND pe.status = 'failed';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Every change the next export of a connector would make, attribute by attribute, with the
-- rule and source behind it. Writes nothing.
CREATE FUNCTION mesh.preview(connector text)
RETURNS TABLE (mesh_id bigint, anchor text, name text, operation text, attribute text, old_value jsonb,
               new_value jsonb, rule_id integer, source text, status text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (SELECT 1 FROM mesh.connector c WHERE c.name = preview.connector) THEN
        RAISE EXCEPTION 'connector "%" does not exist', preview.connector USING ERRCODE = 'undefined_object';
    END IF;
    RETURN QUERY
    SELECT pe.mesh_id, pe.anchor, pe.name, pe.operation, e.key, pe.previous -> e.key, e.value, f.id,
           CASE WHEN pe.operation = 'disable' THEN 'deprovisioning policy (disable)' ELSE f.source END,
           pe.status
      FROM mesh.pending_export pe
      JOIN mesh.connector c ON c.id = pe.connector_id AND c.name = preview.connector
      LEFT JOIN LATERAL jsonb_each(pe.changes) e ON true
      LEFT JOIN mesh.flow_rule f ON f.connector_id = pe.connector_id AND f.direction = 'export'
                                AND f.object_type = pe.object_type AND f.target = e.key AND pe.operation <> 'disable'
     WHERE pe.status IN ('pending', 'failed', 'blocked', 'approved')
     ORDER BY pe.operation, pe.mesh_id, e.key;
END $$;

-- What a whole cycle would do now: delta imports and a sync run and are rolled back, and
-- the changes every target would get are returned. Nothing is written, no watermark moves.
CREATE FUNCTION mesh.preview_cycle()
RETURNS TABLE (connector text, mesh_id bigint, anchor text, name text, operation text, attribute text,
               old_value jsonb, new_value jsonb, rule_id integer, source text, status text)
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb;
    failed jsonb := '[]';
    c record;
BEGIN
    BEGIN
        -- As a cycle does, a connector whose import fails is passed over (and shown).
        FOR c IN SELECT k.name FROM mesh.connector k WHERE k.enabled ORDER BY k.id LOOP
            BEGIN
                PERFORM mesh._run(c.name, 'delta_import');
            EXCEPTION WHEN OTHERS THEN
                failed := failed || jsonb_build_object('connector', c.name, 'operation', 'import failed',
                                                       'status', SQLERRM);
            END;
        END LOOP;
        BEGIN
            PERFORM mesh._sync(false);
            SELECT failed || coalesce(jsonb_agg(to_jsonb(x)), '[]') INTO result
              FROM (SELECT k.name AS connector, p.* FROM mesh.connector k CROSS JOIN LATERAL mesh.preview(k.name) p
                     ORDER BY k.name) x;
        EXCEPTION WHEN OTHERS THEN
            -- As a cycle: a sync that fails is shown, and nothing would be exported.
            result := failed || jsonb_build_array(jsonb_build_object('operation', 'sync failed', 'status', SQLERRM));
        END;
        RAISE EXCEPTION 'idmesh preview rollback' USING ERRCODE = 'P0001';
    EXCEPTION WHEN raise_exception THEN
        IF SQLERRM <> 'idmesh preview rollback' THEN
            RAISE;
        END IF;
    END;
    RETURN QUERY
    SELECT * FROM jsonb_to_recordset(result) AS r(connector text, mesh_id bigint, anchor text, name text,
        operation text, attribute text, old_value jsonb, new_value jsonb, rule_id integer, source text, status text);
END $$;

-- ---------------------------------------------------------------------------------------
-- Audit: every change to connectors and rules, with who made it. Secrets never appear.

CREATE FUNCTION mesh._audit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    full_new jsonb := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    full_old jsonb := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    row_new jsonb := full_new - 'secret';
    row_old jsonb := full_old - 'secret';
    secret_changed boolean := TG_OP = 'UPDATE' AND (full_new -> 'secret') IS DISTINCT FROM (full_old -> 'secret');
    cid integer := coalesce(row_new ->> 'connector_id', row_old ->> 'connector_id',
                            CASE WHEN TG_TABLE_NAME = 'connector' THEN coalesce(row_new ->> 'id', row_old ->> 'id') END)::integer;
BEGIN
    IF TG_OP = 'UPDATE' AND row_new = row_old AND NOT secret_changed THEN
        RETURN NULL;
    END IF;
    INSERT INTO mesh.audit (action, object, connector, detail)
    VALUES (lower(TG_OP), TG_TABLE_NAME,
            coalesce((SELECT c.name FROM mesh.connector c WHERE c.id = cid), row_old ->> 'name'),
            mesh.strip_null_attributes(jsonb_build_object('new', row_new, 'old', row_old,
                'secret_changed', CASE WHEN secret_changed THEN true END)));
    RETURN NULL;
END $$;

CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON mesh.connector FOR EACH ROW EXECUTE FUNCTION mesh._audit();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON mesh.flow_rule FOR EACH ROW EXECUTE FUNCTION mesh._audit();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON mesh.join_rule FOR EACH ROW EXECUTE FUNCTION mesh._audit();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON mesh.projection FOR EACH ROW EXECUTE FUNCTION mesh._audit();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON mesh.provisioning FOR EACH ROW EXECUTE FUNCTION mesh._audit();

CREATE VIEW mesh.audit_log AS
SELECT a.id, a.at, a.actor, a.action, a.object, a.connector, a.detail FROM mesh.audit a;

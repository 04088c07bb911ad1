-- idmesh schema: the sync state as ordinary tables, so it is backed up, replicated,
-- queried and joined like any other data. Everything lives in schema "mesh".
-- Runs first when the extension is created (before the Rust functions are declared).

-- Object types the mesh knows. person, group and contact come built in.
CREATE TABLE mesh.object_type (
    name     text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- When a mesh object of this type goes: 'authoritative' (its last object of a projecting
    -- connector is gone), 'last_connector' (its last connector object is gone) or 'manual'
    -- (only mesh.delete_object); after the grace period, during which it is only marked.
    deletion text NOT NULL DEFAULT 'authoritative' CHECK (deletion IN ('authoritative', 'last_connector', 'manual')),
    grace    interval NOT NULL DEFAULT '0' CHECK (grace >= interval '0')
);
INSERT INTO mesh.object_type VALUES ('person'), ('group'), ('contact');

-- One connected system.
CREATE TABLE mesh.connector (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (btrim(name) <> '' AND length(name) <= 200),
    kind        text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]*$'),
    config      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    -- AES-GCM ciphertext of the connection secret; never shown by a view.
    secret      bytea,
    enabled     boolean NOT NULL DEFAULT true,
    -- Safety (mesh.set_safety): an export whose deletes and disables exceed either
    -- threshold is held until an operator approves it; staging computes exports, never writes.
    delete_threshold         integer NOT NULL DEFAULT 500 CHECK (delete_threshold >= 0),
    delete_threshold_percent numeric NOT NULL DEFAULT 20 CHECK (delete_threshold_percent BETWEEN 0 AND 100),
    staging     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON mesh.connector FROM PUBLIC;

-- Per connector delta position. Moves only when a whole import run succeeded.
CREATE TABLE mesh.watermark (
    connector_id integer PRIMARY KEY REFERENCES mesh.connector ON DELETE CASCADE,
    value        jsonb NOT NULL,
    run_id       bigint,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Change numbers: every change to the connector space takes the next one, so a sync
-- knows exactly what changed since the last.
CREATE SEQUENCE mesh.change_seq;

-- The unified identities.
-- No foreign keys on the two hot tables (mesh_object, connector_object): the engine keeps
-- them consistent set-based (types are checked at staging, drop_connector cleans up), and a
-- foreign key costs a lookup and a queued trigger event per row, which would make memory
-- grow with the size of a run.
CREATE TABLE mesh.mesh_object (
    id           bigserial PRIMARY KEY,
    object_type  text NOT NULL,
    attrs        jsonb NOT NULL DEFAULT '{}',
    deleted      boolean NOT NULL DEFAULT false,
    projected_by integer,
    -- marked for deletion: goes at delete_at unless a source object joins it again first
    -- (reason 'grace'), or at the next sync (reason 'manual', from mesh.delete_object)
    delete_at    timestamptz,
    delete_reason text CHECK (delete_reason IN ('grace', 'manual')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mesh_object_type_idx ON mesh.mesh_object (object_type) WHERE NOT deleted;
CREATE INDEX mesh_object_deleted_idx ON mesh.mesh_object (id) WHERE deleted;
CREATE INDEX mesh_object_delete_at_idx ON mesh.mesh_object (delete_at) WHERE delete_at IS NOT NULL AND NOT deleted;

-- The connector space: the engine's last-known copy of each object in each system.
-- Anchors and name keys are compared for equality only: byte order ("C") makes each index
-- entry a memcmp instead of a locale comparison (a third of an import's merge time).
CREATE TABLE mesh.connector_object (
    connector_id integer NOT NULL,
    anchor       text COLLATE "C" NOT NULL, -- immutable identity (objectGUID, key columns)
    object_type  text NOT NULL,
    name         text NOT NULL,          -- DN or external name (may change: rename)
    name_key     text COLLATE "C" NOT NULL, -- normalized name, for reference lookups
    attrs        jsonb NOT NULL,
    hash         text NOT NULL,          -- md5 of attrs: unchanged re-reads are recognized
    deleted      boolean NOT NULL DEFAULT false,
    mesh_id      bigint,
    -- disconnected by policy (out of scope, deprovisioned by "leave"/"disable"): never
    -- joined again by join rules, so it cannot flap between joined and disconnected; an
    -- add the engine writes over it (its object back in scope) takes it back
    disconnected boolean NOT NULL DEFAULT false,
    observed_at  timestamptz NOT NULL,
    change_seq   bigint NOT NULL,
    PRIMARY KEY (connector_id, anchor)
);
CREATE INDEX connector_object_change_idx ON mesh.connector_object (change_seq);
-- References look names up among live objects only. Partial, so that a lookup by anchor
-- can use nothing but the primary key, however stale the statistics of a new connector.
CREATE INDEX connector_object_name_idx ON mesh.connector_object (connector_id, name_key) WHERE NOT deleted;
-- One object per connector per mesh object: a second one is a join error, never a merge.
CREATE UNIQUE INDEX connector_object_mesh_idx ON mesh.connector_object (connector_id, mesh_id)
    WHERE mesh_id IS NOT NULL AND NOT deleted;
-- No index for unjoined objects: a delta sync finds them by change_seq, a full sync reads
-- every object anyway (with or without one, a full sync of 100,000 took the same time),
-- and keeping one cost an import of 100,000 new objects 80 ms, a tenth of its time.

-- What a connected system holds, as mesh.discover_schema read it: flows are checked against it.
CREATE TABLE mesh.connector_schema (
    connector_id  integer NOT NULL REFERENCES mesh.connector ON DELETE CASCADE,
    object_type   text NOT NULL,
    source_class  text NOT NULL,          -- the system's name: user, group, a table, import_query
    attribute     text NOT NULL,
    syntax        text NOT NULL,          -- the system's type: DN, Unicode String, integer, ...
    multi_valued  boolean NOT NULL DEFAULT false,
    reference     boolean NOT NULL DEFAULT false,   -- the value names another object (a DN)
    discovered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector_id, object_type, attribute)
);

-- Import flows (connector -> mesh, with confidence) and export flows (mesh -> connector).
CREATE TABLE mesh.flow_rule (
    id             serial PRIMARY KEY,
    connector_id   integer NOT NULL REFERENCES mesh.connector ON DELETE CASCADE,
    direction      text NOT NULL CHECK (direction IN ('import', 'export')),
    object_type    text NOT NULL REFERENCES mesh.object_type,
    source         text NOT NULL CHECK (btrim(source) <> ''),
    target         text NOT NULL,
    confidence     integer CHECK (confidence BETWEEN 0 AND 100),
    -- true: an empty source value is a contribution that clears the attribute;
    -- false: an empty value is no contribution and the next best wins.
    empty_is_value boolean NOT NULL DEFAULT false,
    -- the value identifies another object (manager, member): stored as a mesh reference
    reference      boolean NOT NULL DEFAULT false,
    -- a reference naming objects of another connector (NULL: the flow's own connector)
    references_connector integer REFERENCES mesh.connector ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((direction = 'import') = (confidence IS NOT NULL)),
    UNIQUE (connector_id, direction, object_type, target)
);

-- Ordered join rules: connector-side expression = mesh attribute.
CREATE TABLE mesh.join_rule (
    id             serial PRIMARY KEY,
    connector_id   integer NOT NULL REFERENCES mesh.connector ON DELETE CASCADE,
    object_type    text NOT NULL REFERENCES mesh.object_type,
    position       integer NOT NULL CHECK (position > 0),
    source         text NOT NULL CHECK (btrim(source) <> ''),
    mesh_attribute text NOT NULL,
    UNIQUE (connector_id, object_type, position)
);

-- Whether a connector may create mesh objects.
CREATE TABLE mesh.projection (
    connector_id integer NOT NULL REFERENCES mesh.connector ON DELETE CASCADE,
    object_type  text NOT NULL REFERENCES mesh.object_type,
    enabled      boolean NOT NULL,
    PRIMARY KEY (connector_id, object_type)
);

-- Create objects in a connector for mesh objects in scope; deprovisioning policy.
CREATE TABLE mesh.provisioning (
    connector_id integer NOT NULL REFERENCES mesh.connector ON DELETE CASCADE,
    object_type  text NOT NULL REFERENCES mesh.object_type,
    scope        text,                   -- SQL condition over mesh attributes; NULL = all
    options      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
    PRIMARY KEY (connector_id, object_type)
);

-- Runs: imports, syncs, exports and whole cycles.
CREATE TABLE mesh.run (
    id               bigserial PRIMARY KEY,
    parent_id        bigint REFERENCES mesh.run ON DELETE CASCADE,
    connector_id     integer REFERENCES mesh.connector ON DELETE SET NULL,
    connector_name   text,
    profile          text NOT NULL CHECK (profile IN ('full_import', 'delta_import', 'sync', 'full_sync', 'export', 'cycle')),
    status           text NOT NULL DEFAULT 'running'
                     CHECK (status IN ('queued', 'running', 'success', 'warning', 'failed', 'cancelled', 'blocked')),
    started_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at      timestamptz,
    added            integer NOT NULL DEFAULT 0,
    updated          integer NOT NULL DEFAULT 0,
    renamed          integer NOT NULL DEFAULT 0,
    deleted          integer NOT NULL DEFAULT 0,
    unchanged        integer NOT NULL DEFAULT 0,
    confirmed        integer NOT NULL DEFAULT 0,
    errors           integer NOT NULL DEFAULT 0,
    details          jsonb NOT NULL DEFAULT '{}',
    watermark_before jsonb,
    watermark_after  jsonb,
    message          text,
    -- background runs (mesh.enqueue): when the launcher started a worker for it, the
    -- worker's pid, a cancel request, and progress while it runs
    launched_at      timestamptz,
    worker_pid       integer,
    cancel_requested boolean NOT NULL DEFAULT false,
    phase            text,
    seen             bigint NOT NULL DEFAULT 0,
    total            bigint,
    progress_at      timestamptz
);
CREATE INDEX run_connector_idx ON mesh.run (connector_id, id DESC);
CREATE INDEX run_queue_idx ON mesh.run (id) WHERE status IN ('queued', 'running');

-- Per-object errors: the run goes on; the object is retried on later runs.
CREATE TABLE mesh.run_error (
    id           bigserial PRIMARY KEY,
    run_id       bigint REFERENCES mesh.run ON DELETE SET NULL,
    connector_id integer REFERENCES mesh.connector ON DELETE CASCADE,
    anchor       text,
    mesh_id      bigint,
    operation    text NOT NULL,         -- join, import, add, update, disable, delete
    message      text NOT NULL,
    sqlstate     text,
    attempts     integer NOT NULL DEFAULT 1,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX run_error_object_idx
    ON mesh.run_error (connector_id, coalesce(anchor, ''), coalesce(mesh_id, 0), operation);

-- Changes computed for a connected system and not yet confirmed.
CREATE TABLE mesh.pending_export (
    id           bigserial NOT NULL,        -- the order first planned, for operators: not indexed
    connector_id integer NOT NULL,          -- no foreign key: hot table (see mesh_object)
    mesh_id      bigint NOT NULL,
    object_type  text NOT NULL,
    operation    text NOT NULL CHECK (operation IN ('add', 'update', 'disable', 'delete')),
    anchor       text,
    name         text,
    changes      jsonb NOT NULL DEFAULT '{}',   -- attribute -> new value
    previous     jsonb NOT NULL DEFAULT '{}',   -- attribute -> value before (as last imported)
    -- pending: to do; applied: written, waiting for the import that confirms it; failed:
    -- retried from retry_at on; blocked: held by a deletion threshold; approved: released
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'applied', 'failed', 'blocked', 'approved')),
    attempts     integer NOT NULL DEFAULT 0,
    undone       integer NOT NULL DEFAULT 0,   -- imports that showed the write undone
    error        text,
    retry_at     timestamptz,
    planned_at   timestamptz NOT NULL DEFAULT now(),
    applied_at   timestamptz,
    run_id       bigint,                    -- the sync that planned the change, then the last export
    PRIMARY KEY (connector_id, mesh_id)
);
-- One index: an export pages through the queue by mesh object, and every outcome recorded
-- is a new version of its row, so a second index on id cost each outcome another insert
-- (a batch's recording took 0.6-0.7 s per 100,000 rows with it, about 0.2 s less without).
-- Pages are filled (no fillfactor): half-empty pages made each outcome update HOT and the
-- recording of an export batch twice as fast, but every scan of the queue then read twice
-- the pages, and a delta cycle after a full one took 25 % longer (bench: 0.48 s, not 0.39 s).

-- Who changed which connector or rule, and who approved which held export, when.
CREATE TABLE mesh.audit (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- the role acting: SET ROLE's role when one is set, else the login
    actor     text NOT NULL DEFAULT coalesce(nullif(current_setting('role'), 'none'), session_user),
    action    text NOT NULL,
    object    text NOT NULL,
    connector text,
    detail    jsonb
);

-- Reference contributions whose target has not arrived yet: recomputed when it does.
CREATE TABLE mesh.unresolved_reference (
    mesh_id      bigint NOT NULL,
    rule_id      integer NOT NULL REFERENCES mesh.flow_rule ON DELETE CASCADE,
    connector_id integer NOT NULL,
    name_key     text NOT NULL,
    PRIMARY KEY (mesh_id, rule_id, name_key)
);
CREATE INDEX unresolved_reference_key_idx ON mesh.unresolved_reference (connector_id, name_key);

-- Where the last sync stopped, and whether the rules changed since (then the next sync is full).
CREATE TABLE mesh.sync_state (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_seq     bigint NOT NULL DEFAULT 0,
    rules_changed boolean NOT NULL DEFAULT true
);
INSERT INTO mesh.sync_state DEFAULT VALUES;

-- Import staging: one statement per batch lands here, one set-based merge moves it on.
CREATE UNLOGGED TABLE mesh.staging (
    run_id      bigint NOT NULL,
    batch       integer NOT NULL DEFAULT 0, -- the run's batch number, for a merge per batch
    anchor      text COLLATE "C" NOT NULL,
    name        text NOT NULL,
    object_type text NOT NULL,
    attrs       jsonb NOT NULL,
    deleted     boolean NOT NULL,
    mesh_id     bigint,                 -- set for objects read back after an export
    -- computed while staging, batch by batch (while the source prepares the next batch),
    -- so the merge at the end of the run does not
    hash        text NOT NULL,
    name_key    text COLLATE "C" NOT NULL
);
-- One index: a run's rows, batch by batch. Anchors are compared in hash joins over a whole
-- run (duplicates, the full import's difference), never looked up one by one, and an index
-- on them cost a third of each batch's staging.
CREATE INDEX staging_batch_idx ON mesh.staging (run_id, batch);

-- pg_dump keeps the configuration and the sync state (extension tables are skipped otherwise).
SELECT pg_catalog.pg_extension_config_dump('mesh.object_type', 'WHERE name NOT IN (''person'', ''group'', ''contact'')');
SELECT pg_catalog.pg_extension_config_dump('mesh.connector', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.watermark', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.connector_schema', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.mesh_object', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.connector_object', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.flow_rule', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.join_rule', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.projection', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.provisioning', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.run', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.run_error', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.pending_export', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.unresolved_reference', '');
SELECT pg_catalog.pg_extension_config_dump('mesh.audit', '');

-- ---------------------------------------------------------------------------------------
-- Value helpers used by the compiled rules (the SQL ones inlined by the planner).

-- The values that mean "no value": NULL, JSON null, "" and []. In C (src/values.rs): the
-- sync asks this for every attribute of every object, and as SQL (four jsonb comparisons)
-- it cost about 0.7 µs a call.
CREATE FUNCTION mesh.is_empty(v jsonb) RETURNS boolean
LANGUAGE c IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'idmesh_is_empty';

-- An object without its null members, at the top level only (jsonb_strip_nulls would
-- also strip them inside values: a jsonb column's {"z": null}). In C (src/values.rs): the
-- sync builds every object's resolved attributes through it.
CREATE FUNCTION mesh.strip_null_attributes(v jsonb) RETURNS jsonb
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'idmesh_strip_null_attributes';

CREATE FUNCTION mesh.nullif_empty(v jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN mesh.is_empty(v) THEN NULL ELSE v END;

-- Normalized external name, for matching references (case-insensitive).
CREATE FUNCTION mesh.name_key(name text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN lower(btrim(name));

-- The text values of a reference value: one string, or each element of an array.
CREATE FUNCTION mesh.ref_values(v jsonb) RETURNS SETOF text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT x FROM jsonb_array_elements_text(CASE jsonb_typeof(v) WHEN 'array' THEN v END) x
    UNION ALL
    SELECT v #>> '{}' WHERE jsonb_typeof(v) IN ('string', 'number') AND v #>> '{}' <> '';
END;

-- A connector's reference value (external name or names) as mesh object id(s).
-- Unresolved names are left out; a lone unresolved name gives NULL.
CREATE FUNCTION mesh.ref(connector integer, v jsonb) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE jsonb_typeof(v)
        WHEN 'array' THEN (
            SELECT jsonb_agg(DISTINCT c.mesh_id)
            FROM jsonb_array_elements_text(v) x
            JOIN mesh.connector_object c ON c.connector_id = ref.connector AND c.name_key = mesh.name_key(x)
            JOIN mesh.mesh_object m ON m.id = c.mesh_id AND NOT m.deleted
            WHERE NOT c.deleted)
        WHEN 'null' THEN NULL
        ELSE (
            SELECT to_jsonb(c.mesh_id)
            FROM mesh.connector_object c
            JOIN mesh.mesh_object m ON m.id = c.mesh_id AND NOT m.deleted
            WHERE c.connector_id = ref.connector AND c.name_key = mesh.name_key(v #>> '{}') AND NOT c.deleted)
    END;
END;

-- A mesh reference (id or ids) written in a connector's own identifiers (its external names).
CREATE FUNCTION mesh.ref_name(connector integer, v jsonb) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE jsonb_typeof(v)
        WHEN 'array' THEN (
            SELECT jsonb_agg(c.name ORDER BY c.name)
            FROM jsonb_array_elements_text(v) x
            JOIN mesh.connector_object c ON c.connector_id = ref_name.connector AND c.mesh_id = x::bigint
            WHERE NOT c.deleted)
        WHEN 'number' THEN (
            SELECT to_jsonb(c.name) FROM mesh.connector_object c
            WHERE c.connector_id = ref_name.connector AND c.mesh_id = (v #>> '{}')::bigint AND NOT c.deleted)
    END;
END;

-- ---------------------------------------------------------------------------------------
-- Confidence resolution as SQL, usable on its own:
--   SELECT mesh.resolve_agg(value, confidence, observed_at, connector, empty_is_value) ...
-- Highest confidence; then most recent observation; then connector name. An empty value
-- takes part only when its rule says empty means "clear it".

CREATE TYPE mesh.contribution AS (
    value          jsonb,
    confidence     integer,
    observed_at    timestamptz,
    source         text,
    empty_is_value boolean
);

-- Whether contribution a beats contribution b (b may be NULL: nothing yet).
CREATE FUNCTION mesh.beats(a mesh.contribution, b mesh.contribution) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (a.empty_is_value OR NOT mesh.is_empty(a.value))
   AND (b IS NULL OR b.confidence IS NULL
        OR a.confidence > b.confidence
        OR (a.confidence = b.confidence AND a.observed_at > b.observed_at)
        OR (a.confidence = b.confidence AND a.observed_at = b.observed_at AND a.source < b.source));

CREATE FUNCTION mesh.resolve_step(state mesh.contribution, value jsonb, confidence integer,
                                  observed_at timestamptz, source text, empty_is_value boolean DEFAULT false)
RETURNS mesh.contribution
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN mesh.beats(ROW(value, confidence, observed_at, source, coalesce(empty_is_value, false))::mesh.contribution, state)
            THEN ROW(value, confidence, observed_at, source, coalesce(empty_is_value, false))::mesh.contribution
            ELSE state END;

CREATE FUNCTION mesh.resolve_final(state mesh.contribution) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN mesh.nullif_empty((state).value);

CREATE AGGREGATE mesh.resolve_agg(jsonb, integer, timestamptz, text, boolean) (
    SFUNC = mesh.resolve_step,
    STYPE = mesh.contribution,
    FINALFUNC = mesh.resolve_final
);

-- The same over an array of contributions.
CREATE FUNCTION mesh.resolve(contributions mesh.contribution[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT mesh.resolve_agg(c.value, c.confidence, c.observed_at, c.source, c.empty_is_value)
    FROM unnest(contributions) c;
END;

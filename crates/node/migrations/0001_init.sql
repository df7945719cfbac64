-- Node identity: one row, written at first start. The id labels this node's runtime resources
-- so that two nodes sharing a Docker daemon never touch each other's containers.
CREATE TABLE node (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    node_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Sandboxes, including deleted ones, which stay as tombstones with state 'deleted'.
-- Timestamps are RFC 3339 UTC with whole seconds, so text comparison orders them.
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY NOT NULL,
    template TEXT NOT NULL,
    runtime TEXT NOT NULL,
    state TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    timeout INTEGER NOT NULL,
    env_vars TEXT NOT NULL,
    metadata TEXT NOT NULL,
    image TEXT NOT NULL,
    snapshot_id TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    updated_at TEXT NOT NULL
);

CREATE INDEX sandboxes_state ON sandboxes (state);
CREATE INDEX sandboxes_expires_at ON sandboxes (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE snapshots (
    id TEXT PRIMARY KEY NOT NULL,
    sandbox_id TEXT NOT NULL,
    runtime TEXT NOT NULL,
    kind TEXT NOT NULL,
    image TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

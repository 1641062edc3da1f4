-- wasmsched on PostgreSQL, schema version 1: what the embedded SQLite store keeps
-- (clusters, pending placements, documents written since the snapshot, memory changes in
-- flight), plus the replicas sharing the database and the cluster leases with their
-- fencing tokens. Applied by `wasmsched serve --store postgres://...` at start, under an
-- advisory lock, in one transaction.

CREATE TABLE clusters (
    id TEXT PRIMARY KEY,
    snapshot TEXT NOT NULL,
    policy TEXT NOT NULL
);

-- Orders a cluster's placements as they were written, over every replica.
CREATE SEQUENCE placement_seq;

CREATE TABLE placements (
    cluster TEXT NOT NULL,
    vm TEXT NOT NULL,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    vm_doc TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (cluster, vm)
);

CREATE TABLE host_docs (
    cluster TEXT NOT NULL,
    host TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (cluster, host)
);

CREATE TABLE vm_docs (
    cluster TEXT NOT NULL,
    vm TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (cluster, vm)
);

CREATE TABLE memory_changes (
    cluster TEXT NOT NULL,
    vm TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (cluster, vm)
);

-- Replicas alive: each renews its heartbeat; others forward requests to its url.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    heartbeat TIMESTAMPTZ NOT NULL
);

-- One lease per cluster. `token` grows with every grant and never goes back: a write
-- transaction locks the row (FOR SHARE) and goes on only if the token is still the
-- writer's. `holder` is NULL once the lease was given up.
CREATE TABLE leases (
    cluster TEXT PRIMARY KEY,
    holder TEXT,
    token BIGINT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);

-- Version 6: the nodes of a cluster (servers sharing one database), and
-- which node noted each open channel and client link, so that a node
-- starting after a crash closes its own notes and not another live node's.
--
-- nodes: one row per server, upserted by it every second.  heartbeat is
-- when it last did so (on SQLite, the one node, by its own clock).
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    admin_url TEXT NOT NULL,
    client_port INTEGER,
    version TEXT NOT NULL,
    started_time REAL NOT NULL,
    heartbeat REAL NOT NULL,
    clients INTEGER NOT NULL DEFAULT 0,
    channels INTEGER NOT NULL DEFAULT 0
);
-- Notes written before version 6 belong to no node: ''.
ALTER TABLE open_channels ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE open_clients ADD COLUMN node TEXT NOT NULL DEFAULT '';

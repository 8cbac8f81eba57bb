-- Version 6 (SQLite's upgrade-6.sql): the nodes of the cluster, and which
-- node noted each open channel and client link, so that a node starting
-- after a crash closes its own notes and not another live node's.
--
-- nodes: one row per server, upserted by it every second.  heartbeat is
-- the database's clock (seconds since the epoch) at its last upsert, so
-- that the nodes' own clocks need not agree.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    admin_url TEXT NOT NULL,
    client_port INTEGER,
    version TEXT NOT NULL,
    started_time DOUBLE PRECISION NOT NULL,
    heartbeat DOUBLE PRECISION NOT NULL,
    clients INTEGER NOT NULL DEFAULT 0,
    channels INTEGER NOT NULL DEFAULT 0
);
-- Notes written before version 6 belong to no node: ''.
ALTER TABLE open_channels ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE open_clients ADD COLUMN node TEXT NOT NULL DEFAULT '';
CREATE INDEX open_channels_node ON open_channels (node);
CREATE INDEX open_clients_node ON open_clients (node);

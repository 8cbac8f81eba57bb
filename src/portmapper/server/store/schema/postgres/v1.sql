-- Version 1, in PostgreSQL's dialect: the tables of SQLite's v1.sql, with
-- the same names and columns.  Every upgrade-N.sql of SQLite has its twin
-- here, so that a version number means the same schema in both backends.
-- Times are DOUBLE PRECISION (REAL would round them to a few digits); ids
-- and byte counts are BIGINT, as large as SQLite's integers.
CREATE TABLE mappings (
    -- A port taken by one server is taken for every server on this database.
    public_port INTEGER PRIMARY KEY,
    target_ip TEXT NOT NULL,
    target_port INTEGER NOT NULL,
    tag TEXT NOT NULL
);
-- History columns are deliberately lenient (no NOT NULL): a record with an
-- unexpected None is better stored than lost with the rest of its batch.
CREATE TABLE channel_history (
    channel_id BIGINT PRIMARY KEY,
    port INTEGER, ip TEXT, user_port INTEGER,
    client_id BIGINT, target_ip TEXT, target_port INTEGER,
    init_time DOUBLE PRECISION, close_time DOUBLE PRECISION,
    recv_bytes BIGINT, send_bytes BIGINT, close_reason TEXT
);
CREATE INDEX channel_history_port ON channel_history (port);
CREATE INDEX channel_history_client ON channel_history (client_id);
CREATE INDEX channel_history_close ON channel_history (close_time);
CREATE TABLE client_history (
    client_id BIGINT PRIMARY KEY,
    ip TEXT, port INTEGER, tag TEXT,
    init_time DOUBLE PRECISION, close_time DOUBLE PRECISION,
    recv_bytes BIGINT, send_bytes BIGINT, close_reason TEXT
);
CREATE INDEX client_history_close ON client_history (close_time);
CREATE TABLE last_ids (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO last_ids VALUES ('client_id', 0), ('channel_id', 0);

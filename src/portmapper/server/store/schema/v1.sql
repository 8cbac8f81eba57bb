-- Version 1: the schema of the first release, which kept no version number.
-- Kept as it was written then, so that a database made by that release is
-- recognised; never edit it: change the schema with a new upgrade-N.sql.
CREATE TABLE IF NOT EXISTS mappings (
    public_port INTEGER PRIMARY KEY,
    target_ip TEXT NOT NULL,
    target_port INTEGER NOT NULL,
    tag TEXT NOT NULL
);
-- History columns are deliberately lenient (no NOT NULL): a record with an
-- unexpected None is better stored than lost with the rest of its batch.
CREATE TABLE IF NOT EXISTS channel_history (
    channel_id INTEGER PRIMARY KEY,
    port INTEGER, ip TEXT, user_port INTEGER,
    client_id INTEGER, target_ip TEXT, target_port INTEGER,
    init_time REAL, close_time REAL,
    recv_bytes INTEGER, send_bytes INTEGER, close_reason TEXT
);
-- channel_id is the rowid, so these also serve "ORDER BY channel_id DESC".
CREATE INDEX IF NOT EXISTS channel_history_port ON channel_history (port);
CREATE INDEX IF NOT EXISTS channel_history_client ON channel_history (client_id);
CREATE INDEX IF NOT EXISTS channel_history_close ON channel_history (close_time);
CREATE TABLE IF NOT EXISTS client_history (
    client_id INTEGER PRIMARY KEY,
    ip TEXT, port INTEGER, tag TEXT,
    init_time REAL, close_time REAL,
    recv_bytes INTEGER, send_bytes INTEGER, close_reason TEXT
);
CREATE INDEX IF NOT EXISTS client_history_close ON client_history (close_time);
CREATE TABLE IF NOT EXISTS last_ids (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO last_ids VALUES ('client_id', 0), ('channel_id', 0);

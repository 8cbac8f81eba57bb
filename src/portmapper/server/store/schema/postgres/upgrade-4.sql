-- Version 4 (SQLite's upgrade-4.sql): what a server that dies without
-- stopping leaves behind can be closed at the next start, and refused
-- connections are counted, not listed.
--
-- open_channels and open_clients hold the channels and client links open
-- now, written in the same batches as history and deleted in the batch that
-- records their close.
CREATE TABLE open_channels (
    channel_id BIGINT PRIMARY KEY,
    port INTEGER, ip TEXT, user_port INTEGER,
    client_id BIGINT, target_ip TEXT, target_port INTEGER,
    init_time DOUBLE PRECISION
);
CREATE TABLE open_clients (
    client_id BIGINT PRIMARY KEY,
    ip TEXT, port INTEGER, tag TEXT,
    init_time DOUBLE PRECISION
);
-- The reactor time of the last batch written: the last time a server is
-- known to have been alive, the close_time of what it left open.
CREATE TABLE last_write (time DOUBLE PRECISION NOT NULL);
INSERT INTO last_write (time) VALUES (0);
-- A channel_history row with a count sums up the connections refused on a
-- port for one reason during one interval (NULL: a real channel).
ALTER TABLE channel_history ADD COLUMN count BIGINT;
CREATE INDEX channel_history_refusals ON channel_history (channel_id) WHERE count IS NOT NULL;

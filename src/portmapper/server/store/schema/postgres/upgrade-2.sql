-- Version 2 (SQLite's upgrade-2.sql): id_blocks, the next id not yet handed
-- out for each kind of id, so that a server can reserve blocks of ids ahead
-- of using them (one row per kind: servers sharing the database take their
-- blocks from the same row).  Seeded from last_ids.
CREATE TABLE id_blocks (
    name TEXT PRIMARY KEY,
    next_free BIGINT NOT NULL
);
INSERT INTO id_blocks (name, next_free) SELECT name, value + 1 FROM last_ids;

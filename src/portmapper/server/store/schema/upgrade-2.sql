-- Version 2: id_blocks, the next id not yet handed out for each kind of id,
-- so that the server can reserve blocks of ids on disk ahead of using them.
-- Seeded from last_ids (which stays, for now): the id after the highest one
-- ever recorded.
CREATE TABLE id_blocks (
    name TEXT PRIMARY KEY,
    next_free INTEGER NOT NULL
);
INSERT INTO id_blocks (name, next_free) SELECT name, value + 1 FROM last_ids;

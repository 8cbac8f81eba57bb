-- Version 5 (SQLite's upgrade-5.sql): the policies of each port mapping, as
-- a JSON object of the texts the admin API took, '{}' when none is set.
ALTER TABLE mappings ADD COLUMN policies TEXT NOT NULL DEFAULT '{}';

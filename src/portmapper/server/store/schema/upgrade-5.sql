-- Version 5: the policies of each port mapping (allow, proxy_protocol,
-- max_channels, rate_limit, balance), as a JSON object of the texts the
-- admin API took, '{}' when none is set.  Only adds a column, so it applies
-- whatever version 3 did to the other tables.
ALTER TABLE mappings ADD COLUMN policies TEXT NOT NULL DEFAULT '{}';

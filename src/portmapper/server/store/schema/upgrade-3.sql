-- Version 3: credentials, one per client the admin API issued one to.
-- Only the Ed25519 public key is kept: no proof can be made from it, so a
-- copy of this file lets nobody link as a client.  A revoked credential
-- stays (revoked = 1) so that it is refused by name; AUTOINCREMENT keeps
-- ids from ever being reused.
CREATE TABLE credentials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT,
    tag TEXT NOT NULL,
    public_key BLOB NOT NULL UNIQUE,
    created_time REAL NOT NULL,
    last_used_time REAL,
    revoked INTEGER NOT NULL DEFAULT 0
);

-- workhost's PostgreSQL store, schema version 3: the component each attempt
-- ran (docs/versions.md), as the SQLite store's version 8: its SHA-256
-- (hex) and the WIT contract it exports.

ALTER TABLE workhost.attempts
    ADD COLUMN component text,
    ADD COLUMN contract text;

-- The component version (SHA-256, hex) every run of a task is pinned to.
ALTER TABLE workhost.tasks ADD COLUMN pin text;

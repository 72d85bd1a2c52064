-- Schema version 5: each kv namespace's number of keys, kept by every
-- write that adds or removes a key in the same transaction, so a new key
-- checks the limit on one row instead of counting its namespace under a
-- lock.
CREATE TABLE workhost.kv_namespaces (
    namespace text PRIMARY KEY,
    keys bigint NOT NULL CHECK (keys >= 0)
);
-- No kv write of an older host may slip between the count and the commit.
LOCK TABLE workhost.kv IN SHARE MODE;
INSERT INTO workhost.kv_namespaces (namespace, keys)
SELECT namespace, count(*) FROM workhost.kv GROUP BY namespace;

-- workhost's PostgreSQL store, schema version 4: operations (retry, run now,
-- delete, handler pause), as the SQLite store's version 9.

-- Lists of one handler's work, newest first, from an index (by state, the
-- index `tasks_state` serves already).
CREATE INDEX tasks_handler ON workhost.tasks (handler, id);
-- The pins of unfinished work, read at every start and reload: an index of
-- the pinned tasks only.
CREATE INDEX tasks_pin ON workhost.tasks (pin) WHERE pin IS NOT NULL;

-- The handlers paused on every host: claims start none of their work.
CREATE TABLE workhost.paused_handlers (
    handler text PRIMARY KEY
);

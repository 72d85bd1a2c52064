-- workhost's PostgreSQL store, schema version 2: schedules (docs/schedules.md),
-- as the SQLite store's version 7.
--
-- A task's priority (0 highest to 9 lowest) and whether it is expedited give
-- its claim order within its handler: due time plus 5 minutes per priority
-- level, minus a year if expedited (`work::claim_key`). The claim walks
-- `tasks_claim_order` in that order. `cron` holds a cron schedule (expression,
-- time zone, catch-up policy, as JSON) for periodic work that runs at fire
-- times instead of intervals. `starts` records each run a rate-limited
-- handler starts, so every host counts the same window.

ALTER TABLE workhost.tasks
    ADD COLUMN priority bigint NOT NULL DEFAULT 5,
    ADD COLUMN expedited boolean NOT NULL DEFAULT false,
    ADD COLUMN cron text;

CREATE INDEX tasks_claim_order ON workhost.tasks
    (handler, (next_run_at + priority * 300000 - CASE WHEN expedited THEN 31536000000 ELSE 0 END), id)
    WHERE state = 'enqueued';
CREATE INDEX tasks_expedited ON workhost.tasks (handler, created_at) WHERE expedited;

CREATE TABLE workhost.starts (
    handler text NOT NULL,
    at bigint NOT NULL
);
CREATE INDEX starts_handler ON workhost.starts (handler, at);

-- What `chatstore worker` may do on chatstore's tables, and nothing more.
-- Run by the migrator (the tables' owner) after every `chatstore migrate`:
--
--   psql "$MIGRATOR_URL" --no-psqlrc -v ON_ERROR_STOP=1 -v worker=chatstore_worker \
--     [-v maintenance=chatstore_maintenance] -f deploy/postgres/grants.sql
--
-- With -v maintenance=ROLE it also grants `chatstore purge`'s role its own,
-- in the block at the end of this file.
--
-- worker/ingest/store.py calls one function, chatstore_write_batch (migration
-- 0002), which needs EXECUTE. It runs with the caller's privileges (SECURITY
-- INVOKER), so EXECUTE grants nothing by itself: its statements need these.
--   SELECT ... FROM users                                  SELECT on users
--   INSERT INTO conversations (id, user_id) ...
--     ON CONFLICT (id) DO UPDATE SET status = ... WHERE false  INSERT (id, user_id),
--                                                          UPDATE (status), SELECT
--   SELECT ... FROM conversations / messages (and FOR NO KEY UPDATE)  SELECT, UPDATE
--   INSERT INTO messages ... ON CONFLICT DO NOTHING RETURNING id  INSERT, SELECT
--   UPDATE conversations SET created_at, updated_at, status  UPDATE (those columns)
-- No DELETE, no TRUNCATE, no UPDATE of a message or of an owner, nothing on
-- alembic_version, and no DDL: the worker cannot drop or rewrite history.
\set ON_ERROR_STOP on
BEGIN;

-- From a clean slate, so that running this again also removes what was
-- granted by hand.
REVOKE ALL ON TABLE conversations, messages, alembic_version FROM :"worker";
-- A new function is executable by PUBLIC; this one only by the worker.
REVOKE ALL ON FUNCTION
    chatstore_write_batch(uuid[], varchar[], uuid[], varchar[], text[], jsonb, timestamptz[])
    FROM PUBLIC, :"worker";

GRANT SELECT ON TABLE conversations, messages TO :"worker";
GRANT INSERT (id, user_id) ON TABLE conversations TO :"worker";
GRANT UPDATE (status, created_at, updated_at) ON TABLE conversations TO :"worker";
GRANT INSERT ON TABLE messages TO :"worker";
GRANT EXECUTE ON FUNCTION
    chatstore_write_batch(uuid[], varchar[], uuid[], varchar[], text[], jsonb, timestamptz[])
    TO :"worker";

-- `users` belongs to the accounts application unless migration 0001 made a
-- minimal one (then the migrator owns it and grants here). When another role
-- owns it, that role must run: GRANT SELECT ON TABLE users TO chatstore_worker;
SELECT format('GRANT SELECT ON TABLE users TO %I', :'worker')
WHERE pg_has_role(
    (SELECT relowner FROM pg_class WHERE oid = 'users'::regclass), 'USAGE'
) \gexec

COMMIT;

-- ==== The maintenance role: `chatstore purge` (only with -v maintenance=ROLE) ====
-- The statements of worker/tools/retention/batches.py and purge.py, and the
-- privilege each needs:
--   has_table_privilege / has_column_privilege (its own check)   nothing
--   SELECT count(*) FROM conversations WHERE status, updated_at  SELECT (id, status, updated_at)
--   SELECT count(*) FROM messages WHERE conversation_id = ...    SELECT (conversation_id)
--   DELETE FROM conversations ... RETURNING id                   DELETE on conversations
-- The messages go by ON DELETE CASCADE, which PostgreSQL runs with the
-- privileges of the table's owner: no DELETE on messages. No UPDATE, no
-- INSERT, no TRUNCATE, nothing on users or alembic_version, and not even the
-- content of a message can be read.
\if :{?maintenance}
BEGIN;
REVOKE ALL ON TABLE conversations, messages, alembic_version FROM :"maintenance";
GRANT SELECT (id, status, updated_at) ON TABLE conversations TO :"maintenance";
GRANT DELETE ON TABLE conversations TO :"maintenance";
GRANT SELECT (conversation_id) ON TABLE messages TO :"maintenance";
COMMIT;
\endif
-- ==== end of the maintenance role ====

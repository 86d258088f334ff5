-- chatstore's PostgreSQL roles: run once per environment by an administrator
-- (a superuser, or a managed service's admin role), and again to rotate the
-- passwords. Idempotent.
--
--   psql "$ADMIN_URL" --no-psqlrc -v ON_ERROR_STOP=1 \
--     -v database=chatstore \
--     -v migrator=chatstore_migrator -v migrator_password="$MIGRATOR_PASSWORD" \
--     -v worker=chatstore_worker -v worker_password="$WORKER_PASSWORD" \
--     -v maintenance=chatstore_maintenance -v maintenance_password="$MAINTENANCE_PASSWORD" \
--     -f deploy/postgres/roles.sql
--
-- The migrator owns chatstore's tables: `chatstore migrate` runs as it. The
-- worker owns nothing; deploy/postgres/grants.sql, run by the migrator after
-- each migration, gives it exactly what it needs on the tables. The
-- maintenance role (`chatstore purge`, the only role of chatstore's that may
-- delete) is made only when `-v maintenance=` is given, and also owns nothing.
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I', :'migrator')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'migrator') \gexec
SELECT format('CREATE ROLE %I', :'worker')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'worker') \gexec

-- Spelled out, so that running this again also resets anything changed by hand.
ALTER ROLE :"migrator" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS PASSWORD :'migrator_password';
ALTER ROLE :"worker" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS PASSWORD :'worker_password';
-- A server-side statement timeout that fires while a COMMIT waits for a
-- synchronous standby leaves the commit on the primary alone and reports
-- success: the worker would acknowledge events a failover can lose. The worker
-- times its statements itself (CHATSTORE_DATABASE_TIMEOUT_S), and retries.
-- This role setting wins over a database's or the server's (a managed
-- service's parameter group) and holds behind PgBouncer too.
ALTER ROLE :"worker" SET statement_timeout = 0;

-- A database of its own where there is none; an existing one (say, the one
-- holding the accounts application's `users` table) is used as it is.
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'migrator')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \gexec
GRANT CONNECT ON DATABASE :"database" TO :"migrator", :"worker";

-- The maintenance role, for `chatstore purge`: only with -v maintenance=NAME.
\if :{?maintenance}
SELECT format('CREATE ROLE %I', :'maintenance')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'maintenance') \gexec
ALTER ROLE :"maintenance" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS PASSWORD :'maintenance_password';
-- Purge sets statement_timeout and lock_timeout per batch itself; no role setting.
GRANT CONNECT ON DATABASE :"database" TO :"maintenance";
\endif

\connect :"database"
-- The migrator creates chatstore's tables in the public schema and so owns
-- them; the worker may only look them up. PostgreSQL 15 gives nobody CREATE
-- there by default; older versions gave it to PUBLIC.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"migrator";
GRANT USAGE ON SCHEMA public TO :"worker";
\if :{?maintenance}
GRANT USAGE ON SCHEMA public TO :"maintenance";
\endif

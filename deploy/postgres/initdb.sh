#!/bin/sh
# docker compose only: the postgres image runs this once, when its volume is
# new. It makes chatstore's roles and database with deploy/postgres/roles.sql,
# and the maintenance role of `chatstore purge` if CHATSTORE_MAINTENANCE_PASSWORD
# is set.
set -eu
if [ -n "${CHATSTORE_MAINTENANCE_PASSWORD:-}" ]; then
    set -- -v maintenance=chatstore_maintenance \
        -v maintenance_password="$CHATSTORE_MAINTENANCE_PASSWORD"
fi
psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v database=chatstore \
    -v migrator=chatstore_migrator -v migrator_password="$CHATSTORE_MIGRATOR_PASSWORD" \
    -v worker=chatstore_worker -v worker_password="$CHATSTORE_WORKER_PASSWORD" \
    "$@" -f /chatstore/roles.sql

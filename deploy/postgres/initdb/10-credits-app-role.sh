#!/bin/sh
# The app's least-privilege login role. The postgres image runs this once, when it creates
# an empty data directory, as POSTGRES_USER: the owner of POSTGRES_DB, who also runs the
# migrations (the compose `migrate` service) and so owns every table.
#
# The app role may connect to POSTGRES_DB and look up objects in schema public; it may
# read and write the rows of every table the owner creates there (default privileges),
# but never create, alter, drop or truncate anything. After each migration, migrate also
# narrows the append-only ledger tables to INSERT and SELECT (app-grants.sql).
#
# Safe to run again: on a volume created before this script existed, or to set a new
# POSTGRES_APP_PASSWORD (then restart the app services):
#   docker compose exec postgres sh /docker-entrypoint-initdb.d/10-credits-app-role.sh
#
# No `set -u`: the image sources (rather than runs) an init script that lost its execute
# bit, and nounset would leak into its entrypoint. Missing variables fail below instead.
set -e
: "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"
: "${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD for the app role}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set owner="$POSTGRES_USER" --set db="$POSTGRES_DB" \
    --set app_role="${POSTGRES_APP_USER:-credits_app}" \
    --set app_password="$POSTGRES_APP_PASSWORD" <<'SQL'
BEGIN;

-- A plain login role: no superuser, CREATEDB or CREATEROLE (the defaults).
SELECT format('CREATE ROLE %I LOGIN', :'app_role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_role') \gexec
ALTER ROLE :"app_role" WITH LOGIN PASSWORD :'app_password';

-- Only the owner and the app role may connect, and nobody gets TEMP (temporary tables).
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app_role";

-- Schema public: look up objects, create none (PostgreSQL before 15 let PUBLIC create).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app_role";

-- Every table and sequence the owner creates from now on (the migrations) is the app's to
-- read and write. Default privileges cannot name tables: app-grants.sql, run after each
-- migration, takes UPDATE and DELETE back on the append-only ones.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app_role";

COMMIT;
SQL

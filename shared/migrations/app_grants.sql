-- The app role's privileges on the app's tables, applied by `credits db grant --app-role
-- NAME` as the owner after every `credits db upgrade`, in one transaction. Idempotent: it sets the
-- whole state each time, whatever was granted before (for example on a database created
-- before the app role existed, where no default privileges applied).
--
-- {app_role} is replaced by the quoted role name; the file takes no other placeholders.

-- Rows of every table: read and write. Sequences: draw ids.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app_role};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app_role};

-- The ledger and the jobs' history are append-only: a row, once written, is never changed
-- or removed, so the app may only add and read them. A bug, or an attacker holding the
-- app's password, cannot rewrite history; balances can still be recomputed from it.
REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON ledger_entries, ledger_transactions, job_transitions FROM {app_role};

-- The schema version is the migrations' business: the app reads it, never writes it.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON alembic_version FROM {app_role};

-- Nothing else, ever: the table owner keeps DDL, TRUNCATE, REFERENCES and TRIGGER.
REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM {app_role};

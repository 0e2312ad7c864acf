-- tools/bench: owners for the list and owner scenarios, on top of
-- conf/demo.sql (which tools/bench loads first with 10,000 sessions).
--
-- Every 10th session (s10, s20, ..., s10000) belongs to u1, the principal the
-- bench's token names: 1,000 sessions spread over the whole created_at range
-- (demo.sql gives session g the time 2026-01-01 + g minutes), interleaved
-- with the other 9,000, which belong to 45 other owners (200 each). A page
-- of u1's sessions is therefore never a contiguous run of the table.
--
-- Backward compatible: one column and one index are added; demo.sql's
-- columns, rows and the documents its by_ids builds are unchanged. Rerunning
-- it is harmless (ADD COLUMN / CREATE INDEX IF NOT EXISTS, same owners).
--
--   psql -v ON_ERROR_STOP=1 -f tools/lib/bench_owners.sql

\set ON_ERROR_STOP on

BEGIN;

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS owner_id text;
-- demo.sql has it; kept here so this file states what the page query needs.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();

UPDATE sessions
SET owner_id = CASE WHEN substr(id, 2)::int % 10 = 0 THEN 'u1'
                    ELSE 'u' || (2 + substr(id, 2)::int % 50) END;

-- The keyset page query's order: WHERE owner_id = $1 ORDER BY created_at DESC, id DESC.
CREATE INDEX IF NOT EXISTS sessions_owner_created ON sessions (owner_id, created_at DESC, id DESC);

COMMIT;

-- The UPDATE left a dead version of every row behind.
VACUUM (ANALYZE) sessions;
